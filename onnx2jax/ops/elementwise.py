"""Element-wise math, comparisons and logic (https://onnx.ai/onnx/operators/)."""

from __future__ import annotations

import jax.numpy as jnp

from .._registry import register
from ._common import xp


@register("Add")
def add(a, b):
    return xp(a, b).add(a, b)


@register("Sub")
def sub(a, b):
    return xp(a, b).subtract(a, b)


@register("Mul")
def mul(a, b):
    return xp(a, b).multiply(a, b)


@register("Relu")
def relu(x):
    return jnp.maximum(x, 0)
