"""Graph passes (passes/, onnx2jax.passes): each rewrite keeps the model's outputs.

Every pass is checked on graphs built here and on the real torch exports in tests/models
(legacy and dynamo exporters): onnx2jax with the pass against the graph as written (the ONNX
reference evaluator, onnxruntime, and onnx2jax without passes), jitted and eagerly; the
optimized file that ``onnx2jax optimize`` writes runs in onnxruntime with the same outputs.
"""

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

import onnx2jax
from onnx2jax import passes as onnx2jax_passes
from onnx2jax._loader import optimize_proto

ort = pytest.importorskip("onnxruntime")
MODELS = os.path.join(os.path.dirname(__file__), "models")
RNG = np.random.default_rng(0)


def _init(name, shape, scale=0.5, positive=False):
    a = RNG.standard_normal(shape).astype(np.float32) * scale
    return numpy_helper.from_array(np.abs(a) + 0.1 if positive else a, name)


def _model(nodes, inits, x_shape, y_shape=None, opset=17):
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)
    graph = oh.make_graph(nodes, "g", [x], [y], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _bn(inp, out, c, prefix="bn"):
    inits = [
        _init(f"{prefix}_g", [c], positive=True),
        _init(f"{prefix}_b", [c]),
        _init(f"{prefix}_m", [c]),
        _init(f"{prefix}_v", [c], positive=True),
    ]
    node = oh.make_node("BatchNormalization", [inp] + [i.name for i in inits], [out], epsilon=1e-3)
    return node, inits


def _evaluate(model: onnx.ModelProto, feeds):
    return ReferenceEvaluator(model).run(None, feeds)


def _ort(model: onnx.ModelProto, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_pass(
    model: onnx.ModelProto, feeds, passes, *, rtol=1e-5, atol=1e-5, reference=None, runner=None
):
    """The model with ``passes`` gives the outputs of the graph as written; returns the report.

    ``reference(model, feeds)`` gives those outputs (onnx's reference evaluator by default);
    ``runner`` runs the original and the optimized file against each other (onnxruntime).
    """
    want = (reference or _evaluate)(model, feeds)
    m = onnx2jax.load(model, passes=passes)
    plain = onnx2jax.load(model, passes=None)
    for how, got in (
        ("jit", m(**feeds)),
        ("eager", m.apply(m.params, **feeds)),
        ("no passes", plain(**feeds)),
    ):
        for w, g in zip(want, got, strict=True):
            np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=atol, err_msg=how)
    optimized, report = optimize_proto(model, onnx2jax_passes.resolve(passes), portable=True)
    onnx.checker.check_model(optimized)
    runner = runner or _ort
    for w, g in zip(runner(model, feeds), runner(optimized, feeds), strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg="onnxruntime, optimized")
    return m.pass_report


# -- BatchNormalization folding -------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batchnorm_into_conv(with_bias):
    inits = [_init("w", [8, 3, 3, 3])] + ([_init("b", [8])] if with_bias else [])
    conv = oh.make_node("Conv", ["x", "w"] + (["b"] if with_bias else []), ["c"], pads=[1] * 4)
    bn, bn_inits = _bn("c", "y", 8)
    model = _model([conv, bn], inits + bn_inits, [2, 3, 9, 9])
    report = check_pass(
        model, {"x": RNG.standard_normal((2, 3, 9, 9), np.float32)}, ["fold_batchnorm"]
    )
    assert report.passes[0].matches == {"Conv+BatchNormalization": 1}
    assert "BatchNormalization" not in _op_types(model, ["fold_batchnorm"])


def test_fold_batchnorm_into_conv_transpose_and_gemm():
    w = _init("w", [4, 6, 3, 3])
    ct = oh.make_node("ConvTranspose", ["x", "w"], ["c"], strides=[2, 2])
    bn, bn_inits = _bn("c", "y", 6)
    model = _model([ct, bn], [w] + bn_inits, [1, 4, 5, 5])
    check_pass(model, {"x": RNG.standard_normal((1, 4, 5, 5), np.float32)}, ["fold_batchnorm"])

    for trans_b in (0, 1):
        w = _init("w", [5, 7] if trans_b else [7, 5])
        gemm = oh.make_node("Gemm", ["x", "w", "c0"], ["c"], transB=trans_b, beta=0.5)
        bn, bn_inits = _bn("c", "y", 5)
        model = _model([gemm, bn], [w, _init("c0", [5])] + bn_inits, [3, 7])
        report = check_pass(
            model, {"x": RNG.standard_normal((3, 7), np.float32)}, ["fold_batchnorm"]
        )
        assert report.passes[0].matches == {"Gemm+BatchNormalization": 1}


def test_fold_batchnorm_leaves_shared_conv_output_alone():
    conv = oh.make_node("Conv", ["x", "w"], ["c"])
    bn, bn_inits = _bn("c", "d", 4)
    add = oh.make_node("Add", ["c", "d"], ["y"])  # the conv output is read twice
    model = _model([conv, bn, add], [_init("w", [4, 2, 1, 1])] + bn_inits, [1, 2, 3, 3])
    report = check_pass(
        model, {"x": RNG.standard_normal((1, 2, 3, 3), np.float32)}, ["fold_batchnorm"]
    )
    assert not report.modified


def test_grad_with_respect_to_original_params_through_folded_batchnorm():
    """Params keep their ONNX names; jax.grad through the passes equals the plain graph's."""
    conv = oh.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4)
    bn, bn_inits = _bn("c", "y", 4)
    model = _model([conv, bn], [_init("w", [4, 3, 3, 3]), _init("b", [4])] + bn_inits, [1, 3, 6, 6])
    x = RNG.standard_normal((1, 3, 6, 6), np.float32)
    grads = []
    for passes in ("default", None):
        m = onnx2jax.load(model, passes=passes)
        assert sorted(m.params) == ["b", "bn_b", "bn_g", "bn_m", "bn_v", "w"]
        loss = lambda p, m=m: jnp.sum(jnp.tanh(m.apply(p, x)[0]))  # noqa: E731
        grads.append(jax.jit(jax.grad(loss))(m.params))
    assert onnx2jax.load(model).pass_report.modified
    for k in grads[1]:
        np.testing.assert_allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-5, err_msg=k)


# -- channels-last layout -------------------------------------------------------------------


def _small_cnn():
    """conv -> relu -> maxpool -> [conv -> clip] + residual -> depthwise -> GAP -> gemm."""
    nodes = [
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, strides=[2, 2]),
        oh.make_node("Relu", ["c1"], ["r1"]),
        oh.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2]),
        oh.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1] * 4),
        oh.make_node("Clip", ["c2", "lo", "hi"], ["k2"]),
        oh.make_node("Mul", ["k2", "scale"], ["s2"]),  # a per-channel [C, 1, 1] operand
        oh.make_node("Add", ["s2", "p1"], ["a2"]),
        oh.make_node("Conv", ["a2", "dw"], ["c3"], pads=[1] * 4, group=8),
        oh.make_node("AveragePool", ["c3"], ["p3"], kernel_shape=[2, 2], strides=[1, 1]),
        oh.make_node("GlobalAveragePool", ["p3"], ["g"]),
        oh.make_node("Flatten", ["g"], ["f"]),
        oh.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
    ]
    inits = [
        _init("w1", [8, 3, 3, 3]), _init("b1", [8]), _init("w2", [8, 8, 3, 3]),
        numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(1.5), "hi"),
        _init("scale", [8, 1, 1]), _init("dw", [8, 1, 3, 3]), _init("fc", [5, 8]), _init("fcb", [5]),
    ]  # fmt: skip
    return _model(nodes, inits, ["batch", 3, 16, 16], ["batch", 5])


def _op_types(model, passes):
    optimized, _ = optimize_proto(model, onnx2jax_passes.resolve(passes))
    return [n.op_type for n in optimized.graph.node]


def _activation_transposes(model, passes) -> int:
    """Transposes that move activations (not the ones that lay out weights)."""
    optimized, _ = optimize_proto(model, onnx2jax_passes.resolve(passes))
    fixed = {i.name for i in optimized.graph.initializer}
    for n in optimized.graph.node:  # values computed from weights and constants alone
        if all(i in fixed for i in n.input if i):
            fixed.update(n.output)
    return sum(n.op_type == "Transpose" and n.input[0] not in fixed for n in optimized.graph.node)


def test_nhwc_small_cnn_changes_layout_only_at_the_boundary():
    model = _small_cnn()
    x = RNG.standard_normal((2, 3, 16, 16), np.float32)
    report = check_pass(model, {"x": x}, ["nhwc"], rtol=1e-4, atol=1e-5)
    assert report.passes[0].matches["Conv"] == 3
    ops = _op_types(model, ["nhwc"])
    assert "Conv" not in ops and ops.count("NhwcConv") == 3
    assert _activation_transposes(model, ["nhwc"]) == 2  # in, and out before Flatten


def test_prepared_weights_follow_the_params():
    """model(...) computes the laid-out weights once per params object, and anew for new ones."""
    model = onnx2jax.load(_small_cnn())
    assert model._program.prep  # the weight transposes are param-only steps
    x = RNG.standard_normal((1, 3, 16, 16), np.float32)
    first = np.asarray(model(x)[0])
    model.params = {k: v * 2 if k == "fc" else v for k, v in model.params.items()}
    second = np.asarray(model(x)[0])
    np.testing.assert_allclose(second, np.asarray(model.apply(model.params, x)[0]), rtol=1e-5)
    assert not np.allclose(first, second)


def test_program_takes_only_the_params_it_reads():
    """Weights only prep reads (the conv weights it lays out) stay out of model(...)'s program
    arguments; a params dict missing one is still refused, by name."""
    model = onnx2jax.load(_small_cnn())
    x = RNG.standard_normal((1, 3, 16, 16), np.float32)
    _, (params, _, _) = model.lower(x)
    prep_only = {"w1", "w2", "dw"}  # read by the layout pass's weight transposes alone
    assert not prep_only & set(params) and "b1" in params
    np.testing.assert_allclose(
        np.asarray(model(x)[0]), np.asarray(model.apply(model.params, x)[0]), rtol=1e-5
    )
    model.params = {k: v for k, v in model.params.items() if k != "w2"}
    with pytest.raises(onnx2jax.InputError, match="w2"):
        model(x)


# -- MatMul weights in [N, K] layout ---------------------------------------------------------


def _matmul_model(a_shape, w_shape, transposed: bool, opset=17):
    """y = MatMul(x, W) + 1, W an initializer, given as is or behind Transpose (dynamo style)."""
    w = _init("w", w_shape)
    nodes = []
    b = "w"
    if transposed:
        nodes.append(oh.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]))
        b = "wt"
    nodes += [
        oh.make_node("MatMul", ["x", b], ["mm"]),
        oh.make_node("Add", ["mm", "one"], ["y"]),
    ]
    one = numpy_helper.from_array(np.ones((), np.float32), "one")
    return _model(nodes, [w, one], a_shape, None, opset)


@pytest.mark.parametrize("a_shape", [[3, 5], [2, 4, 5]])
def test_matmul_weights_drops_the_exporters_transpose(a_shape):
    """MatMul(x, Transpose(V)): V is read as it is, and nothing is left for prep to copy."""
    model = _matmul_model(a_shape, (7, 5), True)
    x = RNG.standard_normal(a_shape).astype(np.float32)
    report = check_pass(model, {"x": x}, ["cleanup", "matmul_weights"])
    assert report.passes[-1].matches == {"MatMul(Transpose(weight))": 1}
    ops = _op_types(model, ["cleanup", "matmul_weights"])
    assert "MatMul" not in ops and ops.count("MatMulTransB") == 1 and "Transpose" not in ops
    assert not onnx2jax.load(model, passes=["cleanup", "matmul_weights"])._program.prep


def test_matmul_weights_never_holds_an_initializer_twice():
    """A [K, N] initializer read directly stays a MatMul: its transpose would be a second copy
    of the weight for the model's life."""
    model = _matmul_model([2, 4, 5], (5, 7), False)
    x = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    report = check_pass(model, {"x": x}, ["cleanup", "matmul_weights"])
    assert not report.passes[-1].modified
    assert _op_types(model, ["cleanup", "matmul_weights"]).count("MatMul") == 1
    m = onnx2jax.load(model, passes=["cleanup", "matmul_weights"])
    assert not m._program.prep and "w" in m.params


def test_matmul_weights_of_a_dequantized_weight():
    """A QDQ weight (int8 initializer -> DequantizeLinear -> MatMul) is a weight too: the
    transpose goes after the dequantization, into prep."""
    wq = numpy_helper.from_array(RNG.integers(-127, 128, (6, 5)).astype(np.int8), "wq")
    scale = numpy_helper.from_array(np.float32(0.02), "s")
    zero = numpy_helper.from_array(np.int8(0), "z")
    nodes = [
        oh.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"]),
        oh.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    model = _model(nodes, [wq, scale, zero], [2, 3, 6], opset=19)
    x = RNG.standard_normal((2, 3, 6)).astype(np.float32)
    report = check_pass(model, {"x": x}, ["cleanup", "matmul_weights"])
    assert report.passes[-1].matches == {"MatMul(computed weight)": 1}
    m = onnx2jax.load(model)
    assert m._program.prep  # dequantize + transpose run once


def test_matmul_weights_leaves_activations_and_vectors_alone():
    """x @ y of two activations, and a 1-D left operand (numpy vector rules), stay MatMul."""
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [5])
    z = oh.make_tensor_value_info("z", TensorProto.FLOAT, [4, 5])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["v"]),  # 1-D x: left alone
        oh.make_node("MatMul", ["z", "zt"], ["zz"]),  # both activations
        oh.make_node("Transpose", ["z"], ["zt"], perm=[1, 0]),
        oh.make_node("ReduceSum", ["zz"], ["s"], keepdims=0),
        oh.make_node("Add", ["v", "s"], ["y"]),
    ]
    nodes = [nodes[0], nodes[2], nodes[1], nodes[3], nodes[4]]
    graph = oh.make_graph(nodes, "g", [x, z], [y], [_init("w", [5, 3])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    feeds = {"x": RNG.standard_normal(5).astype(np.float32)}
    feeds["z"] = RNG.standard_normal((4, 5)).astype(np.float32)
    report = check_pass(model, feeds, ["cleanup", "matmul_weights"], rtol=1e-4)
    assert not report.passes[-1].modified
    assert _op_types(model, ["cleanup", "matmul_weights"]).count("MatMul") == 2


def test_matmul_weights_gradient_reaches_the_onnx_named_weight():
    model = _matmul_model([3, 5], (7, 5), True)
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    plain = onnx2jax.load(model, passes=None)
    m = onnx2jax.load(model)

    def loss(mod):
        return lambda p: jnp.sum(mod.apply(p, x)[0] ** 2)

    want = jax.grad(loss(plain))(plain.params)["w"]
    got = jax.grad(loss(m))(m.params)["w"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


# -- real exports ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet_torchscript", "resnet_dynamo"])
def test_real_resnet_exports(name):
    model = onnx.load(os.path.join(MODELS, f"{name}.onnx"))
    x = RNG.standard_normal((2, 3, 40, 48), np.float32)
    feeds = {model.graph.input[0].name: x}
    want = _ort(model, feeds)[0]
    m = onnx2jax.load(model)
    nhwc = next(p for p in m.pass_report.passes if p.name == "nhwc")
    assert nhwc.matches.get("Conv", 0) > 0
    scale = np.abs(want).max()
    for got in (m(**feeds)[0], m.apply(m.params, **feeds)[0]):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5 * scale)
    optimized, _ = optimize_proto(model, onnx2jax_passes.DEFAULT, portable=True)
    np.testing.assert_allclose(_ort(optimized, feeds)[0], want, rtol=1e-4, atol=1e-5 * scale)


# -- selection and reporting ----------------------------------------------------------------


def test_pass_selection_and_errors():
    model = _small_cnn()
    assert onnx2jax.load(model, passes=None).pass_report is None
    report = onnx2jax.load(model, passes=["fold_batchnorm"]).pass_report
    assert [p.name for p in report.passes] == ["fold_batchnorm"] and not report.modified
    with pytest.raises(onnx2jax.Onnx2JaxError, match="unknown pass"):
        onnx2jax.load(model, passes=["fold_batchnrom"])
    assert "nhwc" in str(onnx2jax.load(model).pass_report)


def test_real_resnet_exports_with_ynnpack():
    """The CPU compiler options model(...) uses by default (the suite turns them off for speed)."""
    from onnx2jax._compiler import cpu_options

    if jax.default_backend() != "cpu":
        pytest.skip("YNNPACK options are for the CPU backend")
    model = onnx.load(os.path.join(MODELS, "resnet_dynamo.onnx"))
    x = RNG.standard_normal((2, 3, 40, 48), np.float32)
    feeds = {model.graph.input[0].name: x}
    want = _ort(model, feeds)[0]
    m = onnx2jax.load(model)
    got = jax.jit(lambda p, x: m.apply(p, x), compiler_options=cpu_options())(m.params, x)[0]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
