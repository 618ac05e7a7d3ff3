"""onnx2jax's packed channels-last convolution kernel (onnx2jax/_kernels) and the pack_convs pass.

The kernel is checked against float64 numpy convolutions, jitted and eagerly, through vmap and
grad, and against its own XLA fallback; the pass against onnx's reference evaluator and
onnxruntime, with the optimized file run in onnxruntime.
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

import onnx2jax
from onnx2jax import _kernels
from onnx2jax import passes as onnx2jax_passes
from onnx2jax._kernels import conv as kc
from onnx2jax._loader import optimize_proto

ort = pytest.importorskip("onnxruntime")
rng = np.random.default_rng(0)
needs_kernel = pytest.mark.skipif(not kc.available(), reason="kernel not built here")


def _f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def _conv64(x, w, b, g: kc.Geometry):
    """The float64 numpy convolution: x NHWC, w HWIO (dense, or depthwise [KH, KW, 1, C]),
    one shifted slice per tap."""
    (pt, pb), (pl, pr) = g.pads
    xp = np.pad(x.astype(np.float64), [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    n, oh, ow, o = kc._out_shape(x.shape, g)
    y = np.zeros((n, oh, ow, o)) + b.astype(np.float64)
    for i in range(g.kernel[0]):
        for j in range(g.kernel[1]):
            r0, c0 = i * g.dilations[0], j * g.dilations[1]
            sl = xp[:, r0 : r0 + (oh - 1) * g.strides[0] + 1 : g.strides[0],
                    c0 : c0 + (ow - 1) * g.strides[1] + 1 : g.strides[1]]  # fmt: skip
            if g.groups == 1:
                y += np.einsum("nhwc,co->nhwo", sl, w[i, j].astype(np.float64))
            else:
                y += sl * w[i, j, 0].astype(np.float64)
    return np.minimum(np.maximum(y, g.lo), g.hi)


def _close(got, want, rtol=2e-5):
    want = np.asarray(want, np.float64)
    err = np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    assert err < rtol, err


# (x NHWC, kernel, O, strides, pads ((top, bottom), (left, right)), dilations, clamp)
CASES = {
    "3x3": ((1, 9, 11, 5), (3, 3), 7, (1, 1), ((1, 1), (1, 1)), (1, 1), (0.0, math.inf)),
    "uneven": ((2, 10, 9, 20), (3, 2), 33, (2, 1), ((0, 2), (1, 0)), (1, 1), (-math.inf, math.inf)),
    "dilated": ((2, 10, 10, 6), (3, 3), 16, (1, 2), ((2, 2), (2, 1)), (2, 2), (-0.5, 0.5)),
    "1x1, images across tiles": ((3, 7, 7, 17), (1, 1), 16, (1, 1), ((0, 0), (0, 0)), (1, 1), (0.0, 6.0)),
    "rgb stem": ((1, 20, 20, 3), (7, 7), 8, (2, 2), ((3, 3), (3, 3)), (1, 1), (0.0, math.inf)),
    "kernel wider than input": ((1, 3, 3, 4), (5, 5), 3, (1, 1), ((2, 2), (2, 2)), (1, 1), (-math.inf, math.inf)),
    "one pixel": ((1, 1, 1, 8), (1, 1), 1, (1, 1), ((0, 0), (0, 0)), (1, 1), (-math.inf, math.inf)),
    "no images": ((0, 5, 5, 4), (3, 3), 4, (1, 1), ((1, 1), (1, 1)), (1, 1), (-math.inf, math.inf)),
    # 35 pixels (12-pixel tiles leave 11), 40 channels (a pair of panels and one, 8 columns)
    "three panels": ((1, 5, 7, 6), (3, 3), 40, (1, 1), ((1, 1), (1, 1)), (1, 1), (-1.0, 1.0)),
    # 64+ channels: the AVX-512 6 x 64 tile, then the last one to three panels two at a time
    "wide, 83 channels": ((2, 7, 9, 12), (3, 3), 83, (1, 1), ((1, 1), (1, 1)), (1, 1), (0.0, 6.0)),
    "wide 1x1, 128 channels": ((1, 5, 6, 20), (1, 1), 128, (1, 1), ((0, 0), (0, 0)), (1, 1), (-math.inf, math.inf)),
    "depthwise": ((2, 9, 8, 24), (3, 3), 24, (1, 1), ((1, 1), (1, 1)), (1, 1), (0.0, 6.0)),
    "depthwise strided": ((1, 11, 11, 32), (3, 3), 32, (2, 2), ((0, 1), (1, 0)), (1, 1), (-math.inf, math.inf)),
    # rows with runs of interior pixels (taken 8 and 4 at a time on AVX-512, 4 on AVX2) and single ones
    "depthwise wide": ((1, 6, 23, 32), (3, 3), 32, (1, 1), ((1, 1), (1, 1)), (1, 1), (0.0, 6.0)),
    "depthwise wide strided": ((1, 5, 44, 16), (3, 3), 16, (2, 2), ((1, 1), (1, 1)), (1, 1), (-math.inf, math.inf)),
    "depthwise 5x5 dilated": ((1, 12, 10, 7), (5, 5), 7, (1, 1), ((4, 3), (2, 4)), (2, 1), (0.0, math.inf)),
}  # fmt: skip


def _case(name):
    x_shape, kernel, o, strides, pads, dilations, (lo, hi) = CASES[name]
    groups = o if name.startswith("depthwise") else 1
    g = kc.Geometry(kernel, o, strides, pads, dilations, lo, hi, groups)
    return _f32(*x_shape), _f32(*kernel, x_shape[3] // groups, o), _f32(o), g


@needs_kernel
@pytest.mark.parametrize("name", list(CASES))
def test_packed_conv_matches_numpy(name):
    x, w, b, g = _case(name)
    packed = kc.pack(w)
    assert packed.shape == (-(-g.out_channels // 16), w.shape[0] * w.shape[1] * w.shape[2], 16)
    np.testing.assert_array_equal(kc.unpack(jnp.asarray(packed), g.kernel, g.out_channels), w)
    want = _conv64(x, w, b, g)
    eager = kc.packed_conv(x, packed, b, g)
    jitted = jax.jit(kc.packed_conv, static_argnums=3)(x, packed, b, g)
    for got in (eager, jitted):
        assert got.shape == want.shape
        if want.size:
            _close(got, want)
    hlo = jax.jit(kc.packed_conv, static_argnums=3).lower(x, packed, b, g).as_text()
    assert ("onnx2jax_packed_conv" if g.groups == 1 else "onnx2jax_depthwise_conv") in hlo


@needs_kernel
@pytest.mark.parametrize(
    "name", ["3x3", "uneven", "1x1, images across tiles", "no images", "wide, 83 channels"]
)
def test_a_residual_is_added_before_the_clamp(name):
    x, w, b, g = _case(name)
    packed = kc.pack(w)
    out = kc._out_shape(x.shape, g)
    for residual, kernel in ((_f32(*out), True), (_f32(1, 1, 1, g.out_channels), False)):
        want = _conv64(x, w, b, g._replace(lo=-math.inf, hi=math.inf)) + residual
        want = np.minimum(np.maximum(want, g.lo), g.hi)
        got = jax.jit(kc.packed_conv, static_argnums=3)(x, packed, b, g, residual)
        if want.size:
            _close(got, want)
        hlo = jax.jit(kc.packed_conv, static_argnums=3).lower(x, packed, b, g, residual)
        assert ("onnx2jax_packed_conv_add" in hlo.as_text()) == kernel  # broadcast: XLA adds


@needs_kernel
def test_no_bias_and_the_xla_fallback_agree():
    x, w, _, g = _case("uneven")
    packed = kc.pack(w)
    want = _conv64(x, w, np.zeros(g.out_channels, np.float32), g)
    _close(kc.packed_conv(x, packed, None, g), want)
    with _kernels.disabled():
        assert not kc.available()
        hlo = jax.jit(kc.packed_conv, static_argnums=3).lower(x, packed, None, g).as_text()
        assert "onnx2jax_packed_conv" not in hlo
        _close(kc.packed_conv(x, packed, None, g), want)


@needs_kernel
def test_the_clamp_keeps_nan():
    g = kc.Geometry((1, 1), 2, (1, 1), ((0, 0), (0, 0)), (1, 1), 0.0, 6.0)
    x = np.full((1, 2, 2, 3), np.nan, np.float32)
    x[0, 0, 0] = [10.0, 0.0, 0.0]  # -> 10 -> clamped to 6
    y = np.asarray(kc.packed_conv(x, kc.pack(np.ones((1, 1, 3, 2), np.float32)), None, g))
    assert np.isnan(y[0, 1]).all() and np.isnan(y[0, 0, 1]).all()
    np.testing.assert_array_equal(y[0, 0, 0], [6.0, 6.0])


@needs_kernel
@pytest.mark.parametrize("name", ["3x3", "three panels", "uneven"])
def test_the_residual_is_added_before_the_clamp(name):
    x, w, b, g = _case(name)
    r = _f32(*kc._out_shape(x.shape, g))
    y = _conv64(x, w, b, g._replace(lo=-math.inf, hi=math.inf)) + r
    _close(kc.packed_conv(x, kc.pack(w), b, g, r), np.minimum(np.maximum(y, g.lo), g.hi))


@needs_kernel
def test_vmap_with_a_residual_batched_or_not():
    x, w, b, g = _case("3x3")
    packed, out = kc.pack(w), kc._out_shape(x.shape, g)
    xs, rs = _f32(3, *x.shape), _f32(3, *out)
    r = rs[0]

    def ref(xi, ri):
        y = _conv64(xi, w, b, g._replace(lo=-math.inf, hi=math.inf)) + ri
        return np.minimum(np.maximum(y, g.lo), g.hi)

    f = lambda xi, ri: kc.packed_conv(xi, packed, b, g, ri)  # noqa: E731
    _close(jax.vmap(f)(xs, rs), np.stack([ref(xi, ri) for xi, ri in zip(xs, rs)]))
    _close(jax.vmap(f, (0, None))(xs, r), np.stack([ref(xi, r) for xi in xs]))
    _close(jax.vmap(f, (None, 0))(x, rs), np.stack([ref(x, ri) for ri in rs]))


@needs_kernel
def test_vmap_folds_images_or_falls_back_for_batched_weights():
    x, w, b, g = _case("3x3")
    xs = _f32(3, *x.shape)
    packed = kc.pack(w)
    got = jax.vmap(lambda xi: kc.packed_conv(xi, packed, b, g))(xs)
    _close(got, np.stack([_conv64(xi, w, b, g) for xi in xs]))
    hlo = jax.jit(jax.vmap(lambda xi: kc.packed_conv(xi, packed, b, g))).lower(xs).as_text()
    assert "onnx2jax_packed_conv" in hlo
    ws = _f32(3, *w.shape)
    got = jax.vmap(lambda wi: kc.packed_conv(x, kc.pack(wi), b, g))(ws)
    _close(got, np.stack([_conv64(x, wi, b, g) for wi in ws]))


@needs_kernel
@pytest.mark.parametrize("name", ["dilated", "depthwise strided"])
def test_gradients_equal_xlas_convolution(name):
    x, w, b, g = _case(name)
    g = g._replace(lo=-math.inf, hi=math.inf)  # a clamp's kink would make the check brittle

    def via_kernel(x, w, b):
        return jnp.sum(jnp.sin(kc.packed_conv(x, kc.pack(w), b, g)))

    def via_xla(x, w, b):
        y = jax.lax.conv_general_dilated(
            x, w, g.strides, g.pads, rhs_dilation=g.dilations,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g.groups,
        )  # fmt: skip
        return jnp.sum(jnp.sin(y + b))

    got = jax.grad(via_kernel, (0, 1, 2))(x, w, b)
    want = jax.grad(via_xla, (0, 1, 2))(x, w, b)
    for a, e in zip(got, want, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_the_narrower_paths_match_numpy_too(isa):
    """The kernel's instruction set is chosen once per process (AVX-512, AVX2 or plain C++),
    so the narrower paths run in a child process with ONNX2JAX_KERNELS_ISA capping it: on an
    AVX-512 CPU this covers all three."""
    _in_child_with_isa(isa, "_check_every_conv_case")


def _check_every_conv_case():
    for name in CASES:
        x, w, b, g = _case(name)
        want = _conv64(x, w, b, g)
        if want.size:
            _close(kc.packed_conv(x, kc.pack(w), b, g), want)


def _in_child_with_isa(isa, check):
    """Runs this module's function ``check`` in a child process whose kernels are capped at
    ``isa`` (the instruction set is chosen once per process)."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        f"import test_conv_kernel as t; t.{check}(); print('ok')\n"
    )
    env = {**os.environ, "ONNX2JAX_KERNELS_ISA": isa}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# -- the max pool kernel ---------------------------------------------------------------------

POOLS = {  # NCHW input shape and MaxPool attributes
    "stem 3x3/2": ((2, 64, 12, 13), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1] * 4}),
    "dilated, 19 channels": (
        (1, 19, 9, 10),
        {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [2, 1, 2, 1]},
    ),
    "ceil mode, 5 channels": (
        (2, 5, 7, 9),
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
    ),
    "uneven pads, 33 channels": ((1, 33, 8, 6), {"kernel_shape": [3, 2], "pads": [0, 1, 1, 0]}),
}


def _pool_case(name, nan_at=None):
    shape, attrs = POOLS[name]
    x = _f32(*shape)
    if nan_at is not None:
        x[nan_at] = np.nan
    node = oh.make_node("MaxPool", ["x"], ["y"], **attrs)
    graph = oh.make_graph(
        [node],
        "pool",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    return x, attrs, model


def _nhwc_max_pool(x_nchw, attrs):
    from onnx2jax.ops import nhwc

    return lambda x: nhwc.nhwc_max_pool(x, **attrs), x_nchw.transpose(0, 2, 3, 1)


@needs_kernel
@pytest.mark.parametrize("name", list(POOLS))
def test_max_pool_kernel_matches_the_reference(name):
    x, attrs, model = _pool_case(name)
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    fn, x_nhwc = _nhwc_max_pool(x, attrs)
    assert "onnx2jax_max_pool" in jax.jit(fn).lower(x_nhwc).as_text()
    for got in (jax.jit(fn)(x_nhwc), fn(x_nhwc)):
        np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), want)


@needs_kernel
def test_max_pool_kernel_keeps_nan():
    # The reference with +inf where the NaN is: exactly the windows that reach it give +inf.
    x, attrs, model = _pool_case("stem 3x3/2", nan_at=(1, 7, 4, 5))
    (want,) = ReferenceEvaluator(model).run(None, {"x": np.nan_to_num(x, nan=np.inf)})
    fn, x_nhwc = _nhwc_max_pool(x, attrs)
    got = np.asarray(jax.jit(fn)(x_nhwc)).transpose(0, 3, 1, 2)
    assert np.isinf(want).sum() == np.isnan(got).sum() > 0
    np.testing.assert_array_equal(np.where(np.isinf(want), np.nan, want), got)


@needs_kernel
def test_max_pool_kernel_gradient_and_vmap_match_xla():
    x, attrs, _ = _pool_case("stem 3x3/2")
    fn, x_nhwc = _nhwc_max_pool(x, attrs)
    with _kernels.disabled():
        want_grad = jax.grad(lambda x: jnp.sum(fn(x) ** 2))(x_nhwc)
        want_vmap = jax.vmap(fn)(x_nhwc[:, None])
    got_grad = jax.grad(lambda x: jnp.sum(fn(x) ** 2))(x_nhwc)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6)
    got_vmap = jax.jit(jax.vmap(fn))(x_nhwc[:, None])
    np.testing.assert_array_equal(got_vmap, want_vmap)


@needs_kernel
@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_max_pool_narrower_paths_match_the_reference(isa):
    _in_child_with_isa(isa, "_check_every_pool_case")


def _check_every_pool_case():
    for name in POOLS:
        x, attrs, model = _pool_case(name, nan_at=(0, 1, 2, 3))
        (want,) = ReferenceEvaluator(model).run(None, {"x": np.nan_to_num(x, nan=np.inf)})
        fn, x_nhwc = _nhwc_max_pool(x, attrs)
        got = np.asarray(jax.jit(fn)(x_nhwc)).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(np.where(np.isinf(want), np.nan, want), got)


# -- the pack_convs pass ---------------------------------------------------------------------


def _cnn(opset=17):
    """Conv+Relu, Conv+Clip(0, 6) (a graph output too), a residual block (Conv, Add, Relu), a
    depthwise conv, a bias-free strided conv, a dilated conv read twice: the forms the pass
    meets."""
    inits = [
        numpy_helper.from_array(_f32(8, 3, 3, 3) * 0.3, "w1"),
        numpy_helper.from_array(_f32(8) * 0.1, "b1"),
        numpy_helper.from_array(_f32(20, 8, 1, 1) * 0.3, "w2"),
        numpy_helper.from_array(_f32(20) * 0.1, "b2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(_f32(20, 1, 3, 3) * 0.3, "wd"),
        numpy_helper.from_array(_f32(17, 20, 3, 3) * 0.1, "w3"),
        numpy_helper.from_array(_f32(4, 17, 2, 2) * 0.2, "w4"),
        numpy_helper.from_array(_f32(4) * 0.1, "b4"),
        numpy_helper.from_array(_f32(20, 20, 3, 3) * 0.1, "w5"),
        numpy_helper.from_array(_f32(20) * 0.1, "b5"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c1"], ["r1"]),
        oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        oh.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        oh.make_node("Conv", ["r2", "w5", "b5"], ["c5"], pads=[1, 1, 1, 1]),
        oh.make_node("Add", ["r2", "c5"], ["s5"]),
        oh.make_node("Relu", ["s5"], ["r5"]),
        oh.make_node("Conv", ["r5", "wd"], ["d"], group=20, pads=[1, 1, 1, 1]),
        oh.make_node("Conv", ["d", "w3"], ["c3"], strides=[2, 2], pads=[0, 1, 1, 0]),
        oh.make_node("Conv", ["c3", "w4", "b4"], ["c4"], dilations=[2, 2], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c4"], ["r4"]),
        oh.make_node("Add", ["c4", "r4"], ["y"]),
    ]
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 12, 12])
    outs = [oh.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "r2")]
    graph = oh.make_graph(nodes, "g", [x], outs, inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)


@needs_kernel
def test_pack_convs_keeps_outputs():
    model = _cnn()
    x = _f32(2, 3, 12, 12)
    want = ReferenceEvaluator(model).run(None, {"x": x})
    m = onnx2jax.load(model)
    report = {p.name: p.matches for p in m.pass_report.passes}
    # c4 is read twice (by the Relu and the Add): its Relu stays a node
    assert report["pack_convs"] == {
        "NhwcConv": 6, "PackedNhwcConv + Relu": 1, "PackedNhwcConv + Clip": 1,
        "PackedNhwcConv + Add": 1, "PackedNhwcConvAdd + Relu": 1,
    }  # fmt: skip
    assert m._program.prep  # the packing runs once per params object
    # ONNX names kept; the Clip's bounds became attributes of the conv it was folded into
    assert sorted(m.params) == ["b1", "b2", "b4", "b5", "w1", "w2", "w3", "w4", "w5", "wd"]
    hlo = m.lower(x=x)[0].as_text()
    targets = ("packed_conv", "packed_conv_add", "depthwise_conv")
    calls = {t: hlo.count(f"@onnx2jax_{t}(") for t in targets}
    assert calls == {"packed_conv": 4, "packed_conv_add": 1, "depthwise_conv": 1}
    for how, got in (("jit", m(x=x)), ("eager", m.apply(m.params, x=x))):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=how)
    optimized, _ = optimize_proto(model, onnx2jax_passes.resolve("default"), portable=True)
    onnx.checker.check_model(optimized, full_check=True)
    assert "PackedNhwcConv" in {n.op_type for n in optimized.graph.node}
    for g, w in zip(_ort(optimized, {"x": x}), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_pack_convs_gradient_reaches_the_onnx_named_weights():
    assert_grads_match_unoptimized(_cnn(), _f32(2, 3, 12, 12), atol=1e-5)


def assert_grads_match_unoptimized(model, x, atol):
    """jax.grad of a loss through ``model`` (input ``x``) with the default passes and with
    none: the same ONNX-named params (less Clip's bounds ``lo``/``hi``, folded constants) and
    the same values."""
    grads = []
    for passes in ("default", None):
        m = onnx2jax.load(model, passes=passes)
        loss = lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x=x)[0]))  # noqa: E731
        grads.append(jax.grad(loss)(m.params))
    assert set(grads[0]) == set(grads[1]) - {"lo", "hi"}  # Clip's bounds: folded constants
    for name in grads[0]:
        np.testing.assert_allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=atol)


def test_pack_convs_needs_opset_13_and_skips_half_precision():
    _, report = optimize_proto(_cnn(opset=12), ("nhwc", "pack_convs"))
    assert not report.passes[1].matches
    half = _cnn()
    for init in half.graph.initializer:
        if init.name.startswith("w"):
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
            )
    _, report = optimize_proto(half, ("nhwc", "pack_convs"))
    assert not report.passes[1].matches


def test_load_drops_pack_convs_without_the_kernel(monkeypatch):
    monkeypatch.setenv("ONNX2JAX_KERNELS", "off")
    model = _cnn()
    m = onnx2jax.load(model)
    assert "pack_convs" not in [p.name for p in m.pass_report.passes]
    x = _f32(1, 3, 12, 12)
    want = ReferenceEvaluator(model).run(None, {"x": x})
    for g, w in zip(m(x=x), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_packed_conv_op_names_what_it_needs():
    from onnx2jax.ops.nhwc import packed_nhwc_conv

    x, w = jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 18, 16))
    with pytest.raises(ValueError, match="group 1, or group = input channels = output_channels"):
        packed_nhwc_conv(x, w, kernel_shape=[3, 3], output_channels=4, group=2)
