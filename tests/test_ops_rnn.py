"""RNN, GRU and LSTM (ops/rnn.py) against onnx's reference and onnxruntime."""

import numpy as np
import pytest
from op_check import check_node, node_model

import onnx2jax

rng = np.random.default_rng(0)

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
T, B, I, H = 5, 3, 4, 6


def f32(*shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def inputs(op, nd=1, *, bias=True, init=True, peep=False, layout=0, lens=None):
    g = GATES[op]
    d = {
        "X": f32(B, T, I) if layout else f32(T, B, I, scale=1.0),
        "W": f32(nd, g * H, I),
        "R": f32(nd, g * H, H),
        "B": f32(nd, 2 * g * H) if bias else None,
        "sequence_lens": lens,
        "initial_h": (f32(B, nd, H) if layout else f32(nd, B, H)) if init else None,
    }
    if op == "LSTM":
        d["initial_c"] = (f32(B, nd, H) if layout else f32(nd, B, H)) if init else None
        d["P"] = f32(nd, 3 * H) if peep else None
    return d


N_OUT = {"RNN": 2, "GRU": 2, "LSTM": 3}


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_directions_and_layouts(op, direction, layout):
    nd = 2 if direction == "bidirectional" else 1
    ins = inputs(op, nd, layout=layout, peep=True)
    attrs = {"hidden_size": H, "direction": direction, "layout": layout}
    check_node(op, ins, attrs, n_outputs=N_OUT[op], opset=14, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_weights_as_constants_and_defaults(op):
    ins = inputs(op, bias=False, init=False)
    check_node(
        op, ins, {"hidden_size": H}, n_outputs=N_OUT[op], opset=7, constants=["W", "R"], atol=1e-5
    )
    # opset 1 (GRU: 3) carries output_sequence and has no reference; the values are opset 7's
    feeds = {k: v for k, v in ins.items() if v is not None}
    old = node_model(
        op,
        ins,
        {"hidden_size": H, "output_sequence": 1},
        n_outputs=N_OUT[op],
        opset=1 if op != "GRU" else 3,
    )
    new = node_model(op, ins, {"hidden_size": H}, n_outputs=N_OUT[op], opset=7)
    for a, b in zip(onnx2jax.load(old)(**feeds), onnx2jax.load(new)(**feeds), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(lbr):
    ins = inputs("GRU", 2)
    attrs = {"hidden_size": H, "direction": "bidirectional", "linear_before_reset": lbr}
    check_node("GRU", ins, attrs, n_outputs=2, atol=1e-5)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens(op, direction):
    """Past a sequence's end: output zero, state frozen; reverse runs within each length."""
    nd = 2 if direction == "bidirectional" else 1
    lens = np.array([5, 2, 3], np.int32)
    ins = inputs(op, nd, lens=lens, peep=op == "LSTM")
    attrs = {"hidden_size": H, "direction": direction}
    out = check_node(op, ins, attrs, n_outputs=N_OUT[op], reference="ort", rtol=1e-4, atol=1e-5)
    assert np.all(out[0][2:, :, 1] == 0) and np.all(out[0][3:, :, 2] == 0)
    # static lengths take the same path; all-full lengths skip masking
    check_node(
        op,
        ins,
        attrs,
        n_outputs=N_OUT[op],
        reference="ort",
        rtol=1e-4,
        atol=1e-5,
        constants=["sequence_lens"],
    )
    ins["sequence_lens"] = np.full(B, T, np.int32)
    check_node(
        op,
        ins,
        attrs,
        n_outputs=N_OUT[op],
        reference="ort",
        rtol=1e-4,
        atol=1e-5,
        constants=["sequence_lens"],
    )


ACTS = [
    (["Relu"], None, None),
    (["Affine"], [0.5], [0.1]),
    (["LeakyRelu"], [0.2], None),
    (["ThresholdedRelu"], [0.1], None),
    (["ScaledTanh"], [1.5], [0.7]),
    (["HardSigmoid"], [0.3], [0.4]),
    (["Elu"], [0.8], None),
    (["Softsign"], None, None),
    (["Softplus"], None, None),
    (["Sigmoid"], None, None),
]


@pytest.mark.parametrize("acts,alpha,beta", ACTS)
def test_rnn_activations(acts, alpha, beta):
    attrs = {"hidden_size": H, "activations": acts}
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    check_node("RNN", inputs("RNN"), attrs, n_outputs=2, reference="ort", rtol=1e-4, atol=1e-5)


def test_bidirectional_different_activations_consume_alphas_in_order():
    attrs = {
        "hidden_size": H,
        "direction": "bidirectional",
        "activations": ["HardSigmoid", "Elu", "LeakyRelu", "ScaledTanh"],
        "activation_alpha": [0.3, 0.9, 0.05, 1.2],
        "activation_beta": [0.4, 0.8],
    }
    check_node("GRU", inputs("GRU", 2), attrs, n_outputs=2, reference="ort", rtol=1e-4, atol=1e-5)
    attrs["activations"] = ["HardSigmoid", "Elu", "Tanh", "Sigmoid", "Softsign", "Relu"]
    attrs["activation_alpha"], attrs["activation_beta"] = [0.3, 0.9], [0.4]
    check_node(
        "LSTM",
        inputs("LSTM", 2, peep=True),
        attrs,
        n_outputs=3,
        reference="ort",
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_clip(op):
    ins = inputs(op, 2, peep=op == "LSTM")
    ins["X"] = ins["X"] * 4
    attrs = {"hidden_size": H, "direction": "bidirectional", "clip": 0.7}
    if op == "GRU":
        attrs["linear_before_reset"] = 1  # (the default 0 is covered with sequence_lens)
    check_node(op, ins, attrs, n_outputs=N_OUT[op], reference="ort", rtol=1e-4, atol=1e-5)


def test_lstm_input_forget():
    ins = inputs("LSTM", 2, peep=True)
    attrs = {"hidden_size": H, "direction": "bidirectional", "input_forget": 1}
    check_node("LSTM", ins, attrs, n_outputs=3, reference="ort", rtol=1e-4, atol=1e-5)


def test_only_final_state_requested():
    """Y absent (empty output name): Y_h and Y_c still come out, in their slots."""
    ins = {k: v for k, v in inputs("LSTM", 2, peep=True).items()}
    model = node_model("LSTM", ins, {"hidden_size": H, "direction": "bidirectional"}, n_outputs=3)
    node = model.graph.node[0]
    node.output[0] = ""
    del model.graph.output[0]
    feeds = {k: v for k, v in ins.items() if v is not None}
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(model).run(None, feeds)
    got = onnx2jax.load(model)(**feeds)
    assert len(got) == 2
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-5, atol=1e-5)


def test_float64_and_grad_through_weights():
    ins = inputs("GRU", 2)
    ins = {k: (v.astype(np.float64) if v is not None else None) for k, v in ins.items()}
    check_node(
        "GRU",
        ins,
        {"hidden_size": H, "direction": "bidirectional"},
        n_outputs=2,
        x64=True,
        rtol=1e-10,
        atol=1e-10,
    )
    # weights as params: the model is differentiable in them
    model = node_model(
        "LSTM", inputs("LSTM"), {"hidden_size": H}, n_outputs=3, constants=["W", "R", "B"]
    )
    m = onnx2jax.load(model)
    import jax

    feeds = {k: v for k, v in inputs("LSTM").items() if v is not None and k not in "WRB"}
    grads = jax.grad(lambda p: m.apply(p, **feeds)[1].sum())(m.params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads))


def test_unknown_activation_is_an_error():
    model = node_model(
        "RNN", inputs("RNN"), {"hidden_size": H, "activations": ["Gelu"]}, n_outputs=2
    )
    with pytest.raises(onnx2jax.Onnx2JaxError, match="activation"):
        feeds = {k: v for k, v in inputs("RNN").items() if v is not None}
        onnx2jax.load(model)(**feeds)
