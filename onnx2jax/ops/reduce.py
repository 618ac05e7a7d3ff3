"""Reductions, ArgMax/ArgMin and cumulative sums/products (https://onnx.ai/onnx/operators/)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._registry import register
from ._common import axis as norm_axis
from ._common import ints, xp


def _axes(data, axes, noop_with_empty_axes: int = 0) -> tuple[int, ...]:
    """Reduced axes, sorted and non-negative; empty axes mean all of them unless ``noop``."""
    axes = [] if axes is None else ints(axes)
    if not axes:
        return () if noop_with_empty_axes else tuple(range(data.ndim))
    return tuple(sorted({norm_axis(a, data.ndim) for a in axes}))


def _is_int(dtype) -> bool:
    return np.issubdtype(dtype, np.integer)


def _extreme(dtype, lowest: bool):
    """Identity of max (lowest) or min (highest): -inf/+inf, or the integer range's end."""
    if _is_int(dtype):
        info = np.iinfo(dtype)
        return info.min if lowest else info.max
    return -np.inf if lowest else np.inf


def _max(m, x, ax, kd):
    if x.dtype == np.bool_:  # opset 20: False < True
        return m.any(x, axis=ax, keepdims=kd)
    # An empty reduction has no identity in numpy/jnp unless one is given.
    initial = _extreme(x.dtype, lowest=True) if x.size == 0 else None
    return m.max(x, axis=ax, keepdims=kd, initial=initial)


def _min(m, x, ax, kd):
    if x.dtype == np.bool_:
        return m.all(x, axis=ax, keepdims=kd)
    initial = _extreme(x.dtype, lowest=False) if x.size == 0 else None
    return m.min(x, axis=ax, keepdims=kd, initial=initial)


def _sum(m, x, ax, kd):
    # dtype= keeps integer sums in their own type (numpy would widen int32 to int64).
    return m.sum(x, axis=ax, keepdims=kd, dtype=x.dtype)


def _prod(m, x, ax, kd):
    return m.prod(x, axis=ax, keepdims=kd, dtype=x.dtype)


def _mean(m, x, ax, kd):
    if _is_int(x.dtype) and m is jnp:
        # Integer mean truncates toward zero, as numpy's mean(dtype=int) and onnxruntime do.
        n = math.prod(x.shape[a] for a in ax)
        return lax.div(_sum(m, x, ax, kd), jnp.asarray(n, x.dtype))
    return m.mean(x, axis=ax, keepdims=kd, dtype=x.dtype)


def _l1(m, x, ax, kd):
    return _sum(m, m.abs(x), ax, kd)


def _l2(m, x, ax, kd):
    return m.sqrt(_sum(m, x * x, ax, kd)).astype(x.dtype)


def _sum_square(m, x, ax, kd):
    return _sum(m, x * x, ax, kd)


def _log_sum(m, x, ax, kd):
    return m.log(_sum(m, x, ax, kd)).astype(x.dtype)


def _log_sum_exp(m, x, ax, kd):
    if x.size == 0:
        return m.full(np.sum(np.empty(x.shape), axis=ax, keepdims=kd).shape, -np.inf, x.dtype)
    # Shift by the largest finite value so exp cannot overflow; +-inf entries pass through.
    finite = m.isfinite(x)
    mx = m.max(m.where(finite, x, -np.inf), axis=ax, keepdims=True)
    mx = m.where(m.isfinite(mx), mx, 0).astype(x.dtype)
    res = m.log(_sum(m, m.exp(x - mx), ax, True)) + mx
    if not kd:
        res = res.reshape([d for i, d in enumerate(x.shape) if i not in ax])
    return res.astype(x.dtype)


_KERNELS = {
    "ReduceSum": (_sum, 13),
    "ReduceMean": (_mean, 18),
    "ReduceMax": (_max, 18),
    "ReduceMin": (_min, 18),
    "ReduceProd": (_prod, 18),
    "ReduceL1": (_l1, 18),
    "ReduceL2": (_l2, 18),
    "ReduceLogSum": (_log_sum, 18),
    "ReduceLogSumExp": (_log_sum_exp, 18),
    "ReduceSumSquare": (_sum_square, 18),
}


def _reduce(kernel, data, axes, keepdims, noop_with_empty_axes=0):
    m = xp(data)  # numpy on the shape path keeps int64 exact
    ax = _axes(data, axes, noop_with_empty_axes)
    x = data
    if jnp.issubdtype(data.dtype, jnp.floating) and data.dtype.itemsize < 4:
        x = x.astype(np.float32)  # half precision: compute in float32, round once
    if m is np:
        with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf is intended
            return np.asarray(kernel(m, x, ax, bool(keepdims))).astype(data.dtype)
    return kernel(m, x, ax, bool(keepdims)).astype(data.dtype)


def _register_reduce(op: str, kernel, axes_input_since: int) -> None:
    # Before ``axes_input_since``, axes is an attribute; from then on it is an optional
    # (static) input, and ``noop_with_empty_axes`` decides what empty axes mean.
    def reduce_attr(data, *, axes=None, keepdims=1):
        return _reduce(kernel, data, axes, keepdims)

    def reduce_input(data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return _reduce(kernel, data, axes, keepdims, noop_with_empty_axes)

    for fn in (reduce_attr, reduce_input):
        fn.__doc__ = f"https://onnx.ai/onnx/operators/onnx__{op}.html"
        fn.__qualname__ = fn.__name__ = f"{op}_{fn.__name__}"
    register(op, since=1)(reduce_attr)
    register(op, since=axes_input_since)(reduce_input)


for _op, (_kernel, _since) in _KERNELS.items():
    _register_reduce(_op, _kernel, _since)


def _arg(data, axis, keepdims, select_last_index, find_max: bool):
    m = xp(data)
    a = norm_axis(axis, data.ndim)
    fn = m.argmax if find_max else m.argmin
    if select_last_index:
        n = data.shape[a]
        idx = (n - 1) - fn(m.flip(data, a), axis=a, keepdims=bool(keepdims))
    else:
        idx = fn(data, axis=a, keepdims=bool(keepdims))
    # int64 per spec; jnp's argmax already gives int64, or int32 when x64 is off.
    return np.asarray(idx, np.int64) if m is np else idx


@register("ArgMax", since=1)
def argmax(data, *, axis=0, keepdims=1):
    """https://onnx.ai/onnx/operators/onnx__ArgMax.html"""
    return _arg(data, axis, keepdims, 0, find_max=True)


@register("ArgMax", since=12)
def argmax_12(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(data, axis, keepdims, select_last_index, find_max=True)


@register("ArgMin", since=1)
def argmin(data, *, axis=0, keepdims=1):
    """https://onnx.ai/onnx/operators/onnx__ArgMin.html"""
    return _arg(data, axis, keepdims, 0, find_max=False)


@register("ArgMin", since=12)
def argmin_12(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(data, axis, keepdims, select_last_index, find_max=False)


def _cumulative(x, axis, exclusive, reverse, product: bool):
    a = norm_axis(ints(axis)[0], x.ndim)
    n = x.shape[a]
    identity = 1 if product else 0
    m = xp(x)
    if exclusive and n:
        # Shift by one toward the scan direction, filling with the identity.
        pad = m.full(x.shape[:a] + (1,) + x.shape[a + 1 :], identity, x.dtype)
        keep = [slice(None)] * x.ndim
        keep[a] = slice(1, None) if reverse else slice(0, n - 1)
        parts = [x[tuple(keep)], pad] if reverse else [pad, x[tuple(keep)]]
        x = m.concatenate(parts, axis=a)
    if m is np:
        if reverse:
            x = np.flip(x, a)
        y = (np.cumprod if product else np.cumsum)(x, axis=a, dtype=x.dtype)
        return np.flip(y, a) if reverse else y
    dtype = x.dtype
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:  # accumulate halves in f32
        x = x.astype(jnp.float32)
    y = (lax.cumprod if product else lax.cumsum)(x, axis=a, reverse=bool(reverse))
    return y.astype(dtype)


@register("CumSum", since=11)
def cumsum(x, axis, *, exclusive=0, reverse=0):
    """https://onnx.ai/onnx/operators/onnx__CumSum.html"""
    return _cumulative(x, axis, exclusive, reverse, product=False)


@register("CumProd", since=26)
def cumprod(x, axis, *, exclusive=0, reverse=0):
    """https://onnx.ai/onnx/operators/onnx__CumProd.html"""
    return _cumulative(x, axis, exclusive, reverse, product=True)
