"""ai.onnx2jax KvCacheUpdate: the fixed-size cache write that the kv_cache pass puts in place of
``present = Concat(past, new)`` (passes/kv_cache.py). onnxruntime-genai's decoder ops are in
contrib_llm.py."""

from __future__ import annotations

import jax.numpy as jnp

from .._registry import register

DOMAIN = "ai.onnx2jax"


@register("KvCacheUpdate", domain=DOMAIN)
def kv_cache_update(past, new, position, *, axis=2):
    """``past`` with ``new`` written at positions ``position[b] + j`` along ``axis`` of row ``b``.

    ``past``: the fixed-capacity buffer ``[batch, ..., capacity, ...]``; ``new``: the same shape
    with ``t`` entries on ``axis``; ``position``: int ``[batch]``. Entries whose position falls
    outside ``[0, capacity)`` (left padding of a prompt) are dropped. A scatter on the buffer's
    own layout, so XLA writes in place when the buffer is donated or a loop carry.
    """
    axis = int(axis) % past.ndim
    if axis == 0:
        raise ValueError("KvCacheUpdate: axis 0 is the batch axis; the sequence axis must follow")
    batch, capacity, t = past.shape[0], past.shape[axis], new.shape[axis]
    slots = jnp.asarray(position).astype(jnp.int32)[:, None] + jnp.arange(t, dtype=jnp.int32)
    slots = jnp.where((slots >= 0) & (slots < capacity), slots, capacity)  # dropped
    rows = jnp.arange(batch, dtype=jnp.int32)[:, None]
    index = [slice(None)] * past.ndim
    index[0], index[axis] = rows, slots
    # Advanced indices on axes 0 and `axis` put their [batch, t] dims first.
    value = jnp.moveaxis(new.astype(past.dtype), axis, 1)
    return past.at[tuple(index)].set(value, mode="drop")
