"""Loss ops: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._registry import register


def _compute_dtype(dtype) -> np.dtype:
    """Reduced-precision floats accumulate in float32 (the result is cast back)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def _nll(log_prob, target, weight, ignore_index, reduction, out_dtype):
    """The shared tail: pick -log_prob[n, target[n, ...], ...], weight it, reduce.

    Ignored targets may be out of [0, C) (e.g. -100), so the gather index is clipped first and
    the weight zeroes them; the reference does the same.
    """
    c = log_prob.shape[1]
    target = jnp.asarray(target)
    idx = jnp.clip(target, 0, c - 1)
    picked = -jnp.take_along_axis(log_prob, jnp.expand_dims(idx, 1), axis=1)[:, 0]
    if weight is not None:
        w = jnp.take(jnp.asarray(weight).astype(log_prob.dtype), idx)
    else:
        w = jnp.ones(target.shape, log_prob.dtype)
    if ignore_index is not None:
        w = jnp.where(target == ignore_index, jnp.zeros((), w.dtype), w)
    loss = w * picked
    if reduction == "none":
        out = loss
    elif reduction == "sum":
        out = jnp.sum(loss)
    elif reduction == "mean":
        # sum(w * loss) / sum(w): with neither weights nor ignore_index this is the plain mean.
        out = jnp.sum(loss) / jnp.sum(w)
    else:
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    return out.astype(out_dtype)


def _check_rank(x) -> None:
    if x.ndim < 2:
        raise ValueError(f"input must have shape (N, C, d1, ...), got {list(x.shape)}")


@register("NegativeLogLikelihoodLoss", since=12)
def negative_log_likelihood_loss(x, target, weight=None, *, ignore_index=None, reduction="mean"):
    """https://onnx.ai/onnx/operators/onnx__NegativeLogLikelihoodLoss.html"""
    _check_rank(x)
    dt = x.dtype
    return _nll(
        jnp.asarray(x).astype(_compute_dtype(dt)), target, weight, ignore_index, reduction, dt
    )


@register("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy_loss(
    scores, labels, weights=None, *, ignore_index=None, reduction="mean"
):
    """https://onnx.ai/onnx/operators/onnx__SoftmaxCrossEntropyLoss.html

    Returns (loss, log_prob); the tracer drops log_prob when the node does not ask for it.
    """
    _check_rank(scores)
    dt = scores.dtype
    log_prob = jax.nn.log_softmax(jnp.asarray(scores).astype(_compute_dtype(dt)), axis=1)
    loss = _nll(log_prob, labels, weights, ignore_index, reduction, dt)
    return loss, log_prob.astype(dt)
