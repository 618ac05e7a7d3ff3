"""The expectations check itself: a listed case that fails for a new cause is not 'expected'."""

from __future__ import annotations

import onnx.helper as oh
import pytest
from failure_cause import check_listed_failure
from onnx import TensorProto

import onnx2jax


def _model(op: str):
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = oh.make_graph([oh.make_node(op, ["x"], ["y"])], "g", [x], [y])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])


def test_same_cause_is_expected():
    cause = check_listed_failure(_model("Bernoulli"), AssertionError("mismatch"), "random values")
    assert cause == "random values"


def test_new_cause_in_a_listed_case_fails():
    err = onnx2jax.NodeError("node 'n' (ai.onnx::Bernoulli) failed on inputs (x): TypeError: boom")
    with pytest.raises(AssertionError, match="now fails with"):
        check_listed_failure(_model("Bernoulli"), err, "random values")


def test_not_implemented_must_name_the_same_ops():
    err = onnx2jax.UnsupportedOpsError(["ai.onnx::Gradient (opset 18), node 'g'"])
    assert check_listed_failure(_model("Gradient"), err, "not implemented: Gradient")
    with pytest.raises(AssertionError):
        check_listed_failure(_model("Gradient"), err, "not implemented: Foo")
