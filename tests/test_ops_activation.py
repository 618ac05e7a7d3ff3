"""Activation functions and the softmax family against onnx's reference."""

import numpy as np
import pytest
from op_check import check_node, node_model

import onnx2jax

rng = np.random.default_rng(1)
F16 = {"rtol": 3e-3, "atol": 3e-3}


def randn(*shape, dtype=np.float32):
    return (2 * rng.standard_normal(shape)).astype(dtype)


# op -> (attrs, opset) at the newest form; every op also runs in float16.
ACTIVATIONS = {
    "Relu": ({}, None),
    "Sigmoid": ({}, None),
    "Tanh": ({}, None),
    "LeakyRelu": ({"alpha": 0.2}, None),
    "Elu": ({"alpha": 0.7}, None),
    "Selu": ({"alpha": 1.5, "gamma": 1.2}, None),
    "Celu": ({"alpha": 0.8}, None),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, None),
    "HardSwish": ({}, None),
    "Softplus": ({}, None),
    "Softsign": ({}, None),
    "Mish": ({}, None),
    "ThresholdedRelu": ({"alpha": 0.5}, None),
    "Shrink": ({"lambd": 0.7, "bias": 0.3}, None),
    "Gelu": ({}, 20),
    "Swish": ({"alpha": 0.7}, 24),
}


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_activation_float32(op):
    attrs, opset = ACTIVATIONS[op]
    check_node(op, {"x": randn(2, 3, 4)}, attrs, opset=opset)
    check_node(op, {"x": randn(2, 3, 4)}, opset=opset)  # spec defaults


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_activation_float16_stays_float16(op):
    attrs, opset = ACTIVATIONS[op]
    (out,) = check_node(op, {"x": randn(3, 4, dtype=np.float16)}, attrs, opset=opset, **F16)
    assert out.dtype == np.float16


@pytest.mark.parametrize(
    "op", ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "HardSigmoid"]
)
def test_activation_opset1_consumed_inputs_and_opset6(op):
    x = randn(2, 3)
    check_node(op, {"x": x}, opset=6)
    # the reference rejects consumed_inputs, so compare with the opset-6 result
    v1 = onnx2jax.load(node_model(op, {"x": x}, {"consumed_inputs": [0]}, opset=1))
    v6 = onnx2jax.load(node_model(op, {"x": x}, opset=6))
    np.testing.assert_allclose(np.asarray(v1(x=x)[0]), np.asarray(v6(x=x)[0]), rtol=1e-3)


def test_selu_opset1_defaults():
    x = randn(2, 3)
    v1 = onnx2jax.load(node_model("Selu", {"x": x}, opset=1))
    expected = 1.0507 * np.where(x > 0, x, 1.6732 * (np.exp(x) - 1))
    np.testing.assert_allclose(np.asarray(v1(x=x)[0]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_relu_integers(dtype):
    check_node("Relu", {"x": rng.integers(-50, 50, (3, 4)).astype(dtype)}, opset=14)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_shrink_integers(dtype):
    lo = 0 if np.dtype(dtype).kind == "u" else -10
    x = rng.integers(lo, 10, (3, 4)).astype(dtype)
    check_node("Shrink", {"x": x}, {"lambd": 1.5, "bias": 2.0})


def test_gelu_tanh_approximation():
    x = randn(3, 5)
    check_node("Gelu", {"x": x}, {"approximate": "tanh"}, opset=20)
    check_node("Gelu", {"x": x.astype(np.float16)}, {"approximate": "tanh"}, opset=20, **F16)


def test_prelu_broadcast():
    x = randn(2, 3, 4, 5)
    check_node("PRelu", {"x": x, "slope": randn(3, 1, 1)})
    check_node("PRelu", {"x": x, "slope": randn(5)}, opset=7)
    check_node("PRelu", {"x": x, "slope": randn(1)}, opset=9)
    check_node(
        "PRelu", {"x": x.astype(np.float16), "slope": randn(3, 1, 1, dtype=np.float16)}, **F16
    )
    xi = rng.integers(-9, 9, (3, 4)).astype(np.int32)
    check_node("PRelu", {"x": xi, "slope": rng.integers(1, 4, (4,)).astype(np.int32)}, opset=9)
    check_node("PRelu", {"x": x, "slope": randn(3, 1, 1)}, constants=["slope"])


def test_prelu_before_opset7_slope_per_channel():
    x = randn(2, 3, 4, 5)
    slope = randn(3)  # numpy broadcasting would fail; before opset 7 it is per channel
    check_node("PRelu", {"x": x, "slope": slope}, opset=6)
    m = onnx2jax.load(
        node_model("PRelu", {"x": x, "slope": slope}, {"consumed_inputs": [0]}, opset=1)
    )
    expected = np.where(x < 0, x * slope[:, None, None], x)
    np.testing.assert_allclose(np.asarray(m(x=x, slope=slope)[0]), expected, rtol=1e-6)


# -- softmax family ------------------------------------------------------------------------------

SOFTMAX = ["Softmax", "LogSoftmax", "Hardmax"]


@pytest.mark.parametrize("op", SOFTMAX)
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_softmax_family_single_axis(op, axis):
    check_node(op, {"x": randn(2, 3, 4)}, {"axis": axis}, opset=13)


@pytest.mark.parametrize("op", SOFTMAX)
@pytest.mark.parametrize("opset", [1, 11])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_family_before_13_flatten_at_axis(op, opset, axis):
    """Before opset 13 the input is coerced to 2-D at ``axis``. onnx's reference evaluator
    applies the opset-13 rule to every opset, so onnxruntime is the reference here."""
    check_node(op, {"x": randn(2, 3, 4)}, {"axis": axis}, opset=opset, reference="ort")


@pytest.mark.parametrize("op", SOFTMAX)
def test_softmax_family_defaults_differ_by_opset(op):
    x = randn(2, 3, 4)
    old = check_node(op, {"x": x}, opset=12, reference="ort")[0]  # axis=1, flattened: rows of 12
    new = check_node(op, {"x": x}, opset=13)[0]  # axis=-1: rows of 4
    assert not np.allclose(old, new)


@pytest.mark.parametrize("op", SOFTMAX)
def test_softmax_family_float16(op):
    (out,) = check_node(op, {"x": randn(3, 5, dtype=np.float16)}, **F16)
    assert out.dtype == np.float16


def test_hardmax_first_of_ties():
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, -5.0, -1.0, -2.0]], np.float32)
    check_node("Hardmax", {"x": x})
    check_node("Hardmax", {"x": x}, {"axis": 0})
    check_node("Hardmax", {"x": x}, {"axis": 0}, opset=11, reference="ort")  # one 1 in all x


def test_softmax_extreme_values():
    x = np.array([[1000.0, 0.0, -1000.0], [-np.inf, 0.0, 1.0]], np.float32)
    check_node("Softmax", {"x": x})
    # onnx's reference takes log(softmax) and gives -inf; onnxruntime keeps -1000 and -2000
    check_node("LogSoftmax", {"x": x[:1]}, reference="ort")
