"""Indexing, scatter and construction ops: Gather*, Scatter*, TopK, Range, OneHot, NonZero."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import StaticValueError
from .._registry import register
from ._common import axis as norm_axis
from ._common import dtype_of, ints, xp

# Negative indices count from the end (numpy and JAX indexing both do this natively).
# Out-of-range indices: the reference raises. Static (numpy) values raise here too; traced
# ones cannot, so gathers fill (NaN for floats, the most negative int for ints, which makes the
# bug visible) and scatters drop the update, JAX's defaults.


def _index_dtype() -> np.dtype:
    """int64 where JAX computes it (x64 on), else int32: what an ONNX int64 output becomes."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.int64))


def _need_static(ctx, name: str, value, why: str) -> None:
    if not isinstance(value, np.ndarray):
        raise StaticValueError(
            f"{ctx.node.describe()}: input {name!r} depends on runtime data, but {why}, so "
            "onnx2jax needs it known at trace time (data-dependent shapes cannot live in one XLA "
            "program). Make it a constant/initializer, or compute the op outside the model."
        )


@register("Gather")
def gather(x, indices, *, axis=0):
    """https://onnx.ai/onnx/operators/onnx__Gather.html"""
    a = norm_axis(axis, x.ndim)
    if xp(x, indices) is np:
        return np.take(x, indices, axis=a)
    return jnp.take(x, indices, axis=a, mode="fill")


@register("GatherElements", since=11)
def gather_elements(x, indices, *, axis=0):
    """https://onnx.ai/onnx/operators/onnx__GatherElements.html"""
    a = norm_axis(axis, x.ndim)
    if xp(x, indices) is np:
        return np.take_along_axis(x, indices, axis=a)
    return jnp.take_along_axis(x, indices, axis=a, mode="fill")


@register("GatherND", since=11)
def gather_nd(x, indices, *, batch_dims=0):
    """https://onnx.ai/onnx/operators/onnx__GatherND.html (batch_dims: opset 12)."""
    m = xp(x, indices)
    b, k = batch_dims, indices.shape[-1]
    batch = tuple(x.shape[:b])
    nb = int(np.prod(batch, dtype=np.int64))
    inner = tuple(indices.shape[b:-1])
    x = m.reshape(x, (nb, *x.shape[b:]))
    idx = m.reshape(indices, (nb, int(np.prod(inner, dtype=np.int64)), k))
    index = [m.arange(nb)[:, None]]
    index += [idx[..., j] for j in range(k)]
    out = x[tuple(index)] if m is np else jnp.asarray(x).at[tuple(index)].get(mode="fill")
    return m.reshape(out, batch + inner + tuple(x.shape[1 + k :]))


def _elements_index(m, indices, axis):
    """The full advanced index of ScatterElements: ``indices`` on ``axis``, positions elsewhere."""
    grids = list(m.meshgrid(*[m.arange(n) for n in indices.shape], indexing="ij", sparse=True))
    grids[axis] = indices
    return tuple(grids)


_NP_UFUNC = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}
_JAX_AT = {"none": "set", "add": "add", "mul": "multiply", "max": "max", "min": "min"}


def _scatter(data, index, updates, reduction):
    if reduction not in _JAX_AT:
        raise ValueError(f"unsupported reduction {reduction!r}")
    if xp(data, updates, *index) is np:
        out = np.array(data, copy=True)
        if reduction == "none":
            out[index] = updates
        else:
            _NP_UFUNC[reduction].at(out, index, updates)
        return out
    data = jnp.asarray(data)
    return getattr(data.at[index], _JAX_AT[reduction])(jnp.asarray(updates).astype(data.dtype))


@register("ScatterElements", since=11)
def scatter_elements(data, indices, updates, *, axis=0, reduction="none"):
    """https://onnx.ai/onnx/operators/onnx__ScatterElements.html (add/mul: 16, max/min: 18)."""
    a = norm_axis(axis, data.ndim)
    m = xp(indices)
    return _scatter(data, _elements_index(m, indices, a), updates, reduction)


@register("Scatter", since=9)
def scatter(data, indices, updates, *, axis=0):
    """https://onnx.ai/onnx/operators/onnx__Scatter.html (deprecated: ScatterElements)."""
    return scatter_elements(data, indices, updates, axis=axis)


@register("ScatterND", since=11)
def scatter_nd(data, indices, updates, *, reduction="none"):
    """https://onnx.ai/onnx/operators/onnx__ScatterND.html (add/mul: 16, max/min: 18)."""
    index = tuple(indices[..., j] for j in range(indices.shape[-1]))
    return _scatter(data, index, updates, reduction)


@register("Range", since=11)
def range_(start, limit, delta, *, stash_type=1):
    """https://onnx.ai/onnx/operators/onnx__Range.html; always static (all inputs are)."""
    dtype = start.dtype
    s, l, d = (np.asarray(v).reshape(-1)[0].item() for v in (start, limit, delta))
    if dtype.kind in "iu":
        return np.arange(s, l, d, dtype=dtype)
    # start + i * delta in float64, then cast: at least as precise as any stash_type (opset
    # 27) asks for, and never accumulated in float16/bfloat16.
    return np.arange(float(s), float(l), float(d), dtype=np.float64).astype(dtype)


@register("ConstantOfShape", since=9)
def constant_of_shape(shape, *, value=None):
    """https://onnx.ai/onnx/operators/onnx__ConstantOfShape.html"""
    v = np.zeros((1,), np.float32) if value is None else np.asarray(value)
    if v.size != 1:
        raise ValueError(f"value must have one element, got {v.size}")
    return np.full(tuple(ints(shape)), v.reshape(-1)[0], dtype=v.dtype)


@register("Trilu", since=14)
def trilu(x, k=None, *, upper=1):
    """https://onnx.ai/onnx/operators/onnx__Trilu.html"""
    k = 0 if k is None else ints(k)[0]
    m = xp(x)
    return m.triu(x, k) if upper else m.tril(x, k)


@register("OneHot", since=9)
def one_hot(indices, depth, values, *, axis=-1):
    """https://onnx.ai/onnx/operators/onnx__OneHot.html; out-of-range indices give all off."""
    m = xp(indices, values)
    n = int(np.asarray(depth).reshape(-1)[0])
    a = norm_axis(axis, indices.ndim + 1)
    idx = m.expand_dims(m.where(indices < 0, indices + n, indices), a)
    positions = m.arange(n, dtype=idx.dtype).reshape([n if i == a else 1 for i in range(idx.ndim)])
    values = m.asarray(values).reshape(-1)
    return m.where(idx == positions, values[1], values[0])


@register("EyeLike", since=9)
def eye_like(x, *, dtype=None, k=0):
    """https://onnx.ai/onnx/operators/onnx__EyeLike.html; only the shape of x is read."""
    if x.ndim != 2:
        raise ValueError(f"EyeLike needs a 2-D input, got shape {list(x.shape)}")
    dt = np.dtype(x.dtype) if dtype is None else dtype_of(dtype)
    return np.eye(x.shape[0], x.shape[1], k=k, dtype=dt)


def _topk(x, k, axis, largest):
    a = norm_axis(axis, x.ndim)
    if not 0 <= k <= x.shape[a]:
        raise ValueError(f"k={k} is out of range for axis {axis} of size {x.shape[a]}")
    # Order-reversing keys that cannot overflow: -x for floats, ~x (= -x-1) for integers.
    flip = (
        (lambda v: -v)
        if np.dtype(x.dtype).kind == "f" or x.dtype == jnp.bfloat16
        else (lambda v: ~v)
    )
    if xp(x) is np:
        # A stable sort of the (possibly flipped) key keeps equal values in index order.
        order = np.argsort(flip(x) if largest else x, axis=a, kind="stable")
        idx = np.take(order, np.arange(k), axis=a).astype(np.int64)
        return np.take_along_axis(x, idx, axis=a), idx
    moved = jnp.moveaxis(x, a, -1)
    # lax.top_k returns the k largest, the lower index first among equals.
    vals, idx = jax.lax.top_k(moved if largest else flip(moved), k)
    vals = vals if largest else flip(vals)
    return jnp.moveaxis(vals, -1, a), jnp.moveaxis(idx.astype(_index_dtype()), -1, a)


@register("TopK")
def topk_v1(x, *, k, axis=-1):
    """https://onnx.ai/onnx/operators/onnx__TopK.html (opsets 1-9: k attribute)."""
    return _topk(x, k, axis, 1)


@register("TopK", since=10)
def topk(x, k, *, axis=-1, largest=1, sorted=1):  # noqa: A002  (the spec's name)
    """https://onnx.ai/onnx/operators/onnx__TopK.html; results are always sorted (allowed)."""
    return _topk(x, ints(k)[0], axis, largest)


@register("ReverseSequence", since=10)
def reverse_sequence(x, sequence_lens, *, batch_axis=1, time_axis=0):
    """https://onnx.ai/onnx/operators/onnx__ReverseSequence.html"""
    m = xp(x, sequence_lens)
    b, t = norm_axis(batch_axis, x.ndim), norm_axis(time_axis, x.ndim)
    shape = [1] * x.ndim
    shape[t] = x.shape[t]
    steps = m.arange(x.shape[t]).reshape(shape)
    shape[t], shape[b] = 1, x.shape[b]
    lens = m.asarray(sequence_lens).astype(steps.dtype).reshape(shape)
    # Within its length a sequence reads backwards; past it, it is copied unchanged.
    src = m.broadcast_to(m.where(steps < lens, lens - 1 - steps, steps), x.shape)
    return m.take_along_axis(x, src, axis=t)


@register("Compress", since=9)
def compress(x, condition, *, axis=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__Compress.html; the condition must be static."""
    _need_static(ctx, "condition", condition, "it decides the output shape")
    keep = np.nonzero(np.asarray(condition).reshape(-1))[0]
    m = xp(x)
    if axis is None:
        x, axis = m.reshape(x, (-1,)), 0
    a = norm_axis(axis, x.ndim)
    if keep.size and keep[-1] >= x.shape[a]:
        raise ValueError(f"condition selects index {keep[-1]} of an axis of size {x.shape[a]}")
    return m.take(x, keep, axis=a)


@register("NonZero", since=9)
def non_zero(x, *, ctx):
    """https://onnx.ai/onnx/operators/onnx__NonZero.html; only for static inputs for now."""
    _need_static(ctx, "X", x, "NonZero's output shape depends on its values")
    if x.ndim == 0:
        return np.zeros((0, int(x != 0)), np.int64)
    return np.stack(np.nonzero(x)).astype(np.int64).reshape(x.ndim, -1)
