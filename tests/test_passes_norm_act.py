"""The LayerNorm and GELU passes (passes/norm_act.py) keep the model's outputs.

Graphs are built here as the legacy torch exporter, transformers and tf2onnx write them, and each
is checked by ``check_pass`` (test_passes.py): onnx2jax with the passes against the ONNX reference
evaluator, jitted and eagerly, against onnx2jax without passes, and the optimized file (with the
``ai.onnx2jax`` function bodies, or onnxruntime's com.microsoft Gelu/FastGelu) in onnxruntime
against the original. A BERT exported by torch's legacy exporter is the slow test.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto, numpy_helper
from test_passes import MODELS, _ort, check_pass

import onnx2jax
from onnx2jax import passes as onnx2jax_passes
from onnx2jax._loader import optimize_proto

RNG = np.random.default_rng(11)
SHAPE = [2, 5, 16]


def _const(name, value):
    return oh.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def _f(v):
    return np.float32(v)


def _model(nodes, inits, opset, extra_outputs=()):
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)
    outs = [oh.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", *extra_outputs)]
    graph = oh.make_graph(nodes, "g", [x], outs, inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _feeds():
    return {"x": (RNG.standard_normal(SHAPE) * 2 + 0.5).astype(np.float32)}


def _matched(report, name) -> dict[str, int]:
    return next(p for p in report.passes if p.name == name).matches


def _optimized_ops(model) -> list[tuple[str, str]]:
    optimized, _ = optimize_proto(model, onnx2jax_passes.DEFAULT)
    return [(n.domain, n.op_type) for n in optimized.graph.node]


# -- LayerNorm ------------------------------------------------------------------------------


def _layernorm(
    opset,
    *,
    square="pow",
    reciprocal=False,
    gamma_first=False,
    gamma=True,
    beta=True,
    axes=(-1,),
    gamma_size=SHAPE[-1],
    eps=0.1,
):
    """x -> the decomposition the legacy torch exporter writes below opset 17 (``square="mul"``,
    ``reciprocal``: tf2onnx's forms; ``gamma_first``: ``d * (rsqrt * gamma)``, the form
    tf2onnx's layer-norm rewriter looks for), then ``Relu`` so y is not the chain's own output.
    ``eps`` is large enough (the variance is about 4) that losing it shows."""

    def mean(src, out):
        if opset >= 18:
            return [
                _const(out + "_axes", np.array(axes, np.int64)),
                oh.make_node("ReduceMean", [src, out + "_axes"], [out]),
            ]
        return [oh.make_node("ReduceMean", [src], [out], axes=list(axes))]

    nodes = mean("x", "m") + [oh.make_node("Sub", ["x", "m"], ["d"])]
    if square == "pow":
        nodes += [_const("two", _f(2.0)), oh.make_node("Pow", ["d", "two"], ["sq"])]
    else:
        nodes.append(oh.make_node("Mul", ["d", "d"], ["sq"]))
    nodes += mean("sq", "v")
    nodes += [
        _const("eps", _f(eps)),
        oh.make_node("Add", ["v", "eps"], ["ve"]),
        oh.make_node("Sqrt", ["ve"], ["s"]),
    ]
    inits, out = [], "n"
    if gamma:
        inits.append(numpy_helper.from_array(RNG.standard_normal(gamma_size).astype("f"), "g"))
    if reciprocal:
        nodes.append(oh.make_node("Reciprocal", ["s"], ["r"]))
        if gamma_first:
            nodes.append(oh.make_node("Mul", ["r", "g"], ["rg"]))
        nodes.append(oh.make_node("Mul", ["rg" if gamma_first else "r", "d"], ["n"]))
    else:
        nodes.append(oh.make_node("Div", ["d", "s"], ["n"]))
    if gamma and not gamma_first:
        nodes.append(oh.make_node("Mul", [out, "g"], ["ng"]))
        out = "ng"
    if beta:
        inits.append(numpy_helper.from_array(RNG.standard_normal(SHAPE[-1]).astype("f"), "b"))
        nodes.append(oh.make_node("Add", ["b", out], ["nb"]))  # beta first: either order
        out = "nb"
    nodes.append(oh.make_node("Relu", [out], ["y"]))
    return _model(nodes, inits, opset)


@pytest.mark.parametrize(
    "opset,passes,kwargs",
    [
        (14, "all", {}),  # pow_to_mul first: Mul(d, d)
        (14, ["fuse_layernorm"], {}),  # Pow(d, 2) as written
        (14, "all", {"square": "mul", "reciprocal": True}),
        (14, "all", {"square": "mul", "reciprocal": True, "gamma_first": True}),
        (18, "all", {"reciprocal": True, "gamma_first": True, "beta": False}),
        (14, "all", {"gamma": False}),
        (14, "all", {"eps": 1e-12}),  # BERT's epsilon
        (17, "all", {}),
        (17, ["fuse_layernorm"], {"square": "mul", "reciprocal": True, "beta": False}),
        (18, "all", {"gamma": False, "beta": False}),  # axes as an input
    ],
)
def test_layernorm_is_fused_and_exact(opset, passes, kwargs):
    model = _layernorm(opset, **kwargs)
    report = check_pass(model, _feeds(), passes, rtol=1e-4, atol=1e-5)
    assert sum(_matched(report, "fuse_layernorm").values()) == 1
    ops = _optimized_ops(model)
    want = ("", "LayerNormalization") if opset >= 17 else ("ai.onnx2jax", "LayerNormalization")
    assert want in ops and ("", "ReduceMean") not in ops and ("", "Sqrt") not in ops


@pytest.mark.parametrize(
    "why,kwargs,extra",
    [
        ("the centred x is read elsewhere", {}, "d"),
        ("the variance is read elsewhere", {}, "v"),
        ("not the last axis", {"axes": (1,)}, None),
        ("two axes", {"axes": (1, 2)}, None),
        ("gamma broadcast from one element", {"gamma_size": 1}, None),
    ],
)
def test_layernorm_left_alone(why, kwargs, extra):
    model = _layernorm(14, **kwargs)
    if extra:
        model.graph.output.append(oh.make_tensor_value_info(extra, TensorProto.FLOAT, None))
    report = check_pass(model, _feeds(), "all", rtol=1e-4, atol=1e-5)
    if "gamma" in why:  # fused up to the Div: the broadcasting Mul and beta's Add stay
        assert _matched(report, "fuse_layernorm") == {"LayerNormalization (no gamma, no beta)": 1}
    else:
        assert not _matched(report, "fuse_layernorm"), why


def _tf_layernorm(
    opset,
    *,
    keras=2,
    gamma=True,
    beta=True,
    swap=False,
    rsqrt="reciprocal",
    no_beta="neg_mean",
    gamma_size=SHAPE[-1],
    axes=(2,),
    variance="squared_difference",
    x_for_scale="x",
    relu=True,
    eps=0.1,
):
    """x -> Keras LayerNormalization as tf2onnx converts it (TF's batch_normalization
    arrangement): ``mean = ReduceMean(x)`` (axes made positive, as tf2onnx and Keras do),
    SquaredDifference as ``Sub`` then ``Mul(d, d)``, Rsqrt as ``Reciprocal(Sqrt)``,
    ``s = r * gamma``, then ``y = x * s + (beta - mean * s)`` (``keras=2``: tf.nn's
    batch_normalization) or ``y = x * s + ((-mean) * s + beta)`` (``keras=3``).

    ``swap``: the last Add's operands the other way round. ``rsqrt``: "div" ``1 / Sqrt``, "pow"
    ``Pow(., -0.5)``. ``no_beta`` (with ``beta=False``): "neg_mean" ``(-mean) * s`` (what TF's
    ``-mean * inv`` is), "neg_product" ``-(mean * s)``, "zero_sub" ``0 - mean * s``, "sub"
    ``x * s - mean * s``. Near misses: ``variance="moments_of_x"`` (``E[x^2] - E[x]^2``),
    ``x_for_scale`` another tensor than the normalized one, ``no_beta="plus"`` (the mean's
    term added with the wrong sign)."""

    def mean(src, out):
        if opset >= 18:
            return [
                _const(out + "_axes", np.array(axes, np.int64)),
                oh.make_node("ReduceMean", [src, out + "_axes"], [out], keepdims=1),
            ]
        return [oh.make_node("ReduceMean", [src], [out], axes=list(axes), keepdims=1)]

    nodes = mean("x", "m")
    if variance == "squared_difference":
        nodes += [oh.make_node("Sub", ["x", "m"], ["d"]), oh.make_node("Mul", ["d", "d"], ["sq"])]
        nodes += mean("sq", "v")
    else:  # E[x^2] - E[x]^2: LayerNorm in exact arithmetic, not in floating point
        nodes += [oh.make_node("Mul", ["x", "x"], ["xx"])] + mean("xx", "mxx")
        nodes += [
            oh.make_node("Mul", ["m", "m"], ["mm"]),
            oh.make_node("Sub", ["mxx", "mm"], ["v"]),
        ]
    nodes += [_const("eps", _f(eps)), oh.make_node("Add", ["v", "eps"], ["ve"])]
    if rsqrt == "pow":
        nodes += [_const("p", _f(-0.5)), oh.make_node("Pow", ["ve", "p"], ["r"])]
    else:
        nodes.append(oh.make_node("Sqrt", ["ve"], ["sd"]))
        if rsqrt == "div":
            nodes += [_const("one", _f(1.0)), oh.make_node("Div", ["one", "sd"], ["r"])]
        else:
            nodes.append(oh.make_node("Reciprocal", ["sd"], ["r"]))
    inits, s = [], "r"
    if gamma:
        inits.append(numpy_helper.from_array(RNG.standard_normal(gamma_size).astype("f"), "g"))
        nodes.append(oh.make_node("Mul", ["r", "g"], ["s"]))
        s = "s"
    if x_for_scale != "x":
        nodes.append(oh.make_node("Relu", ["x"], [x_for_scale]))
    nodes.append(oh.make_node("Mul", [x_for_scale, s], ["xs"]))
    combine = "Add"
    if beta:
        inits.append(numpy_helper.from_array(RNG.standard_normal(SHAPE[-1]).astype("f"), "b"))
        if keras == 2:
            nodes += [
                oh.make_node("Mul", ["m", s], ["ms"]),
                oh.make_node("Sub", ["b", "ms"], ["c"]),
            ]
        else:
            nodes += [
                oh.make_node("Neg", ["m"], ["nm"]),
                oh.make_node("Mul", ["nm", s], ["ms"]),
                oh.make_node("Add", ["ms", "b"], ["c"]),
            ]
    elif no_beta == "neg_mean":
        nodes += [oh.make_node("Neg", ["m"], ["nm"]), oh.make_node("Mul", ["nm", s], ["c"])]
    else:
        nodes.append(oh.make_node("Mul", ["m", s], ["ms"]))
        if no_beta == "neg_product":
            nodes.append(oh.make_node("Neg", ["ms"], ["c"]))
        elif no_beta == "zero_sub":
            nodes += [_const("zero", _f(0.0)), oh.make_node("Sub", ["zero", "ms"], ["c"])]
        else:  # "sub" (exact) or "plus" (x * s + mean * s: not LayerNorm)
            nodes.append(oh.make_node("Identity", ["ms"], ["c"]))
            combine = "Sub" if no_beta == "sub" else "Add"
    out = "ln" if relu else "y"
    nodes.append(oh.make_node(combine, ["c", "xs"] if swap else ["xs", "c"], [out]))
    if relu:
        nodes.append(oh.make_node("Relu", ["ln"], ["y"]))
    return _model(nodes, inits, opset)


@pytest.mark.parametrize(
    "opset,kwargs",
    [
        (13, {}),
        (13, {"swap": True, "relu": False}),  # y is the graph output
        (13, {"keras": 3}),
        (13, {"keras": 3, "swap": True, "axes": (-1,)}),
        (13, {"gamma": False}),
        (13, {"beta": False}),
        (13, {"keras": 3, "gamma": False, "beta": False, "swap": True}),
        (13, {"beta": False, "no_beta": "neg_product"}),
        (13, {"beta": False, "no_beta": "zero_sub", "swap": True}),
        (13, {"beta": False, "no_beta": "sub"}),
        (13, {"rsqrt": "div", "eps": 1e-3}),  # Keras' default epsilon
        (13, {"rsqrt": "pow", "keras": 3, "eps": 1e-12}),  # transformers' TF BERT
        (17, {"swap": True}),
        (18, {}),  # axes as an input
        (18, {"keras": 3, "swap": True, "gamma": False}),
    ],
)
def test_tf_layernorm_is_fused_and_exact(opset, kwargs):
    """tf2onnx's Keras LayerNormalization (rearranged as TF's batch_normalization) fuses."""
    model = _tf_layernorm(opset, **kwargs)
    report = check_pass(model, _feeds(), "all", rtol=1e-4, atol=1e-5)
    missing = [f"no {k}" for k in ("gamma", "beta") if not kwargs.get(k, True)]
    key = "LayerNormalization (" + ", ".join(["rearranged", *missing]) + ")"
    assert _matched(report, "fuse_layernorm") == {key: 1}
    ops = _optimized_ops(model)
    want = ("", "LayerNormalization") if opset >= 17 else ("ai.onnx2jax", "LayerNormalization")
    assert want in ops
    assert not {("", "ReduceMean"), ("", "Sqrt"), ("", "Pow"), ("", "Neg")} & set(ops)
    computed = [op for op in ops if op != ("", "Constant")]  # ones/zeros for gamma/beta
    assert len(computed) == 1 + kwargs.get("relu", True), ops  # LayerNormalization [, Relu]


def test_tf_layernorms_in_sequence():
    """Two tf2onnx LayerNorms back to back (tf.keras's, then Keras 3's): both fuse."""
    first = _tf_layernorm(13, relu=False)
    second = _tf_layernorm(13, keras=3)
    renamed = {"x": "y1", "y": "y"}
    nodes = list(first.graph.node)
    for n in nodes:
        n.output[:] = ["y1" if o == "y" else o for o in n.output]
    for n in second.graph.node:
        n.input[:] = [renamed.get(i, "2_" + i) for i in n.input]
        n.output[:] = [renamed.get(o, "2_" + o) for o in n.output]
        nodes.append(n)
    inits = list(first.graph.initializer)
    for t in second.graph.initializer:
        t.name = "2_" + t.name
        inits.append(t)
    model = _model(nodes, inits, 13)
    report = check_pass(model, _feeds(), "all", rtol=1e-4, atol=1e-5)
    assert _matched(report, "fuse_layernorm") == {"LayerNormalization (rearranged)": 2}


@pytest.mark.parametrize(
    "why,kwargs,extra",
    [
        ("variance as E[x^2] - E[x]^2", {"variance": "moments_of_x"}, None),
        ("the mean's term added, not subtracted", {"beta": False, "no_beta": "plus"}, None),
        ("x * s of another tensor than x", {"x_for_scale": "xr"}, None),
        ("the scale s is a graph output", {}, ("s", "output")),
        ("the scale s is read elsewhere", {}, ("s", "read")),
        ("the mean is a graph output", {}, ("m", "output")),
        ("the mean is read elsewhere", {}, ("m", "read")),
        ("the mean's term is read elsewhere", {}, ("c", "read")),
        ("x * s is read elsewhere", {}, ("xs", "read")),
        ("gamma broadcast from one element", {"gamma_size": 1}, None),
        ("not the last axis", {"axes": (1,)}, None),
    ],
)
def test_tf_layernorm_left_alone(why, kwargs, extra):
    model = _tf_layernorm(13, **kwargs)
    if extra:
        name, how = extra
        if how == "read":
            model.graph.node.append(oh.make_node("Neg", [name], ["reader"]))
            name = "reader"
        model.graph.output.append(oh.make_tensor_value_info(name, TensorProto.FLOAT, None))
    report = check_pass(model, _feeds(), "all", rtol=1e-4, atol=1e-5)
    assert not _matched(report, "fuse_layernorm"), why


# -- GELU -----------------------------------------------------------------------------------

SQRT2, SQRT_HALF, SQRT_2_PI = math.sqrt(2.0), math.sqrt(0.5), math.sqrt(2.0 / math.pi)


def _gelu(opset, arrangement, *, erf_constant=SQRT2, kappa=0.044715):
    """x -> MatMul -> GELU as written by: "torch" (legacy exporter's erf GELU: (x * a) * 0.5),
    "hf" (transformers: (x * 0.5) * a), "tf" (tf2onnx: (0.5 * a) * x, x * (1 / sqrt 2)),
    "gelu_new" (transformers' tanh GELU, Pow(x, 3)), "torch_tanh" (the legacy exporter's
    approximate="tanh": x * (x * x))."""
    w = numpy_helper.from_array(RNG.standard_normal((16, 16)).astype("f") * 0.5, "w")
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"])]
    if arrangement in ("torch", "hf", "tf"):
        if arrangement == "tf":
            nodes += [_const("c", _f(SQRT_HALF)), oh.make_node("Mul", ["c", "h"], ["e"])]
        else:
            nodes += [_const("c", _f(erf_constant)), oh.make_node("Div", ["h", "c"], ["e"])]
        nodes += [oh.make_node("Erf", ["e"], ["core"])]
    else:
        if arrangement == "gelu_new":
            nodes += [_const("three", _f(3.0)), oh.make_node("Pow", ["h", "three"], ["cube"])]
        else:
            nodes += [
                oh.make_node("Mul", ["h", "h"], ["h2"]),
                oh.make_node("Mul", ["h", "h2"], ["cube"]),
            ]
        nodes += [
            _const("k", _f(kappa)),
            oh.make_node("Mul", ["cube", "k"], ["q"]),
            oh.make_node("Add", ["h", "q"], ["s"]),
            _const("c", _f(SQRT_2_PI)),
            oh.make_node("Mul", ["c", "s"], ["e"]),
            oh.make_node("Tanh", ["e"], ["core"]),
        ]
    nodes += [_const("one", _f(1.0)), _const("half", _f(0.5))]
    if arrangement in ("torch", "torch_tanh"):
        nodes += [
            oh.make_node("Add", ["core", "one"], ["a"]),
            oh.make_node("Mul", ["h", "a"], ["xa"]),
            oh.make_node("Mul", ["xa", "half"], ["y"]),
        ]
    elif arrangement in ("hf", "gelu_new"):
        nodes += [
            oh.make_node("Mul", ["half", "h"], ["hh"]),
            oh.make_node("Add", ["one", "core"], ["a"]),
            oh.make_node("Mul", ["hh", "a"], ["y"]),
        ]
    else:
        nodes += [
            oh.make_node("Add", ["core", "one"], ["a"]),
            oh.make_node("Mul", ["half", "a"], ["ha"]),
            oh.make_node("Mul", ["ha", "h"], ["y"]),
        ]
    return _model(nodes, [w], opset)


@pytest.mark.parametrize("opset", [14, 17, 20])
@pytest.mark.parametrize("arrangement", ["torch", "hf", "tf", "gelu_new", "torch_tanh"])
def test_gelu_is_fused_and_exact(opset, arrangement):
    model = _gelu(opset, arrangement)
    report = check_pass(model, _feeds(), "all", rtol=1e-4, atol=1e-5)
    form = "tanh" if arrangement in ("gelu_new", "torch_tanh") else "erf"
    assert _matched(report, "fuse_gelu") == {f"Gelu ({form})": 1}
    ops = _optimized_ops(model)
    if opset >= 20:
        want = ("", "Gelu")
    else:
        want = ("com.microsoft", "Gelu" if form == "erf" else "FastGelu")
    assert want in ops and not {("", "Erf"), ("", "Tanh")} & set(ops)


@pytest.mark.parametrize(
    "why,arrangement,kwargs,extra",
    [
        ("the Erf output is read elsewhere", "torch", {}, "core"),
        ("x * 0.5 is read elsewhere", "hf", {}, "hh"),
        ("x ** 3 is read elsewhere", "torch_tanh", {}, "cube"),
        ("divided by 1.5, not sqrt 2", "torch", {"erf_constant": 1.5}, None),
        ("0.05, not 0.044715", "gelu_new", {"kappa": 0.05}, None),
    ],
)
def test_gelu_left_alone(why, arrangement, kwargs, extra):
    model = _gelu(17, arrangement, **kwargs)
    if extra:
        model.graph.output.append(oh.make_tensor_value_info(extra, TensorProto.FLOAT, None))
    report = check_pass(model, _feeds(), "all", rtol=1e-4, atol=1e-5)
    assert not _matched(report, "fuse_gelu"), why


def test_fast_gelu_bias_input():
    """com.microsoft FastGelu's optional bias is added to x first (onnxruntime's contrib doc)."""
    nodes = [oh.make_node("FastGelu", ["x", "bias"], ["y"], domain="com.microsoft")]
    bias = numpy_helper.from_array(RNG.standard_normal(SHAPE[-1]).astype("f"), "bias")
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = oh.make_model(
        oh.make_graph(nodes, "g", [x], [y], [bias]),
        opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)],
    )
    feeds = _feeds()
    (want,) = _ort(model, feeds)
    m = onnx2jax.load(model)
    np.testing.assert_allclose(np.asarray(m(**feeds)[0]), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(m.apply(m.params, **feeds)[0]), want, rtol=1e-4, atol=1e-5
    )


def test_grad_with_respect_to_params_through_fused_layers():
    """LayerNorm's gamma and beta, and the weight before a GELU, keep their ONNX names; their
    gradients through the fused ops equal those through the graph as written."""
    feeds = _feeds()
    for model in (_layernorm(14), _tf_layernorm(13), _gelu(14, "torch"), _gelu(17, "gelu_new")):
        grads = []
        for passes in ("default", None):
            m = onnx2jax.load(model, passes=passes)
            loss = lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, **feeds)[0]))  # noqa: E731
            grads.append(jax.jit(jax.grad(loss))(m.params))
        assert sorted(grads[0]) == sorted(grads[1]) != []  # ["g", "b"] or ["w"]
        for k in grads[0]:
            np.testing.assert_allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-5, err_msg=k)


# -- real exports ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,form", [("bert", "erf"), ("gpt2", "tanh")])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_real_exports_fuse_every_gelu(name, form, exporter):
    """Both torch exporters' BERT and GPT-2 in tests/models (opset 17/18, 2 layers): each
    layer's GELU becomes com.microsoft Gelu/FastGelu, and onnxruntime gives the outputs of the
    file as exported (test_passes.py checks onnx2jax's own)."""
    model = onnx.load(os.path.join(MODELS, f"{name}_{exporter}.onnx"))
    optimized, report = optimize_proto(model, onnx2jax_passes.DEFAULT, portable=True)
    assert _matched(report, "fuse_gelu") == {f"Gelu ({form})": 2}
    names = {i.name for i in model.graph.input}
    feeds = {"input_ids": RNG.integers(0, 100, (2, 9)), "attention_mask": np.ones((2, 9), np.int64)}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros((2, 9), np.int64)
    feeds = {k: v for k, v in feeds.items() if k in names}
    for want, got in zip(_ort(model, feeds), _ort(optimized, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_legacy_torch_bert_fuses_every_layernorm_and_gelu(tmp_path):
    """transformers' BERT (2 layers, random weights) through torch's legacy exporter at opset
    14: 5 decomposed LayerNorms and 2 erf GELUs fused; outputs as onnxruntime's on the file
    as exported, and the optimized file in onnxruntime too."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = export_legacy_bert(tmp_path / "bert.onnx")
    model = onnx.load(path)
    feeds = {
        "input_ids": RNG.integers(0, 100, (2, 9)),
        "attention_mask": np.ones((2, 9), np.int64),
    }
    feeds["attention_mask"][1, -3:] = 0
    m = onnx2jax.load(model)
    assert sum(_matched(m.pass_report, "fuse_layernorm").values()) == 5
    assert _matched(m.pass_report, "fuse_gelu") == {"Gelu (erf)": 2}
    want = _ort(model, feeds)
    for w, g in zip(want, m(**feeds), strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4)
    optimized, _ = optimize_proto(model, onnx2jax_passes.DEFAULT, portable=True)
    for w, g in zip(want, _ort(optimized, feeds), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    del torch, transformers


def export_legacy_bert(path, *, layers=2, hidden=64, seq=9):
    """A small random BERT exported by torch's legacy (TorchScript) exporter at opset 14."""
    import torch
    import transformers

    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        hidden_act="gelu",
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(0, 100, (2, seq))
    torch.onnx.export(
        Wrap(),
        (ids, torch.ones_like(ids)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["y"],
        dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}},
        opset_version=14,
        dynamo=False,
    )
    return str(path)
