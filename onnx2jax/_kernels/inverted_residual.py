"""The JAX side of the fused inverted-residual block (inverted_residual.cc).

``inverted_residual`` computes what three ``conv.packed_conv`` calls would (a 1x1 expansion, a
depthwise convolution, a 1x1 projection, each with its bias and clamp, and maybe a residual
added before the last clamp), in one kernel call that walks the output in bands of rows, so the
expanded tensor never leaves the cache. Where the expanded tensor is small enough to stay in
cache anyway (MobileNetV2's 14x14 and 7x7 blocks at batch 1), and wherever the kernel does not
run, it is the three calls. Both forms give the same values (the kernel runs the same tiles),
the gradient is the three calls', and vmap folds a batch into the images.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import CONV_PANEL, conv

_FUSED, _FUSED_ADD = "onnx2jax_inverted_residual", "onnx2jax_inverted_residual_add"
# Below this many bytes of expanded activation (the whole batch's) the three kernels keep it in
# the L2 and run as fast as the fused one, which would recompute more rows where it splits
# small images between threads (NOTES entry 29).
FUSE_BYTES = 512 << 10


class Block(NamedTuple):
    """The three convolutions' geometries (hashable: a static argument)."""

    expand: conv.Geometry | None  # 1x1, stride 1, no padding; None: x feeds the depthwise
    depthwise: conv.Geometry  # groups = channels
    project: conv.Geometry  # 1x1, stride 1, no padding


def inverted_residual(x, we, be, wd, bd, wp, bp, block: Block, residual=None):
    """``project(depthwise(expand(x))) (+ residual)`` for x NHWC and weights packed by
    ``conv.pack``; biases may be None, and ``we``/``be`` are None when ``block.expand`` is.
    The result has x's dtype."""
    if block.expand is None:  # the kernel's encoding of no expansion: empty operands
        we, be = jnp.zeros((0, x.shape[3], CONV_PANEL), jnp.float32), jnp.zeros((0,))
    biases = [
        jnp.zeros((g.out_channels,), jnp.float32) if b is None else b
        for b, g in zip((be, bd, bp), block)
    ]
    be, bd, bp = biases
    ops = (x, we, be, wd, bd, wp, bp) + (() if residual is None else (residual,))
    if _fuses(x, ops, block):
        return _fused(block, *ops)
    return _three(*ops, block=block)


def _fuses(x, ops, block: Block) -> bool:
    e, d, p = block
    # (takes' checks that hold for the whole block: float32, static shapes, the kernels here)
    if not all(isinstance(s, int) for s in x.shape) or not conv.takes(x, ops[5], p):
        return False
    if any(v < 0 for pair in d.pads for v in pair):
        return False
    if any(o.dtype != jnp.float32 for o in ops):
        return False
    ones = ((1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1))
    if (p.kernel, p.strides, p.pads, p.dilations) != ones or p.groups != 1:
        return False
    if e is not None and (e.groups != 1 or any(v < 0 for pair in e.pads for v in pair)):
        return False  # the expansion: any dense window (a stem), not cropping
    channels = x.shape[3] if e is None else e.out_channels
    if d.groups != channels or d.out_channels != channels:
        return False
    out = _out_shape(x.shape, block)
    if len(ops) == 8 and tuple(ops[7].shape) != out:
        return False  # a broadcasting residual: the three calls add it
    # What the fusion keeps in cache: the expanded tensor, or without one the depthwise output.
    kept = conv._out_shape(x.shape, e)[:3] if e is not None else out[:3]
    return math.prod(kept) * channels * 4 >= FUSE_BYTES


def _out_shape(shape, block: Block) -> tuple[int, ...]:
    e, d, p = block
    if e is not None:
        shape = conv._out_shape(shape, e)
    return conv._out_shape(conv._out_shape(shape, d), p)


def _three(x, we, be, wd, bd, wp, bp, residual=None, *, block: Block):
    e, d, p = block
    h = x if e is None else conv.packed_conv(x, we, be, e)
    h = conv.packed_conv(h, wd, bd, d)
    return conv.packed_conv(h, wp, bp, p, residual)


def _call(*ops, block: Block):
    e, d, p = block
    x = ops[0]
    shape = _out_shape(x.shape, block)
    attrs = conv._window_attrs(d, p.lo, p.hi)
    f32 = np.float32
    elo, ehi = (-math.inf, math.inf) if e is None else (e.lo, e.hi)
    attrs.update(elo=f32(elo), ehi=f32(ehi), dlo=f32(d.lo), dhi=f32(d.hi))
    i64 = np.int64
    if e is None:  # the kernel reads x directly: a 1x1 window of x's size
        window = {"ekh": 1, "ekw": 1, "esh": 1, "esw": 1, "edh": 1, "edw": 1, "ept": 0, "epl": 0}
        size = x.shape[1:3]
    else:
        window = {
            "e" + k: v for k, v in conv._window_attrs(e, 0, 0).items() if k not in ("lo", "hi")
        }
        size = conv._out_shape(x.shape, e)[1:3]
    attrs.update({k: i64(v) for k, v in window.items()}, eoh=i64(size[0]), eow=i64(size[1]))
    target = _FUSED_ADD if len(ops) == 8 else _FUSED
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, x.dtype))(*ops, **attrs)


@functools.cache
def _block_op(block: Block):
    """The fused kernel op for one block: x and the residual are the images."""
    three = functools.partial(_three, block=block)
    return conv.kernel_op(functools.partial(_call, block=block), three, (0, 7))


def _fused(block, *ops):
    return _block_op(block)(*ops)
