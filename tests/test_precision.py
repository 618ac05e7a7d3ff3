"""load(precision=...): the matmul precision reaches every dot of model(...), lower() and a user's jit."""

from __future__ import annotations

import re

import jax
import numpy as np
import onnx
import onnx.helper as oh
import pytest

import onnx2jax
from onnx2jax._kernels import MAX_ROWS


def _matmul_model() -> bytes:
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 8])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
        [w],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()


def _precisions(text: str) -> set[str]:
    return set(re.findall(r"precision = \[(\w+), \w+\]", text))


# More rows than onnx2jax's few-row CPU kernel takes (onnx2jax/_kernels: it computes in float32
# whatever the policy, with no XLA dot to carry a precision), so XLA's dot runs here.
X = np.random.default_rng(1).standard_normal((MAX_ROWS + 6, 8)).astype(np.float32)


@pytest.mark.parametrize(("policy", "hlo"), [("highest", "HIGHEST"), ("bfloat16", "DEFAULT")])
def test_precision_reaches_every_trace(policy, hlo):
    model = onnx2jax.load(_matmul_model(), precision=policy)
    lowered, _ = model.lower(X)
    assert _precisions(lowered.as_text()) == {hlo}
    assert _precisions(jax.jit(model.apply).lower(model.params, X).as_text()) == {hlo}
    ref = X @ np.asarray(model.params["w"])
    np.testing.assert_allclose(np.asarray(model(X)[0]), ref, rtol=1e-5, atol=1e-5)


def test_auto_changes_nothing_on_cpu():
    auto = onnx2jax.load(_matmul_model())
    fast = onnx2jax.load(_matmul_model(), precision="fast")
    expected = {"HIGHEST"} if jax.default_backend() != "cpu" else {"DEFAULT"}
    assert _precisions(auto.lower(X)[0].as_text()) == expected
    assert _precisions(fast.lower(X)[0].as_text()) == {"DEFAULT"}


def test_unknown_precision_is_refused():
    with pytest.raises(onnx2jax.Onnx2JaxError, match="precision='bf16'.*'fast'"):
        onnx2jax.load(_matmul_model(), precision="bf16")
