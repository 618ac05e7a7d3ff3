"""Conv, ConvTranspose, DepthToSpace and SpaceToDepth (https://onnx.ai/onnx/operators/); lowering in _conv_lowering."""

from __future__ import annotations

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
