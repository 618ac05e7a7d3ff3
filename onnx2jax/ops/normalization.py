"""Normalization layers, LRN and Dropout (https://onnx.ai/onnx/operators/)."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._registry import register
from ._common import axis as norm_axis
from ._common import dtype_of, ints
from ._conv_lowering import acc_dtype


def _per_channel(v, x, dtype):
    """A per-channel parameter (C,) shaped to broadcast against x (N, C, ...).

    Opset < 9 BatchNormalization with spatial=0 passes (C, D1, ...) parameters: kept as they are.
    """
    v = jnp.asarray(v).astype(dtype)
    return v.reshape((-1,) + (1,) * (x.ndim - 2)) if v.ndim == 1 else v


def _stats(x, axes):
    """Mean and biased variance over ``axes`` (two-pass: stable for large means)."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return mean, var


def _bn_inference(x, scale, b, mean, var, epsilon):
    acc = acc_dtype(x.dtype)
    # fold into one multiply-add per element: the (C,) vectors are cheap
    a = _per_channel(scale, x, acc) * lax.rsqrt(_per_channel(var, x, acc) + epsilon)
    shift = _per_channel(b, x, acc) - _per_channel(mean, x, acc) * a
    return (x.astype(acc) * a + shift).astype(x.dtype)


def _bn_training(x, scale, b, mean, var, epsilon, momentum):
    acc = acc_dtype(x.dtype)
    axes = (0, *range(2, x.ndim))
    xa = x.astype(acc)
    bmean, bvar = _stats(xa, axes)
    y = (xa - bmean) * lax.rsqrt(bvar + epsilon) * _per_channel(scale, x, acc) + _per_channel(
        b, x, acc
    )
    bmean, bvar = bmean.reshape(-1), bvar.reshape(-1)
    mdt = jnp.asarray(mean).dtype
    run_mean = (mean.astype(acc) * momentum + bmean * (1 - momentum)).astype(mdt)
    run_var = (var.astype(acc) * momentum + bvar * (1 - momentum)).astype(mdt)
    return y.astype(x.dtype), run_mean, run_var, bmean.astype(mdt), bvar.astype(mdt)


# Opsets 1-9: inference with one output; the training outputs (running mean and variance, and
# the batch's mean and variance) only when the model asks for them. is_test and spatial are
# implied by the output count and the parameters' shapes.
@register("BatchNormalization")
def batch_normalization_1(
    x,
    scale,
    b,
    mean,
    var,
    *,
    consumed_inputs=None,
    epsilon=1e-5,
    is_test=0,
    momentum=0.9,
    spatial=1,
    ctx=None,
):
    """https://onnx.ai/onnx/operators/onnx__BatchNormalization.html"""
    if ctx is None or ctx.num_outputs == 1:
        return _bn_inference(x, scale, b, mean, var, epsilon)
    return _bn_training(x, scale, b, mean, var, epsilon, momentum)[: ctx.num_outputs]


# Opset 14 made training explicit (training_mode) with outputs Y, running_mean, running_var.
@register("BatchNormalization", since=14)
def batch_normalization_14(x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    """https://onnx.ai/onnx/operators/onnx__BatchNormalization.html"""
    if not training_mode:
        return _bn_inference(x, scale, b, mean, var, epsilon)
    return _bn_training(x, scale, b, mean, var, epsilon, momentum)[:3]


@register("InstanceNormalization")
def instance_normalization(x, scale, b, *, consumed_inputs=None, epsilon=1e-5):
    """https://onnx.ai/onnx/operators/onnx__InstanceNormalization.html"""
    acc = acc_dtype(x.dtype)
    xa = x.astype(acc)
    mean, var = _stats(xa, tuple(range(2, x.ndim)))
    y = (xa - mean) * lax.rsqrt(var + epsilon) * _per_channel(scale, x, acc) + _per_channel(
        b, x, acc
    )
    return y.astype(x.dtype)


def _stash(x, stash_type):
    """Stage-one precision: the stash type, never below the input's own precision."""
    return np.dtype(jnp.promote_types(dtype_of(stash_type), x.dtype))


@register("LayerNormalization", since=17)
def layer_normalization(x, scale, b=None, *, axis=-1, epsilon=1e-5, stash_type=1, ctx=None):
    """https://onnx.ai/onnx/operators/onnx__LayerNormalization.html"""
    acc = _stash(x, stash_type)
    axes = tuple(range(norm_axis(axis, x.ndim), x.ndim))
    xa = x.astype(acc)
    mean, var = _stats(xa, axes)
    inv = lax.rsqrt(var + epsilon)
    y = (xa - mean) * inv * scale.astype(acc)
    if b is not None:
        y = y + b.astype(acc)
    y = y.astype(x.dtype)
    if ctx is None or ctx.num_outputs == 1:
        return y
    u = dtype_of(stash_type)  # Mean and InvStdDev are of the stash type
    return (y, mean.astype(u), inv.astype(u))[: ctx.num_outputs]


# Opset 17's LayerNormalization, which passes/norm_act.py writes as ai.onnx2jax below opset 17.
register("LayerNormalization", domain="ai.onnx2jax")(layer_normalization)


@register("GroupNormalization", since=18)
def group_normalization_18(x, scale, bias, *, epsilon=1e-5, num_groups=None):
    """https://onnx.ai/onnx/operators/onnx__GroupNormalization.html (deprecated: per-group affine)."""
    g = int(num_groups)
    c = x.shape[1]
    # opset 18's scale and bias hold one value per group: repeat them over the group's channels
    return _group_norm(
        x,
        jnp.repeat(jnp.asarray(scale), c // g),
        jnp.repeat(jnp.asarray(bias), c // g),
        epsilon,
        g,
        acc_dtype(x.dtype),
    )


# Opset 21 made scale and bias per channel and added stash_type.
@register("GroupNormalization", since=21)
def group_normalization_21(x, scale, bias, *, epsilon=1e-5, num_groups=None, stash_type=1):
    """https://onnx.ai/onnx/operators/onnx__GroupNormalization.html"""
    return _group_norm(x, scale, bias, epsilon, int(num_groups), _stash(x, stash_type))


def _group_norm(x, scale, bias, epsilon, g, acc):
    n, c = x.shape[:2]
    xg = x.astype(acc).reshape(n, g, -1)
    mean, var = _stats(xg, (2,))
    y = ((xg - mean) * lax.rsqrt(var + epsilon)).reshape(x.shape)
    return (y * _per_channel(scale, x, acc) + _per_channel(bias, x, acc)).astype(x.dtype)


@register("RMSNormalization", since=23)
def rms_normalization(x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    """https://onnx.ai/onnx/operators/onnx__RMSNormalization.html"""
    acc = _stash(x, stash_type)
    axes = tuple(range(norm_axis(axis, x.ndim), x.ndim))
    xa = x.astype(acc)
    inv = lax.rsqrt(jnp.mean(jnp.square(xa), axis=axes, keepdims=True) + epsilon)
    dt = jnp.asarray(scale).dtype  # Y has the scale's type (V)
    return (xa * inv * scale.astype(acc)).astype(dt)


@register("LpNormalization")
def lp_normalization(x, *, axis=-1, p=2):
    """https://onnx.ai/onnx/operators/onnx__LpNormalization.html"""
    acc = acc_dtype(x.dtype)
    xa = x.astype(acc)
    if p == 1:
        norm = jnp.sum(jnp.abs(xa), axis=axis, keepdims=True)
    elif p == 2:
        norm = jnp.sqrt(jnp.sum(xa * xa, axis=axis, keepdims=True))
    else:
        raise ValueError(f"LpNormalization supports p = 1 or 2, got p = {p}")
    # a zero norm gives 0, not NaN (as the reference and onnxruntime do)
    y = jnp.where(norm == 0, jnp.zeros((), acc), xa / jnp.where(norm == 0, 1, norm))
    return y.astype(x.dtype)


@register("MeanVarianceNormalization", since=9)
def mean_variance_normalization(x, *, axes=(0, 2, 3)):
    """https://onnx.ai/onnx/operators/onnx__MeanVarianceNormalization.html"""
    acc = acc_dtype(x.dtype)
    xa = x.astype(acc)
    mean, var = _stats(xa, tuple(norm_axis(a, x.ndim) for a in ints(axes)))
    # the spec's function body: (X - E[X]) / (sqrt(Var[X]) + 1e-9)
    return ((xa - mean) / (jnp.sqrt(var) + 1e-9)).astype(x.dtype)


@register("LRN")
def lrn(x, *, alpha=1e-4, beta=0.75, bias=1.0, size=None):
    """https://onnx.ai/onnx/operators/onnx__LRN.html"""
    acc = acc_dtype(x.dtype)
    xa = x.astype(acc)
    sq = xa * xa
    size = int(size)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    # windowed sum across channels: `size` shifted slices of the channel-padded squares
    padded = lax.pad(sq, jnp.zeros((), acc), [(0, 0, 0), (lo, hi, 0)] + [(0, 0, 0)] * (x.ndim - 2))
    c = x.shape[1]
    total = sum(lax.slice_in_dim(padded, i, i + c, axis=1) for i in range(size))
    return (xa / (bias + (alpha / size) * total) ** beta).astype(x.dtype)


# -- Dropout ------------------------------------------------------------------------------


def _dropout_identity(x, ctx, mask_dtype):
    if ctx is None or ctx.num_outputs < 2:
        return x
    return x, jnp.ones(x.shape, mask_dtype)


def _dropout_key(seed, ctx):
    """The node's key: from ``seed``, else fixed per node (keyed by its first output's name).

    A model is a pure function with no generator state, so every call drops the same elements
    (as ops/random.py); the spec's "auto generated" seed becomes this fixed default.
    """
    if seed is not None:
        return jax.random.key(int(seed) & 0xFFFFFFFF)
    name = ctx.node.outputs[0] if ctx is not None and ctx.node.outputs else ""
    return jax.random.fold_in(jax.random.key(0), zlib.crc32(name.encode()))


def _dropout_train(x, ratio, key, ctx):
    acc = acc_dtype(x.dtype)
    r = jnp.asarray(ratio)
    # u is in [0, 1): a (traced) ratio of 0 keeps everything and scales by exactly 1
    keep = jax.random.uniform(key, x.shape, jnp.float32) >= r.astype(jnp.float32)
    scale = 1 / (1 - r.astype(acc))
    y = jnp.where(keep, x.astype(acc) * scale, jnp.zeros((), acc)).astype(x.dtype)
    if ctx is None or ctx.num_outputs < 2:
        return y
    return y, keep


# Opsets 1-9: mask has the input's type. is_test=0 (the old default) still runs as inference:
# onnx2jax imports models for inference, and exporters left the flag at its default.
@register("Dropout")
def dropout_1(x, *, consumed_inputs=None, is_test=0, ratio=0.5, ctx=None):
    """https://onnx.ai/onnx/operators/onnx__Dropout.html"""
    return _dropout_identity(x, ctx, x.dtype)


@register("Dropout", since=10)
def dropout_10(x, *, ratio=0.5, ctx=None):
    """https://onnx.ai/onnx/operators/onnx__Dropout.html (mask is bool since opset 10)."""
    return _dropout_identity(x, ctx, jnp.bool_)


@register("Dropout", since=12)
def dropout_12(x, ratio=None, training_mode=None, *, seed=None, ctx=None):
    """https://onnx.ai/onnx/operators/onnx__Dropout.html (ratio and training_mode are inputs).

    In training mode, elements are dropped with probability ``ratio`` (default 0.5) and the
    kept ones scaled by 1 / (1 - ratio); the random draw is deterministic (see _dropout_key).
    """
    if training_mode is None or not bool(np.asarray(training_mode)):
        return _dropout_identity(x, ctx, jnp.bool_)
    if ratio is None:
        ratio = np.float32(0.5)
    if isinstance(ratio, (np.ndarray, np.generic)) and float(ratio) == 0.0:
        return _dropout_identity(x, ctx, jnp.bool_)
    return _dropout_train(x, ratio, _dropout_key(seed, ctx), ctx)
