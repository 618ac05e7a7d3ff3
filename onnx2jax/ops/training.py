"""Optimizer steps of ai.onnx.preview.training: Adagrad, Adam and Momentum.

Each takes R (learning rate), T (step count) and then the tensors of n parameters grouped by
kind (X1..Xn, G1..Gn, then the optimizer states), and returns the new values grouped the same
way. Coefficients are computed in the parameters' type.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._registry import register

_DOMAIN = "ai.onnx.preview.training"


def _groups(tensors, kinds: int, op: str):
    if len(tensors) % kinds:
        raise ValueError(
            f"{op} takes R, T and {kinds} tensors per parameter, got {len(tensors)} tensors"
        )
    n = len(tensors) // kinds
    return [tensors[i * n : (i + 1) * n] for i in range(kinds)]


def _scalar(v, dtype):
    return jnp.asarray(v).reshape(()).astype(dtype)


@register("Adagrad", since=1, domain=_DOMAIN)
def adagrad(r, t, *tensors, decay_factor=0.0, epsilon=1e-6, norm_coefficient=0.0):
    """https://onnx.ai/onnx/operators/onnx_aionnxpreviewtraining_Adagrad.html"""
    xs, gs, hs = _groups(tensors, 3, "Adagrad")
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs, strict=True):
        dt = jnp.asarray(x).dtype
        lr = _scalar(r, dt) / (1 + _scalar(t, dt) * decay_factor)
        g = norm_coefficient * x + g  # gradient of the L2 regularizer added
        h = h + g * g
        new_x.append(x - lr * g / (jnp.sqrt(h) + epsilon))
        new_h.append(h)
    return tuple(new_x + new_h)


@register("Adam", since=1, domain=_DOMAIN)
def adam(
    r,
    t,
    *tensors,
    alpha=0.9,
    beta=0.999,
    epsilon=1e-6,
    norm_coefficient=0.0,
    norm_coefficient_post=0.0,
):
    """https://onnx.ai/onnx/operators/onnx_aionnxpreviewtraining_Adam.html

    The bias correction sqrt(1 - beta^T) / (1 - alpha^T) applies from T = 1 on; T = 0 uses R.
    """
    xs, gs, vs, hs = _groups(tensors, 4, "Adam")
    outs_x, outs_v, outs_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs, strict=True):
        dt = jnp.asarray(x).dtype
        step = _scalar(t, dt)
        lr = _scalar(r, dt)
        corrected = (
            lr
            * jnp.sqrt(1 - jnp.power(jnp.asarray(beta, dt), step))
            / (1 - jnp.power(jnp.asarray(alpha, dt), step))
        )
        lr = jnp.where(step > 0, corrected, lr)
        g = norm_coefficient * x + g
        v = alpha * v + (1 - alpha) * g
        h = beta * h + (1 - beta) * (g * g)
        x = (x - lr * (v / (jnp.sqrt(h) + epsilon))) * (1 - norm_coefficient_post)
        outs_x.append(x)
        outs_v.append(v)
        outs_h.append(h)
    return tuple(outs_x + outs_v + outs_h)


@register("Momentum", since=1, domain=_DOMAIN)
def momentum(r, t, *tensors, alpha, beta, mode, norm_coefficient):
    """https://onnx.ai/onnx/operators/onnx_aionnxpreviewtraining_Momentum.html

    The gradient's coefficient is 1 on the first step (T = 0), beta afterwards.
    """
    if mode not in ("standard", "nesterov"):
        raise ValueError(f"mode must be 'standard' or 'nesterov', got {mode!r}")
    xs, gs, vs = _groups(tensors, 3, "Momentum")
    outs_x, outs_v = [], []
    for x, g, v in zip(xs, gs, vs, strict=True):
        dt = jnp.asarray(x).dtype
        lr = _scalar(r, dt)
        b = jnp.where(_scalar(t, dt) > 0, jnp.asarray(beta, dt), jnp.asarray(1, dt))
        g = norm_coefficient * x + g
        v = alpha * v + b * g
        step = v if mode == "standard" else g + alpha * v
        outs_x.append(x - lr * step)
        outs_v.append(v)
    return tuple(outs_x + outs_v)
