"""onnx2jax's packed few-row kernel (onnx2jax/_kernels) and the pass that uses it.

The kernel is checked against float64 numpy products, jitted and eagerly, through vmap and
grad, and against its own XLA fallback; the pack_few_rows pass and the RNN recurrences against
onnx's reference evaluator and onnxruntime, with and without the kernel.
"""

from __future__ import annotations

import os
import shutil
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
from onnx2jax._kernels import matmul as kernels
from onnx2jax._loader import optimize_proto

ort = pytest.importorskip("onnxruntime")
rng = np.random.default_rng(0)
needs_kernel = pytest.mark.skipif(not kernels.available(), reason="kernel not built here")


def _f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def _close(got, want, rtol=2e-5):
    want = np.asarray(want, np.float64)
    err = np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    assert err < rtol, err


@pytest.mark.skipif(
    sys.platform != "linux" or not (shutil.which("c++") or shutil.which("g++")),
    reason="no C++ compiler: pip install skips the optional kernel",
)
def test_the_kernel_is_built_where_a_compiler_is():
    assert _kernels.library_path() is not None and kernels.available()


@needs_kernel
@pytest.mark.parametrize(
    "m,k,n",
    [(1, 64, 13), (2, 5, 8), (3, 33, 17), (5, 7, 1), (8, 96, 40), (9, 40, 24), (17, 20, 9),
     (64, 16, 8), (4, 0, 5)],
)  # fmt: skip
def test_packed_matmul_matches_numpy(m, k, n):
    x, w = _f32(m, k), _f32(k, n)
    packed = kernels.pack(w)
    assert packed.shape == (-(-n // 8), k, 8)
    want = x.astype(np.float64) @ w
    eager = kernels.packed_matmul(x, packed, n)
    jitted = jax.jit(kernels.packed_matmul, static_argnums=2)(x, packed, n)
    for got in (eager, jitted):
        assert got.shape == (m, n)
        if k:
            _close(got, want)
        else:
            assert not np.asarray(got).any()
    hlo = jax.jit(kernels.packed_matmul, static_argnums=2).lower(x, packed, n).as_text()
    assert "onnx2jax_packed_matmul" in hlo


@needs_kernel
def test_leading_dims_batched_weights_and_the_xla_fallback_agree(monkeypatch):
    x, w = _f32(2, 1, 3, 40), _f32(40, 21)
    _close(kernels.packed_matmul(x, kernels.pack(w), 21), x.astype(np.float64) @ w)
    xs, ws = _f32(2, 3, 40), _f32(2, 40, 21)  # one product per leading entry (RNN directions)
    got = kernels.packed_matmul(xs, kernels.pack(ws), 21)
    _close(got, np.einsum("bmk,bkn->bmn", xs.astype(np.float64), ws))
    monkeypatch.setenv("ONNX2JAX_KERNELS", "off")
    assert not kernels.available()
    _close(kernels.packed_matmul(xs, kernels.pack(ws), 21), got)


@needs_kernel
def test_above_max_rows_runs_as_an_xla_dot():
    x, w = _f32(_kernels.MAX_ROWS + 1, 24), _f32(24, 10)
    fn = jax.jit(kernels.packed_matmul, static_argnums=2)
    assert "onnx2jax_packed_matmul" not in fn.lower(x, kernels.pack(w), 10).as_text()
    _close(fn(x, kernels.pack(w), 10), x.astype(np.float64) @ w)


@needs_kernel
def test_vmap_folds_the_batch_into_rows_or_falls_back_for_batched_weights():
    x, w = _f32(5, 3, 24), _f32(24, 11)
    packed = kernels.pack(w)
    fold = jax.jit(jax.vmap(lambda a: kernels.packed_matmul(a, packed, 11)))
    assert "onnx2jax_packed_matmul" in fold.lower(x).as_text()
    _close(fold(x), x.astype(np.float64) @ w)
    big = _f32(30, 3, 24)  # 90 rows once folded: XLA's dot
    _close(
        jax.vmap(lambda a: kernels.packed_matmul(a, packed, 11))(big), big @ w.astype(np.float64)
    )
    ws = _f32(5, 24, 11)
    got = jax.vmap(lambda a, b: kernels.packed_matmul(a, kernels.pack(b), 11))(x, ws)
    _close(got, np.einsum("vmk,vkn->vmn", x.astype(np.float64), ws))


@needs_kernel
def test_gradients_equal_a_plain_dots():
    x, w = _f32(6, 20), _f32(20, 13)

    def loss(product):
        return lambda a, b: jnp.sum(jnp.tanh(product(a, b)))

    ours = jax.grad(loss(lambda a, b: kernels.packed_matmul(a, kernels.pack(b), 13)), (0, 1))
    plain = jax.grad(loss(lambda a, b: a @ b), (0, 1))
    for g, p in zip(ours(x, w), plain(x, w), strict=True):
        # sums of 6-20 products in another order (XLA's dots differ between AVX2 and AVX-512)
        np.testing.assert_allclose(g, p, rtol=1e-5, atol=1e-5 * np.abs(p).max())


@needs_kernel
def test_bad_shapes_name_the_kernel():
    call = jax.ffi.ffi_call("onnx2jax_packed_matmul", jax.ShapeDtypeStruct((2, 9), np.float32))
    with pytest.raises(Exception, match="onnx2jax_packed_matmul"):
        jax.block_until_ready(
            call(_f32(2, 4), _f32(1, 4, 8), stream=True)
        )  # 9 columns need 2 panels


# -- the pack_few_rows pass ------------------------------------------------------------------


def _product_model(x_shape, weight_dtype=np.float32):
    """MatMul with a [K, N] initializer, MatMul(x, Transpose(V)), Gemm(transB) with a bias."""
    k, n = x_shape[-1], 37  # N not a multiple of 8: the padded panel is sliced off
    w = (rng.standard_normal((k, n)) * 0.3).astype(weight_dtype)
    v = (rng.standard_normal((k, n)) * 0.3).astype(np.float32)
    g = (rng.standard_normal((11, n)) * 0.3).astype(np.float32)
    c = rng.standard_normal(11).astype(np.float32)
    nodes = [
        oh.make_node("Cast", ["x"], ["xc"], to=onnx.helper.np_dtype_to_tensor_dtype(w.dtype)),
        oh.make_node("MatMul", ["xc", "w"], ["h0"]),
        oh.make_node("Cast", ["h0"], ["h"], to=TensorProto.FLOAT),
        oh.make_node("Transpose", ["v"], ["vt"], perm=[1, 0]),
        oh.make_node("MatMul", ["x", "vt_t"], ["h2"]),
        oh.make_node("Transpose", ["vt"], ["vt_t"], perm=[1, 0]),
        oh.make_node("Add", ["h", "h2"], ["s"]),
        oh.make_node("Reshape", ["s", "flat"], ["s2"]),
        oh.make_node("Gemm", ["s2", "g", "c"], ["y"], transB=1),
    ]
    nodes = nodes[:4] + [nodes[5], nodes[4]] + nodes[6:]
    inits = [
        numpy_helper.from_array(a, name)
        for a, name in ((w, "w"), (v, "v"), (g, "g"), (c, "c"), (np.array([-1, n]), "flat"))
    ]
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = oh.make_graph(nodes, "g", [x], [y], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)


def _matches(m, name):
    (report,) = [p for p in m.pass_report.passes if p.name == name]
    return report.matches


@needs_kernel
@pytest.mark.parametrize("x_shape", [["batch", 1, 24], [3, 24]])
def test_pack_few_rows_keeps_outputs(x_shape):
    model = _product_model(x_shape)
    x = _f32(5, 1, 24) if x_shape[0] == "batch" else _f32(3, 24)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    m = onnx2jax.load(model)
    assert _matches(m, "pack_few_rows") == {"MatMul": 2, "Gemm": 1}
    assert m._program.prep  # the packing runs once per params object
    assert sorted(m.params) == ["c", "g", "v", "w"]  # ONNX names kept
    for how, got in (("jit", m(x=x)[0]), ("eager", m.apply(m.params, x=x)[0])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=how)
    optimized, _ = optimize_proto(model, onnx2jax_passes.resolve("default"), portable=True)
    onnx.checker.check_model(optimized)
    assert {"PackedMatMul", "PackedMatMulTransB"} <= {n.op_type for n in optimized.graph.node}
    np.testing.assert_allclose(_ort(optimized, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_pack_few_rows_gradient_reaches_the_onnx_named_weights():
    model = _product_model([4, 24])
    x = _f32(4, 24)
    grads = []
    for passes in ("default", None):
        m = onnx2jax.load(model, passes=passes)
        grads.append(jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x=x)[0])))(m.params))
    for name in grads[1]:
        scale = np.abs(grads[1][name]).max()  # sums of 80 products, in another order
        np.testing.assert_allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "x_shape,dtype",
    [(["batch", "seq", 24], np.float32), ([2, 128, 24], np.float32), (["batch", 24], np.float16)],
)
def test_pack_few_rows_leaves_many_rows_and_half_precision_alone(x_shape, dtype):
    _, report = optimize_proto(_product_model(x_shape, dtype), ("pack_few_rows",))
    matches = report.passes[0].matches
    if dtype == np.float16:  # the float32 MatMul and the Gemm are packed, not w's MatMul
        assert matches == {"MatMul": 1, "Gemm": 1}
    elif x_shape[0] == "batch":  # batch x seq rows; the Gemm after Reshape([-1, N]) may be few
        assert "MatMul" not in matches
    else:  # 256 rows
        assert not matches


@needs_kernel
def test_many_rows_at_run_time_take_xlas_dot_on_the_weight_as_it_was():
    model = _product_model(["batch", 1, 24])
    m = onnx2jax.load(model)
    assert _matches(m, "pack_few_rows") == {"MatMul": 2, "Gemm": 1}
    for batch, kernel in ((_kernels.MAX_ROWS, True), (_kernels.MAX_ROWS + 1, False)):
        x = _f32(batch, 1, 24)
        assert ("onnx2jax_packed_matmul" in m.lower(x=x)[0].as_text()) == kernel
        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(m(x=x)[0], want, rtol=1e-5, atol=1e-5)


# -- the pack_many_rows pass -----------------------------------------------------------------


@needs_kernel
def test_pack_many_rows_keeps_outputs_and_runs_the_gemm_up_to_its_row_limit():
    """batch x seq rows: the two MatMuls go to the convolution kernel's GEMM on 16-column
    panels up to GEMM_MAX_ROWS rows, to XLA's dot on the weight as it was above."""
    model = _product_model(["batch", "seq", 24])
    m = onnx2jax.load(model)
    assert _matches(m, "pack_many_rows") == {"MatMul": 2}
    assert sorted(m.params) == ["c", "g", "v", "w"]
    for batch, seq, kernel in ((2, 50, True), (1, _kernels.GEMM_MAX_ROWS, True), (3, 100, False)):
        x = _f32(batch, seq, 24)
        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
        text = m.lower(x=x)[0].as_text()
        assert ("onnx2jax_packed_conv" in text) == kernel, (batch, seq)
        for how, got in (("jit", m(x=x)[0]), ("eager", m.apply(m.params, x=x)[0])):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{how} {batch}")
    x = _f32(2, 50, 24)
    optimized, _ = optimize_proto(model, onnx2jax_passes.resolve("default"), portable=True)
    onnx.checker.check_model(optimized)
    assert "PackedMatMul" in {n.op_type for n in optimized.graph.node}
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(_ort(optimized, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_pack_many_rows_gradient_and_vmap_match_the_unpacked_graph():
    model = _product_model(["batch", "seq", 24])
    x = _f32(2, 40, 24)
    grads, vmapped = [], []
    for passes in ("default", None):
        m = onnx2jax.load(model, passes=passes)
        grads.append(jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x=x)[0])))(m.params))
        vmapped.append(jax.vmap(lambda xi, m=m: m.apply(m.params, x=xi)[0])(x[:, None]))
    for name in grads[1]:
        scale = np.abs(grads[1][name]).max()  # sums of 80 products, in another order
        np.testing.assert_allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(vmapped[0], vmapped[1], rtol=1e-5, atol=1e-5)


def test_pack_many_rows_leaves_static_rows_above_its_limit_alone():
    rows = _kernels.GEMM_MAX_ROWS + 1
    _, report = optimize_proto(_product_model([rows, 24]), ("pack_many_rows",))
    assert "MatMul" not in report.passes[0].matches
    _, report = optimize_proto(_product_model([2, 64, 24]), ("pack_many_rows",))
    assert report.passes[0].matches.get("MatMul") == 2


def test_load_drops_the_pass_without_the_kernel(monkeypatch):
    monkeypatch.setenv("ONNX2JAX_KERNELS", "off")
    model = _product_model([3, 24])
    m = onnx2jax.load(model)
    ran = [p.name for p in m.pass_report.passes]
    assert "pack_few_rows" not in ran and "pack_many_rows" not in ran
    x = _f32(3, 24)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(m(x=x)[0], want, rtol=1e-5, atol=1e-5)


# -- RNN recurrences -------------------------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrences_on_the_kernel_match_onnxruntime(op, monkeypatch):
    hidden, gates = 16, {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    inits = [
        numpy_helper.from_array(_f32(2, gates * hidden, 10) * 0.3, "W"),
        numpy_helper.from_array(_f32(2, gates * hidden, hidden) * 0.3, "R"),
        numpy_helper.from_array(_f32(2, 2 * gates * hidden) * 0.1, "B"),
    ]
    node = oh.make_node(
        op, ["x", "W", "R", "B"], ["y"], hidden_size=hidden, direction="bidirectional"
    )
    x_info = oh.make_tensor_value_info("x", TensorProto.FLOAT, [7, 4, 10])
    y_info = oh.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = oh.make_graph([node], "g", [x_info], [y_info], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 14)])
    x = _f32(7, 4, 10)
    want = _ort(model, {"x": x})[0]
    m = onnx2jax.load(model)
    assert "onnx2jax_packed_matmul" in m.lower(x=x)[0].as_text()
    np.testing.assert_allclose(m(x=x)[0], want, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("ONNX2JAX_KERNELS", "off")
    plain = onnx2jax.load(model)
    assert "onnx2jax_packed_matmul" not in plain.lower(x=x)[0].as_text()
    np.testing.assert_allclose(plain(x=x)[0], want, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_export_holds_no_custom_call():
    """jax.export artifacts must run where this library is not: convert traces without it."""
    model = _product_model(["batch", 1, 24])
    loaded = onnx2jax.load_exported(onnx2jax.convert(model))
    assert "onnx2jax_packed_matmul" not in loaded.exported.mlir_module()
    x = _f32(3, 1, 24)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(loaded(x)[0], want, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_the_narrower_paths_match_numpy_too(isa):
    """The kernel's instruction set is chosen once per process, so the narrower paths run in a
    child process with ONNX2JAX_KERNELS_ISA capping it (ONNX2JAX_KERNELS_PORTABLE=1, the older
    spelling, still works)."""
    code = (
        "import numpy as np\n"
        "from onnx2jax._kernels import matmul as k\n"
        "rng = np.random.default_rng(1)\n"
        "for m, kk, n in ((1, 33, 13), (5, 40, 8), (9, 17, 21), (8, 64, 50)):\n"
        "    x = rng.standard_normal((m, kk)).astype(np.float32)\n"
        "    w = rng.standard_normal((kk, n)).astype(np.float32)\n"
        "    got = np.asarray(k.packed_matmul(x, k.pack(w), n), np.float64)\n"
        "    want = x.astype(np.float64) @ w\n"
        "    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max(), (m, kk, n)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "ONNX2JAX_KERNELS_ISA": isa}
    if isa == "portable":
        env = {**os.environ, "ONNX2JAX_KERNELS_PORTABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
