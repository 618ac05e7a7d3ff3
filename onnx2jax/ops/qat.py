"""Fake quantization with straight-through gradients, for quantization-aware training
(domain ai.onnx2jax; ``onnx2jax.quantization.prepare_qat`` writes these nodes).

Forward, each op gives exactly what its ONNX counterpart gives: FakeQuantizeLinear(x, s, z)
equals DequantizeLinear(QuantizeLinear(x, s, z), s, z), RoundSTE equals Round. Backward,
rounding passes the gradient straight through (``v + stop_gradient(round(v) - v)``), so
d/dx is 1 inside the quantization range and 0 where the value saturates, and the scale gets
the learned-step-size gradient. Plain QuantizeLinear gives no gradient at all: its result is an
integer tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._registry import register
from .quant import _int_range, _param, exact_div

DOMAIN = "ai.onnx2jax"


def _round_ste(v):
    return v + jax.lax.stop_gradient(jnp.round(v) - v)


@register("FakeQuantizeLinear", domain=DOMAIN)
def fake_quantize_linear(x, scale, zero_point, *, axis=1, block_size=0):
    """DequantizeLinear(QuantizeLinear(x)) with straight-through gradients, for QAT.

    (clip(round(x / scale) + zero_point, lo, hi) - zero_point) * scale; the integer type of
    ``zero_point`` (a constant) sets [lo, hi].
    """
    lo, hi = _int_range(np.dtype(zero_point.dtype))
    shape = tuple(x.shape)
    x = jnp.asarray(x)
    s = jnp.asarray(_param(scale, shape, axis, block_size)).astype(x.dtype)
    z = jnp.asarray(_param(zero_point, shape, axis, block_size)).astype(x.dtype)
    q = jnp.clip(_round_ste(exact_div(x, s)) + z, lo, hi)
    return (q - z) * s


@register("RoundSTE", domain=DOMAIN)
def round_ste(x):
    """Round (half to even) whose gradient is the identity."""
    return _round_ste(jnp.asarray(x))
