"""Gradients of every differentiable op family against finite differences (float64, check_grads).

Each case is one node in a small onnx.helper graph, loaded with ``x64=True`` and the default
passes (as users get it); ``jax.test_util.check_grads`` compares reverse-mode derivatives (what
``jax.grad`` uses) with central differences along random directions, with respect to every float
input. Forward mode is left out: no op defines its own JVP or VJP rule, so JAX derives both from
the same primitives, and each check costs compile time. One graph holds a whole op family (one
compile); on failure each op is rechecked alone to name the culprit. The ops that are not
differentiable (docs/gradients.md) are checked to give the gradient documented there.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from jax.test_util import check_grads

import onnx2jax

D = onnx.TensorProto.DOUBLE


class P:
    """A float input drawn from a range: ``P(shape, lo, hi)`` (default: standard normal)."""

    def __init__(self, *shape: int, lo: float | None = None, hi: float | None = None):
        self.shape, self.lo, self.hi = shape, lo, hi

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.lo is None:
            return rng.standard_normal(self.shape)
        return rng.uniform(self.lo, self.hi, self.shape)


def pos(*shape: int) -> P:
    return P(*shape, lo=0.5, hi=2.0)


def unit(*shape: int) -> P:
    return P(*shape, lo=-0.8, hi=0.8)


def i64(*values) -> np.ndarray:
    return np.array(values, np.int64)


def _vi(name: str, elem: int = D, shape=None):
    return oh.make_tensor_value_info(name, elem, shape)


# v <- sin(v) * v + 0.5 v, three times (a value read from the enclosing scope would be fine too)
LOOP_BODY = oh.make_graph(
    [
        oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        oh.make_node("Sin", ["v"], ["s"]),
        oh.make_node("Mul", ["s", "v"], ["sv"]),
        oh.make_node("Add", ["sv", "half_v"], ["v_out"]),
        oh.make_node("Mul", ["v", "half"], ["half_v"]),
    ],
    "loop_body",
    [_vi("i", onnx.TensorProto.INT64, []), _vi("cond_in", onnx.TensorProto.BOOL, []), _vi("v")],
    [_vi("cond_out", onnx.TensorProto.BOOL, []), _vi("v_out")],
    [onnx.numpy_helper.from_array(np.array(0.5), "half")],
)
# state <- state + x_t * x_t; emits tanh(state) per step
SCAN_BODY = oh.make_graph(
    [
        oh.make_node("Mul", ["x_t", "x_t"], ["sq"]),
        oh.make_node("Add", ["state", "sq"], ["state_out"]),
        oh.make_node("Tanh", ["state_out"], ["y_t"]),
    ],
    "scan_body",
    [_vi("state", D, [3]), _vi("x_t", D, [3])],
    [_vi("state_out", D, [3]), _vi("y_t", D, [3])],
)

# (op, inputs, attrs, opset, outputs): P inputs are graph inputs we differentiate with respect
# to; numpy arrays are initializers (indices, shapes, axes); None is an absent optional input.
FAMILIES: dict[str, dict[str, tuple]] = {
    "elementwise": {
        "Add": ("Add", [P(2, 3), P(3)], {}),
        "Sub": ("Sub", [P(2, 3), P(2, 3)], {}),
        "Mul": ("Mul", [P(2, 3), P(1, 3)], {}),
        "Div": ("Div", [P(2, 3), pos(2, 3)], {}),
        "Pow": ("Pow", [pos(2, 3), P(2, 3)], {}),
        "Sqrt": ("Sqrt", [pos(4)], {}),
        "Exp": ("Exp", [P(4)], {}),
        "Log": ("Log", [pos(4)], {}),
        "Neg": ("Neg", [P(4)], {}),
        "Abs": ("Abs", [P(4)], {}),
        "Reciprocal": ("Reciprocal", [pos(4)], {}),
        "Sin": ("Sin", [P(4)], {}),
        "Cos": ("Cos", [P(4)], {}),
        "Tan": ("Tan", [unit(4)], {}),
        "Sinh": ("Sinh", [P(4)], {}),
        "Cosh": ("Cosh", [P(4)], {}),
        "Asin": ("Asin", [unit(4)], {}),
        "Acos": ("Acos", [unit(4)], {}),
        "Atan": ("Atan", [P(4)], {}),
        "Asinh": ("Asinh", [P(4)], {}),
        "Acosh": ("Acosh", [P(4, lo=1.5, hi=3.0)], {}),
        "Atanh": ("Atanh", [unit(4)], {}),
        "Erf": ("Erf", [P(4)], {}),
        "Max": ("Max", [P(2, 3), P(2, 3), P(3)], {}),
        "Min": ("Min", [P(2, 3), P(2, 3)], {}),
        "Mean": ("Mean", [P(2, 3), P(2, 3)], {}),
        "Sum": ("Sum", [P(2, 3), P(3)], {}),
        "Clip": ("Clip", [P(2, 3), P(lo=-0.6, hi=-0.4), P(lo=0.4, hi=0.6)], {}),
        "Where": ("Where", [np.array([[True, False, True]]), P(2, 3), P(2, 3)], {}),
    },
    "activation": {
        "Relu": ("Relu", [P(2, 5)], {}),
        "LeakyRelu": ("LeakyRelu", [P(2, 5)], {"alpha": 0.1}),
        "PRelu": ("PRelu", [P(2, 5), P(5)], {}),
        "Elu": ("Elu", [P(2, 5)], {}),
        "Celu": ("Celu", [P(2, 5)], {"alpha": 1.5}),
        "Selu": ("Selu", [P(2, 5)], {}),
        "Gelu": ("Gelu", [P(2, 5)], {}, 20),
        "Gelu-tanh": ("Gelu", [P(2, 5)], {"approximate": "tanh"}, 20),
        "Sigmoid": ("Sigmoid", [P(2, 5)], {}),
        "HardSigmoid": ("HardSigmoid", [P(2, 5)], {}),
        "HardSwish": ("HardSwish", [P(2, 5)], {}),
        "Softplus": ("Softplus", [P(2, 5)], {}),
        "Softsign": ("Softsign", [P(2, 5)], {}),
        "Swish": ("Swish", [P(2, 5)], {"alpha": 1.3}, 24),
        "Mish": ("Mish", [P(2, 5)], {}),
        "Tanh": ("Tanh", [P(2, 5)], {}),
        "ThresholdedRelu": ("ThresholdedRelu", [P(2, 5)], {"alpha": 0.3}),
        "Shrink": ("Shrink", [P(2, 5)], {"lambd": 0.3, "bias": 0.1}),
        "Softmax": ("Softmax", [P(2, 5)], {}),
        "LogSoftmax": ("LogSoftmax", [P(2, 5)], {"axis": 0}),
    },
    "linalg": {
        "MatMul": ("MatMul", [P(2, 3, 4), P(4, 5)], {}),
        "Gemm": ("Gemm", [P(3, 4), P(5, 4), P(5)], {"transB": 1, "alpha": 0.5}),
        "Einsum": ("Einsum", [P(2, 3), P(3, 4)], {"equation": "ij,jk->ik"}),
        "Det": ("Det", [P(2, 3, 3)], {}),
    },
    "conv_pool": {
        "Conv": (
            "Conv",
            [P(1, 2, 5, 5), P(4, 2, 3, 3), P(4)],
            {"pads": [1, 1, 1, 1], "strides": [2, 2]},
        ),
        "Conv-grouped": ("Conv", [P(1, 4, 5, 5), P(4, 2, 3, 3)], {"group": 2, "dilations": [1, 2]}),
        "Conv-1d": ("Conv", [P(2, 3, 7), P(2, 3, 3)], {"auto_pad": "SAME_UPPER"}),
        "ConvTranspose": (
            "ConvTranspose",
            [P(1, 2, 3, 3), P(2, 3, 3, 3), P(3)],
            {"strides": [2, 2]},
        ),
        "DepthToSpace": ("DepthToSpace", [P(1, 4, 2, 3)], {"blocksize": 2}),
        "SpaceToDepth": ("SpaceToDepth", [P(1, 1, 4, 4)], {"blocksize": 2}),
        "AveragePool": ("AveragePool", [P(1, 2, 5, 5)], {"kernel_shape": [3, 3], "pads": [1] * 4}),
        "MaxPool": ("MaxPool", [P(1, 2, 4, 4)], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        "LpPool": ("LpPool", [P(1, 2, 4, 4)], {"kernel_shape": [2, 2], "p": 2}),
        "GlobalAveragePool": ("GlobalAveragePool", [P(2, 3, 4, 4)], {}),
        "GlobalMaxPool": ("GlobalMaxPool", [P(2, 3, 4, 4)], {}),
        "GlobalLpPool": ("GlobalLpPool", [P(2, 3, 4, 4)], {"p": 3}),
    },
    "normalization": {
        "BatchNormalization": (
            "BatchNormalization",
            [P(2, 3, 4), P(3), P(3), P(3), pos(3)],
            {"epsilon": 1e-3},
        ),
        "LayerNormalization": ("LayerNormalization", [P(2, 3, 6), P(6), P(6)], {}),
        "InstanceNormalization": ("InstanceNormalization", [P(2, 3, 5), P(3), P(3)], {}),
        "GroupNormalization": (
            "GroupNormalization",
            [P(2, 4, 5), P(4), P(4)],
            {"num_groups": 2},
            21,
        ),
        "RMSNormalization": ("RMSNormalization", [P(2, 3, 6), P(6)], {}, 23),
        "LpNormalization": ("LpNormalization", [P(2, 5)], {"p": 2}),
        "MeanVarianceNormalization": ("MeanVarianceNormalization", [P(2, 3, 4, 4)], {}),
        "LRN": ("LRN", [P(1, 5, 3, 3)], {"size": 3}),
    },
    "reduce": {
        "ReduceSum": ("ReduceSum", [P(2, 3, 4), i64(1)], {}),
        "ReduceMean": ("ReduceMean", [P(2, 3, 4), i64(0, 2)], {"keepdims": 0}),
        "ReduceMax": ("ReduceMax", [P(2, 3, 4), i64(-1)], {}),
        "ReduceMin": ("ReduceMin", [P(2, 3, 4), i64(1)], {}),
        "ReduceProd": ("ReduceProd", [P(2, 3, 4), i64(1)], {}),
        "ReduceL1": ("ReduceL1", [P(2, 3, 4), i64(2)], {}),
        "ReduceL2": ("ReduceL2", [P(2, 3, 4), i64(2)], {}),
        "ReduceLogSum": ("ReduceLogSum", [pos(2, 3, 4), i64(1)], {}),
        "ReduceLogSumExp": ("ReduceLogSumExp", [P(2, 3, 4), i64(1)], {}),
        "ReduceSumSquare": ("ReduceSumSquare", [P(2, 3, 4), i64(0)], {}),
        "CumSum": ("CumSum", [P(2, 5), i64(1)], {"reverse": 1}),
        "CumProd": ("CumProd", [pos(2, 5), i64(1)], {"exclusive": 1}, 26),
    },
    "data_movement": {
        "Reshape": ("Reshape", [P(2, 6), i64(3, -1)], {}),
        "Transpose": ("Transpose", [P(2, 3, 4)], {"perm": [2, 0, 1]}),
        "Concat": ("Concat", [P(2, 3), P(2, 1)], {"axis": 1}),
        "Split": ("Split", [P(2, 6), i64(2, 4)], {"axis": 1}, 18, 2),
        "Slice": ("Slice", [P(4, 6), i64(1, 5), i64(3, 0), i64(0, 1), i64(1, -2)], {}),
        "Pad": ("Pad", [P(2, 3), i64(0, 1, 1, 2)], {}),
        "Pad-reflect": ("Pad", [P(2, 4), i64(0, 2, 0, 1)], {"mode": "reflect"}),
        "Expand": ("Expand", [P(3, 1), i64(2, 3, 4)], {}),
        "Tile": ("Tile", [P(2, 3), i64(2, 1)], {}),
        "Squeeze": ("Squeeze", [P(2, 1, 3), i64(1)], {}),
        "Unsqueeze": ("Unsqueeze", [P(2, 3), i64(0)], {}),
        "Flatten": ("Flatten", [P(2, 3, 4)], {"axis": 2}),
        "Gather": ("Gather", [P(5, 3), i64(0, 3, 3, 1)], {}),
        "GatherElements": (
            "GatherElements",
            [P(3, 3), np.array([[2, 0], [1, 1], [0, 2]])],
            {"axis": 1},
        ),
        "GatherND": ("GatherND", [P(2, 3, 4), np.array([[0, 1], [1, 2]])], {}),
        "ScatterElements": (
            "ScatterElements",
            [P(3, 3), np.array([[1, 0, 2]]), P(1, 3)],
            {"reduction": "add"},
        ),
        "ScatterND": ("ScatterND", [P(4, 3), np.array([[1], [3]]), P(2, 3)], {}),
        "Trilu": ("Trilu", [P(4, 4)], {"upper": 0}),
        "TopK-values": ("TopK", [P(2, 6), i64(3)], {}, 18, 1),
        "ReverseSequence": (
            "ReverseSequence",
            [P(4, 2, 3), i64(3, 2)],
            {"batch_axis": 1, "time_axis": 0},
        ),
    },
    "image": {
        "Resize-linear": (
            "Resize",
            [P(1, 1, 3, 3), None, np.array([1, 1, 2, 1.5], np.float32)],
            {"mode": "linear"},
        ),
        "Resize-cubic": (
            "Resize",
            [P(1, 1, 4, 4), None, None, i64(1, 1, 6, 5)],
            {"mode": "cubic"},
        ),
        "GridSample": ("GridSample", [P(1, 2, 4, 4), unit(1, 3, 3, 2)], {}, 20),
        "AffineGrid": ("AffineGrid", [P(2, 2, 3), i64(2, 1, 3, 4)], {}, 20),
        "RoiAlign": (
            "RoiAlign",
            [P(1, 2, 6, 6), np.array([[0.5, 0.7, 4.3, 3.9]]), i64(0)],
            {"output_height": 2, "output_width": 2, "sampling_ratio": 2},
        ),
    },
    "rnn": {
        "LSTM": ("LSTM", [P(3, 2, 4), P(1, 20, 4), P(1, 20, 5), P(1, 40)], {"hidden_size": 5}),
        "GRU": ("GRU", [P(3, 2, 4), P(1, 15, 4), P(1, 15, 5)], {"hidden_size": 5}),
        "RNN": ("RNN", [P(3, 2, 4), P(1, 5, 4), P(1, 5, 5)], {"hidden_size": 5}),
    },
    "attention_loss": {
        "Attention": ("Attention", [P(1, 2, 3, 4), P(1, 2, 5, 4), P(1, 2, 5, 4)], {}, 23),
        "Attention-causal": (
            "Attention",
            [P(1, 2, 4, 4), P(1, 2, 4, 4), P(1, 2, 4, 4)],
            {"is_causal": 1},
            23,
        ),
        "SoftmaxCrossEntropyLoss": ("SoftmaxCrossEntropyLoss", [P(3, 4), i64(1, 0, 3)], {}),
        "NegativeLogLikelihoodLoss": (
            "NegativeLogLikelihoodLoss",
            [P(3, 4), i64(1, 0, 3), pos(4)],
            {"reduction": "mean"},
        ),
    },
    # control flow: a Loop with a constant trip count (a lax.scan) and a Scan
    "control_flow": {
        "Loop": ("Loop", [i64(3).reshape(()), np.array(True), P(2, 3)], {"body": LOOP_BODY}),
        "Scan": ("Scan", [P(3), P(4, 3)], {"body": SCAN_BODY, "num_scan_inputs": 1}, 18, 2),
    },
    # DFT's axis became an input at opset 20: its own graph at opset 17
    "signal": {
        "DFT": ("DFT", [P(1, 8, 1)], {"onesided": 1}, 17),
    },
}

# Ops without a useful derivative, and the gradient onnx2jax gives (documented in
# docs/gradients.md; checked below): "zero" where a float output is piecewise constant,
# "none" where the output is integer or boolean (JAX gives float0 / no tangent).
NON_DIFFERENTIABLE = {
    "Round": ("zero", "Round", [P(4)], {}),
    "Floor": ("zero", "Floor", [P(4)], {}),
    "Ceil": ("zero", "Ceil", [P(4)], {}),
    "Sign": ("zero", "Sign", [P(4)], {}),
    "Hardmax": ("zero", "Hardmax", [P(2, 4)], {}),
    "ArgMax": ("none", "ArgMax", [P(2, 4)], {}),
    "Greater": ("none", "Greater", [P(4), P(4)], {}),
    "Cast-int": ("none", "Cast", [P(4)], {"to": onnx.TensorProto.INT32}),
    "Equal": ("none", "Equal", [P(4), P(4)], {}),
    "RandomNormalLike": ("zero", "RandomNormalLike", [P(4)], {}),
    "Bernoulli": ("zero", "Bernoulli", [P(4, lo=0.2, hi=0.8)], {}),
}


def _model(cases: dict[str, tuple], rng: np.random.Generator) -> tuple:
    """One graph with a node per case (each on its own inputs), at the highest opset they ask.

    Returns the model (x64), the input values, and the case of each input and of each output.
    """
    nodes, graph_inputs, inits, values, outputs = [], [], [], [], []
    in_case, out_case = [], []
    opset = max([c[3] if len(c) > 3 else 18 for c in cases.values()])
    for case, (op, inputs, attrs, *rest) in cases.items():
        n_out = rest[1] if len(rest) > 1 else 1
        names = []
        for i, spec in enumerate(inputs):
            if spec is None:
                names.append("")
                continue
            name = f"{case}/x{i}"
            names.append(name)
            if isinstance(spec, P):
                graph_inputs.append(oh.make_tensor_value_info(name, D, list(spec.shape)))
                values.append(spec.draw(rng))
                in_case.append(case)
            else:
                inits.append(onnx.numpy_helper.from_array(spec, name))
        outs = [f"{case}/y{i}" for i in range(n_out)]
        extra = [f"{case}/indices"] if op == "TopK" else []  # a required output, not checked
        nodes.append(oh.make_node(op, names, outs + extra, name=case, **attrs))
        outputs += outs
        out_case += [case] * n_out
    graph = oh.make_graph(
        nodes,
        "grads",
        graph_inputs,
        [oh.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
        inits,
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    return onnx2jax.load(proto.SerializeToString(), x64=True), values, in_case, out_case


EPS, TOL = 1e-5, 1e-6


def _failures(cases: dict[str, tuple]) -> list[str]:
    """The cases whose reverse-mode gradient disagrees with central differences.

    jax.test_util.check_vjp's test, per node: for a random tangent t and cotangent c,
    <t, vjp(c)> must equal <(f(x + eps t) - f(x - eps t)) / 2 eps, c>. The nodes of the graph
    read disjoint inputs, so the identity holds for each node's own inputs and outputs, and one
    compiled VJP checks them all.
    """
    with jax.enable_x64(True):
        model, values, in_case, out_case = _model(cases, np.random.default_rng(0))
        return _compare(lambda *xs: model.apply(model.params, *xs), values, in_case, out_case)


def _compare(fn, values: list, in_case: list[str], out_case: list[str]) -> list[str]:
    with jax.enable_x64(True):
        f = jax.jit(fn)
        vjp = jax.jit(lambda xs, cts: jax.vjp(f, *xs)[1](cts))
        outs = f(*values)
        rng = np.random.default_rng(1)
        tangent = [rng.standard_normal(v.shape) for v in values]
        cotangent = tuple(rng.standard_normal(o.shape) for o in outs)
        got = vjp(values, cotangent)
        plus = f(*[v + EPS * t for v, t in zip(values, tangent)])
        minus = f(*[v - EPS * t for v, t in zip(values, tangent)])
        bad = [f"{c}: output dtype {o.dtype}" for c, o in zip(out_case, outs) if o.dtype != "f8"]
        for case in dict.fromkeys(out_case):
            lhs = sum(float(np.vdot(t, g)) for c, t, g in zip(in_case, tangent, got) if c == case)
            rhs = sum(
                float(np.vdot((np.asarray(p) - np.asarray(m)) / (2 * EPS), ct))
                for c, p, m, ct in zip(out_case, plus, minus, cotangent)
                if c == case
            )
            if not abs(lhs - rhs) <= TOL * (1 + abs(rhs)):
                bad.append(f"{case}: <t, vjp(c)> = {lhs!r}, finite differences give {rhs!r}")
        return bad


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradients_match_finite_differences(family):
    """One graph per op family: two compiles (the function and its VJP) check all its ops."""
    bad = _failures(FAMILIES[family])
    assert not bad, "reverse-mode gradients disagree with finite differences:\n" + "\n".join(bad)


@pytest.mark.parametrize("case", ["Conv", pytest.param("Attention-causal", marks=pytest.mark.slow)])
def test_check_grads_on_single_ops(case):
    """jax.test_util.check_grads itself (forward and reverse mode) on a few composite ops."""
    cases = {k: v for family in FAMILIES.values() for k, v in family.items()}
    with jax.enable_x64(True):
        model, values, _, _ = _model({case: cases[case]}, np.random.default_rng(0))
        f = jax.jit(lambda *xs: model.apply(model.params, *xs))
        check_grads(f, values, order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_the_check_catches_a_wrong_gradient():
    """A node whose gradient is doubled on purpose (same values) is found and named."""
    cases = {"Softplus": ("Softplus", [P(3)], {}), "Tanh": ("Tanh", [P(4)], {})}
    with jax.enable_x64(True):
        model, values, in_case, out_case = _model(cases, np.random.default_rng(0))

        def wrong(*xs):
            a, b = model.apply(model.params, *xs)
            return a, 2 * b - jax.lax.stop_gradient(b)

        assert not _compare(lambda *xs: model.apply(model.params, *xs), values, in_case, out_case)
        bad = _compare(wrong, values, in_case, out_case)
    assert len(bad) == 1 and bad[0].startswith("Tanh:"), bad


@pytest.mark.parametrize("case", sorted(NON_DIFFERENTIABLE))
def test_non_differentiable_ops_give_the_documented_gradient(case):
    kind, op, inputs, attrs = NON_DIFFERENTIABLE[case]
    with jax.enable_x64(True):
        model, values, _, _ = _model({case: (op, inputs, attrs)}, np.random.default_rng(0))
        f = jax.grad(
            lambda x: jnp.sum(model.apply(model.params, x, *values[1:])[0].astype(x.dtype))
        )
        out = model.apply(model.params, *values)[0]
        if kind == "zero":
            assert jnp.issubdtype(out.dtype, jnp.floating)
        else:  # integer or boolean results carry no tangent: the float inputs get zeros
            assert not jnp.issubdtype(out.dtype, jnp.floating)
        np.testing.assert_array_equal(np.asarray(f(values[0])), 0.0)


def test_gradient_doc_lists_the_checked_ops():
    """docs/gradients.md names every non-differentiable case above, and only registered ops."""
    from onnx2jax._registry import registered

    text = (pathlib.Path(__file__).parents[1] / "docs" / "gradients.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)`", text, re.M))
    ops = {op for _, op, *_ in NON_DIFFERENTIABLE.values()}
    assert ops <= listed, ops - listed
    known = {op for _domain, op in registered()}
    assert listed <= known, listed - known
