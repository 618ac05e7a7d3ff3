"""Pooling: MaxPool, AveragePool, LpPool, their Global forms and MaxRoiPool (https://onnx.ai/onnx/operators/)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._registry import register
from ._common import ints
from ._conv_lowering import acc_dtype, conv_pads, pad_spatial, windows

# Small windows as a max/sum of shifted slices (one fused loop, 2-5x lax.reduce_window on CPU);
# bigger ones (e.g. 7x7 / stride 7) through reduce_window, which wins there.
_MAX_POOL_TAPS = 25


def _geometry(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode):
    """Kernel, strides, dilations, output shape and (lo, hi) pads covering every window."""
    nd = x.ndim - 2
    kernel = ints(kernel_shape)
    strides = ints(strides) if strides else [1] * nd
    dilations = ints(dilations) if dilations else [1] * nd
    in_shape = list(x.shape[2:])
    pad = conv_pads(auto_pad, in_shape, kernel, strides, dilations, pads)
    out, cover = [], []
    for n, k, s, d, (lo, hi) in zip(in_shape, kernel, strides, dilations, pad, strict=True):
        span = n + lo + hi - (k - 1) * d - 1
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= n + lo:  # the last window must start inside
            o -= 1
        out.append(o)
        # ceil_mode windows may hang past the padding: pad further (those cells never count)
        cover.append((lo, max(hi, (o - 1) * s + (k - 1) * d + 1 - n - lo)))
    return kernel, strides, dilations, out, pad, cover


def _lowest(dtype):
    dtype = np.dtype(dtype)
    return -np.inf if dtype.kind == "f" or dtype.name == "bfloat16" else np.iinfo(dtype).min


def _window_reduce(xp, kernel, strides, dilations, out, op):
    """max or sum over every window of the already padded ``xp``."""
    if math.prod(kernel) <= _MAX_POOL_TAPS:
        y = None
        for _, sl in windows(xp, kernel, strides, dilations, out):
            y = sl if y is None else (jnp.maximum(y, sl) if op == "max" else y + sl)
        return y
    lead = xp.ndim - len(kernel)
    init = _lowest(xp.dtype) if op == "max" else 0
    y = lax.reduce_window(
        xp,
        jnp.asarray(init, xp.dtype),
        lax.max if op == "max" else lax.add,
        (1,) * lead + tuple(kernel),
        (1,) * lead + tuple(strides),
        [(0, 0)] * xp.ndim,
        window_dilation=(1,) * lead + tuple(dilations),
    )
    return y


@register("MaxPool")
def max_pool(
    x,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    storage_order=0,
    strides=None,
    ctx=None,
):
    """https://onnx.ai/onnx/operators/onnx__MaxPool.html (Indices output since opset 8)."""
    kernel, strides, dilations, out, _, cover = _geometry(
        x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode
    )
    xp = pad_spatial(x, cover, _lowest(x.dtype))
    if ctx is None or ctx.num_outputs < 2 or not ctx.node.outputs[1]:
        return _window_reduce(xp, kernel, strides, dilations, out, "max")
    return _max_pool_with_indices(x, xp, kernel, strides, dilations, out, cover, storage_order)


def _max_pool_with_indices(x, xp, kernel, strides, dilations, out, cover, storage_order):
    # Indices are flat offsets into x (batch and channel included), the first maximum winning,
    # as onnxruntime computes them; column-major within the image when storage_order is 1.
    spatial = list(x.shape[2:])
    order = range(len(spatial)) if storage_order else reversed(range(len(spatial)))
    mult, stride = [0] * len(spatial), 1
    for i in order:
        mult[i], stride = stride, stride * spatial[i]
    best = idx = None
    for tap, sl in windows(xp, kernel, strides, dilations, out):
        pos = np.zeros(out, np.int64)
        for i, (t, s, d, (lo, _)) in enumerate(zip(tap, strides, dilations, cover, strict=True)):
            coord = np.arange(out[i]) * s + t * d - lo
            pos = pos + (coord * mult[i]).reshape([-1 if j == i else 1 for j in range(len(out))])
        pos = jnp.asarray(pos)  # int64, or int32 when x64 is off
        if best is None:
            best, idx = sl, jnp.broadcast_to(pos, sl.shape)
        else:
            take = sl > best
            best, idx = jnp.where(take, sl, best), jnp.where(take, pos, idx)
    n, c = x.shape[:2]
    plane = np.arange(n * c, dtype=np.int64).reshape(n, c, *[1] * len(out)) * math.prod(spatial)
    return best, idx + jnp.asarray(plane)


def _counts(in_shape, kernel, strides, dilations, pads, out, include_pad):
    """How many cells of each window lie in the input (or in the explicitly padded input)."""
    cnt = np.ones(out, np.float64)
    for i, (n, k, s, d, (lo, hi), o) in enumerate(
        zip(in_shape, kernel, strides, dilations, pads, out, strict=True)
    ):
        coord = np.arange(o)[:, None] * s - lo + np.arange(k)[None, :] * d
        lower, upper = (-lo, n + hi) if include_pad else (0, n)
        c = ((coord >= lower) & (coord < upper)).sum(1)
        cnt = cnt * c.reshape([-1 if j == i else 1 for j in range(len(out))])
    return cnt


# AveragePool-7 added count_include_pad, -10 ceil_mode, -19 dilations: attributes that older
# models simply do not set, so one function serves all versions.
@register("AveragePool")
def average_pool(
    x,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    """https://onnx.ai/onnx/operators/onnx__AveragePool.html"""
    kernel, strides, dilations, out, pad, cover = _geometry(
        x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode
    )
    acc = acc_dtype(x.dtype)
    xp = pad_spatial(x.astype(acc), cover)
    total = _window_reduce(xp, kernel, strides, dilations, out, "sum")
    cnt = _counts(x.shape[2:], kernel, strides, dilations, pad, out, count_include_pad)
    return (total / jnp.asarray(cnt, acc)).astype(x.dtype)


def _lp(x, p, axes_or_window):
    acc = acc_dtype(x.dtype)
    xa = jnp.abs(x.astype(acc))
    powed = xa * xa if p == 2 else xa**p
    total = axes_or_window(powed)
    return (jnp.sqrt(total) if p == 2 else total ** (1.0 / p)).astype(x.dtype)


# LpPool-2 made p an int (it was a float); -18 added ceil_mode and dilations.
@register("LpPool")
def lp_pool(
    x,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    p=2,
    pads=None,
    strides=None,
):
    """https://onnx.ai/onnx/operators/onnx__LpPool.html"""
    kernel, strides, dilations, out, _, cover = _geometry(
        x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode
    )
    return _lp(
        x,
        p,
        lambda v: _window_reduce(pad_spatial(v, cover), kernel, strides, dilations, out, "sum"),
    )


def _spatial_axes(x):
    return tuple(range(2, x.ndim))


@register("GlobalAveragePool")
def global_average_pool(x):
    """https://onnx.ai/onnx/operators/onnx__GlobalAveragePool.html"""
    return jnp.mean(x.astype(acc_dtype(x.dtype)), axis=_spatial_axes(x), keepdims=True).astype(
        x.dtype
    )


@register("GlobalMaxPool")
def global_max_pool(x):
    """https://onnx.ai/onnx/operators/onnx__GlobalMaxPool.html"""
    return jnp.max(x, axis=_spatial_axes(x), keepdims=True)


@register("GlobalLpPool")
def global_lp_pool(x, *, p=2):
    """https://onnx.ai/onnx/operators/onnx__GlobalLpPool.html"""
    return _lp(x, p, lambda v: jnp.sum(v, axis=_spatial_axes(x), keepdims=True))


def _round_half_away(v):
    return (jnp.sign(v) * jnp.floor(jnp.abs(v) + 0.5)).astype(jnp.int32)


@register("MaxRoiPool")
def max_roi_pool(x, rois, *, pooled_shape=None, spatial_scale=1.0):
    """https://onnx.ai/onnx/operators/onnx__MaxRoiPool.html (Caffe's RoI max pooling)."""
    ph, pw = ints(pooled_shape)
    h, w = x.shape[2:]
    # rounded box corners in feature-map cells, as onnxruntime computes them
    r = rois.astype(jnp.float32)
    batch = r[:, 0].astype(jnp.int32)
    # C's round: halves away from zero (jnp.round rounds them to even)
    x1, y1, x2, y2 = (_round_half_away(r[:, i] * spatial_scale) for i in range(1, 5))
    roi_h = jnp.maximum(y2 - y1 + 1, 1).astype(jnp.float32)
    roi_w = jnp.maximum(x2 - x1 + 1, 1).astype(jnp.float32)

    def bins(start, size, nbins, length):
        # bool (R, nbins, length): which cells fall into each bin
        i = jnp.arange(nbins, dtype=jnp.float32)
        lo = jnp.clip(
            jnp.floor(i[None] * (size[:, None] / nbins)).astype(jnp.int32) + start[:, None],
            0,
            length,
        )
        hi = jnp.clip(
            jnp.ceil((i[None] + 1) * (size[:, None] / nbins)).astype(jnp.int32) + start[:, None],
            0,
            length,
        )
        cell = jnp.arange(length)
        return (cell[None, None] >= lo[..., None]) & (cell[None, None] < hi[..., None])

    mh, mw = bins(y1, roi_h, ph, h), bins(x1, roi_w, pw, w)
    feats = x[batch]  # (R, C, H, W)
    low = jnp.asarray(_lowest(x.dtype), x.dtype)
    # max over W within each column bin, then over H within each row bin
    cols = jnp.max(jnp.where(mw[:, None, None], feats[:, :, :, None, :], low), axis=-1)
    y = jnp.max(jnp.where(mh[:, None, :, :, None], cols[:, :, None], low), axis=3)
    empty = ~(mh.any(-1)[:, :, None] & mw.any(-1)[:, None, :])  # empty bins are 0
    return jnp.where(empty[:, None], jnp.zeros((), x.dtype), y)
