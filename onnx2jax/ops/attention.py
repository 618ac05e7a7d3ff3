"""Attention (opset 23+) and RotaryEmbedding (https://onnx.ai/onnx/operators/)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.dtypes import canonicalize_dtype

from .._registry import register
from ._common import dtype_of
from .linalg import matmul  # half precision accumulates in float32, as MatMul does


def _split_heads(x, num_heads):
    """(batch, seq, heads * size) -> (batch, heads, seq, size)."""
    b, s, hidden = x.shape
    return x.reshape(b, s, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def _allowed(sq, skv, offset, is_causal, left, right, nonpad):
    """Structural mask (causal, sliding window, key padding) as booleans, or None if none applies.

    ``offset`` is the absolute position of query 0: the past length, or per batch
    ``nonpad_kv_seqlen - sq`` for an external cache. Built from iotas so no (sq, skv)
    constant is embedded in the program.
    """
    j = lax.broadcasted_iota(jnp.int32, (1, skv), 1)
    pos = lax.broadcasted_iota(jnp.int32, (sq, 1), 0)
    if not isinstance(offset, int):  # per batch: (b, 1, sq, 1)
        pos = pos[None, None] + offset.astype(jnp.int32).reshape(-1, 1, 1, 1)
    elif offset:
        pos = pos + offset
    allowed = None

    def both(a, m):
        return m if a is None else a & m

    if is_causal:
        allowed = both(allowed, j <= pos)
    if left >= 0:
        allowed = both(allowed, pos - j <= left)
    if right >= 0:
        allowed = both(allowed, j - pos <= right)
    if nonpad is not None:
        pad = j.reshape(1, 1, 1, skv) < nonpad.astype(jnp.int32).reshape(-1, 1, 1, 1)
        allowed = both(allowed, pad)
    return allowed


def _attention(
    q,
    k,
    v,
    attn_mask,
    past_key,
    past_value,
    nonpad_kv_seqlen,
    *,
    is_causal,
    kv_num_heads,
    q_num_heads,
    qk_matmul_output_mode,
    scale,
    softcap,
    softmax_precision,
    left_window_size=-1,
    right_window_size=-1,
    need_scores=True,
):
    rank3 = q.ndim == 3
    if rank3:
        q, k, v = (
            _split_heads(q, q_num_heads),
            _split_heads(k, kv_num_heads),
            _split_heads(v, kv_num_heads),
        )
    dtype = q.dtype
    b, hq, sq, d = q.shape
    if scale is None:
        scale = 1 / np.sqrt(d)
    # Q and K are each scaled by sqrt(scale), in the input precision (as the spec's graph).
    s = np.asarray(np.sqrt(scale), dtype)
    if past_key is not None:
        k = jnp.concatenate([past_key, k], axis=2)
        v = jnp.concatenate([past_value, v], axis=2)
    present_key, present_value = k, v
    hkv, skv = k.shape[1], k.shape[2]

    if past_key is not None:
        offset = past_key.shape[2]
    elif nonpad_kv_seqlen is not None:
        offset = jnp.asarray(nonpad_kv_seqlen).reshape(-1) - sq
    else:
        offset = 0
    allowed = _allowed(
        sq, skv, offset, is_causal, left_window_size, right_window_size, nonpad_kv_seqlen
    )
    bias = None
    if attn_mask is not None:
        # A mask shorter than the keys is padded with "not allowed".
        pad = skv - attn_mask.shape[-1]
        if pad > 0:
            widths = [(0, 0)] * (attn_mask.ndim - 1) + [(0, pad)]
            fill = False if attn_mask.dtype == np.bool_ else -np.inf
            attn_mask = jnp.pad(attn_mask, widths, constant_values=fill)
        if attn_mask.dtype == np.bool_:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            bias = attn_mask.astype(dtype)
    if allowed is not None:
        bias = jnp.where(allowed, jnp.zeros((), dtype) if bias is None else bias, -jnp.inf)
        bias = bias.astype(dtype)

    # Grouped-query attention without repeating K/V: query head h uses kv head h // reps.
    reps = hq // hkv
    qg = (q * s).reshape(b, hkv, reps, sq, d)
    # Blocks for float32 only: in half precision the one pass below rounds the probabilities
    # before the second product, which blocks (normalizing after it) would not reproduce.
    blocks = not need_scores and softcap <= 0 and softmax_precision in (None, 1)  # 1: FLOAT
    if blocks and dtype == np.float32 and _blocks_pay(sq, skv):
        if bias is not None:  # as [b | 1, hkv | 1, reps | 1, sq | 1, skv], like qg's scores
            bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
            heads = (1, 1) if bias.shape[1] == 1 else (hkv, reps)
            bias = bias.reshape(bias.shape[0], *heads, *bias.shape[2:])
        kt = jnp.swapaxes(k * s, -1, -2)[:, :, None]  # [b, hkv, 1, d, skv]
        y = _blocked_attention(qg, kt, v[:, :, None], bias, 1.0, False, zero_rows=True)
        y = y.reshape(b, hq, sq, v.shape[-1])
        if rank3:
            y = y.transpose(0, 2, 1, 3).reshape(b, sq, -1)
        return y, present_key, present_value  # the scores output is not read
    logits = jnp.einsum("bhrqd,bhkd->bhrqk", qg, k * s).reshape(b, hq, sq, skv)
    # Mode 0 reports the raw product, as the spec and onnxruntime do (onnx's reference
    # implementation reports the soft-capped one).
    qk_out = logits
    if softcap > 0:
        logits = softcap * jnp.tanh(logits / softcap)
    if qk_matmul_output_mode == 1:
        qk_out = logits
    if bias is not None:
        logits = logits + bias
        if qk_matmul_output_mode == 2:
            qk_out = logits
    if softmax_precision is not None:
        logits = logits.astype(canonicalize_dtype(dtype_of(softmax_precision)))
    mx = jnp.max(logits, axis=-1, keepdims=True)
    if bias is not None:  # a fully masked row has max -inf: keep exp() finite, no NaN
        mx = jnp.where(jnp.isneginf(mx), jnp.zeros((), mx.dtype), mx)
    e = jnp.exp(logits - lax.stop_gradient(mx))
    total = jnp.sum(e, axis=-1, keepdims=True)
    if bias is not None:
        total = jnp.where(total == 0, jnp.ones((), total.dtype), total)
    probs = e / total
    if bias is not None:
        # Rows with no attendable key (decided on the bias, not on possibly-NaN logits) are 0.
        row_masked = jnp.isneginf(jnp.max(bias, axis=-1, keepdims=True))
        probs = jnp.where(row_masked, jnp.zeros((), probs.dtype), probs)
    probs = probs.astype(dtype)
    if qk_matmul_output_mode == 3:
        qk_out = probs
    probs = jnp.broadcast_to(probs, (b, hq, sq, skv)).reshape(b, hkv, reps, sq, skv)
    y = jnp.einsum("bhrqk,bhkv->bhrqv", probs, v).reshape(b, hq, sq, v.shape[-1])
    if rank3:
        y = y.transpose(0, 2, 1, 3).reshape(b, sq, -1)
    return y, present_key, present_value, qk_out.astype(dtype)


@register("Attention", since=23)
def attention(
    Q,
    K,
    V,
    attn_mask=None,
    past_key=None,
    past_value=None,
    nonpad_kv_seqlen=None,
    *,
    is_causal=0,
    kv_num_heads=None,
    q_num_heads=None,
    qk_matmul_output_mode=0,
    scale=None,
    softcap=0.0,
    softmax_precision=None,
    ctx=None,
):
    """https://onnx.ai/onnx/operators/onnx__Attention.html (opsets 23-24; 24 adds nonpad_kv_seqlen)."""
    return _attention(
        Q,
        K,
        V,
        attn_mask,
        past_key,
        past_value,
        nonpad_kv_seqlen,
        is_causal=is_causal,
        kv_num_heads=kv_num_heads,
        q_num_heads=q_num_heads,
        qk_matmul_output_mode=qk_matmul_output_mode,
        scale=scale,
        softcap=softcap,
        softmax_precision=softmax_precision,
        need_scores=_reads_scores(ctx),
    )


@register("Attention", since=25)
def attention_25(
    Q,
    K,
    V,
    attn_mask=None,
    past_key=None,
    past_value=None,
    nonpad_kv_seqlen=None,
    *,
    is_causal=0,
    kv_num_heads=None,
    q_num_heads=None,
    qk_matmul_output_mode=0,
    scale=None,
    softcap=0.0,
    softmax_precision=None,
    left_window_size=-1,
    right_window_size=-1,
    ctx=None,
):
    """Opset 25 adds sliding windows (``left_window_size``/``right_window_size``)."""
    return _attention(
        Q,
        K,
        V,
        attn_mask,
        past_key,
        past_value,
        nonpad_kv_seqlen,
        is_causal=is_causal,
        kv_num_heads=kv_num_heads,
        q_num_heads=q_num_heads,
        qk_matmul_output_mode=qk_matmul_output_mode,
        scale=scale,
        softcap=softcap,
        softmax_precision=softmax_precision,
        left_window_size=left_window_size,
        right_window_size=right_window_size,
        need_scores=_reads_scores(ctx),
    )


def _reads_scores(ctx) -> bool:
    """Whether the graph reads Attention's fourth output (``qk_matmul_output``), which only the
    one-pass form computes."""
    return ctx is None or ctx.reads(3)


@register("RotaryEmbedding", since=23)
def rotary_embedding(
    X,
    cos_cache,
    sin_cache,
    position_ids=None,
    *,
    interleaved=0,
    num_heads=0,
    rotary_embedding_dim=0,
):
    """https://onnx.ai/onnx/operators/onnx__RotaryEmbedding.html"""
    shape = X.shape
    if X.ndim == 3:  # (batch, seq, hidden) -> (batch, seq, heads, size); caches broadcast on heads
        x = X.reshape(shape[0], shape[1], num_heads, shape[2] // num_heads)
        head_axis = 2
    else:  # (batch, heads, seq, size), kept as is: no transposes
        x = X
        head_axis = 1
    d = x.shape[-1]
    r = rotary_embedding_dim or d
    if position_ids is not None:
        cos_cache = jnp.take(cos_cache, position_ids, axis=0)
        sin_cache = jnp.take(sin_cache, position_ids, axis=0)
    cos = jnp.expand_dims(cos_cache, head_axis).astype(x.dtype)  # (b, s, r/2) + heads axis
    sin = jnp.expand_dims(sin_cache, head_axis).astype(x.dtype)
    rot = x[..., :r]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rot = jnp.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        rot = jnp.concatenate([real, imag], axis=-1)
    if r < d:
        rot = jnp.concatenate([rot, x[..., r:]], axis=-1)
    return rot.reshape(shape)


# Queries per block when the scores are big enough to leave the cache (benchmarks/NOTES.md,
# entry 12): at 1500 x 1500 scores per head, 256-row blocks ran the attention alone 2.6x
# faster than one pass; the whole Whisper encoder at batch 1, 7-12%.
_BLOCK = 256
_BLOCKED_FROM = 512  # query rows; below this one pass is as fast or faster


@register("Attention", domain="ai.onnx2jax")
def fused_attention(q, kt, v, mask, *, scale=1.0, nan_to_zero=0):
    """``MatMul(Softmax(MatMul(q, kt) * scale + mask), v)``, with ``Where(IsNaN(p), 0, p)``
    on the probabilities if ``nan_to_zero``: the chain passes/attention.py replaced.

    On CPU, long query sequences run in blocks of queries, each normalized after its product
    with ``v`` (the division touches [rows, Dv] instead of [rows, keys]), so the scores of one
    block stay in cache; short ones, and every length on other backends, run as written.
    """
    if isinstance(mask, np.ndarray) and mask.ndim == 0 and mask == 0:
        mask = None  # the pass's stand-in for "no mask"
    if not _blocks_pay(q.shape[-2], kt.shape[-1]):
        p = jax.nn.softmax(_scores(q, kt, mask, scale), axis=-1)
        if nan_to_zero:
            p = jnp.where(jnp.isnan(p), jnp.zeros((), p.dtype), p)
        return matmul(p, v)
    return _blocked_attention(q, kt, v, mask, scale, bool(nan_to_zero))


def _blocks_pay(sq: int, sk: int) -> bool:
    """Whether the blocked form is the faster one: long query and key sequences, on CPU. Blocks
    are for CPU caches: on an H200 they ran 1.5-4x slower than the chain as written
    (benchmarks/tools/attention_forms.py; NOTES 12)."""
    return sq >= _BLOCKED_FROM and sk >= _BLOCK and jax.default_backend() == "cpu"


def _scores(q, kt, mask, scale):
    s = matmul(q, kt)
    if scale != 1.0:
        s = s * jnp.asarray(scale, s.dtype)
    return s if mask is None else s + mask


def _blocked_attention(q, kt, v, mask, scale, nan_to_zero, zero_rows=False):
    """The same attention, one batch row and ``_BLOCK`` query rows at a time (``lax.map``, so
    XLA keeps one block's scores live at once: ~9 MB for 6 heads x 256 x 1500)."""
    batch = q.shape[0] if q.ndim >= 3 else 1
    same = (
        batch > 1
        and kt.shape[0] == v.shape[0] == batch
        and (mask is None or mask.ndim < q.ndim or mask.shape[0] in (1, batch))
    )
    if not same:
        return _query_blocks(q, kt, v, mask, scale, nan_to_zero, zero_rows)
    per_row = mask is not None and mask.ndim == q.ndim and mask.shape[0] == batch
    if mask is not None and mask.ndim == q.ndim and not per_row:
        mask = mask[0]  # [1, ...]: the same for every batch row
    return lax.map(
        lambda a: _query_blocks(
            a[0], a[1], a[2], a[3] if per_row else mask, scale, nan_to_zero, zero_rows
        ),
        (q, kt, v, mask if per_row else None),
    )


def _query_blocks(q, kt, v, mask, scale, nan_to_zero, zero_rows):
    """``zero_rows``: a row with no attendable key (all scores -inf) gives 0, as the standard
    Attention op asks; otherwise it gives NaN, as Softmax does (0 with ``nan_to_zero``)."""
    sq = q.shape[-2]
    blocks = -(-sq // _BLOCK)
    pad = blocks * _BLOCK - sq

    def split(x):  # [..., sq, n] -> [blocks, ..., _BLOCK, n]
        if pad:
            x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)])
        x = x.reshape(*x.shape[:-2], blocks, _BLOCK, x.shape[-1])
        return jnp.moveaxis(x, -3, 0)

    per_row_mask = mask is not None and mask.ndim >= 2 and mask.shape[-2] == sq and sq > 1

    def block(args):
        qb, mb = args
        s = _scores(qb, kt, mb if per_row_mask else mask, scale)
        m = lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
        if zero_rows:
            m = jnp.where(jnp.isneginf(m), jnp.zeros((), m.dtype), m)
        # A row of -inf scores: softmax gives NaN there; keep that (or 0 with the guard) below.
        e = jnp.exp(s - m)
        total = jnp.sum(e, axis=-1, keepdims=True)
        if zero_rows:  # e is all 0 in such a row: divide by 1 instead
            total = jnp.where(total == 0, jnp.ones((), total.dtype), total)
        y = matmul(e, v) / total
        if nan_to_zero:
            y = jnp.where(jnp.isnan(total), jnp.zeros((), y.dtype), y)
        return y

    y = lax.map(block, (split(q), split(mask) if per_row_mask else None))
    y = jnp.moveaxis(y, 0, -3)  # [..., blocks, _BLOCK, dv]
    y = y.reshape(*y.shape[:-3], blocks * _BLOCK, y.shape[-1])
    return y[..., :sq, :] if pad else y
