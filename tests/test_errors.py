"""Bad input gets one clear error from the onnx2jax hierarchy, naming what is wrong."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from models_in_code import affine_relu
from onnx import TensorProto as T

import onnx2jax
from onnx2jax import InputError, ModelLoadError, Onnx2JaxError, UnsupportedOpsError

X = np.zeros((3, 4), np.float32)


def _graph_model(nodes, inputs=("x",), outputs=("y",)):
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(i, T.FLOAT, [2]) for i in inputs],
        [oh.make_tensor_value_info(o, T.FLOAT, [2]) for o in outputs],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_hierarchy():
    for cls in (
        InputError,
        ModelLoadError,
        UnsupportedOpsError,
        onnx2jax.ExternalDataError,
        onnx2jax.StaticValueError,
        onnx2jax.NodeError,
    ):
        assert issubclass(cls, Onnx2JaxError)


def test_truncated_file(tmp_path):
    data = affine_relu().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated|corrupt"):
        onnx2jax.load(path)


def test_garbage_bytes():
    with pytest.raises(ModelLoadError):
        onnx2jax.load(b"\xff\xfe this is not an onnx model \x00\x01")


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        onnx2jax.load(tmp_path / "nope.onnx")


def test_cycle_names_nodes():
    model = _graph_model(
        [
            oh.make_node("Add", ["x", "b"], ["a"], name="first"),
            oh.make_node("Relu", ["a"], ["b"], name="second"),
            oh.make_node("Identity", ["a"], ["y"], name="out"),
        ]
    )
    with pytest.raises(ModelLoadError, match="cycle.*first"):
        onnx2jax.load(model)


def test_dangling_input_names_node_and_value():
    model = _graph_model([oh.make_node("Add", ["x", "ghost"], ["y"], name="adder")])
    with pytest.raises(ModelLoadError, match="adder.*ghost"):
        onnx2jax.load(model)


def test_unsupported_ops_reported_all_at_once_at_load():
    model = _graph_model(
        [
            oh.make_node("FancyOp", ["x"], ["a"], name="n1", domain="com.example"),
            oh.make_node("OtherOp", ["a"], ["y"], name="n2", domain="com.example"),
        ]
    )
    model.opset_import.append(oh.make_opsetid("com.example", 3))
    with pytest.raises(UnsupportedOpsError) as info:
        onnx2jax.load(model)
    assert len(info.value.missing) == 2
    msg = str(info.value)
    assert "com.example::FancyOp (opset 3), node 'n1'" in msg and "OtherOp" in msg


def test_unknown_attribute_reported_at_load():
    model = _graph_model([oh.make_node("Relu", ["x"], ["y"], name="r", bogus=3)])
    with pytest.raises(UnsupportedOpsError, match="bogus"):
        onnx2jax.load(model)


@pytest.fixture(scope="module")
def model():
    return onnx2jax.load(affine_relu())


def test_missing_input(model):
    with pytest.raises(InputError, match=r"missing input.*'x'.*x: float32\[batch, 4\]"):
        model()


def test_extra_input(model):
    with pytest.raises(InputError, match="unknown input.*'extra'"):
        model(X, extra=X)


def test_too_many_positional(model):
    with pytest.raises(InputError, match="2 positional"):
        model(X, X)


def test_wrong_dtype(model):
    with pytest.raises(InputError, match="'x' has dtype int32.*float32"):
        model(X.astype(np.int32))


def test_wrong_rank(model):
    with pytest.raises(InputError, match="'x' has rank 3"):
        model(X[None])


def test_wrong_fixed_dim(model):
    with pytest.raises(InputError, match="axis 1.*fixes it to 4"):
        model(np.zeros((3, 5), np.float32))


def test_same_error_through_apply(model):
    with pytest.raises(InputError):
        model.apply(model.params, X[None])


def test_missing_param(model):
    with pytest.raises(InputError, match="params lacks"):
        model.apply({}, X)


def test_server_style_recovery(model):
    """After bad calls the model still serves good ones."""
    for bad in (X[None], X.astype(np.int32)):
        with pytest.raises(InputError):
            model(bad)
    assert model(X)[0].shape == (3, 4)


def test_node_failure_names_the_node():
    # Reshape to an impossible size fails inside the op; the error names the node.
    graph = oh.make_graph(
        [oh.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")],
        "g",
        [oh.make_tensor_value_info("x", T.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", T.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([4, 4], np.int64), "s")],
    )
    m = onnx2jax.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    with pytest.raises(onnx2jax.NodeError, match="bad_reshape"):
        m(np.zeros((2, 3), np.float32))


def test_not_a_model_type():
    with pytest.raises(TypeError, match="path, bytes"):
        onnx2jax.load(1234)


def test_no_interpreter_crash_on_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError):
        onnx2jax.load(path)
    assert os.path.exists(path)
