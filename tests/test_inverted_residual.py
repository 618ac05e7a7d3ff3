"""The fused inverted-residual block: the kernel (onnx2jax/_kernels/inverted_residual.cc) and the
fuse_inverted_residuals pass.

The kernel is checked against a float64 numpy chain of the three convolutions (every instruction
set, in child processes for the narrower ones), through vmap and grad against XLA's
convolutions; the pass against onnx's reference evaluator and onnxruntime (the optimized file
too), on graphs written here and on real exports from both torch exporters.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from test_conv_kernel import _conv64, assert_grads_match_unoptimized
from test_passes import check_pass

import onnx2jax
from onnx2jax import _kernels
from onnx2jax import passes as onnx2jax_passes
from onnx2jax._kernels import conv as kc
from onnx2jax._kernels import inverted_residual as kir
from onnx2jax._loader import optimize_proto

ort = pytest.importorskip("onnxruntime")
needs_kernel = pytest.mark.skipif(not kc.available(), reason="kernel not built here")
MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
INF = math.inf

# x NHWC, expanded and output channels, depthwise kernel, strides, pads, dilations, residual
CASES = {
    "stride 2": ((1, 23, 21, 16), 96, 24, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), False),
    "residual": ((2, 14, 13, 24), 144, 24, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), True),
    # channels off the 16-channel panels and the 12/6-pixel tiles; a 5x5 dilated window
    "odd channels 5x5": ((3, 9, 11, 5), 37, 7, (5, 5), (1, 1), ((4, 2), (3, 4)), (2, 1), True),
    "uneven strides": ((1, 12, 17, 8), 20, 40, (3, 3), (2, 1), ((0, 1), (1, 0)), (1, 1), False),
    "one row": ((2, 1, 30, 4), 24, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), True),
    "tall": ((1, 70, 6, 8), 48, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), True),
    "no images": ((0, 8, 8, 8), 16, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), False),
    # no expansion (None): the depthwise conv reads x
    "no expansion": ((1, 30, 29, 32), None, 16, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), False),
    "no expansion + s": ((2, 13, 15, 20), None, 20, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), True),
    "no expansion 5x5/2": ((1, 9, 12, 7), None, 9, (5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1), False),
    # a stem as the first stage: (kernel, strides, pads) of the expansion
    "stem 3x3/2": ((2, 31, 29, 3), 32, 16, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), False,
                   ((3, 3), (2, 2), ((1, 1), (1, 1)))),
    "stem 7x7/2, 5x5/2": ((1, 20, 22, 3), 24, 8, (5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1), False,
                          ((7, 7), (2, 2), ((3, 2), (3, 3)))),
}  # fmt: skip


def _case(name, seed=0):
    rng = np.random.default_rng(seed)
    shape, e, o, kernel, strides, pads, dilations, residual, *stem = CASES[name]
    c, expand = shape[3], e is not None
    ek, es, ep = stem[0] if stem else ((1, 1), (1, 1), ((0, 0), (0, 0)))
    e = e if expand else c

    def f32(*s, scale=1.0):
        return (rng.standard_normal(s) * scale).astype(np.float32)

    one = dict(kernel=(1, 1), strides=(1, 1), pads=((0, 0), (0, 0)), dilations=(1, 1))
    block = kir.Block(
        kc.Geometry(ek, e, es, ep, (1, 1), 0.0, 6.0) if expand else None,
        kc.Geometry(kernel, e, strides, pads, dilations, 0.0, 6.0, groups=e),
        kc.Geometry(out_channels=o, lo=-1.5, hi=INF, **one),  # a clamp after the residual
    )
    weights = {
        "we": f32(*ek, c, e, scale=(c * ek[0] * ek[1]) ** -0.5) if expand else None,
        "be": f32(e, scale=0.5) if expand else None,
        "wd": f32(*kernel, 1, e, scale=0.4), "bd": f32(e, scale=0.5),
        "wp": f32(1, 1, e, o, scale=e**-0.5), "bp": f32(o, scale=0.5),
    }  # fmt: skip
    x = f32(*shape)
    out = kir._out_shape(shape, block)
    r = f32(*out) if residual else None
    return x, weights, r, block


def _numpy(x, w, r, block):
    e, d, p = block
    h = x if e is None else _conv64(x, w["we"], w["be"], e)
    h = _conv64(h, w["wd"], w["bd"], d)
    y = _conv64(h, w["wp"], w["bp"], p._replace(lo=-INF, hi=INF))
    if r is not None:
        y = y + r
    return np.minimum(np.maximum(y, p.lo), p.hi)


def _packed(w):
    we = None if w["we"] is None else kc.pack(w["we"])
    return (we, w["be"], kc.pack(w["wd"]), w["bd"], kc.pack(w["wp"]), w["bp"])


def _run(x, w, r, block):
    fn = jax.jit(lambda x, ops, r: kir.inverted_residual(x, *ops, block, r))
    ops = _packed(w)
    return fn(x, ops, r), fn.lower(x, ops, r).as_text()


def _close(got, want, rtol=2e-5):
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    if want.size:
        err = np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
        assert err < rtol, err


@needs_kernel
@pytest.mark.parametrize("name", list(CASES))
def test_fused_block_matches_numpy(name, monkeypatch):
    monkeypatch.setattr(kir, "FUSE_BYTES", 0)  # the kernel at any size
    x, w, r, block = _case(name)
    got, hlo = _run(x, w, r, block)
    assert "onnx2jax_inverted_residual" in hlo
    _close(got, _numpy(x, w, r, block))


@needs_kernel
def test_small_blocks_run_as_three_kernels():
    x, w, r, block = _case("residual")
    assert math.prod(x.shape[:3]) * block.expand.out_channels * 4 < kir.FUSE_BYTES
    got, hlo = _run(x, w, r, block)
    assert "onnx2jax_inverted_residual" not in hlo
    assert hlo.count("@onnx2jax_packed_conv(") == 1 and "onnx2jax_depthwise_conv" in hlo
    _close(got, _numpy(x, w, r, block))


@needs_kernel
def test_fused_and_three_kernels_agree_bitwise(monkeypatch):
    """The fused kernel runs the three kernels' tiles and rows: the same float32 values."""
    x, w, r, block = _case("stride 2")
    x = np.tile(x, (4, 1, 1, 1))
    monkeypatch.setattr(kir, "FUSE_BYTES", 1 << 62)
    three, hlo = _run(x, w, r, block)
    assert "onnx2jax_inverted_residual" not in hlo
    monkeypatch.setattr(kir, "FUSE_BYTES", 0)
    fused, hlo = _run(x, w, r, block)
    assert "onnx2jax_inverted_residual" in hlo
    np.testing.assert_array_equal(fused, three)


@needs_kernel
@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_the_narrower_paths_match_numpy_too(isa):
    """The instruction set is chosen once per process: the narrower paths run in a child."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import test_inverted_residual as t; t._check_every_case(); print('ok')\n"
    )
    env = {**os.environ, "ONNX2JAX_KERNELS_ISA": isa}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def _check_every_case():
    kir.FUSE_BYTES = 0
    for name in CASES:
        x, w, r, block = _case(name)
        got, hlo = _run(x, w, r, block)
        assert "onnx2jax_inverted_residual" in hlo
        _close(got, _numpy(x, w, r, block))


@needs_kernel
def test_vmap_and_grad_match_xlas_convolutions(monkeypatch):
    monkeypatch.setattr(kir, "FUSE_BYTES", 0)
    x, w, r, block = _case("odd channels 5x5")
    # no clamps: a kink would make the gradient check brittle
    block = kir.Block(*(g._replace(lo=-INF, hi=INF) for g in block))

    def loss(x, w, r):
        return jnp.sum(jnp.sin(kir.inverted_residual(x, *_packed(w), block, r)))

    got = jax.grad(loss, (0, 1, 2))(x, w, r)
    with _kernels.disabled():
        want = jax.grad(loss, (0, 1, 2))(x, w, r)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

    xs, rs = np.stack([x, x[::-1]]), np.stack([r, -r])
    fn = lambda x, r: kir.inverted_residual(x, *_packed(w), block, r)  # noqa: E731
    hlo = jax.jit(jax.vmap(fn)).lower(xs, rs).as_text()
    assert "onnx2jax_inverted_residual" in hlo  # the vmapped entries became more images
    for in_axes, want in (
        ((0, 0), [_numpy(xs[i], w, rs[i], block) for i in range(2)]),
        ((0, None), [_numpy(xs[i], w, r, block) for i in range(2)]),
    ):
        _close(jax.jit(jax.vmap(fn, in_axes))(xs, rs if in_axes[1] == 0 else r), np.stack(want))


# -- the fuse_inverted_residuals pass ----------------------------------------------------------


def _blocks_model(*, opset=17, act="clip", share_expansion=False, dw_bias=True, seed=0):
    """A 3x3 stem and three MobileNetV2 blocks on NCHW x [n, 8, 18, 18]: 8 -> 8 without an
    expansion and with a residual add, 8 -> 48 -> 16 with stride 2, then 16 -> 64 -> 16 with a
    residual add; ``act`` "clip" (ReLU6, as Clip with constant bounds) or "relu"."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name, *shape, scale=0.3):
        inits.append(
            numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
        )
        return name

    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in (("lo", 0.0), ("hi", 6.0))]

    def activation(x, name):
        if act == "relu":
            nodes.append(oh.make_node("Relu", [x], [name]))
        else:
            nodes.append(oh.make_node("Clip", [x, "lo", "hi"], [name]))
        return name

    def block(x, cin, e, cout, stride, i):
        h = x
        if e != cin:
            we, be = init(f"we{i}", e, cin, 1, 1), init(f"be{i}", e)
            nodes.append(oh.make_node("Conv", [x, we, be], [f"e{i}"]))
            h = activation(f"e{i}", f"ea{i}")
        dw_inputs = [h, init(f"wd{i}", e, 1, 3, 3)] + ([init(f"bd{i}", e)] if dw_bias else [])
        nodes.append(
            oh.make_node("Conv", dw_inputs, [f"d{i}"], group=e, strides=[stride] * 2, pads=[1] * 4)
        )
        h = activation(f"d{i}", f"da{i}")
        nodes.append(
            oh.make_node(
                "Conv", [h, init(f"wp{i}", cout, e, 1, 1), init(f"bp{i}", cout)], [f"p{i}"]
            )
        )
        if stride == 1 and cin == cout:
            nodes.append(oh.make_node("Add", [x, f"p{i}"], [f"y{i}"]))
            return f"y{i}"
        return f"p{i}"

    nodes.append(
        oh.make_node("Conv", ["x", init("ws", 8, 8, 3, 3), init("bs", 8)], ["s"], pads=[1] * 4)
    )
    stem = activation("s", "sa")
    y = block(block(block(stem, 8, 8, 8, 1, 2), 8, 48, 16, 2, 0), 16, 64, 16, 1, 1)
    nodes.append(oh.make_node("Identity", [y], ["y"]))
    outputs = [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if share_expansion:  # the first block's expansion is read by a second graph output too
        outputs.append(oh.make_tensor_value_info("ea0", TensorProto.FLOAT, None))
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 18, 18])
    graph = oh.make_graph(nodes, "blocks", [x], outputs, inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)


def _reference(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)


def _fused(report):
    return {p.name: p.matches for p in report.passes}.get("fuse_inverted_residuals", {})


@needs_kernel
@pytest.mark.parametrize("act", ["clip", "relu"])
def test_pass_fuses_blocks_and_keeps_outputs(act, monkeypatch):
    monkeypatch.setattr(kir, "FUSE_BYTES", 0)
    model = _blocks_model(act=act)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 8, 18, 18)).astype(np.float32)}
    report = check_pass(model, feeds, "default", reference=_reference, runner=_ort)
    assert _fused(report) == {
        "PackedDepthwiseProjectAdd": 1, "PackedInvertedResidual": 1,
        "PackedInvertedResidualAdd": 1,
    }  # fmt: skip
    m = onnx2jax.load(model)
    hlo = m.lower(**feeds)[0].as_text()
    assert hlo.count("@onnx2jax_inverted_residual(") == 1
    assert hlo.count("@onnx2jax_inverted_residual_add(") == 2


@needs_kernel
def test_pass_leaves_blocks_it_cannot_fuse():
    # an expansion read elsewhere stays a conv (the depthwise conv and projection still fuse);
    # depthwise convs without a bias: nothing to fuse
    shared = _blocks_model(share_expansion=True)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 8, 18, 18)).astype(np.float32)}
    report = check_pass(shared, feeds, "default", reference=_reference, runner=_ort)
    assert _fused(report) == {
        "PackedDepthwiseProject": 1, "PackedDepthwiseProjectAdd": 1,
        "PackedInvertedResidualAdd": 1,
    }  # fmt: skip
    report = check_pass(
        _blocks_model(dw_bias=False), feeds, "default", reference=_reference, runner=_ort
    )
    assert _fused(report) == {}


def _stem_model(seed=0):
    """An RGB stem (3x3, stride 2, 3 -> 16, ReLU6), a depthwise 3x3 (ReLU6) and a 1x1
    projection 16 -> 8: MobileNetV2's first layers, the stem read only by the depthwise conv."""
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [init("ws", 16, 3, 3, 3), init("bs", 16), init("wd", 16, 1, 3, 3), init("bd", 16),
             init("wp", 8, 16, 1, 1), init("bp", 8)]  # fmt: skip
    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    nodes = [
        oh.make_node("Conv", ["x", "ws", "bs"], ["s"], strides=[2, 2], pads=[1, 1, 1, 1]),
        oh.make_node("Clip", ["s", "lo", "hi"], ["sa"]),
        oh.make_node("Conv", ["sa", "wd", "bd"], ["d"], group=16, pads=[1, 1, 1, 1]),
        oh.make_node("Clip", ["d", "lo", "hi"], ["da"]),
        oh.make_node("Conv", ["da", "wp", "bp"], ["y"]),
    ]
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 21, 18])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = oh.make_graph(nodes, "stem", [x], [y], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@needs_kernel
def test_pass_fuses_a_stem_with_the_block_after_it(monkeypatch):
    monkeypatch.setattr(kir, "FUSE_BYTES", 0)
    model = _stem_model()
    feeds = {"x": np.random.default_rng(5).standard_normal((2, 3, 21, 18)).astype(np.float32)}
    report = check_pass(model, feeds, "default", reference=_reference, runner=_ort)
    assert _fused(report) == {"PackedInvertedResidual": 1}
    assert "onnx2jax_inverted_residual" in onnx2jax.load(model).lower(**feeds)[0].as_text()


@needs_kernel
def test_pass_gradient_reaches_the_onnx_named_weights(monkeypatch):
    monkeypatch.setattr(kir, "FUSE_BYTES", 0)
    model = _blocks_model()
    x = np.random.default_rng(3).standard_normal((2, 8, 18, 18)).astype(np.float32)
    # float32 sums in another order through four layers: ~1e-5 apart
    assert_grads_match_unoptimized(model, x, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_real_mobilenet_exports_fuse_every_block(exporter, monkeypatch):
    monkeypatch.setattr(kir, "FUSE_BYTES", 0)
    path = os.path.join(MODELS, f"mobilenet_{exporter}.onnx")
    m = onnx2jax.load(path)
    assert _fused(m.pass_report) == {
        "PackedDepthwiseProjectAdd": 1, "PackedInvertedResidual": 2,
        "PackedInvertedResidualAdd": 1,
    }  # fmt: skip
    x = np.random.default_rng(4).standard_normal((3, 3, 40, 48)).astype(np.float32)
    assert m.lower(input=x)[0].as_text().count("onnx2jax_inverted_residual") == 4
    (want,) = ort.InferenceSession(path).run(None, {"input": x})
    np.testing.assert_allclose(np.asarray(m(input=x)[0]), want, rtol=1e-4, atol=1e-5)
    optimized, _ = optimize_proto(
        onnx.load(path), onnx2jax_passes.resolve("default"), portable=True
    )
    assert "PackedInvertedResidualAdd" in {n.op_type for n in optimized.graph.node}
    (got,) = _ort(optimized, {"input": x})  # the function bodies: the three convolutions
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
