"""Random ops: RandomNormal/Uniform(Like), Bernoulli and Multinomial, deterministic via jax.random.

A model is a pure function, so there is no hidden generator state: every call draws the same
values. A node's key comes from its ``seed`` attribute (the float's bits); a node without a
seed gets a fixed key derived from its first output's name, so two seedless nodes still draw
independent streams. Values cannot match other runtimes (the spec allows this); shapes and
dtypes do.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np

from .._dtypes import canonical
from .._registry import register
from ._common import dtype_of, ints


def _key(seed, ctx):
    if seed is not None:
        return jax.random.key(int(np.float32(seed).view(np.uint32)))
    name = ctx.node.outputs[0] if ctx.node.outputs else ctx.node.name
    return jax.random.fold_in(jax.random.key(0), zlib.crc32(name.encode()))


def _like_dtype(x, dtype):
    return np.dtype(x.dtype) if dtype is None else dtype_of(dtype)


def _normal(key, shape, dtype, mean, scale):
    dt = canonical(dtype)
    # Draw in float32 (or float64) and cast: jax.random has no integer normal distribution.
    draw_dt = dt if dt.kind == "f" and dt.itemsize >= 4 else np.dtype(np.float32)
    v = jax.random.normal(key, tuple(shape), draw_dt) * scale + mean
    return v.astype(dt)


def _uniform(key, shape, dtype, low, high):
    dt = canonical(dtype)
    draw_dt = dt if dt.kind == "f" and dt.itemsize >= 4 else np.dtype(np.float32)
    v = jax.random.uniform(key, tuple(shape), draw_dt, minval=low, maxval=high)
    return v.astype(dt)


@register("RandomNormal")
def random_normal(*, shape, dtype=1, mean=0.0, scale=1.0, seed=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__RandomNormal.html"""
    return _normal(_key(seed, ctx), ints(shape), dtype_of(dtype), mean, scale)


@register("RandomUniform")
def random_uniform(*, shape, dtype=1, high=1.0, low=0.0, seed=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__RandomUniform.html"""
    return _uniform(_key(seed, ctx), ints(shape), dtype_of(dtype), low, high)


@register("RandomNormalLike")
def random_normal_like(x, *, dtype=None, mean=0.0, scale=1.0, seed=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__RandomNormalLike.html; only x's shape is read."""
    return _normal(_key(seed, ctx), x.shape, _like_dtype(x, dtype), mean, scale)


@register("RandomUniformLike")
def random_uniform_like(x, *, dtype=None, high=1.0, low=0.0, seed=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__RandomUniformLike.html; only x's shape is read."""
    return _uniform(_key(seed, ctx), x.shape, _like_dtype(x, dtype), low, high)


@register("Bernoulli", since=15)
def bernoulli(x, *, dtype=None, seed=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__Bernoulli.html: 1 with probability x, else 0."""
    u = jax.random.uniform(_key(seed, ctx), x.shape, jnp.float32)
    return (u < jnp.asarray(x).astype(jnp.float32)).astype(canonical(_like_dtype(x, dtype)))


@register("Multinomial", since=7)
def multinomial(x, *, dtype=6, sample_size=1, seed=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__Multinomial.html

    ``x`` is [batch, classes] of unnormalized log-probabilities; returns [batch, sample_size]
    class indices.
    """
    logits = jnp.asarray(x).astype(jnp.float32)
    draws = jax.random.categorical(
        _key(seed, ctx), logits, axis=-1, shape=(sample_size, x.shape[0])
    )
    return draws.T.astype(canonical(dtype_of(dtype)))
