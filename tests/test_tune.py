"""``Model.tune``: each kernel-library choice is compiled and timed, the fastest is kept, and the
model's outputs stay those of the reference evaluator."""

from __future__ import annotations

import json

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
from onnx2jax._kernels import _ffi as kernels

# The suite runs without the YNNPACK option (conftest: faster compiles), which leaves
# candidates() one choice; these are the CPU choices with it on (the third for programs with
# convolutions).
CPU_CHOICES = {
    "ynnpack dots": {_compiler._YNN: _compiler._DOT},
    "eigen dots": {_compiler._YNN: ""},
}
YNN_CONVS = {"ynnpack convs and dots": {_compiler._YNN: f"{_compiler._CONV},{_compiler._DOT}"}}


@pytest.fixture
def two_choices(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("the choices are CPU libraries")

    def choices(convolutions=True):
        return CPU_CHOICES | (YNN_CONVS if convolutions else {})

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
    "proto,shape,passes,choices",
    [
        (affine_relu(), (3, 4), "default", CPU_CHOICES),
        (_conv_relu(), (2, 3, 8, 8), ["nhwc"], CPU_CHOICES | YNN_CONVS),
        (_conv_relu(), (2, 3, 8, 8), "default", None),
    ],
    ids=["matmul", "conv", "conv after passes"],
)
def test_tune_times_every_choice_and_keeps_the_fastest(two_choices, proto, shape, passes, choices):
    """A program with XLA convolutions also times them on YNNPACK; one without does not (after
    the passes, onnx2jax's own conv kernel runs them where it is built)."""
    if choices is None:
        choices = CPU_CHOICES if kernels.available() else CPU_CHOICES | YNN_CONVS
    m = onnx2jax.load(proto, passes=passes)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    report = m.tune(x, rounds=1)
    assert set(report.ms) == set(choices)
    assert report.chosen == _tune.choose(report.ms, next(iter(choices)))
    assert all(ms > 0 for ms in report.ms.values()) and report.chosen in str(report)
    for got, want in zip(m(x), reference(proto, x=x), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # lower() compiles what model(...) now runs: the chosen options
    lowered, args = m.lower(x)
    np.testing.assert_allclose(np.asarray(lowered.compile()(*args)[0]), np.asarray(m(x)[0]))
    assert m._program.jits.main_options == choices[report.chosen]


def test_tune_leaves_a_model_with_graph_breaks_as_it_is(two_choices):
    m = onnx2jax.load(nonzero_gather())
    x = np.array([[0.0, 2.0, 0.0, 3.0]] * 3, np.float32)
    before = [np.asarray(o) for o in m(x)]
    report = m.tune(x, rounds=1)
    assert report.ms == {} and report.chosen == "ynnpack dots"
    for got, want in zip(m(x), before, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_candidates_follow_the_default_options(monkeypatch):
    """With the library option on, the default comes first, Eigen dots second and YNNPACK convs
    third (programs with convolutions); with it off (ONNX2JAX_XLA_LIBRARY=off, as in this
    suite) there is nothing to choose."""
    monkeypatch.setattr(_compiler, "compiler_options", lambda: dict(CPU_CHOICES["ynnpack dots"]))
    assert candidates(convolutions=False) == CPU_CHOICES
    assert candidates() == CPU_CHOICES | YNN_CONVS
    monkeypatch.setattr(_compiler, "compiler_options", lambda: {})
    assert candidates() == {"default": {}}


@pytest.fixture
def records(monkeypatch, tmp_path):
    """Tune records in a fresh folder (by default they live in the compilation cache folder)."""
    monkeypatch.setattr(_tune, "_records_dir", lambda: str(tmp_path))
    return tmp_path


def test_tune_records_its_choice_for_later_loads(two_choices, records):
    proto = _conv_relu()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    m = onnx2jax.load(proto)
    report = m.tune(x, rounds=1)
    (record,) = records.glob("*.json")
    assert json.loads(record.read_text())["chosen"] == report.chosen
    # A later load (a new program) starts with a recorded choice; here a non-default one.
    _tune._remember(_tune.fingerprint(m._program, m.params), _tune.TuneReport("eigen dots"))
    again = onnx2jax.load(proto)
    assert again._program.jits.main_options == CPU_CHOICES["eigen dots"]
    for got, want in zip(again(x), reference(proto, x=x), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_tune_records_key_on_the_program_not_the_weights(two_choices, records):
    proto = _conv_relu()
    m = onnx2jax.load(proto)
    _tune._remember(_tune.fingerprint(m._program, m.params), _tune.TuneReport("eigen dots"))
    other_values = onnx.ModelProto.FromString(proto.SerializeToString())
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    other_values.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w * 2, "w"))
    assert onnx2jax.load(other_values)._program.jits.main_options == CPU_CHOICES["eigen dots"]
    wider = onnx.ModelProto.FromString(proto.SerializeToString())
    wider.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(np.concatenate([w, w]), "w")  # 8 output channels
    )
    assert onnx2jax.load(wider)._program.jits.main_options == {}
    # A record naming a choice this process does not offer is ignored.
    _tune._remember(_tune.fingerprint(m._program, m.params), _tune.TuneReport("no such"))
    assert onnx2jax.load(proto)._program.jits.main_options == {}


def test_tune_without_a_records_folder_keeps_the_choice_in_memory(two_choices, monkeypatch):
    monkeypatch.setattr(_tune, "_records_dir", lambda: None)
    m = onnx2jax.load(affine_relu())
    x = np.ones((3, 4), np.float32)
    report = m.tune(x, rounds=1)
    assert m._program.jits.main_options == CPU_CHOICES[report.chosen]


def test_choose_keeps_the_default_unless_clearly_beaten():
    ms = {"default": 100.0, "other": 98.0, "third": 120.0}
    assert _tune.choose(ms, "default") == "default"  # 2% faster: within noise
    assert _tune.choose({**ms, "other": 90.0}, "default") == "other"
    assert _tune.choose({**ms, "default": 130.0}, "default") == "other"
    assert _tune.choose(ms, "default", margin=0.0) == "other"
