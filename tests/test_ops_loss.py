"""Loss ops (ops/loss.py) against onnx's reference."""

import numpy as np
import pytest
from op_check import check_node

rng = np.random.default_rng(0)

SHAPES = [(5, 4), (3, 4, 2), (2, 3, 2, 3)]  # (N, C), (N, C, d1), (N, C, d1, d2)


def labels(shape, c, ignore=None):
    t = rng.integers(0, c, (shape[0], *shape[2:])).astype(np.int64)
    if ignore is not None:
        t.reshape(-1)[::3] = ignore  # some targets are ignored (possibly out of [0, C))
    return t


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 1, -100])
def test_nll_loss(shape, reduction, weighted, ignore_index):
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    w = rng.uniform(0.5, 2, c).astype(np.float32) if weighted else None
    attrs = {"reduction": reduction}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    t = labels(shape, c, ignore_index)
    check_node("NegativeLogLikelihoodLoss", {"x": x, "t": t, "w": w}, attrs, opset=13)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 2, -1])
def test_softmax_cross_entropy_with_log_prob(shape, reduction, weighted, ignore_index):
    x = rng.standard_normal(shape).astype(np.float32) * 3
    c = shape[1]
    w = rng.uniform(0.5, 2, c).astype(np.float32) if weighted else None
    attrs = {"reduction": reduction}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    t = labels(shape, c, ignore_index)
    inputs = {"x": x, "t": t, "w": w}
    check_node("SoftmaxCrossEntropyLoss", inputs, attrs, n_outputs=2, opset=13)
    check_node("SoftmaxCrossEntropyLoss", inputs, attrs, opset=12)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_loss_dtypes_and_int32_targets(dtype):
    x = rng.standard_normal((4, 5, 3)).astype(dtype)
    t = rng.integers(0, 5, (4, 3)).astype(np.int32)
    w = rng.uniform(0.5, 2, 5).astype(dtype)
    tol = {"rtol": 2e-3, "atol": 2e-3} if dtype == np.float16 else {}
    check_node(
        "SoftmaxCrossEntropyLoss", {"x": x, "t": t, "w": w}, n_outputs=2, opset=13, x64=True, **tol
    )
    check_node(
        "NegativeLogLikelihoodLoss",
        {"x": x, "t": t},
        {"reduction": "sum"},
        opset=13,
        x64=True,
        **tol,
    )


def test_loss_constant_inputs_fold():
    x = rng.standard_normal((3, 4)).astype(np.float32)
    t = np.array([0, 3, 1], np.int64)
    check_node(
        "SoftmaxCrossEntropyLoss", {"x": x, "t": t}, n_outputs=2, opset=13, constants=["x", "t"]
    )


def test_softmax_cross_entropy_is_differentiable():
    import jax
    from op_check import node_model

    import onnx2jax

    x = rng.standard_normal((3, 4)).astype(np.float32)
    t = np.array([0, 3, 1], np.int64)
    m = onnx2jax.load(node_model("SoftmaxCrossEntropyLoss", {"x": x, "t": t}, opset=13))
    g = jax.grad(lambda v: m.apply(m.params, v, t)[0])(x)
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    np.testing.assert_allclose(g, (p - np.eye(4)[t]) / 3, rtol=1e-5, atol=1e-6)
