"""Bounded mode: NonZero, Compress and Unique with padded, fixed-size outputs plus a count.

With ``onnx2jax.load(..., max_sizes={node: N})`` or ``dynamic_bound=N`` these ops stay inside
the one jitted program: the data-dependent axis always has N entries, the first ``count`` of
them are the op's true results, the rest are zeros. ``count`` is the true number of results
(it may exceed N: then only the first N are kept). These are not registered ops; the load-time
analysis (``_segments``) swaps them in for the nodes it would otherwise break the graph at.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._ir import Node
from ._registry import OpImpl
from ._tracer import Step

# How many outputs each op can have; the count comes after all of them.
_N_OUTPUTS = {"NonZero": 1, "Compress": 1, "Unique": 4}


def _index_dtype() -> np.dtype:
    """int64 where JAX computes it (x64 on), else int32: what an ONNX int64 output becomes."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.int64))


def _valid(size: int, count) -> jax.Array:
    return jnp.arange(size) < count


def nonzero(x, *, size: int):
    """[rank, size] indices of the first ``size`` nonzero entries (row-major), zeros after."""
    x = jnp.asarray(x)
    count = jnp.count_nonzero(x).astype(_index_dtype())
    if x.ndim == 0:
        return jnp.zeros((0, size), _index_dtype()), count
    idx = jnp.stack(jnp.nonzero(x, size=size, fill_value=0)).astype(_index_dtype())
    return idx.reshape(x.ndim, size), count


def compress(x, condition, *, axis=None, size: int):
    """The first ``size`` slices of ``x`` where ``condition`` holds, zero slices after."""
    x = jnp.asarray(x)
    if axis is None:
        x, axis = x.reshape(-1), 0
    a = axis + x.ndim if axis < 0 else axis
    cond = jnp.asarray(condition).reshape(-1).astype(bool)
    count = jnp.count_nonzero(cond).astype(_index_dtype())
    (idx,) = jnp.nonzero(cond, size=size, fill_value=0)
    if x.shape[a] == 0:
        shape = list(x.shape)
        shape[a] = size
        return jnp.zeros(shape, x.dtype), count
    out = jnp.take(x, idx, axis=a, mode="clip")
    keep = _valid(size, count).reshape([-1 if d == a else 1 for d in range(x.ndim)])
    return jnp.where(keep, out, jnp.zeros((), x.dtype)), count


def unique(x, *, axis=None, sorted=1, size: int):  # noqa: A002  (the spec's name)
    """(Y, indices, inverse_indices, counts) padded to ``size`` unique entries, plus the count.

    ``inverse_indices`` keeps its natural length (one entry per input element or slice).
    """
    x = jnp.asarray(x)
    flat = axis is None
    if flat:
        x, a = x.reshape(-1), 0
    else:
        a = axis + x.ndim if axis < 0 else axis
    n = x.shape[a]
    idt = _index_dtype()
    if n == 0:
        shape = list(x.shape)
        shape[a] = size
        zeros = jnp.zeros(size, idt)
        return jnp.zeros(shape, x.dtype), zeros, jnp.zeros(0, idt), zeros, jnp.zeros((), idt)
    # All n possible results first (so the count is exact even when it exceeds ``size``).
    y, first, inverse, counts = jnp.unique(
        x,
        return_index=True,
        return_inverse=True,
        return_counts=True,
        axis=None if flat else a,
        size=n,
        fill_value=0,
    )
    inverse = inverse.reshape(-1)
    count = jnp.count_nonzero(counts).astype(idt)
    valid = _valid(n, count)
    if not sorted:
        # First-occurrence order: sort the valid entries by where they first appear.
        order = jnp.argsort(jnp.where(valid, first, n), stable=True)
        rank = jnp.zeros(n, order.dtype).at[order].set(jnp.arange(n, dtype=order.dtype))
        y, first, counts, inverse = (
            jnp.take(y, order, axis=a),
            first[order],
            counts[order],
            rank[inverse],
        )
    y = _fit(jnp.where(_along(valid, y.ndim, a), y, jnp.zeros((), y.dtype)), size, a)
    first = _fit(jnp.where(valid, first, 0), size, 0)
    counts = _fit(counts, size, 0)
    return y, first.astype(idt), inverse.astype(idt), counts.astype(idt), count


def _along(mask, ndim: int, a: int):
    return mask.reshape([-1 if d == a else 1 for d in range(ndim)])


def _fit(v, size: int, a: int):
    """``v`` cut or zero-padded to ``size`` entries along axis ``a``."""
    n = v.shape[a]
    if n >= size:
        return jax.lax.slice_in_dim(v, 0, size, axis=a)
    pad = [(0, 0)] * v.ndim
    pad[a] = (0, size - n)
    return jnp.pad(v, pad)


_IMPLS = {"NonZero": nonzero, "Compress": compress, "Unique": unique}


def count_name(node: Node) -> str:
    """The name of the extra graph output that holds a bounded node's count."""
    return f"{node.name}/count"


def bounded_step(step: Step, size: int) -> Step:
    """``step`` rewritten to run its op padded to ``size``, with its count as an extra output."""
    node, impl = step.node, step.impl
    outs = tuple(node.outputs) + ("",) * (_N_OUTPUTS[node.op_type] - len(node.outputs))
    node = dataclasses.replace(node, outputs=outs + (count_name(node),))
    fn = functools.partial(_IMPLS[node.op_type], size=size)
    impl = OpImpl(fn, impl.domain, impl.op_type, impl.since, takes_ctx=False, attr_names=None)
    return dataclasses.replace(step, node=node, impl=impl, static_inputs=())
