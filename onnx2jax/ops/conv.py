"""Conv, ConvTranspose, DeformConv, DepthToSpace, SpaceToDepth (https://onnx.ai/onnx/operators/); lowering in _conv_lowering."""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np

from .._registry import register
from . import _conv_lowering as lowering
from ._common import ints


def _spatial_attrs(x, w, kernel_shape, strides, dilations):
    nd = x.ndim - 2
    kernel = ints(kernel_shape) if kernel_shape else list(w.shape[2:])
    if kernel != list(w.shape[2:]):
        raise ValueError(f"kernel_shape {kernel} does not match the weight's shape {list(w.shape)}")
    return (
        kernel,
        ints(strides) if strides else [1] * nd,
        ints(dilations) if dilations else [1] * nd,
    )


# Conv-11 and Conv-22 changed only documentation and types, so one function serves all.
@register("Conv")
def conv(
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
    """https://onnx.ai/onnx/operators/onnx__Conv.html"""
    kernel, strides, dilations = _spatial_attrs(x, w, kernel_shape, strides, dilations)
    pad = lowering.conv_pads(auto_pad, x.shape[2:], kernel, strides, dilations, pads)
    return lowering.conv(x, w, b, strides=strides, pads=pad, dilations=dilations, groups=group)


@register("ConvTranspose")
def conv_transpose(
    x,
    w,
    b=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    output_padding=None,
    output_shape=None,
    pads=None,
    strides=None,
):
    """https://onnx.ai/onnx/operators/onnx__ConvTranspose.html"""
    kernel, strides, dilations = _spatial_attrs(x, w, kernel_shape, strides, dilations)
    nd = x.ndim - 2
    in_shape = list(x.shape[2:])
    out_pad = ints(output_padding) if output_padding else [0] * nd
    natural = [
        s * (n - 1) + op + (k - 1) * d + 1
        for s, n, op, k, d in zip(strides, in_shape, out_pad, kernel, dilations, strict=True)
    ]
    if output_shape:
        target = ints(output_shape)[-nd:]  # some exporters include N and C; the spec does not
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [n * s for n, s in zip(in_shape, strides, strict=True)]
    else:
        target = None
    if target is not None:
        pad = []
        for nat, t in zip(natural, target, strict=True):
            # as onnxruntime: a target beyond the natural size pads zeros at the end
            total = max(0, nat - t)
            lo = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pad.append((lo, nat - lo - t))
    elif auto_pad == "VALID" or not pads:
        pad = [(0, 0)] * nd
    else:
        p = ints(pads)
        pad = [(p[i], p[i + nd]) for i in range(nd)]
    return lowering.conv_transpose(
        x,
        w,
        b,
        strides=strides,
        pads=pad,
        dilations=dilations,
        groups=group,
        output_padding=out_pad,
    )


# -- DeformConv -----------------------------------------------------------------------------
# As onnx's reference (onnx/reference/ops/op_deform_conv.py, i.e. torchvision's deform_conv2d):
# every kernel tap of every output position reads the input at its regular position plus a
# learned offset, interpolated bilinearly with zeros outside the input (GridSample with
# align_corners=1), times the optional mask. The samples of all taps are gathered at once per
# interpolation corner, then meet the weights in one grouped matmul. The reference handles 2-D
# only; this is written for any number of spatial dims (multilinear, 2**nd corners).


@register("DeformConv", since=19)
def deform_conv(
    x,
    w,
    offset,
    b=None,
    mask=None,
    *,
    dilations=None,
    group=1,
    kernel_shape=None,
    offset_group=1,
    pads=None,
    strides=None,
):
    """https://onnx.ai/onnx/operators/onnx__DeformConv.html"""
    kernel, strides, dilations = _spatial_attrs(x, w, kernel_shape, strides, dilations)
    nd = x.ndim - 2
    n, c = x.shape[:2]
    oc = w.shape[0]
    g, og = int(group), int(offset_group)
    in_shape = list(x.shape[2:])
    pad = lowering.conv_pads("NOTSET", in_shape, kernel, strides, dilations, pads)
    out = [
        lowering.out_size(*a)
        for a in zip(in_shape, kernel, strides, dilations, *zip(*pad), strict=True)
    ]
    nk, npos = math.prod(kernel), math.prod(out)
    if c != w.shape[1] * g or oc % g or c % og:
        raise ValueError(
            f"DeformConv: {c} input channels, weight {list(w.shape)}, group {g} and "
            f"offset_group {og} do not fit together"
        )
    if tuple(offset.shape) != (n, og * nk * nd, *out):
        raise ValueError(
            f"DeformConv: offset has shape {list(offset.shape)}, expected "
            f"{[n, og * nk * nd, *out]} (N, offset_group * kernel taps * {nd}, output dims)"
        )
    if mask is not None and tuple(mask.shape) != (n, og * nk, *out):
        raise ValueError(
            f"DeformConv: mask has shape {list(mask.shape)}, expected {[n, og * nk, *out]}"
        )

    acc = lowering.acc_dtype(x.dtype)
    # regular sampling positions (static): output position * stride - pad + tap * dilation
    taps = np.indices(kernel).reshape(nd, nk) * np.array(dilations)[:, None]
    starts = np.indices(out).reshape(nd, npos) * np.array(strides)[:, None]
    starts -= np.array([lo for lo, _ in pad])[:, None]
    regular = (taps[:, :, None] + starts[:, None, :]).astype(acc)  # (nd, taps, positions)
    off = jnp.asarray(offset).astype(acc).reshape(n, og, nk, nd, npos)
    lows, fracs = [], []
    for d in range(nd):
        # clipped so that the integer cast cannot overflow: beyond one pixel outside the input,
        # every corner reads zero whatever the position
        pos = jnp.clip(off[:, :, :, d] + regular[d], -2, in_shape[d] + 1)
        low = jnp.floor(pos)
        lows.append(low.astype(jnp.int32))
        fracs.append(pos - low)
    scale = None if mask is None else jnp.asarray(mask).astype(acc).reshape(n, og, nk, npos)

    xf = jnp.asarray(x).astype(acc).reshape(n, og, c // og, math.prod(in_shape))
    sampled = None
    for corner in itertools.product((0, 1), repeat=nd):
        index, weight, valid = 0, scale, True
        for d, bit in enumerate(corner):
            i = lows[d] + bit
            valid = valid & (i >= 0) & (i < in_shape[d])
            index = index * in_shape[d] + i
            f = fracs[d] if bit else 1 - fracs[d]
            weight = f if weight is None else weight * f
        index = jnp.where(valid, index, 0).reshape(n, og, 1, nk * npos)
        v = jnp.take_along_axis(xf, index, axis=3)
        # a where, not a zero weight: a non-finite value at the clamped index must not leak in
        v = jnp.where(valid.reshape(index.shape), v * weight.reshape(index.shape), 0)
        sampled = v if sampled is None else sampled + v

    cols = sampled.reshape(n, g, c // g, nk, npos)
    wg = jnp.asarray(w).astype(acc).reshape(g, oc // g, c // g, nk)
    y = jnp.einsum("ngckp,gock->ngop", cols, wg).reshape(n, oc, *out)
    if b is not None:
        y = y + jnp.asarray(b).astype(acc).reshape((oc,) + (1,) * nd)
    return y.astype(x.dtype)


# -- pixel shuffles -------------------------------------------------------------------------


# DepthToSpace-11 added mode (opset 1 is DCR, the default); SpaceToDepth-28 added it likewise.
@register("DepthToSpace")
def depth_to_space(x, *, blocksize=None, mode="DCR"):
    """https://onnx.ai/onnx/operators/onnx__DepthToSpace.html"""
    b, c, h, w = x.shape
    bs = int(blocksize)
    if mode == "DCR":
        t = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        t = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise ValueError(f"DepthToSpace mode must be DCR or CRD, got {mode!r}")
    return t.reshape(b, c // (bs * bs), h * bs, w * bs)


@register("SpaceToDepth")
def space_to_depth(x, *, blocksize=None, mode="DCR"):
    """https://onnx.ai/onnx/operators/onnx__SpaceToDepth.html"""
    b, c, h, w = x.shape
    bs = int(blocksize)
    t = x.reshape(b, c, h // bs, bs, w // bs, bs)
    if mode == "DCR":
        t = t.transpose(0, 3, 5, 1, 2, 4)
    elif mode == "CRD":
        t = t.transpose(0, 1, 3, 5, 2, 4)
    else:
        raise ValueError(f"SpaceToDepth mode must be DCR or CRD, got {mode!r}")
    return t.reshape(b, c * bs * bs, h // bs, w // bs)
