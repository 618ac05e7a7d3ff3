"""Newer language-model blocks: TensorScatter, SwiGLU, LinearAttention, CausalConvWithState, FlexAttention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._dtypes import canonical
from .._registry import register
from ._common import axis as norm_axis
from ._common import dtype_of


def _f32(x):
    """Half-precision inputs compute in float32; float32/float64 stay as they are."""
    x = jnp.asarray(x)
    return x.astype(jnp.float32) if x.dtype.itemsize < 4 else x


@register("TensorScatter", since=24)
def tensor_scatter(past_cache, update, write_indices=None, *, axis=-2, mode="linear"):
    """https://onnx.ai/onnx/operators/onnx__TensorScatter.html: write ``update`` into the
    cache along ``axis`` at each batch row's write index (modulo the length if circular)."""
    if mode not in ("linear", "circular"):
        raise ValueError(f"mode must be 'linear' or 'circular', got {mode!r}")
    a = norm_axis(axis, past_cache.ndim)
    if a == 0:
        raise ValueError("axis cannot be 0 (the batch axis)")
    cache = jnp.moveaxis(jnp.asarray(past_cache), a, 1)
    upd = jnp.moveaxis(jnp.asarray(update).astype(cache.dtype), a, 1)
    b, n, s = cache.shape[0], cache.shape[1], upd.shape[1]
    start = jnp.zeros((b,), jnp.int32) if write_indices is None else jnp.asarray(write_indices)
    pos = start.reshape(b, 1) + jnp.arange(s, dtype=start.dtype)
    if mode == "circular":
        pos = pos % n
    rows = jnp.arange(b)[:, None]
    # Linear mode requires write index + length <= max length; writes beyond are dropped.
    out = cache.at[rows, pos].set(upd, mode="drop")
    return jnp.moveaxis(out, 1, a)


@register("SwiGLU", since=28)
def swiglu(a, b, *, alpha=1.0):
    """https://onnx.ai/onnx/operators/onnx__SwiGLU.html: a * sigmoid(alpha * a) * b."""
    if a.shape != b.shape:
        raise ValueError(f"A and B must have the same shape, got {a.shape} and {b.shape}")
    # Half-precision inputs: computed in float32 and rounded once, so the jitted program
    # (which may keep excess precision between fused ops) and eager runs agree.
    af = _f32(a)
    return (af * jax.nn.sigmoid(alpha * af) * _f32(b)).astype(a.dtype)


# -- LinearAttention and CausalConvWithState (Gated DeltaNet / Mamba layers) -----------------


def _heads(x, h):
    """(B, T, H*D) -> (T, B, H, D): time first, for the scan."""
    b, t, hd = x.shape
    if hd % h:
        raise ValueError(f"last axis {hd} is not divisible by {h} heads")
    return jnp.asarray(x).astype(jnp.float32).reshape(b, t, h, hd // h).transpose(1, 0, 2, 3)


@register("LinearAttention", since=27)
def linear_attention(
    query,
    key,
    value,
    past_state=None,
    decay=None,
    beta=None,
    *,
    chunk_size=64,
    kv_num_heads=None,
    q_num_heads=None,
    scale=0.0,
    update_rule="gated_delta",
):
    """https://onnx.ai/onnx/operators/onnx__LinearAttention.html -> (output, present_state).

    The recurrence runs as a ``lax.scan`` over time in float32 (chunk_size is only a tuning
    hint); the state is cast back to past_state's type (query's when absent).
    """
    del chunk_size
    if update_rule not in ("linear", "gated", "delta", "gated_delta"):
        raise ValueError(f"unknown update_rule {update_rule!r}")
    if not q_num_heads or not kv_num_heads or q_num_heads % kv_num_heads:
        raise ValueError(
            f"q_num_heads ({q_num_heads}) must be a multiple of kv_num_heads ({kv_num_heads})"
        )
    gated = update_rule in ("gated", "gated_delta")
    delta = update_rule in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise ValueError(f"update_rule {update_rule!r} needs decay: {gated}, beta: {delta}")
    b, t, _ = query.shape
    hq, hkv = q_num_heads, kv_num_heads
    q, k, v = _heads(query, hq), _heads(key, hkv), _heads(value, hkv)
    dk, dv = k.shape[-1], v.shape[-1]
    groups = hq // hkv
    scale = float(scale) if scale else 1.0 / float(np.sqrt(dk))
    xs = {"q": q.reshape(t, b, hkv, groups, dk), "k": k, "v": v}
    if gated:
        # per-head (B, T, H) or per-key-dim (B, T, H*dk) log-decay -> (T, B, H, 1|dk)
        if decay.shape[-1] not in (hkv, hkv * dk):
            raise ValueError(f"decay's last axis must be {hkv} or {hkv * dk}, got {decay.shape}")
        xs["g"] = _heads(decay, hkv)
    if delta:
        xs["beta"] = _heads(beta, beta.shape[-1])  # (T, B, H|1, 1)
    if past_state is not None:
        state0 = jnp.asarray(past_state).astype(jnp.float32)
        state_dtype = past_state.dtype
    else:
        state0 = jnp.zeros((b, hkv, dk, dv), jnp.float32)
        state_dtype = query.dtype

    def step(state, x):
        if gated:
            state = state * jnp.exp(x["g"])[..., None]
        vt = x["v"]
        if delta:
            vt = x["beta"] * (vt - jnp.einsum("bhdm,bhd->bhm", state, x["k"]))
        state = state + x["k"][..., :, None] * vt[..., None, :]
        out = scale * jnp.einsum("bhgd,bhdm->bhgm", x["q"], state)
        return state, out.reshape(b, hq, dv)

    state, outs = jax.lax.scan(step, state0, xs)
    output = outs.transpose(1, 0, 2, 3).reshape(b, t, hq * dv).astype(query.dtype)
    return output, state.astype(canonical(state_dtype))


@register("CausalConvWithState", since=27)
def causal_conv_with_state(x, weight, bias=None, past_state=None, *, activation="none"):
    """https://onnx.ai/onnx/operators/onnx__CausalConvWithState.html -> (output, present_state).

    Depthwise causal 1-D convolution over (B, C, L) with a (C, 1, k) kernel; the state holds
    the last k - 1 inputs (zeros when absent).
    """
    if activation not in ("none", "silu", "swish"):
        raise ValueError(f"activation must be 'none', 'silu' or 'swish', got {activation!r}")
    b, c, length = x.shape
    k = weight.shape[2]
    x = jnp.asarray(x)
    pad = (
        jnp.zeros((b, c, k - 1), x.dtype)
        if past_state is None
        else jnp.asarray(past_state).astype(x.dtype)
    )
    padded = jnp.concatenate([pad, x], axis=2)
    xf, w = _f32(padded), _f32(weight)[:, 0, :]
    # k shifted views, one per tap: cheap for the small kernels these layers use.
    y = sum(xf[:, :, j : j + length] * w[None, :, j, None] for j in range(k))
    if bias is not None:
        y = y + _f32(bias)[None, :, None]
    if activation != "none":
        # on the float32 sum, rounded once (the reference rounds before the SiLU too; for
        # half-precision inputs the results differ by at most one unit in the last place)
        y = y * jax.nn.sigmoid(y)
    y = y.astype(x.dtype)
    return y, padded[:, :, padded.shape[2] - (k - 1) :]


# -- FlexAttention (ai.onnx.preview) ----------------------------------------------------------


@register("FlexAttention", since=1, domain="ai.onnx.preview")
def flex_attention(
    q, k, v, *, scale=None, score_mod=None, prob_mod=None, softmax_precision=None, ctx
):
    """https://onnx.ai/onnx/operators/onnx_aionnxpreview_FlexAttention.html

    softmax(score_mod(Q K^T * scale)) -> prob_mod -> @ V, with score_mod/prob_mod run as
    subgraphs. Grouped-query attention maps query head h to K/V head h // (Hq / Hkv).
    """
    dtype = q.dtype
    b, hq, lq, e = q.shape
    hkv = k.shape[1]
    if hq % hkv:
        raise ValueError(f"q heads ({hq}) must be a multiple of kv heads ({hkv})")
    if scale is None:
        scale = 1.0 / float(np.sqrt(e))
    if softmax_precision is not None:
        cdt = canonical(dtype_of(softmax_precision))
    else:
        cdt = canonical(np.float64 if np.dtype(dtype) == np.float64 else np.float32)
    # Q and K each scaled by sqrt(scale) in the input type, as the reference does.
    s = np.asarray(np.sqrt(np.float32(scale)), dtype)
    reps = hq // hkv
    qg = (q * s).reshape(b, hkv, reps, lq, e)
    scores = jnp.einsum("bhrqd,bhkd->bhrqk", qg, k * s).reshape(b, hq, lq, k.shape[2])
    scores = scores.astype(cdt)
    if score_mod is not None:
        scores = jnp.asarray(ctx.run_subgraph(score_mod, scores)[0]).astype(cdt)
    probs = jax.nn.softmax(scores, axis=-1)
    if prob_mod is not None:
        probs = jnp.asarray(ctx.run_subgraph(prob_mod, probs)[0]).astype(cdt)
    probs = probs.reshape(b, hkv, reps, lq, k.shape[2])
    y = jnp.einsum("bhrqk,bhkv->bhrqv", probs, jnp.asarray(v).astype(cdt))
    return y.reshape(b, hq, lq, v.shape[-1]).astype(v.dtype)
