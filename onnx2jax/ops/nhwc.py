"""Channels-last ops that the layout pass (passes/layout.py) introduces, domain ai.onnx2jax.

Each has the attributes of its ONNX counterpart and takes and returns NHWC tensors; a conv's
weight arrives as HWIO. `onnx2jax optimize` writes a standard-ONNX function body for each
(transposes around the ONNX op), so other runtimes run optimized files too.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import jax.numpy as jnp
from jax import lax

from .._kernels import conv as packed
from .._kernels import inverted_residual as fused
from .._registry import register
from . import _conv_lowering as lowering
from . import pool
from ._common import ints

DOMAIN = "ai.onnx2jax"
_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)


@register("NhwcConv", domain=DOMAIN)
def nhwc_conv(
    x,
    w,
    b=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    """Conv (https://onnx.ai/onnx/operators/onnx__Conv.html) on x NHWC, w HWIO; y NHWC."""
    kernel = list(w.shape[:2])
    if kernel_shape and ints(kernel_shape) != kernel:
        raise ValueError(f"kernel_shape {ints(kernel_shape)} does not match the weight {kernel}")
    strides, pad, dilations = _window(x, kernel, strides, pads, dilations, auto_pad)
    return lowering.conv_nhwc(
        x, w, b, strides=strides, pads=pad, dilations=dilations, groups=int(group)
    )


@register("PackedNhwcConv", domain=DOMAIN)
@register("PackedNhwcConvAdd", domain=DOMAIN)
def packed_nhwc_conv(
    x,
    w,
    b=None,
    residual=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
    output_channels=None,
    activation_min=-math.inf,
    activation_max=math.inf,
):
    """NhwcConv on a weight packed for onnx2jax's CPU kernels (the pack_convs pass), then
    ``clamp(y + residual, activation_min, activation_max)`` (a fused ReLU or Clip;
    ``PackedNhwcConvAdd`` adds the ``residual`` input, an NHWC tensor broadcastable to y).
    Dense (``group`` 1) or depthwise (``group`` = input channels = ``output_channels``).

    ``w`` is ``onnx2jax._kernels.conv.pack(HWIO)``: panels [ceil(O / 16), KH * KW * C, 16];
    ``kernel_shape`` and ``output_channels`` say how to read it. Where the kernel does not run
    (another backend, another dtype, symbolic shapes) XLA's convolution runs on the unpacked
    weight.
    """
    depthwise = output_channels is not None and int(group) == x.shape[3] == int(output_channels)
    if not kernel_shape or output_channels is None or not (int(group) == 1 or depthwise):
        raise ValueError(
            "PackedNhwcConv needs kernel_shape, output_channels and group 1, or group = input "
            f"channels = output_channels (got group={group}, kernel_shape={kernel_shape}, "
            f"output_channels={output_channels}, {x.shape[3]} input channels)"
        )
    kernel = ints(kernel_shape)
    strides, pad, dilations = _window(x, kernel, strides, pads, dilations, auto_pad)
    geometry = packed.Geometry(
        kernel=tuple(kernel),
        out_channels=int(output_channels),
        strides=tuple(strides),
        pads=tuple(tuple(int(p) for p in pair) for pair in pad),
        dilations=tuple(dilations),
        lo=float(activation_min),
        hi=float(activation_max),
        groups=int(group),
    )
    return packed.packed_conv(x, w, b, geometry, residual)


@register("PackedInvertedResidual", domain=DOMAIN)
@register("PackedInvertedResidualAdd", domain=DOMAIN)
def packed_inverted_residual(
    x,
    expand_w,
    expand_b,
    depthwise_w,
    depthwise_b,
    project_w,
    project_b,
    residual=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    kernel_shape=None,
    pads=None,
    strides=None,
    expanded_channels=None,
    output_channels=None,
    expand_kernel_shape=(1, 1),
    expand_strides=None,
    expand_pads=None,
    expand_dilations=None,
    expand_min=-math.inf,
    expand_max=math.inf,
    depthwise_min=-math.inf,
    depthwise_max=math.inf,
    activation_min=-math.inf,
    activation_max=math.inf,
):
    """Three ``PackedNhwcConv`` in one (the fuse_inverted_residuals pass): a 1x1 expansion to
    ``expanded_channels`` clamped to ``[expand_min, expand_max]``, a depthwise convolution with
    the window attributes clamped to ``[depthwise_min, depthwise_max]``, a 1x1 projection to
    ``output_channels`` (``PackedInvertedResidualAdd`` adds ``residual``) clamped to
    ``[activation_min, activation_max]``; weights packed as PackedNhwcConv's. The expansion
    may be any dense convolution (``expand_kernel_shape`` etc.: a stem)."""
    weights = (expand_w, expand_b, depthwise_w, depthwise_b, project_w, project_b)
    expand_window = (expand_kernel_shape, expand_strides, expand_pads, expand_dilations)
    return _fused_block(
        x,
        weights,
        residual,
        auto_pad=auto_pad,
        dilations=dilations,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
        expanded_channels=expanded_channels,
        expand_window=expand_window,
        output_channels=output_channels,
        clamps=(
            expand_min,
            expand_max,
            depthwise_min,
            depthwise_max,
            activation_min,
            activation_max,
        ),
    )


@register("PackedDepthwiseProject", domain=DOMAIN)
@register("PackedDepthwiseProjectAdd", domain=DOMAIN)
def packed_depthwise_project(
    x,
    depthwise_w,
    depthwise_b,
    project_w,
    project_b,
    residual=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    kernel_shape=None,
    pads=None,
    strides=None,
    channels=None,
    output_channels=None,
    depthwise_min=-math.inf,
    depthwise_max=math.inf,
    activation_min=-math.inf,
    activation_max=math.inf,
):
    """``PackedInvertedResidual`` without the expansion (MobileNetV2's first block): the
    depthwise convolution on x's ``channels``, then the projection."""
    if channels is not None and int(channels) != x.shape[3]:
        raise ValueError(f"PackedDepthwiseProject: channels={channels}, x has {x.shape[3]}")
    weights = (None, None, depthwise_w, depthwise_b, project_w, project_b)
    return _fused_block(
        x,
        weights,
        residual,
        auto_pad=auto_pad,
        dilations=dilations,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
        output_channels=output_channels,
        clamps=(
            -math.inf,
            math.inf,
            depthwise_min,
            depthwise_max,
            activation_min,
            activation_max,
        ),
    )


def _fused_block(
    x,
    weights,
    residual,
    *,
    auto_pad,
    dilations,
    kernel_shape,
    pads,
    strides,
    output_channels,
    clamps,
    expanded_channels=None,
    expand_window=((1, 1), None, None, None),
):
    expand = weights[0] is not None
    if not kernel_shape or output_channels is None or (expand and expanded_channels is None):
        raise ValueError(
            "PackedInvertedResidual needs kernel_shape, output_channels and (with an expansion) "
            f"expanded_channels (got {kernel_shape}, {output_channels}, {expanded_channels})"
        )
    e = int(expanded_channels) if expand else x.shape[3]
    expand_min, expand_max, depthwise_min, depthwise_max, activation_min, activation_max = clamps
    one = dict(kernel=(1, 1), strides=(1, 1), pads=((0, 0), (0, 0)), dilations=(1, 1))
    expansion, h = None, x  # h: the depthwise convolution's input (its shape)
    if expand:
        ekernel = ints(expand_window[0])
        es, ep, ed = _window(x, ekernel, *expand_window[1:], "NOTSET")
        expansion = packed.Geometry(
            kernel=tuple(ekernel),
            out_channels=e,
            strides=tuple(es),
            pads=tuple(tuple(int(p) for p in pair) for pair in ep),
            dilations=tuple(ed),
            lo=float(expand_min),
            hi=float(expand_max),
        )
        h = SimpleNamespace(shape=packed._out_shape(x.shape, expansion))
    kernel = ints(kernel_shape)
    strides, pad, dilations = _window(h, kernel, strides, pads, dilations, auto_pad)
    block = fused.Block(
        expand=expansion,
        depthwise=packed.Geometry(
            kernel=tuple(kernel),
            out_channels=e,
            strides=tuple(strides),
            pads=tuple(tuple(int(p) for p in pair) for pair in pad),
            dilations=tuple(dilations),
            lo=float(depthwise_min),
            hi=float(depthwise_max),
            groups=e,
        ),
        project=packed.Geometry(
            out_channels=int(output_channels),
            lo=float(activation_min),
            hi=float(activation_max),
            **one,
        ),
    )
    return fused.inverted_residual(x, *weights, block, residual)


def _window(x, kernel, strides, pads, dilations, auto_pad):
    """(strides, (lo, hi) pads per spatial dim, dilations) of a 2-D conv on NHWC ``x``."""
    strides = ints(strides) if strides else [1, 1]
    dilations = ints(dilations) if dilations else [1, 1]
    pad = lowering.conv_pads(auto_pad, x.shape[1:3], kernel, strides, dilations, pads)
    return strides, pad, dilations


def _via_nchw(fn, x, **attrs):
    # Small windows fuse into one loop either way; XLA folds these transposes into its indexing.
    return fn(x.transpose(_TO_NCHW), **attrs).transpose(_TO_NHWC)


@register("NhwcMaxPool", domain=DOMAIN)
def nhwc_max_pool(
    x,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    storage_order=0,
    strides=None,
):
    """MaxPool (https://onnx.ai/onnx/operators/onnx__MaxPool.html) on NHWC, one output.

    On the kernel library's max pool (channels in the vector lanes, taps past the input
    skipped: no padded copy; ResNet-18's stem pool alone 407 -> 201 µs, NOTES entry 27) where it
    runs, else ``_max_pool_xla``; a round trip through the NCHW op would cost two transposes.
    """
    n, h, w_, c = x.shape
    shape = SimpleNamespace(ndim=4, shape=(n, c, h, w_))  # _geometry reads NCHW sizes only
    kernel, strides, dilations, out, _, cover = pool._geometry(
        shape, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode
    )
    window = packed.PoolWindow(
        *(tuple(int(v) for v in t) for t in (kernel, strides, dilations)),
        tuple((int(lo), int(hi)) for lo, hi in cover),
        tuple(int(o) for o in out),
    )
    return packed.max_pool(x, window, _max_pool_xla)


def _max_pool_xla(x, window):
    """The max pool as XLA ops: the kernel's fallback and its gradient's definition."""
    n, h, w_, c = x.shape
    kernel, strides, dilations, cover, out = window
    if _taps_can_clamp((h, w_), kernel, strides, dilations, out, cover):
        rows = [_clamped_taps(x, 1, i - cover[0][0], strides[0], out[0]) for i in range(kernel[0])]

        def tap(i, j):
            return _clamped_taps(rows[i], 2, j - cover[1][0], strides[1], out[1])
    else:
        lowest = jnp.asarray(pool._lowest(x.dtype), x.dtype)
        xp = lax.pad(x, lowest, [(0, 0, 0), (*cover[0], 0), (*cover[1], 0), (0, 0, 0)])

        def tap(i, j):
            r0, c0 = i * dilations[0], j * dilations[1]
            return lax.slice(
                xp,
                (0, r0, c0, 0),
                (n, r0 + (out[0] - 1) * strides[0] + 1, c0 + (out[1] - 1) * strides[1] + 1, c),
                (1, strides[0], strides[1], 1),
            )

    y = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            y = tap(i, j) if y is None else jnp.maximum(y, tap(i, j))
    return y


def _taps_can_clamp(sizes, kernel, strides, dilations, out, cover) -> bool:
    """Whether a tap in the padding may read the input's nearest edge instead: with dilation 1
    a window's taps are contiguous, so if every window holds an input cell, the edge cell is one
    of its own and the max is unchanged (no padded copy: it cost ResNet's stem pool 4x the max
    itself, NOTES entry 26)."""
    for size, k, s, d, o, (lo, _) in zip(sizes, kernel, strides, dilations, out, cover):
        last_start = (o - 1) * s - lo
        if d != 1 or k - 1 - lo < 0 or last_start > size - 1:
            return False
    return True


def _clamped_taps(x, axis: int, offset: int, stride: int, count: int):
    """``x`` at indices ``clip(o * stride + offset, 0, size - 1)`` for o < count along ``axis``:
    one strided slice with the edge cell repeated before and after it (all fused by XLA)."""
    size = x.shape[axis]
    first = min(count, -(-max(0, -offset) // stride))  # outputs reading before the input
    last = min(count - 1, (size - 1 - offset) // stride)  # and after it past the input
    parts = []
    if first > 0:
        parts.append(jnp.repeat(lax.slice_in_dim(x, 0, 1, axis=axis), first, axis=axis))
    if last >= first:
        lo = first * stride + offset
        parts.append(lax.slice_in_dim(x, lo, lo + (last - first) * stride + 1, stride, axis))
    if count - 1 > last:
        edge = lax.slice_in_dim(x, size - 1, size, axis=axis)
        parts.append(jnp.repeat(edge, count - 1 - max(last, first - 1), axis=axis))
    return parts[0] if len(parts) == 1 else lax.concatenate(parts, axis)


@register("NhwcAveragePool", domain=DOMAIN)
def nhwc_average_pool(
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
    """AveragePool (https://onnx.ai/onnx/operators/onnx__AveragePool.html) on NHWC."""
    return _via_nchw(
        pool.average_pool,
        x,
        auto_pad=auto_pad,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        dilations=dilations,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )


@register("NhwcGlobalAveragePool", domain=DOMAIN)
def nhwc_global_average_pool(x):
    """GlobalAveragePool on NHWC: the mean over H and W, kept as size-1 axes."""
    return jnp.mean(x, axis=(1, 2), keepdims=True, dtype=lowering.acc_dtype(x.dtype)).astype(
        x.dtype
    )


@register("NhwcGlobalMaxPool", domain=DOMAIN)
def nhwc_global_max_pool(x):
    """GlobalMaxPool on NHWC."""
    return jnp.max(x, axis=(1, 2), keepdims=True)
