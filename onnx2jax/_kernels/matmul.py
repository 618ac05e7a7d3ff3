"""The JAX side of the packed few-row product: packing, the FFI call, its gradient and vmap.

Without the built kernel, off the CPU, for dtypes other than float32 and above ``MAX_ROWS``
rows, ``packed_matmul`` runs as an XLA dot on the packed layout, so a model gives the same
results everywhere. Both paths are differentiable (the gradient is two dots on the packed
layout), and vmap folds a batch into the kernel's rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import MAX_ROWS, PANEL
from ._ffi import available

__all__ = ["available", "pack", "packed_matmul", "takes"]
_TARGET = "onnx2jax_packed_matmul"


def takes(lead, *dtypes) -> bool:
    """Whether the kernel runs a product whose rows are ``lead`` (the leading dims, static ints;
    symbolic under jax.export) with operands of ``dtypes``: at most MAX_ROWS rows, float32,
    and the kernel available here."""
    if not all(isinstance(d, int) for d in lead) or int(np.prod(lead)) > MAX_ROWS:
        return False
    return all(d == jnp.float32 for d in dtypes) and available()


def pack(w):
    """A [K, N] weight as panels [ceil(N / 8), K, 8], zero-padded: differentiable jnp ops.
    A leading batch ([B, K, N], e.g. an RNN's directions) gives [B, P, K, 8]."""
    *batch, k, n = w.shape
    panels = -(-n // PANEL)
    xp = np if isinstance(w, np.ndarray) else jnp
    w = xp.pad(w, [(0, 0)] * len(batch) + [(0, 0), (0, panels * PANEL - n)])
    w = w.reshape(*batch, k, panels, PANEL)
    return xp.moveaxis(w, -2, -3)


def packed_matmul(x, packed, n: int, stream: bool = True):
    """``x @ W`` for ``x`` [..., K] and ``packed = pack(W)``; the result is [..., n].

    With a batch of weights (``packed`` [B, P, K, 8]) ``x`` is [B, ..., K]: one product per
    batch entry, in one kernel call. ``stream``: the weight is read once per call, so the
    kernel prefetches it (False for a weight read again and again, e.g. inside a loop).
    """
    batch = packed.shape[:-3]
    lead = x.shape[len(batch) : -1]
    rows = x.reshape(*batch, int(np.prod(lead)), x.shape[-1])
    if takes(lead, x.dtype, packed.dtype):
        y = _packed_matmul(rows, packed, n, stream)
    else:
        y = _xla(rows, packed, n)
    return y.reshape(*x.shape[:-1], n)


def _xla(rows, packed, n):
    y = jnp.einsum("...mk,...pkj->...mpj", rows, packed, preferred_element_type=jnp.float32)
    return y.reshape(*y.shape[:-2], -1)[..., :n].astype(jnp.result_type(rows, packed))


def _on_cpu(rows, packed, n, stream):
    return jax.lax.platform_dependent(
        rows,
        packed,
        cpu=functools.partial(_call, n=n, stream=stream),
        default=functools.partial(_xla, n=n),
    )


def _call(rows, packed, n, stream):
    out = jax.ShapeDtypeStruct((*rows.shape[:-1], n), rows.dtype)
    return jax.ffi.ffi_call(_TARGET, out)(rows, packed, stream=stream)


@functools.cache
def _batched(n: int, stream: bool):
    """The kernel call for ``n`` output columns, with a vmap rule (custom_vmap takes no static
    arguments, so there is one function per ``n`` and ``stream``)."""

    @jax.custom_batching.custom_vmap
    def call(rows, packed):
        return _on_cpu(rows, packed, n, stream)

    @call.def_vmap
    def rule(axis_size, in_batched, rows, packed):
        rows_b, packed_b = in_batched
        if packed_b:  # a different weight per vmapped entry: XLA's batched dot
            rows = rows if rows_b else jnp.broadcast_to(rows, (axis_size, *rows.shape))
            return jax.vmap(functools.partial(_xla, n=n))(rows, packed), True
        # One weight for all entries: they become more rows of the same product.
        m, k = rows.shape[-2:]
        rows = jnp.moveaxis(rows, 0, -3).reshape(*rows.shape[1:-2], axis_size * m, k)
        y = call(rows, packed) if rows.shape[-2] <= MAX_ROWS else _xla(rows, packed, n)
        y = y.reshape(*y.shape[:-2], axis_size, m, n)
        return jnp.moveaxis(y, -3, 0), True

    return call


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _packed_matmul(rows, packed, n, stream):
    return _batched(n, stream)(rows, packed)


def _fwd(rows, packed, n, stream):
    return _packed_matmul(rows, packed, n, stream), (rows, packed)


def _bwd(n, stream, saved, dy):
    rows, packed = saved
    panels = packed.shape[-3]
    pad = [(0, 0)] * (dy.ndim - 1) + [(0, panels * PANEL - n)]
    dy = jnp.pad(dy, pad).reshape(*dy.shape[:-1], panels, PANEL)
    d_rows = jnp.einsum("...mpj,...pkj->...mk", dy, packed)
    d_packed = jnp.einsum("...mk,...mpj->...pkj", rows, dy)
    return d_rows, d_packed


_packed_matmul.defvjp(_fwd, _bwd)
