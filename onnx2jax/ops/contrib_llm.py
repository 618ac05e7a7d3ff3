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
):
    """onnxruntime-genai's attention with a KV cache, as onnxruntime's CPU kernel computes it.

    Row ``b`` holds ``seqlens_k[b] + 1`` tokens after this call, the ``S``
    new ones last, at positions ``seqlens_k[b] + 1 - S + j``; they are written into the
    present cache there (rotated first when ``do_rotary``). The present has
    ``max(past length, total_sequence_length)`` positions: equal to the past when the past is
    a buffer of fixed size (onnxruntime's shared-buffer mode, what onnx2jax.Generator feeds).
    Positions outside the present (a left-padded prompt's padding) are not written; queries
    with no visible key give zeros.
    """
    if attention_bias is not None or head_sink is not None or smooth_softmax or qk_output:
        raise NotImplementedError(
            "GroupQueryAttention: attention_bias, head_sink, smooth_softmax and qk_output are "
            "not supported"
        )
    if seqlens_k is None or total_sequence_length is None:
        raise ValueError("GroupQueryAttention needs seqlens_k and total_sequence_length")
    if not isinstance(total_sequence_length, np.ndarray):
        raise ValueError(
            "GroupQueryAttention: total_sequence_length must be known when tracing (computed "
            "from shapes, as onnxruntime-genai's graphs do from attention_mask); it sets the "
            "present's length"
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
            buf = jnp.pad(buf, ((0, 0), (0, 0), (0, length - buf.shape[2]), (0, 0)))
        return kv_cache_update(buf, new.transpose(0, 2, 1, 3), start, axis=2)

    pk, pv = present(past_key, k), present(past_value, v)
    slot = jnp.arange(length, dtype=jnp.int32)
    allowed = slot[None, None, :] <= pos[:, :, None]  # [b, s, L]: causal, this row's tokens
    if local_window_size is not None and int(local_window_size) >= 0:
        allowed &= slot[None, None, :] > pos[:, :, None] - int(local_window_size)
    scale = float(scale) or 1.0 / np.sqrt(d)
    reps = hq // hk
    qg = q.reshape(b, s, hk, reps, d)
    logits = jnp.einsum("bshrd,bhld->bhrsl", qg, pk).astype(jnp.float32) * scale
    if softcap:
        logits = softcap * jnp.tanh(logits / softcap)
    logits = jnp.where(allowed[:, None, None], logits, -jnp.inf)
    mx = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - jnp.where(jnp.isneginf(mx), 0.0, mx))
    total_e = jnp.sum(e, axis=-1, keepdims=True)
    probs = (e / jnp.where(total_e == 0, 1.0, total_e)).astype(pv.dtype)
    y = jnp.einsum("bhrsl,bhld->bshrd", probs, pv).reshape(b, s, hq * d)
    return y, pk, pv


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
    keys/values appended to ``past_key``/``past_value`` ``[batch, heads, past, size]``;
    ``key_padding_mask`` ``[batch, total]`` (0: masked) and ``attention_bias`` add
    ``mask_filter_value`` / the bias; ``unidirectional`` is causal after the past.
    """
    if key is None or query.ndim != 3 or key.ndim != 3 or value.ndim != 3:
        raise NotImplementedError(
            "MultiHeadAttention: only 3-D query, key and value [batch, seq, hidden] are "
            "supported (not packed QKV/KV, nor 4-D key/value)"
        )
    if past_sequence_length is not None or cache_indirection is not None:
        raise NotImplementedError(
            "MultiHeadAttention: past_sequence_length (a shared buffer) and cache_indirection "
            "(beam search) are not supported"
        )
    b, s, n = query.shape[0], query.shape[1], int(num_heads)
    if bias is not None:
        dq, dk = query.shape[-1], key.shape[-1]
        query, key, value = query + bias[:dq], key + bias[dq : dq + dk], value + bias[dq + dk :]

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], n, -1).transpose(0, 2, 1, 3)

    q, k, v = heads(query), heads(key), heads(value)
    plen = 0
    if past_key is not None:
        plen = past_key.shape[2]
        k = jnp.concatenate([past_key.astype(k.dtype), k], axis=2)
        v = jnp.concatenate([past_value.astype(v.dtype), v], axis=2)
    total = k.shape[2]
    d = q.shape[-1]
    logits = jnp.einsum("bnsd,bntd->bnst", q, k).astype(jnp.float32)
    logits = logits * (float(scale) or 1.0 / np.sqrt(d))
    if attention_bias is not None:
        logits = logits + attention_bias.astype(jnp.float32)
    if key_padding_mask is not None:
        if key_padding_mask.ndim != 2:
            raise NotImplementedError(
                "MultiHeadAttention: only a [batch, total] key_padding_mask is supported"
            )
        keep = (key_padding_mask != 0)[:, None, None, :]
        logits = jnp.where(keep, logits, jnp.float32(mask_filter_value))
    if unidirectional:
        causal = jnp.arange(total)[None, :] <= (jnp.arange(s) + plen)[:, None]
        logits = jnp.where(causal, logits, jnp.float32(mask_filter_value))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    y = jnp.einsum("bnst,bntd->bnsd", probs, v).transpose(0, 2, 1, 3).reshape(b, s, -1)
    count = 1 if ctx is None else ctx.num_outputs
    return y if count == 1 else (y, k, v)[:count]
