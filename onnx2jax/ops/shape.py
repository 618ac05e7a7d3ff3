"""Shape and layout ops: Shape, Reshape, Squeeze, Slice, Pad, Concat, Split, Tile, Expand."""

from __future__ import annotations

import math

import numpy as np

from .._registry import register
from ._common import axis as norm_axis
from ._common import ints, xp


@register("Constant")
def constant(
    *,
    value=None,
    value_float=None,
    value_floats=None,
    value_int=None,
    value_ints=None,
    value_string=None,
    value_strings=None,
    sparse_value=None,
):
    if value is not None:
        return np.asarray(value)
    if sparse_value is not None:
        return np.asarray(sparse_value)
    if value_float is not None:
        return np.asarray(value_float, np.float32)
    if value_floats is not None:
        return np.asarray(value_floats, np.float32)
    if value_int is not None:
        return np.asarray(value_int, np.int64)
    if value_ints is not None:
        return np.asarray(value_ints, np.int64)
    if value_string is not None:
        return np.asarray(value_string, object)
    if value_strings is not None:
        return np.asarray(value_strings, object)
    raise ValueError("Constant has no value attribute")


@register("Identity")
def identity(x):
    return x


@register("Shape")
def shape(x, *, start=0, end=None):
    """https://onnx.ai/onnx/operators/onnx__Shape.html; start/end clamp like Python slices."""
    if not all(isinstance(d, int) for d in x.shape):
        # Symbolic dims (jax.export): an object array of ints and dim expressions, which
        # numpy shape arithmetic (Gather, Concat, Mul, ...) carries to Reshape & co.
        return np.array(list(x.shape), dtype=object)[start:end]
    return np.asarray(x.shape, np.int64)[start:end]


@register("Size")
def size(x):
    """https://onnx.ai/onnx/operators/onnx__Size.html"""
    return np.asarray(math.prod(x.shape), np.int64)


def _reshape(x, dims: list[int], allowzero: int):
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return xp(x).reshape(x, dims)


@register("Reshape")
def reshape_v1(x, *, shape=(), consumed_inputs=None):
    """https://onnx.ai/onnx/operators/onnx__Reshape.html (opset 1: shape is an attribute)."""
    return _reshape(x, list(shape), 0)


@register("Reshape", since=5)
def reshape(x, shape, *, allowzero=0):
    """https://onnx.ai/onnx/operators/onnx__Reshape.html"""
    return _reshape(x, ints(shape), allowzero)


@register("Flatten")
def flatten(x, *, axis=1):
    """https://onnx.ai/onnx/operators/onnx__Flatten.html"""
    a = norm_axis(axis, x.ndim)
    return xp(x).reshape(x, (math.prod(x.shape[:a]), math.prod(x.shape[a:])))


def _squeeze(x, axes):
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return xp(x).squeeze(x, axis=tuple(norm_axis(a, x.ndim) for a in axes))


@register("Squeeze")
def squeeze_v1(x, *, axes=None):
    """https://onnx.ai/onnx/operators/onnx__Squeeze.html (opsets 1-12: axes attribute)."""
    return _squeeze(x, axes)


@register("Squeeze", since=13)
def squeeze(x, axes=None):
    """https://onnx.ai/onnx/operators/onnx__Squeeze.html"""
    return _squeeze(x, None if axes is None else ints(axes))


def _unsqueeze(x, axes):
    out_rank = x.ndim + len(axes)
    axes = sorted(norm_axis(a, out_rank) for a in axes)
    if len(set(axes)) != len(axes) or any(not 0 <= a < out_rank for a in axes):
        raise ValueError(f"invalid Unsqueeze axes {axes} for output rank {out_rank}")
    return xp(x).expand_dims(x, tuple(axes))


@register("Unsqueeze")
def unsqueeze_v1(x, *, axes):
    """https://onnx.ai/onnx/operators/onnx__Unsqueeze.html (opsets 1-12: axes attribute)."""
    return _unsqueeze(x, list(axes))


@register("Unsqueeze", since=13)
def unsqueeze(x, axes):
    """https://onnx.ai/onnx/operators/onnx__Unsqueeze.html"""
    return _unsqueeze(x, ints(axes))


@register("Transpose")
def transpose(x, *, perm=None):
    """https://onnx.ai/onnx/operators/onnx__Transpose.html"""
    perm = tuple(reversed(range(x.ndim))) if perm is None else tuple(perm)
    return xp(x).transpose(x, perm)


@register("Concat")
def concat_v1(*inputs, axis=1):
    """https://onnx.ai/onnx/operators/onnx__Concat.html (opset 1: axis defaults to 1)."""
    return xp(*inputs).concatenate(inputs, axis=axis)


@register("Concat", since=4)
def concat(*inputs, axis):
    """https://onnx.ai/onnx/operators/onnx__Concat.html"""
    return xp(*inputs).concatenate(inputs, axis=axis)


def _split(x, sizes, axis, n_outputs):
    a = norm_axis(axis, x.ndim)
    dim = x.shape[a]
    if sizes is None:
        # Equal parts; since opset 18 (num_outputs) the last chunk may be smaller.
        chunk = -(-dim // n_outputs)
        sizes = [chunk] * (n_outputs - 1) + [dim - chunk * (n_outputs - 1)]
        if sizes[-1] < 0:
            raise ValueError(f"cannot split a dimension of {dim} into {n_outputs} chunks")
    if sum(sizes) != dim or any(s < 0 for s in sizes):
        raise ValueError(f"split sizes {sizes} do not add up to dimension {dim} (axis {axis})")
    outs, pos = [], 0
    for s in sizes:
        index = [slice(None)] * x.ndim
        index[a] = slice(pos, pos + s)
        outs.append(x[tuple(index)])
        pos += s
    return tuple(outs)


@register("Split")
def split_v1(x, split_input=None, *, axis=0, split=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__Split.html (opsets 1-12: split attribute; opset 1
    also accepts it as a second input)."""
    sizes = ints(split_input) if split_input is not None else split
    return _split(x, list(sizes) if sizes else None, axis, ctx.num_outputs)


@register("Split", since=13)
def split(x, split=None, *, axis=0, num_outputs=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__Split.html (num_outputs is opset 18's)."""
    sizes = ints(split) if split is not None else None
    return _split(x, sizes, axis, num_outputs or ctx.num_outputs)


def _slice(x, starts, ends, axes, steps):
    rank = x.ndim
    axes = list(range(len(starts))) if axes is None else [norm_axis(a, rank) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ValueError("starts, ends, axes and steps must have the same length")
    if len(set(axes)) != len(axes):
        raise ValueError(f"Slice axes repeat: {axes}")
    index = [slice(None)] * rank
    for start, end, a, step in zip(starts, ends, axes, steps, strict=True):
        if step == 0:
            raise ValueError("Slice step cannot be 0")
        dim = x.shape[a]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        # The spec's clamping, which differs from Python's for a negative step: start is
        # clamped into [0, dim-1] and end into [-1, dim-1], -1 meaning "through index 0".
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index[a] = slice(start, None if end < 0 else end, step)
    return x[tuple(index)]


@register("Slice")
def slice_v1(x, *, starts, ends, axes=None):
    """https://onnx.ai/onnx/operators/onnx__Slice.html (opset 1: attributes)."""
    return _slice(x, list(starts), list(ends), axes, None)


@register("Slice", since=10)
def slice_(x, starts, ends, axes=None, steps=None):
    """https://onnx.ai/onnx/operators/onnx__Slice.html"""
    return _slice(
        x,
        ints(starts),
        ints(ends),
        None if axes is None else ints(axes),
        None if steps is None else ints(steps),
    )


@register("Expand", since=8)
def expand(x, shape):
    """https://onnx.ai/onnx/operators/onnx__Expand.html (two-way broadcast)."""
    dims = ints(shape)
    if any(not isinstance(d, int) for d in (*x.shape, *dims)):
        out = _broadcast_symbolic(tuple(x.shape), tuple(dims))
    else:
        out = np.broadcast_shapes(tuple(x.shape), tuple(dims))
    return xp(x).broadcast_to(x, out)


def _broadcast_symbolic(a: tuple, b: tuple) -> tuple:
    """numpy broadcasting of shapes holding jax.export dims (a 1 gives way to the other)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    return tuple(y if isinstance(x, int) and x == 1 else x for x, y in zip(a, b, strict=True))


@register("Tile")
def tile_v1(x, tiles, axis):
    """https://onnx.ai/onnx/operators/onnx__Tile.html (opset 1: repeat one axis)."""
    reps = [1] * x.ndim
    reps[norm_axis(ints(axis)[0], x.ndim)] = ints(tiles)[0]
    return xp(x).tile(x, reps)


@register("Tile", since=6)
def tile(x, repeats):
    """https://onnx.ai/onnx/operators/onnx__Tile.html"""
    return xp(x).tile(x, ints(repeats))


def _pad(x, pads, mode, value, axes=None):
    rank = x.ndim
    axes = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ValueError(f"pads has {len(pads)} values, expected {2 * len(axes)}")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ValueError(f"unsupported Pad mode {mode!r}")
    m = xp(x, value)
    width = [(0, 0)] * rank
    crop = [slice(None)] * rank
    for i, a in enumerate(axes):
        begin, end = pads[i], pads[len(axes) + i]
        # Negative pads remove elements: crop first, then pad what is positive.
        crop[a] = slice(max(-begin, 0), x.shape[a] - max(-end, 0))
        width[a] = (max(begin, 0), max(end, 0))
    x = x[tuple(crop)]
    if not any(w != (0, 0) for w in width):
        return x
    if mode != "constant":
        return m.pad(x, width, mode=mode)
    if value is None:
        value = np.zeros((), x.dtype) if x.dtype != object else ""
    elif m is np:
        value = np.asarray(value).reshape(()).astype(x.dtype)
    else:
        value = m.asarray(value).reshape(()).astype(x.dtype)
    return m.pad(x, width, mode="constant", constant_values=value)


@register("Pad")
def pad_v1(x, *, paddings, mode="constant", value=0.0):
    """https://onnx.ai/onnx/operators/onnx__Pad.html (opset 1: ``paddings`` attribute)."""
    return _pad(x, list(paddings), mode, value)


@register("Pad", since=2)
def pad_v2(x, *, pads, mode="constant", value=0.0):
    """https://onnx.ai/onnx/operators/onnx__Pad.html (opsets 2-10: ``pads`` attribute)."""
    return _pad(x, list(pads), mode, value)


@register("Pad", since=11)
def pad(x, pads, constant_value=None, axes=None, *, mode="constant"):
    """https://onnx.ai/onnx/operators/onnx__Pad.html (axes: opset 18, wrap: opset 19)."""
    return _pad(x, ints(pads), mode, constant_value, None if axes is None else ints(axes))


@register("CenterCropPad", since=18)
def center_crop_pad(x, shape, *, axes=None):
    """https://onnx.ai/onnx/operators/onnx__CenterCropPad.html"""
    rank = x.ndim
    axes = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    target = ints(shape)
    if len(target) != len(axes):
        raise ValueError(f"shape has {len(target)} values for {len(axes)} axes")
    crop = [slice(None)] * rank
    width = [(0, 0)] * rank
    for a, want in zip(axes, target, strict=True):
        dim = x.shape[a]
        if want < dim:  # crop; an odd excess drops the extra element at the end
            begin = (dim - want) // 2
            crop[a] = slice(begin, begin + want)
        elif want > dim:  # pad with zeros; an odd excess goes at the end
            extra = want - dim
            width[a] = (extra // 2, extra - extra // 2)
    x = x[tuple(crop)]
    return xp(x).pad(x, width) if any(w != (0, 0) for w in width) else x
