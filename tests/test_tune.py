"""``Model.tune``: each kernel-library choice is compiled and timed, the fastest is kept, and the
model's outputs stay those of the reference evaluator."""

from __future__ import annotations

import jax
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from models_in_code import affine_relu, reference
from test_graph_breaks import nonzero_gather

import onnx2jax
from onnx2jax import _compiler, _tune
from onnx2jax._compiler import candidates

# The suite runs without the YNNPACK option (conftest: faster compiles), which leaves
# candidates() one choice; these are the CPU choices with it on (the third for programs with
# convolutions).
CPU_CHOICES = {
    "ynnpack dots": {_compiler._YNN: f"{_compiler._CONV},{_compiler._DOT}"},
    "eigen dots": {_compiler._YNN: _compiler._CONV},
}
EIGEN_CONVS = {"eigen convs and dots": {_compiler._YNN: ""}}


@pytest.fixture
def two_choices(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("the choices are CPU libraries")

    def choices(convolutions=True):
        return CPU_CHOICES | (EIGEN_CONVS if convolutions else {})

    monkeypatch.setattr(_tune, "candidates", choices)


def _conv_relu() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w = onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = oh.make_graph(
        [
            oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c"], ["y"]),
        ],
        "conv_relu",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 8, 8])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [w],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@pytest.mark.parametrize(
    "proto,shape,choices",
    [(affine_relu(), (3, 4), CPU_CHOICES), (_conv_relu(), (2, 3, 8, 8), CPU_CHOICES | EIGEN_CONVS)],
    ids=["matmul", "conv"],
)
def test_tune_times_every_choice_and_keeps_the_fastest(two_choices, proto, shape, choices):
    """A program with convolutions also times them on Eigen; one without does not."""
    m = onnx2jax.load(proto)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    report = m.tune(x, rounds=1)
    assert set(report.ms) == set(choices)
    assert report.chosen == min(report.ms, key=report.ms.get)
    assert all(ms > 0 for ms in report.ms.values()) and report.chosen in str(report)
    for got, want in zip(m(x), reference(proto, x=x), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # lower() compiles what model(...) now runs: the chosen options
    lowered, args = m.lower(x)
    np.testing.assert_allclose(np.asarray(lowered.compile()(*args)[0]), np.asarray(m(x)[0]))
    assert m._program.tuned_options == choices[report.chosen]


def test_tune_leaves_a_model_with_graph_breaks_as_it_is(two_choices):
    m = onnx2jax.load(nonzero_gather())
    x = np.array([[0.0, 2.0, 0.0, 3.0]] * 3, np.float32)
    before = [np.asarray(o) for o in m(x)]
    report = m.tune(x, rounds=1)
    assert report.ms == {} and report.chosen == "ynnpack dots"
    for got, want in zip(m(x), before, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_candidates_follow_the_default_options(monkeypatch):
    """With the library option on, the default comes first, Eigen dots second and Eigen convs
    third (programs with convolutions); with it off (ONNX2JAX_XLA_LIBRARY=off, as in this
    suite) there is nothing to choose."""
    monkeypatch.setattr(_compiler, "compiler_options", lambda: dict(CPU_CHOICES["ynnpack dots"]))
    assert candidates(convolutions=False) == CPU_CHOICES
    assert candidates() == CPU_CHOICES | EIGEN_CONVS
    monkeypatch.setattr(_compiler, "compiler_options", lambda: {})
    assert candidates() == {"default": {}}
