"""com.microsoft decoder ops of onnxruntime-genai / Optimum graphs: GroupQueryAttention,
MultiHeadAttention, SimplifiedLayerNormalization and SkipSimplifiedLayerNormalization
(https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._registry import register
from .kv_cache import kv_cache_update

MS = "com.microsoft"


def _rms(x, gamma, epsilon):
    xa = x.astype(jnp.float32)
    inv = lax.rsqrt(jnp.mean(jnp.square(xa), axis=-1, keepdims=True) + epsilon)
    return (xa * inv * gamma.astype(jnp.float32)).astype(x.dtype), inv


@register("SimplifiedLayerNormalization")
def simplified_layer_normalization(x, scale, *, axis=-1, epsilon=1e-5, stash_type=1, ctx=None):
    """onnxruntime's RMS norm (registered in the default domain): ``x / rms(x) * scale``."""
    if int(axis) not in (-1, x.ndim - 1):
        raise ValueError(f"SimplifiedLayerNormalization: only the last axis, got axis={axis}")
    y, inv = _rms(x, scale, epsilon)
    n = 1 if ctx is None else ctx.num_outputs
    return y if n == 1 else (y, inv)[:n]


@register("SkipSimplifiedLayerNormalization", domain=MS)
def skip_simplified_layer_normalization(x, skip, gamma, bias=None, *, epsilon=1e-5, ctx=None):
    """RMS norm of a residual sum: ``s = x + skip (+ bias)``, then ``s / rms(s) * gamma``.

    Outputs: the norm, mean (unused by RMS: zeros), inv_std_var, and ``s``.
    """
    s = x + skip if bias is None else x + skip + bias
    y, inv = _rms(s, gamma, epsilon)
    n = 1 if ctx is None else ctx.num_outputs
    return y if n == 1 else (y, jnp.zeros_like(inv), inv, s)[:n]


def _rotate(x, cos, sin, interleaved):
    """Rotary embedding of ``x [b, s, h, d]`` with ``cos``/``sin [b, s, r/2]`` (r <= d)."""
    r = 2 * cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    cos, sin = cos[:, :, None].astype(x.dtype), sin[:, :, None].astype(x.dtype)
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot.shape)
    else:
        x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([out, rest], axis=-1)


@register("GroupQueryAttention", domain=MS)
def group_query_attention(
    query,
    key=None,
    value=None,
    past_key=None,
    past_value=None,
    seqlens_k=None,
    total_sequence_length=None,
    cos_cache=None,
    sin_cache=None,
    position_ids=None,
    attention_bias=None,
    head_sink=None,
    *,
    num_heads,
    kv_num_heads,
    scale=0.0,
    local_window_size=-1,
    do_rotary=0,
    rotary_interleaved=0,
    softcap=0.0,
    smooth_softmax=0,
    qk_output=0,
    ctx=None,
):
    """onnxruntime-genai's attention with a KV cache, as onnxruntime's CPU kernel computes it.

    Row ``b`` holds ``seqlens_k[b] + 1`` tokens after this call, the ``S``
    new ones last, at positions ``seqlens_k[b] + 1 - S + j`` (a first prompt, ``S`` equal to
    ``total_sequence_length`` with no past: at ``j``, right-padded); they are written into the
    present cache there (rotated first when ``do_rotary``). The present has
    ``max(past length, total_sequence_length)`` positions: equal to the past when the past is
    a buffer of fixed size (onnxruntime's shared-buffer mode, what onnx2jax.Generator feeds).
    Positions outside the present (a left-padded prompt's padding) are not written; queries
    with no visible key give zeros.

    Scores: ``scale * Q K^T``, then ``softcap * tanh(. / softcap)``, plus ``attention_bias``
    ``[batch or 1, heads or 1, S, total]``; keys are causal and, with ``local_window_size``
    ``w >= 0``, the last ``w`` positions only. ``smooth_softmax`` adds a zero logit to the
    softmax's denominator, ``head_sink [heads]`` a per-head one. ``qk_output`` 1 / 2 returns
    the scores before / after the softmax ``[batch, heads, S, total]`` (0 where masked) as a
    fourth output. ``total_sequence_length`` must be concrete at trace time (computed from
    shapes, a constant, or a graph input given a value: the loader specialises on it).
    """
    if seqlens_k is None or total_sequence_length is None:
        raise ValueError("GroupQueryAttention needs seqlens_k and total_sequence_length")
    if isinstance(total_sequence_length, jax.core.Tracer):
        raise ValueError(
            "GroupQueryAttention: input 6 total_sequence_length sets the present's length, so "
            "it must be known when tracing: compute it from shapes (as onnxruntime-genai's "
            "graphs do from attention_mask) or feed the graph input a concrete value"
        )
    if int(qk_output) not in (0, 1, 2):
        raise NotImplementedError(
            f"GroupQueryAttention: attribute qk_output={qk_output} (0 none, 1 before softmax, "
            "2 after softmax are supported)"
        )
    b, s = query.shape[0], query.shape[1]
    hq, hk = int(num_heads), int(kv_num_heads)
    if key is None:  # packed QKV
        d = query.shape[-1] // (hq + 2 * hk)
        q, k, v = jnp.split(query, [hq * d, (hq + hk) * d], axis=-1)
    else:
        d = query.shape[-1] // hq
        q, k, v = query, key, value
    q, k, v = q.reshape(b, s, hq, d), k.reshape(b, s, hk, d), v.reshape(b, s, hk, d)
    total = int(np.asarray(total_sequence_length).reshape(-1)[0])
    if past_key is not None and past_key.shape[2] == 0:
        past_key = past_value = None  # an empty past carries nothing (nor its dims: a probe)
    plen = 0 if past_key is None else past_key.shape[2]
    length = max(plen, total)
    start = jnp.asarray(seqlens_k).reshape(b).astype(jnp.int32) + 1 - s  # first new position
    if s > 1 and s == total and plen == 0:
        # onnxruntime's first prompt: every row starts at 0, shorter rows padded on the right
        # (their padding's outputs are not meaningful there either).
        start = jnp.zeros((b,), jnp.int32)
    pos = start[:, None] + jnp.arange(s, dtype=jnp.int32)  # [b, s]
    if do_rotary:
        rp = pos if position_ids is None else jnp.asarray(position_ids).astype(jnp.int32)
        rp = jnp.clip(rp, 0, cos_cache.shape[0] - 1)
        cos, sin = jnp.take(cos_cache, rp, axis=0), jnp.take(sin_cache, rp, axis=0)
        q = _rotate(q, cos, sin, rotary_interleaved)
        k = _rotate(k, cos, sin, rotary_interleaved)

    def present(past, new):
        buf = jnp.zeros((b, hk, length, d), new.dtype) if past is None else past
        if buf.shape[2] < length:
            # A new present (not the shared buffer): like onnxruntime, only each row's valid
            # past is copied into it, the rest is zeros.
            buf = jnp.pad(buf, ((0, 0), (0, 0), (0, length - buf.shape[2]), (0, 0)))
            keep = jnp.arange(length, dtype=jnp.int32)[None, :] < start[:, None]
            buf = jnp.where(keep[:, None, :, None], buf, jnp.zeros((), buf.dtype))
        return kv_cache_update(buf, new.transpose(0, 2, 1, 3), start, axis=2)

    pk, pv = present(past_key, k), present(past_value, v)
    slot = jnp.arange(length, dtype=jnp.int32)
    allowed = slot[None, None, :] <= pos[:, :, None]  # [b, s, L]: causal, this row's tokens
    if local_window_size is not None and int(local_window_size) >= 0:
        allowed &= slot[None, None, :] > pos[:, :, None] - int(local_window_size)
    allowed = allowed[:, None, None]  # [b, 1, 1, s, L]
    scale = float(scale) or 1.0 / np.sqrt(d)
    reps = hq // hk
    qg = q.reshape(b, s, hk, reps, d)
    logits = jnp.einsum("bshrd,bhld->bhrsl", qg, pk).astype(jnp.float32) * scale
    if softcap:
        logits = softcap * jnp.tanh(logits / softcap)
    if attention_bias is not None:
        logits = logits + _gqa_bias(attention_bias, b, hk, reps, s, length)
    logits = jnp.where(allowed, logits, -jnp.inf)
    mx = jnp.max(logits, axis=-1, keepdims=True)
    if smooth_softmax or head_sink is not None:
        # One more logit in the denominator: 0 (smooth softmax) or the head's sink.
        sink = jnp.zeros((), jnp.float32)
        if head_sink is not None:
            sink = head_sink.astype(jnp.float32).reshape(1, hk, reps, 1, 1)
        mx = jnp.maximum(mx, sink)
        e = jnp.exp(logits - mx)
        probs = e / (jnp.sum(e, axis=-1, keepdims=True) + jnp.exp(sink - mx))
    else:
        e = jnp.exp(logits - jnp.where(jnp.isneginf(mx), 0.0, mx))
        total_e = jnp.sum(e, axis=-1, keepdims=True)
        probs = e / jnp.where(total_e == 0, 1.0, total_e)
    y = jnp.einsum("bhrsl,bhld->bshrd", probs.astype(pv.dtype), pv).reshape(b, s, hq * d)
    count = 3 if ctx is None else ctx.num_outputs
    if count < 4:
        return (y, pk, pv)[:count]
    if not qk_output:
        raise ValueError("GroupQueryAttention: a fourth output (output_qk) needs qk_output 1 or 2")
    qk = jnp.where(allowed, logits if int(qk_output) == 1 else probs, 0.0)
    qk = _pad_keys(qk.reshape(b, hq, s, length), total).astype(query.dtype)
    return y, pk, pv, qk


def _pad_keys(x, n):
    """``x`` with its last axis cut or zero-padded to ``n``."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def _gqa_bias(bias, b, hk, reps, s, length):
    """GroupQueryAttention's ``attention_bias [b or 1, heads or 1, s, T]`` on the scores'
    layout ``[b, kv heads, heads per kv head, s, length]``: key ``j`` takes column ``j``."""
    if bias.ndim != 4 or bias.shape[0] not in (1, b) or bias.shape[2] != s:
        raise ValueError(
            f"GroupQueryAttention: attention_bias must be [batch or 1, num_heads or 1, "
            f"{s}, total_sequence_length], got {list(bias.shape)}"
        )
    bias = _pad_keys(bias.astype(jnp.float32), length)
    heads = bias.shape[1]
    if heads == 1:
        return bias.reshape(bias.shape[0], 1, 1, s, length)
    if heads != hk * reps:
        raise ValueError(
            f"GroupQueryAttention: attention_bias has {heads} heads; num_heads is {hk * reps}"
        )
    return bias.reshape(bias.shape[0], hk, reps, s, length)


@register("MultiHeadAttention", domain=MS)
def multi_head_attention(
    query,
    key=None,
    value=None,
    bias=None,
    key_padding_mask=None,
    attention_bias=None,
    past_key=None,
    past_value=None,
    past_sequence_length=None,
    cache_indirection=None,
    *,
    num_heads,
    scale=0.0,
    unidirectional=0,
    mask_filter_value=-10000.0,
    ctx=None,
):
    """Attention with a past (decoders exported for onnxruntime), as onnxruntime's CPU kernel.

    3-D ``query``/``key``/``value`` ``[batch, seq, heads * size]`` (optional ``bias``), the new
    keys/values appended to ``past_key``/``past_value`` ``[batch, heads, past, size]``; or 4-D
    ``key``/``value`` ``[batch, heads, kv_seq, size]`` used as they are (cross-attention).
    With ``past_sequence_length`` the past is a buffer of fixed size shared with the present
    (onnxruntime's DecoderMaskedMultiHeadAttention mode): the new entries are written at that
    position and the keys after them are masked; ``cache_indirection [batch, beams, max_seq]``
    then says from which beam each past position is read (beam search).
    ``key_padding_mask`` ``[batch]`` (key lengths), ``[batch, total]`` or
    ``[batch, seq, total]`` (0: masked) and ``attention_bias`` add
    ``mask_filter_value`` / the bias; ``unidirectional`` is causal after the past.
    Packed QKV (5-D query) and packed KV (5-D key) raise NotImplementedError, as they do on
    onnxruntime's CPU provider.
    """
    if key is None or key.ndim == 5 or query.ndim != 3:
        raise NotImplementedError(
            "MultiHeadAttention: packed QKV (query [batch, seq, heads, 3, size]) and packed KV "
            "(key [batch, kv_seq, heads, 2, size]) are not supported (nor by onnxruntime's CPU "
            "provider); give query, key and value separately"
        )
    b, s, n = query.shape[0], query.shape[1], int(num_heads)
    cross = key.ndim == 4
    if bias is not None:
        dq = query.shape[-1]
        query = query + bias[:dq]
        if not cross:
            dk = key.shape[-1]
            key, value = key + bias[dq : dq + dk], value + bias[dq + dk :]

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], n, -1).transpose(0, 2, 1, 3)

    q = heads(query)
    k, v = (key, value) if cross else (heads(key), heads(value))
    present_k = present_v = None
    valid = None  # the number of keys each row sees, where the buffer is longer
    plen = 0
    if cross:
        pass  # precomputed keys/values: no past to append to
    elif past_sequence_length is not None:
        if past_key is None:
            raise ValueError("MultiHeadAttention: past_sequence_length needs past_key/past_value")
        plen = jnp.asarray(past_sequence_length).reshape(-1)[0].astype(jnp.int32)
        zero = jnp.zeros((), jnp.int32)
        present_k = lax.dynamic_update_slice(
            past_key, k.astype(past_key.dtype), (zero, zero, plen, zero)
        )
        present_v = lax.dynamic_update_slice(
            past_value, v.astype(past_value.dtype), (zero, zero, plen, zero)
        )
        k, v = present_k, present_v
        if cache_indirection is not None:
            k, v = _indirect(k, cache_indirection, plen), _indirect(v, cache_indirection, plen)
        valid = plen + s
    elif past_key is not None:
        plen = past_key.shape[2]
        k = jnp.concatenate([past_key.astype(k.dtype), k], axis=2)
        v = jnp.concatenate([past_value.astype(v.dtype), v], axis=2)
        present_k, present_v = k, v
    else:
        present_k, present_v = k, v
    if cache_indirection is not None and past_sequence_length is None:
        raise NotImplementedError(
            "MultiHeadAttention: cache_indirection without past_sequence_length is not supported"
        )
    total = k.shape[2]
    d = q.shape[-1]
    logits = jnp.einsum("bnsd,bntd->bnst", q, k).astype(jnp.float32)
    logits = logits * (float(scale) or 1.0 / np.sqrt(d))
    if attention_bias is not None:
        logits = logits + _pad_keys(attention_bias.astype(jnp.float32), total)
    filler = jnp.float32(mask_filter_value)
    if key_padding_mask is not None:
        keep = _key_mask(key_padding_mask, b, s, total)
        logits = jnp.where(keep, logits, filler)
    slots = jnp.arange(total)
    if unidirectional:
        causal = slots[None, :] <= (jnp.arange(s) + plen)[:, None]
        logits = jnp.where(causal, logits, filler)
    if valid is not None:  # the buffer's slots after the new entries are not keys at all
        logits = jnp.where(slots < valid, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    y = jnp.einsum("bnst,bntd->bnsd", probs, v).transpose(0, 2, 1, 3).reshape(b, s, -1)
    count = 1 if ctx is None else ctx.num_outputs
    if count > 1 and present_k is None:
        raise ValueError("MultiHeadAttention: 4-D key/value give no present outputs")
    return y if count == 1 else (y, present_k, present_v)[:count]


def _indirect(buf, indirection, plen):
    """Beam search's view of a shared buffer ``[batch * beams, heads, max_seq, size]``: past
    position ``t < plen`` of row ``(b, i)`` read from beam ``indirection[b, i, t]``."""
    rows, _, m, _ = buf.shape
    beams = indirection.shape[1]
    src = jnp.asarray(indirection).astype(jnp.int32).reshape(rows, -1)[:, :m]
    src = (jnp.arange(rows, dtype=jnp.int32) // beams * beams)[:, None] + src
    t = jnp.arange(m, dtype=jnp.int32)
    src = jnp.where(t[None, :] < plen, src, jnp.arange(rows, dtype=jnp.int32)[:, None])
    return buf[src[:, None, :], jnp.arange(buf.shape[1])[None, :, None], t[None, None, :]]


def _key_mask(mask, b, s, total):
    """MultiHeadAttention's key_padding_mask as a boolean ``[b, 1, s or 1, total]``."""
    mask = jnp.asarray(mask)
    slots = jnp.arange(total)
    if mask.ndim == 1 and mask.shape[0] == b:
        keep = slots[None, :] < mask.astype(jnp.int32)[:, None]
        return keep[:, None, None, :]
    if mask.ndim == 2:
        return (_pad_keys(mask, total) != 0)[:, None, None, :]
    if mask.ndim == 3:
        return (_pad_keys(mask, total) != 0)[:, None, :, :]
    raise NotImplementedError(
        f"MultiHeadAttention: key_padding_mask of shape {list(mask.shape)}; supported: "
        "[batch], [batch, total], [batch, seq, total]"
    )
