"""The ONNX backend API (``onnx2jax.backend``): prepare/run, run_model, run_node, devices."""

from __future__ import annotations

import jax
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

import onnx2jax
import onnx2jax.backend as backend
from onnx2jax.backend import OnnxJaxBackend, OnnxJaxBackendRep


def _model() -> onnx.ModelProto:
    """y = relu(x @ w + b) * s, z = shape-free int64 sum of k: float, int64 and a weight."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["xw"]),
        oh.make_node("Add", ["xw", "b"], ["h"]),
        oh.make_node("Relu", ["h"], ["r"]),
        oh.make_node("Mul", ["r", "s"], ["y"]),
        oh.make_node("Add", ["k", "k"], ["z"]),
    ]
    graph = oh.make_graph(
        nodes,
        "tiny",
        [
            oh.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
            oh.make_tensor_value_info("b", TensorProto.FLOAT, [4]),
            oh.make_tensor_value_info("s", TensorProto.FLOAT, [1]),
            oh.make_tensor_value_info("k", TensorProto.INT64, [2]),
        ],
        [
            oh.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
            oh.make_tensor_value_info("z", TensorProto.INT64, [2]),
        ],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((5, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "s": np.array([2.0], np.float32),
        "k": np.array([2**40, -3], np.int64),  # exact only in 64 bits
    }


def _check(expected, got) -> None:
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        assert isinstance(g, np.ndarray)
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_prepare_run_list_and_dict_inputs_match_reference():
    model, feeds = _model(), _feeds()
    expected = ReferenceEvaluator(model).run(None, feeds)
    rep = backend.prepare(model)
    assert isinstance(rep, OnnxJaxBackendRep)
    _check(expected, rep.run([feeds[n] for n in ("x", "b", "s", "k")]))
    out = rep.run(feeds)
    _check(expected, out)
    # Outputs can be read by name as well as by position; int64 stays exact and int64.
    np.testing.assert_array_equal(out["z"], [2**41, -6])
    assert out["z"].dtype == np.int64


def test_prepare_runs_through_the_models_cached_jit():
    """prepare -> run goes through Model.__call__ (one jax.jit of the whole graph)."""
    from onnx2jax._api import _jitted

    rep = backend.prepare(_model())
    assert isinstance(rep.model, onnx2jax.Model)
    feeds = _feeds()
    rep.run(feeds)
    rep.run(feeds)
    jitted = _jitted(rep.model._program)
    assert jitted._cache_size() == 1  # compiled once, reused
    smaller = dict(feeds, x=feeds["x"][:2])
    rep.run(smaller)
    assert jitted._cache_size() == 2  # a new input shape compiles once more


def test_prepare_accepts_bytes_and_x64_off():
    model, feeds = _model(), _feeds()
    rep = OnnxJaxBackend.prepare(model.SerializeToString(), "CPU", x64=False)
    y, z = rep.run(feeds)
    assert z.dtype == np.int32  # the user default: int64 computed as int32
    np.testing.assert_allclose(
        y, ReferenceEvaluator(model).run(None, feeds)[0], rtol=1e-5, atol=1e-6
    )


def test_prepare_ignores_runner_kwargs():
    rep = OnnxJaxBackend.prepare(_model(), "CPU", rtol=1e-3, atol=1e-7)
    assert rep.run(_feeds())[0].shape == (5, 4)


def test_run_model():
    model, feeds = _model(), _feeds()
    _check(ReferenceEvaluator(model).run(None, feeds), backend.run_model(model, feeds))


def test_run_model_refuses_a_wrong_dtype():
    feeds = dict(_feeds(), k=np.array([1, 2], np.float32))
    with pytest.raises(onnx2jax.InputError, match="dtype"):
        backend.run_model(_model(), feeds)


def test_run_node_matches_reference():
    node = oh.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.5, transB=1)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = rng.standard_normal((4, 3)).astype(np.float32)
    c = rng.standard_normal(4).astype(np.float32)
    ref_model = backend.node_model(node, [a, b, c])
    expected = ReferenceEvaluator(ref_model).run(None, {"a": a, "b": b, "c": c})
    _check(expected, backend.run_node(node, [a, b, c]))
    _check(expected, backend.run_node(node, {"a": a, "b": b, "c": c}))


def test_run_node_with_absent_optional_input_and_outputs_info():
    node = oh.make_node("Clip", ["x", "", "hi"], ["y"])
    x = np.array([-2.0, 0.5, 3.0], np.float32)
    hi = np.array(1.0, np.float32)
    expected = np.minimum(x, 1.0)
    # A list may cover all node inputs (None for the absent one) or only the present ones.
    for inputs in ([x, None, hi], [x, hi]):
        (y,) = backend.run_node(node, inputs, outputs_info=[(np.float32, (3,))])
        np.testing.assert_array_equal(y, expected)


def test_run_node_int64_and_opset_version():
    node = oh.make_node("Add", ["a", "b"], ["c"])
    a = np.array([2**40], np.int64)
    (c,) = backend.run_node(node, [a, a], opset_version=13)
    assert c.dtype == np.int64 and int(c[0]) == 2**41


def test_run_node_sequence_output():
    node = oh.make_node("SplitToSequence", ["x"], ["seq"], axis=0, keepdims=0)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    (seq,) = backend.run_node(node, [x])
    assert isinstance(seq, list) and len(seq) == 3
    for got, want in zip(seq, x, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want)


def test_run_node_refuses_wrong_input_count():
    node = oh.make_node("Add", ["a", "b"], ["c"])
    with pytest.raises(onnx2jax.InputError, match="reads"):
        backend.run_node(node, [np.ones(2, np.float32)] * 3)


def test_supports_device():
    assert backend.supports_device("CPU")
    assert OnnxJaxBackend.supports_device("cpu")
    platforms = {d.platform for d in jax.devices()}
    assert backend.supports_device("CUDA") == ("gpu" in platforms)
    assert backend.supports_device("TPU") == ("tpu" in platforms)
    assert not backend.supports_device("FPGA")
    assert backend.is_compatible(_model(), "CPU")


def test_prepare_refuses_a_missing_device():
    if backend.supports_device("CUDA"):
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="not available"):
        backend.prepare(_model(), "CUDA")


def test_onnx_official_runner_accepts_the_backend():
    """onnx's own BackendTest runner drives the backend (a few cases, CUDA variants skip)."""
    import unittest
    import warnings

    import onnx.backend.test

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        runner = onnx.backend.test.BackendTest(OnnxJaxBackend, __name__)
    runner.include(r"^test_(abs|add_bcast|identity_sequence|cast_FLOAT_to_DOUBLE)_cpu$")
    suite = unittest.TestSuite()
    for case in runner.test_cases.values():
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(case))
    result = unittest.TestResult()
    suite.run(result)
    problems = [f"{t}: {msg[-300:]}" for t, msg in result.failures + result.errors]
    assert not problems, "\n".join(problems)
    assert result.testsRun - len(result.skipped) == 4


def test_jitted_tells_which_path_a_run_took():
    """The node suite's pass count rests on this: numeric graphs run through the whole-graph
    jit, graphs with string outputs eagerly."""
    from onnx import TensorProto, helper

    from onnx2jax.backend import OnnxJaxBackend

    def model(op, elem):
        g = helper.make_graph(
            [helper.make_node(op, ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", elem, [2])],
            [helper.make_tensor_value_info("y", elem, [2])],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    numeric = OnnxJaxBackend.prepare(model("Abs", TensorProto.FLOAT), "CPU")
    assert not numeric.jitted  # nothing has run yet
    numeric.run([np.array([-1.0, 2.0], np.float32)])
    assert numeric.jitted
    strings = OnnxJaxBackend.prepare(model("Identity", TensorProto.STRING), "CPU")
    strings.run([np.array(["a", "b"], dtype=object)])
    assert not strings.jitted
