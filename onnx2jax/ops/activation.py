"""Activation functions and softmax-like normalisations (https://onnx.ai/onnx/operators/)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from .._registry import register
from .elementwise import with_consumed_inputs

# Python float attributes are weakly typed in JAX, so float16/bfloat16 inputs stay in their dtype.
# Divisions by constants are written as products with the reciprocal: XLA rewrites them so under
# jit anyway, and eager and jitted results then agree to the bit.


def relu(x):
    return jnp.maximum(x, 0)


def sigmoid(x):
    return jax.nn.sigmoid(x)


def tanh(x):
    return jnp.tanh(x)


def leaky_relu(x, *, alpha=0.01):
    return jnp.where(x < 0, alpha * x, x)


def elu(x, *, alpha=1.0):
    return jnp.where(x < 0, alpha * jnp.expm1(x), x)


def selu(x, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    return gamma * jnp.where(x > 0, x, alpha * jnp.expm1(x))


def hard_sigmoid(x, *, alpha=0.2, beta=0.5):
    return jnp.clip(alpha * x + beta, 0, 1)


# Each of these gained a form without ``consumed_inputs`` at opset 6.
for _op, _fn in {
    "Relu": relu,
    "Sigmoid": sigmoid,
    "Tanh": tanh,
    "LeakyRelu": leaky_relu,
    "Elu": elu,
    "HardSigmoid": hard_sigmoid,
}.items():
    register(_op, since=1)(with_consumed_inputs(_fn))
    register(_op, since=6)(_fn)


@register("Selu", since=1)
def selu_v1(x, *, alpha=1.6732, gamma=1.0507, consumed_inputs=None):
    """Opset 1's Selu: rounder default constants."""
    return selu(x, alpha=alpha, gamma=gamma)


register("Selu", since=6)(selu)


@register("PRelu", since=7)
def prelu(x, slope):
    """https://onnx.ai/onnx/operators/onnx__PRelu.html (``slope`` broadcasts to ``x``)."""
    return jnp.where(x < 0, x * slope, x)


def prelu_v6(x, slope):
    """Before opset 7 a 1-D ``slope`` holds one value per channel (axis 1)."""
    if slope.ndim == 1 and slope.shape[0] > 1 and x.ndim > 2 and slope.shape[0] == x.shape[1]:
        slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
    return prelu(x, slope)


register("PRelu", since=1)(with_consumed_inputs(prelu_v6))
register("PRelu", since=6)(prelu_v6)


@register("Celu", since=12)
def celu(x, *, alpha=1.0):
    return jnp.maximum(x, 0) + jnp.minimum(0, alpha * jnp.expm1(x * (1 / alpha)))


@register("ThresholdedRelu", since=10)
def thresholded_relu(x, *, alpha=1.0):
    return jnp.where(x > alpha, x, 0)


@register("HardSwish", since=14)
def hard_swish(x):
    return x * jnp.clip(x * (1 / 6) + 0.5, 0, 1)  # the spec's alpha = 1/6, beta = 0.5


@register("Softplus")
def softplus(x):
    return jnp.logaddexp(x, 0)


@register("Softsign")
def softsign(x):
    return x / (1 + jnp.abs(x))


@register("Mish", since=18)
def mish(x):
    return x * jnp.tanh(jnp.logaddexp(x, 0))


@register("Gelu", since=20)
def gelu(x, *, approximate="none"):
    """https://onnx.ai/onnx/operators/onnx__Gelu.html"""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return jax.nn.gelu(x, approximate=True) if approximate == "tanh" else _gelu_erf(x)


def _gelu_erf(x):
    # As the spec writes it, with erf: jax.nn.gelu(approximate=False) uses erfc, which XLA on
    # CPU computes at about twice the cost ([8, 128, 1024]: 2.1 vs 1.1 ms); the two differ only
    # in the far negative tail, where both are ~0.
    return x * (jax.lax.erf(x * math.sqrt(0.5)) + 1) * 0.5


# onnxruntime's contrib ops, which passes/norm_act.py writes for GELUs below opset 20
# (https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md).
@register("Gelu", domain="com.microsoft")
def ms_gelu(x):
    """onnxruntime's Gelu (com.microsoft): ``x * 0.5 * (1 + erf(x / sqrt(2)))``."""
    return _gelu_erf(x)


@register("FastGelu", domain="com.microsoft")
def ms_fast_gelu(x, bias=None):
    """onnxruntime's FastGelu (com.microsoft): the tanh GELU of ``x (+ bias)``."""
    if bias is not None:
        x = x + bias
    return jax.nn.gelu(x, approximate=True)


@register("Swish", since=24)
def swish(x, *, alpha=1.0):
    return x * jax.nn.sigmoid(alpha * x)


@register("Shrink", since=9)
def shrink(x, *, bias=0.0, lambd=0.5):
    """https://onnx.ai/onnx/operators/onnx__Shrink.html (integer inputs too: cast back)."""
    out = jnp.where(x < -lambd, x + bias, jnp.where(x > lambd, x - bias, 0))
    return out.astype(x.dtype)


# -- softmax family: one axis since opset 13, before that the input flattened to 2-D at axis ------


@register("Softmax", since=13)
def softmax(x, *, axis=-1):
    return jax.nn.softmax(x, axis=axis)


@register("LogSoftmax", since=13)
def log_softmax(x, *, axis=-1):
    return jax.nn.log_softmax(x, axis=axis)


@register("Hardmax", since=13)
def hardmax(x, *, axis=-1):
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    axis = axis + x.ndim if axis < 0 else axis
    first = jnp.argmax(x, axis=axis, keepdims=True)
    return (jax.lax.broadcasted_iota(first.dtype, x.shape, axis) == first).astype(x.dtype)


def _flattened_at_axis(fn: Callable) -> Callable:
    """The opset 1-12 form: ``x`` seen as 2-D ``[prod(shape[:axis]), prod(shape[axis:])]``."""

    def op(x, *, axis=1):
        start = axis + x.ndim if axis < 0 else axis
        rows, cols = math.prod(x.shape[:start]), math.prod(x.shape[start:])
        return fn(x.reshape(rows, cols), axis=1).reshape(x.shape)

    op.__name__ = op.__qualname__ = f"{fn.__name__}_v1"
    return op


for _op, _fn in {"Softmax": softmax, "LogSoftmax": log_softmax, "Hardmax": hardmax}.items():
    register(_op, since=1)(_flattened_at_axis(_fn))
