"""com.microsoft quantized contrib ops (ops/contrib_quant.py) against onnxruntime, bit for bit,
and the ops with an 8-bit product (QGemm, DynamicQuantizeLSTM) against the exact reference.

onnxruntime runs with graph optimizations disabled, so each node runs as its own CPU kernel.
QLinearAdd/QLinearMul are checked on every pair of 8-bit values for each way onnxruntime's
broadcast loop can call its kernel. QGemm and DynamicQuantizeLSTM multiply uint8 activations
with int8 or uint8 weights: always checked against tests/int8_reference.py (numpy int64
products), and against onnxruntime too where it follows the spec (``ort_follows_spec``: not for
uint8 x int8 on x86 without VNNI, where its int16 pair sums saturate; see docs/int8.md).
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from int8_reference import ort_follows_spec, reference_evaluator
from op_check import node_model

import onnx2jax

ort = pytest.importorskip("onnxruntime")
MS = "com.microsoft"
EXACT = ("QGemm", "DynamicQuantizeLSTM")  # ops with an 8-bit product: int8_reference has them


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # One thread: onnxruntime's LSTM splits the batch across threads and then quantizes each
    # chunk's hidden state on its own, so its DynamicQuantizeLSTM depends on the thread count.
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _compare(op, expected, got, how, atol, against):
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        g = np.asarray(g)
        assert g.shape == e.shape and g.dtype == e.dtype, f"{op} output {i}: {g.shape} {g.dtype}"
        where = f"{op} ({how}) output {i} vs {against}"
        if atol:
            np.testing.assert_allclose(g, e, rtol=0, atol=atol, err_msg=where)
        else:
            bad = np.argwhere(g != e)
            assert not len(bad), (
                f"{where}: {len(bad)} of {e.size} differ, first at {bad[0].tolist()}: "
                f"got {g[tuple(bad[0])]} want {e[tuple(bad[0])]}"
            )


def check_exact(op, inputs, attrs=None, *, constants=(), atol=0.0, n_outputs=1, with_ort=True):
    """One ``op`` node; its outputs equal the reference's exactly (or within ``atol`` for
    float outputs), jitted and eagerly. The reference: onnxruntime (``with_ort``), and the
    exact reference of tests/int8_reference.py for ops that have one (then ``with_ort`` says
    whether onnxruntime follows the spec for these operands). Returns the reference outputs."""
    model = node_model(op, inputs, attrs, domain=MS, constants=constants, n_outputs=n_outputs)
    feeds = {k: np.asarray(v) for k, v in inputs.items() if v is not None and k not in constants}
    references = {}
    if op in EXACT:
        references["the exact reference"] = reference_evaluator(model).run(None, feeds)
    if with_ort:
        references["onnxruntime"] = run_ort(model, feeds)
    assert references, f"{op}: no reference to compare with"
    m = onnx2jax.load(model)
    for how, got in (("jit", m(**feeds)), ("eager", m.apply(m.params, **feeds))):
        for against, expected in references.items():
            _compare(op, expected, got, how, atol, against)
    return next(iter(references.values()))


def qparams(rng, dtype, n=1, lo=0.002, hi=0.1):
    info = np.iinfo(dtype)
    scales = [np.float32(rng.uniform(lo, hi)) for _ in range(n)]
    zps = [np.asarray(rng.integers(info.min, info.max + 1), dtype) for _ in range(n)]
    return scales, zps


def all_pairs(dtype):
    """Every (a, b) pair of 8-bit values, as two 256 x 256 tensors."""
    a = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 256, axis=1).view(dtype)
    return a, np.ascontiguousarray(a.T)


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("layout", ["same", "b_per_row", "a_per_row", "a_scalar"])
def test_qlinear_binary_every_pair(op, dtype, layout):
    rng = np.random.default_rng(zlib.crc32(f"{op}/{dtype.__name__}/{layout}".encode()))
    a, b = all_pairs(dtype)
    if layout == "b_per_row":  # b is one value per 256-long span: onnxruntime's scalar-B path
        a, b = a.T.copy(), b[:, :1].copy()  # each row of a holds every value; b one per row
    elif layout == "a_per_row":
        a, b = a[:, :1].copy(), b.T.copy()
    elif layout == "a_scalar":
        a, b = a[:1, :1].reshape(1).copy(), b
    for trial in range(3):
        (sa, sb, sc), (za, zb, zc) = qparams(rng, dtype, 3)
        if trial == 2:  # typical of real graphs: the output scale near the inputs'
            sb, sc = np.float32(sa * 1.5), np.float32(sa * 2)
        inputs = {
            "a": a,
            "a_scale": sa,
            "a_zp": za,
            "b": b,
            "b_scale": sb,
            "b_zp": zb,
            "c_scale": sc,
            "c_zp": zc,
        }
        check_exact(op, inputs, constants=["a_scale", "a_zp", "b_scale", "b_zp", "c_scale", "c_zp"])


def test_qlinear_add_broadcast_channel():
    """A per-channel operand ([1, C, 1, 1] against [N, C, H, W]), the residual-block shape."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 8, 5, 7), dtype=np.uint8)
    b = rng.integers(0, 256, (1, 8, 1, 1), dtype=np.uint8)
    (sa, sb, sc), (za, zb, zc) = qparams(rng, np.uint8, 3)
    inputs = {
        "a": a,
        "a_scale": sa,
        "a_zp": za,
        "b": b,
        "b_scale": sb,
        "b_zp": zb,
        "c_scale": sc,
        "c_zp": zc,
    }
    check_exact("QLinearAdd", inputs, constants=list(inputs)[1:3] + list(inputs)[4:])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("opset,axis", [(13, -1), (13, 1), (12, 1), (12, 2)])
def test_qlinear_softmax(dtype, opset, axis):
    rng = np.random.default_rng(opset + axis)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, (2, 5, 7, 33), dtype=dtype)
    x[0, 0, 0] = info.max  # a row holding the extreme values
    x[0, 0, 1] = info.min
    for xs in (np.float32(0.05), np.float32(0.0123)):
        zp = np.asarray(0 if dtype == np.uint8 else -128, dtype)
        inputs = {
            "x": x,
            "x_scale": xs,
            "x_zp": np.asarray(3, dtype),
            "y_scale": np.float32(1 / 256),
            "y_zp": zp,
        }
        check_exact(
            "QLinearSoftmax",
            inputs,
            {"axis": axis, "opset": opset},
            constants=["x_scale", "x_zp", "y_scale", "y_zp"],
        )


@pytest.mark.parametrize("weights", [np.int8, np.uint8])
@pytest.mark.parametrize("quantized_out", [True, False])
@pytest.mark.parametrize("trans_b,per_column", [(0, False), (1, True), (0, True)])
def test_qgemm(quantized_out, trans_b, per_column, weights):
    """uint8 activations x int8 or uint8 weights: the exact reference always; onnxruntime too
    where it follows the spec (uint8 x uint8 everywhere, uint8 x int8 only with VNNI)."""
    rng = np.random.default_rng(trans_b * 2 + per_column)
    m, k, n = 7, 40, 9
    info = np.iinfo(weights)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(info.min, info.max + 1, (n, k) if trans_b else (k, n), dtype=weights)
    c = rng.integers(-5000, 5000, (n,), dtype=np.int32)
    b_scale = rng.uniform(0.001, 0.01, n) if per_column else rng.uniform(0.001, 0.01, ())
    # int8 weights are symmetric (zero point 0), as onnxruntime's quantizer makes them
    b_zp = rng.integers(0, 256, n if per_column else (), dtype=np.uint8)
    b_zp = np.zeros_like(b_zp, np.int8) if weights == np.int8 else b_zp
    inputs = {
        "a": a,
        "a_scale": np.float32(0.02),
        "a_zp": np.asarray(117, np.uint8),
        "b": b,
        "b_scale": np.asarray(b_scale, np.float32),
        "b_zp": np.asarray(b_zp),
        "c": c,
    }
    if quantized_out:
        inputs |= {"y_scale": np.float32(0.07), "y_zp": np.asarray(121, np.uint8)}
    consts = [k for k in inputs if k not in ("a",)]
    attrs = {"transB": trans_b, "alpha": 1.0}
    ort_ok = ort_follows_spec(np.uint8, weights)
    check_exact("QGemm", inputs, attrs, constants=consts, with_ort=ort_ok)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(2, 16, 7, 7), (1, 3, 1, 1), (3, 5, 11, 13)])
def test_qlinear_global_average_pool(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, shape, dtype=dtype)
    for xs, ys in ((0.05, 0.02), (0.013, 0.013), (0.1, 0.0031)):
        inputs = {
            "x": x,
            "x_scale": np.float32(xs),
            "x_zp": np.asarray(7, dtype),
            "y_scale": np.float32(ys),
            "y_zp": np.asarray(-3 if dtype == np.int8 else 9, dtype),
        }
        check_exact(
            "QLinearGlobalAveragePool",
            inputs,
            {"channels_last": 0},
            constants=["x_scale", "x_zp", "y_scale", "y_zp"],
        )


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_concat(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    xs = [rng.integers(info.min, info.max + 1, (2, c, 6), dtype=dtype) for c in (3, 1, 4)]
    inputs = {"y_scale": np.float32(0.04), "y_zp": np.asarray(5, dtype)}
    for i, (x, s) in enumerate(zip(xs, (0.04, 0.013, 0.11), strict=True)):
        zp = 5 if i == 0 else int(rng.integers(info.min, info.max + 1))
        inputs |= {f"x{i}": x, f"s{i}": np.float32(s), f"z{i}": np.asarray(zp, dtype)}
    consts = [k for k in inputs if not k.startswith("x")]
    check_exact("QLinearConcat", inputs, {"axis": 1}, constants=consts)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_leaky_relu(dtype):
    x = np.arange(256, dtype=np.uint8).view(dtype).reshape(4, 64)
    inputs = {
        "x": x,
        "x_scale": np.float32(0.031),
        "x_zp": np.asarray(100, dtype),
        "y_scale": np.float32(0.017),
        "y_zp": np.asarray(30, dtype),
    }
    check_exact(
        "QLinearLeakyRelu", inputs, {"alpha": 0.1}, constants=["x_scale", "x_zp", "y_scale", "y_zp"]
    )


@pytest.mark.parametrize("direction", ["forward", "bidirectional", "reverse"])
@pytest.mark.parametrize(
    "signed,per_column,states",
    [(True, False, False), (True, True, True), (False, False, True), (False, True, False)],
)
def test_dynamic_quantize_lstm(direction, signed, per_column, states):
    """Float gates: agrees with the exact reference (and with onnxruntime where it follows the
    spec: uint8 weights everywhere, int8 weights only with VNNI) to float tolerance. A hidden
    state that lands on a quantization boundary could round the other way, so this is not bit
    exact; atol 1e-5 is far below one step of a gate (~5e-3)."""
    rng = np.random.default_rng(7)
    nd = 2 if direction == "bidirectional" else 1
    t, b, i, h = 6, 3, 5, 4
    wdt = np.int8 if signed else np.uint8
    info = np.iinfo(wdt)
    W = rng.integers(info.min, info.max + 1, (nd, i, 4 * h), dtype=wdt)
    R = rng.integers(info.min, info.max + 1, (nd, h, 4 * h), dtype=wdt)
    sshape = (nd, 4 * h) if per_column else (nd,)
    inputs = {
        "X": rng.standard_normal((t, b, i)).astype(np.float32),
        "W": W,
        "R": R,
        "B": rng.standard_normal((nd, 8 * h)).astype(np.float32) * 0.1,
        "sequence_lens": None,
        "initial_h": rng.standard_normal((nd, b, h)).astype(np.float32) if states else None,
        "initial_c": rng.standard_normal((nd, b, h)).astype(np.float32) if states else None,
        "P": None,
        "W_scale": rng.uniform(0.001, 0.01, sshape).astype(np.float32),
        "W_zero_point": np.full(sshape, 0 if signed else 128, wdt),
        "R_scale": rng.uniform(0.001, 0.01, sshape).astype(np.float32),
        "R_zero_point": np.full(sshape, 0 if signed else 128, wdt),
    }
    consts = ["W", "R", "B", "W_scale", "W_zero_point", "R_scale", "R_zero_point"]
    check_exact(
        "DynamicQuantizeLSTM",
        inputs,
        {"hidden_size": h, "direction": direction},
        constants=consts,
        atol=1e-5,
        n_outputs=3,
        with_ort=ort_follows_spec(np.uint8, wdt),
    )


def test_unused_opset_domain_is_accepted():
    """A model may import domains none of its nodes use (quantizers add com.microsoft)."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    model = oh.make_model(
        graph,
        opset_imports=[
            oh.make_opsetid("", 17),
            oh.make_opsetid(MS, 1),
            oh.make_opsetid("ai.onnx.ml", 3),
            oh.make_opsetid("org.example.unused", 7),
        ],
    )
    (y,) = onnx2jax.load(model)(x)
    np.testing.assert_array_equal(np.asarray(y), np.maximum(x, 0))
