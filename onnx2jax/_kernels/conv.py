"""The JAX side of the packed channels-last convolutions: packing, the FFI call, gradient, vmap.

``packed_conv`` takes x NHWC and a weight packed by ``pack`` (HWIO -> 16-channel panels), adds
the bias and clamps to ``[lo, hi]`` (a fused ReLU or Clip). Dense convolutions (one group) run
on packed_conv.cc's indirect GEMM, depthwise ones (one filter per channel) on
depthwise_conv.cc, as is ``max_pool`` (NHWC MaxPool, no padded copy). Without the built kernel,
off the CPU, for dtypes other than float32 or shapes only known symbolically (``jax.export``),
it runs as XLA's convolution (or pool) on the unpacked weight, so a model gives the same
results everywhere. Both paths are differentiable (the kernel's gradient is the XLA form's), and
vmap folds a batch into the images.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import CONV_PANEL
from ._ffi import available

_DENSE, _DENSE_ADD = "onnx2jax_packed_conv", "onnx2jax_packed_conv_add"
_DEPTHWISE = "onnx2jax_depthwise_conv"
_MAX_POOL = "onnx2jax_max_pool"


class Geometry(NamedTuple):
    """What the kernel needs besides the operands (hashable: a static argument)."""

    kernel: tuple[int, int]
    out_channels: int
    strides: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    dilations: tuple[int, int]
    lo: float = -math.inf  # the epilogue's clamp: (0, inf) is a ReLU
    hi: float = math.inf
    groups: int = 1  # 1, or out_channels for a depthwise convolution (one input channel each)


def pack(w):
    """An HWIO weight [KH, KW, C, O] as panels [ceil(O / 16), KH * KW * C, 16], zero-padded:
    differentiable jnp ops (numpy for numpy input)."""
    kh, kw, c, o = w.shape
    panels = -(-o // CONV_PANEL)
    xp = np if isinstance(w, np.ndarray) else jnp
    w = xp.pad(w.reshape(kh * kw * c, o), [(0, 0), (0, panels * CONV_PANEL - o)])
    return xp.moveaxis(w.reshape(kh * kw * c, panels, CONV_PANEL), 1, 0)


def unpack(packed, kernel, out_channels: int):
    """``pack``'s inverse: the HWIO weight."""
    panels, k, _ = packed.shape
    w = jnp.moveaxis(packed, 0, 1).reshape(k, panels * CONV_PANEL)[:, :out_channels]
    return w.reshape(*kernel, k // math.prod(kernel), out_channels)


def takes(x, packed, geometry: Geometry) -> bool:
    """Whether a kernel runs this convolution: dense or depthwise, static shapes, float32, no
    cropping pads, and the kernels available here."""
    if not all(isinstance(d, int) for d in x.shape):
        return False
    if geometry.groups != 1 and not geometry.groups == x.shape[3] == geometry.out_channels:
        return False
    if any(p < 0 for pair in geometry.pads for p in pair):
        return False
    return x.dtype == jnp.float32 and packed.dtype == jnp.float32 and available()


def packed_conv(x, packed, b, geometry: Geometry, residual=None):
    """``clamp(conv(x, W) + b + residual, lo, hi)`` for x [N, H, W, C], ``packed = pack(W)``
    with W HWIO, b [O] or None, ``residual`` None or broadcastable to the convolution's output
    [N, OH, OW, O]; the result has x's dtype."""
    if b is None:
        b = jnp.zeros((geometry.out_channels,), x.dtype)
    ops = (x, packed, b) if residual is None else (x, packed, b, residual)
    kernel = takes(x, packed, geometry) and (
        residual is None
        or (
            geometry.groups == 1
            and tuple(residual.shape) == _out_shape(x.shape, geometry)
            and residual.dtype == jnp.float32
        )
    )
    if kernel:
        return _packed_conv(geometry, x, packed, b.astype(jnp.float32), *ops[3:])
    return _xla(*ops, g=geometry)


def _xla(x, packed, b, residual=None, *, g: Geometry):
    acc = jnp.float32 if x.dtype in (jnp.float16, jnp.bfloat16) else x.dtype
    w = unpack(packed, g.kernel, g.out_channels).astype(x.dtype)
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=g.strides,
        padding=g.pads,
        rhs_dilation=g.dilations,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=g.groups,
        preferred_element_type=acc,
    )
    y = y + b.astype(acc)
    if residual is not None:
        y = y + residual.astype(acc)
    return _clamp(y, g).astype(x.dtype)


def _clamp(y, g: Geometry):
    # maximum/minimum, not clip: NaN stays NaN (as in the kernel)
    if g.lo > -math.inf:
        y = jnp.maximum(y, jnp.asarray(g.lo, y.dtype))
    if g.hi < math.inf:
        y = jnp.minimum(y, jnp.asarray(g.hi, y.dtype))
    return y


def _out_shape(shape, g: Geometry) -> tuple[int, ...]:
    """The output shape of a convolution of NHWC ``shape``."""
    n, h, w, _ = shape
    sizes = [
        (size + lo + hi - (k - 1) * d - 1) // s + 1
        for size, k, s, d, (lo, hi) in zip((h, w), g.kernel, g.strides, g.dilations, g.pads)
    ]
    return (n, *sizes, g.out_channels)


def _call(*ops, g: Geometry):
    x = ops[0]
    out = jax.ShapeDtypeStruct(_out_shape(x.shape, g), x.dtype)
    target = _DENSE_ADD if len(ops) == 4 else _DENSE if g.groups == 1 else _DEPTHWISE
    return jax.ffi.ffi_call(target, out)(*ops, **_window_attrs(g, g.lo, g.hi))


def _window_attrs(g, lo, hi) -> dict:
    """The kernels' window attributes (conv_attrs.h) of a ``Geometry`` or ``PoolWindow``."""
    i64 = np.int64
    return {
        "kh": i64(g.kernel[0]),
        "kw": i64(g.kernel[1]),
        "sh": i64(g.strides[0]),
        "sw": i64(g.strides[1]),
        "dh": i64(g.dilations[0]),
        "dw": i64(g.dilations[1]),
        "pt": i64(g.pads[0][0]),
        "pl": i64(g.pads[1][0]),
        "lo": np.float32(lo),
        "hi": np.float32(hi),
    }


def kernel_op(kernel, xla_form, images: tuple[int, ...]):
    """An op on one of the kernels: ``kernel(*ops)`` on the CPU, ``xla_form(*ops)`` elsewhere
    (the same values), differentiated as ``xla_form``, with a vmap rule: a weight (an operand
    not in ``images``) batched per entry vmaps ``xla_form``; otherwise the vmapped entries
    become more images (the operands at ``images``, broadcast where only some of them are
    batched). custom_vmap takes no static arguments: build one per static configuration and
    cache it (``_conv_op``)."""

    @jax.custom_batching.custom_vmap
    def call(*ops):
        return lax.platform_dependent(*ops, cpu=kernel, default=xla_form)

    @call.def_vmap
    def rule(axis_size, in_batched, *ops):
        if any(b for i, b in enumerate(in_batched) if i not in images):
            in_axes = tuple(0 if batched else None for batched in in_batched)
            return jax.vmap(xla_form, in_axes=in_axes)(*ops), True
        ops = list(ops)
        for i in (i for i in images if i < len(ops)):
            if not in_batched[i]:
                ops[i] = jnp.broadcast_to(ops[i], (axis_size, *ops[i].shape))
            ops[i] = ops[i].reshape(-1, *ops[i].shape[2:])
        y = call(*ops)
        return y.reshape(axis_size, -1, *y.shape[1:]), True

    @jax.custom_vjp
    def op(*ops):
        return call(*ops)

    def bwd(saved, dy):
        # The gradient of the XLA form: the same function, so the same derivative.
        return jax.vjp(xla_form, *saved)[1](dy)

    op.defvjp(lambda *ops: (call(*ops), ops), bwd)
    return op


@functools.cache
def _conv_op(g: Geometry):
    """The convolution kernel op for one geometry: x and the residual are the images."""
    return kernel_op(functools.partial(_call, g=g), functools.partial(_xla, g=g), (0, 3))


def _packed_conv(g, *ops):
    return _conv_op(g)(*ops)


# -- max pool -----------------------------------------------------------------------------------


class PoolWindow(NamedTuple):
    """A 2-D pooling window on NHWC (hashable: a static argument). ``pads`` are the (lo, hi)
    cells each window may reach past the input, ``out`` the output's spatial size."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    out: tuple[int, int]


def max_pool(x, window: PoolWindow, xla_form):
    """NHWC MaxPool on the kernel (taps past the input skipped, NaN kept) where it runs,
    else ``xla_form(x, window)``, a module-level function giving the same values: also the
    gradient's definition and the path off the CPU."""
    if (
        all(isinstance(d, int) for d in x.shape)
        and x.dtype == jnp.float32
        and min(p for pair in window.pads for p in pair) >= 0
        and available()
    ):
        return _max_pool(window, xla_form, x)
    return xla_form(x, window)


def _pool_call(x, *, w: PoolWindow):
    out = jax.ShapeDtypeStruct((x.shape[0], *w.out, x.shape[3]), x.dtype)
    return jax.ffi.ffi_call(_MAX_POOL, out)(x, **_window_attrs(w, -math.inf, math.inf))


@functools.cache
def _pool_op(w: PoolWindow, xla_form):
    return kernel_op(functools.partial(_pool_call, w=w), lambda x: xla_form(x, w), (0,))


def _max_pool(w, xla_form, x):
    return _pool_op(w, xla_form)(x)
