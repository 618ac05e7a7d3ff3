"""passes/rnn.py: bidirectional RNN / GRU / LSTM split into a forward and a reverse node."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from test_passes import check_pass

import onnx2jax
from onnx2jax import passes as onnx2jax_passes
from onnx2jax._loader import optimize_proto

ort = pytest.importorskip("onnxruntime")
MODELS = os.path.join(os.path.dirname(__file__), "models")
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
T, B, I, H = 7, 3, 5, 6
PASS = ["split_rnn_directions"]


def _rnn_model(op, *, layout=0, lens=False, states=True, peep=False, attrs=None, seed=0, opset=14):
    """One bidirectional ``op`` on weights held as initializers; X, sequence_lens and the
    initial states are graph inputs."""
    rng = np.random.default_rng(seed)
    g = GATES[op]

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    inits = [init("W", 2, g * H, I), init("R", 2, g * H, H), init("B", 2, 2 * g * H)]
    x_shape = [B, T, I] if layout else [T, B, I]
    s_shape = [B, 2, H] if layout else [2, B, H]
    inputs = [oh.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    names = ["X", "W", "R", "B", "", ""]
    if lens:
        inputs.append(oh.make_tensor_value_info("lens", TensorProto.INT32, [B]))
        names[4] = "lens"
    if states:
        inputs.append(oh.make_tensor_value_info("h0", TensorProto.FLOAT, s_shape))
        names[5] = "h0"
        if op == "LSTM":
            inputs.append(oh.make_tensor_value_info("c0", TensorProto.FLOAT, s_shape))
            names.append("c0")
    if peep:
        names += [""] * (7 - len(names)) + ["P"]
        inits.append(init("P", 2, 3 * H))
    while names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    attrs = dict(attrs or {}) | ({"layout": layout} if opset >= 14 else {})
    node = oh.make_node(op, names, outs, hidden_size=H, direction="bidirectional", **attrs)
    graph = oh.make_graph(
        [node],
        "g",
        inputs,
        [oh.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _feeds(model, seed=1):
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.input:
        shape = [d.dim_value for d in v.type.tensor_type.shape.dim]
        if v.name == "lens":
            feeds[v.name] = np.array([T, 3, 1], np.int32)
        else:
            feeds[v.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _ort(model, feeds):
    """onnxruntime's outputs; onnx's reference evaluator for layout=1, which onnxruntime's
    recurrent kernels refuse."""
    if any(a.name == "layout" and a.i for n in model.graph.node for a in n.attribute):
        return ReferenceEvaluator(model).run(None, feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check(model, feeds, *, rtol=1e-5, atol=1e-5):
    """test_passes.check_pass with onnxruntime (onnx's reference for layout=1) as the
    reference: onnx2jax with the pass, jitted and eager, and without it, and the optimized file;
    returns the pass's matches."""
    report = check_pass(model, feeds, PASS, rtol=rtol, atol=atol, reference=_ort, runner=_ort)
    (split,) = report.passes
    return split.matches


def _directions(model):
    """The recurrent nodes of the model as the pass leaves it."""
    optimized, _ = optimize_proto(model, onnx2jax_passes.resolve(PASS), portable=True)
    return [n for n in optimized.graph.node if n.op_type in GATES]


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("layout", [0, 1])
def test_split_matches_onnxruntime(op, layout):
    model = _rnn_model(op, layout=layout, peep=op == "LSTM")
    matches, directions = _check(model, _feeds(model)), _directions(model)
    assert matches == {op: 1}
    got = [onnx.helper.get_attribute_value(a) for n in directions for a in n.attribute]
    assert b"forward" in got and b"reverse" in got and b"bidirectional" not in got


@pytest.mark.parametrize("opset", [11, 18])
def test_split_at_other_opsets(opset):
    """Split takes its halves from an attribute-free node below opset 18, num_outputs from 18."""
    model = _rnn_model("LSTM", opset=opset)
    matches = _check(model, _feeds(model))
    assert matches == {"LSTM": 1}


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_split_with_sequence_lengths_and_no_initial_state(op):
    model = _rnn_model(op, lens=True, states=False, attrs={"clip": 2.0})
    matches = _check(model, _feeds(model))
    assert matches == {op: 1}


def test_split_gives_each_direction_its_activations():
    acts = ["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Softsign", "Relu"]
    model = _rnn_model("LSTM", attrs={"activations": acts})
    matches, directions = _check(model, _feeds(model), rtol=1e-4), _directions(model)
    assert matches == {"LSTM": 1}
    lists = [
        [s.decode() for s in onnx.helper.get_attribute_value(a)]
        for n in directions
        for a in n.attribute
        if a.name == "activations"
    ]
    assert lists == [acts[:3], acts[3:]]


def test_split_leaves_alphas_and_computed_weights_alone():
    # alpha/beta are consumed across both directions in order: not split
    attrs = {
        "activations": ["Affine", "Affine"],
        "activation_alpha": [2.0, 0.5],
        "activation_beta": [0.1, -0.1],
    }
    model = _rnn_model("RNN", attrs=attrs)
    matches = _check(model, _feeds(model), rtol=1e-4)  # affine: unbounded, values grow
    assert matches == {}
    # W as a graph input: a split there would run every call, as the op's slicing does
    model = _rnn_model("GRU")
    w = next(i for i in model.graph.initializer if i.name == "W")
    model.graph.initializer.remove(w)
    model.graph.input.append(oh.make_tensor_value_info("W", TensorProto.FLOAT, [2, 3 * H, I]))
    feeds = _feeds(model) | {"W": numpy_helper.to_array(w)}
    matches = _check(model, feeds)
    assert matches == {}


def test_gradient_reaches_the_onnx_named_weights():
    model = _rnn_model("LSTM", peep=True)
    feeds = _feeds(model)
    m = onnx2jax.load(model, passes=PASS)
    plain = onnx2jax.load(model, passes=None)

    def loss(mod):
        return lambda p: jnp.sum(mod.apply(p, **feeds)[0] ** 2)

    want = jax.grad(loss(plain))(plain.params)
    got = jax.grad(loss(m))(m.params)
    for name in ("W", "R", "B", "P"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["rnn_torchscript", "rnn_dynamo"])
def test_real_exports(name):
    """tests/models' 2-layer bidirectional LSTM + bidirectional GRU, from both exporters (the
    dynamo file fixes the sequence length at 8)."""
    model = onnx.load(os.path.join(MODELS, f"{name}.onnx"))
    x = np.random.default_rng(2).standard_normal((3, 8, 12)).astype(np.float32)
    feeds = {"features": x}
    want = _ort(model, feeds)
    m = onnx2jax.load(model)
    split = next(p for p in m.pass_report.passes if p.name == "split_rnn_directions")
    assert split.matches == {"LSTM": 2, "GRU": 1}
    for got in (m(**feeds), m.apply(m.params, **feeds)):
        for w, g in zip(want, got, strict=True):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5)
    optimized, _ = optimize_proto(model, onnx2jax_passes.DEFAULT, portable=True)
    for w, g in zip(want, _ort(optimized, feeds), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
