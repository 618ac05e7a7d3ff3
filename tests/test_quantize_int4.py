"""onnx2jax.quantize(weight_type="int4") writing com.microsoft MatMulNBits for MatMul weights.

References: onnxruntime running the quantized file (its own MatMulNBits kernel, with graph
optimizations off and on), the float model, the int4_format="qdq" file (standard
DequantizeLinear, same int4 values), and a numpy unpacker written from the op's spec.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import numpy_helper

import onnx2jax
from onnx2jax.quantization import QuantizationError

ort = pytest.importorskip("onnxruntime")
nbits = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
QuantFormat = pytest.importorskip("onnxruntime.quantization").QuantFormat
FLOAT = onnx.TensorProto.FLOAT
MS = "com.microsoft"


def _mlp(k: int, h: int, n: int, opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """MatMul(x, W1 [k, h]) -> Relu -> MatMul(W2 [h, n]) -> Gemm(W3 [n, 8], b3)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "W1": rng.standard_normal((k, h)) / np.sqrt(k),
        "W2": rng.standard_normal((h, n)) / np.sqrt(h),
        "W3": rng.standard_normal((n, 8)) / np.sqrt(n),
        "b3": rng.standard_normal(8) * 0.1,
    }
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()]
    nodes = [
        oh.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        oh.make_node("Relu", ["h"], ["r"]),
        oh.make_node("MatMul", ["r", "W2"], ["z"], name="fc2"),
        oh.make_node("Gemm", ["z", "W3", "b3"], ["y"], name="head"),
    ]
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", FLOAT, ["b", k])],
        [oh.make_tensor_value_info("y", FLOAT, ["b", 8])],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def run_ort(model: onnx.ModelProto, feeds: dict, optimize: bool = False) -> np.ndarray:
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _spec_weight(node: onnx.NodeProto, inits: dict) -> np.ndarray:
    """MatMulNBits's B dequantized as ContribOperators.md says: [K, N]."""
    attrs = {a.name: a.i for a in node.attribute}
    k, n, bs = attrs["K"], attrs["N"], attrs["block_size"]
    packed = inits[node.input[1]]
    q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, -1).astype(np.float32)
    scales = inits[node.input[2]].astype(np.float32).reshape(n, -1)
    w = (q - 8) * np.repeat(scales, bs, axis=1)  # no zero points: the default 8
    return w[:, :k].T


@pytest.mark.parametrize("k", [512, 200, 10])  # 200, 10: K not a multiple of the block
def test_matmul_weights_become_matmulnbits(k):
    model = _mlp(k, 64, 32)
    q = onnx2jax.quantize(model, weight_type="int4")
    onnx.checker.check_model(q, full_check=True)
    ops = [(n.domain, n.op_type) for n in q.graph.node]
    assert ops.count((MS, "MatMulNBits")) == 2 and ("", "MatMul") not in ops
    assert ("", "DequantizeLinear") in ops  # the Gemm weight keeps the opset-21 form
    assert {o.domain: o.version for o in q.opset_import} == {"": 21, MS: 1}
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert "W1" not in inits and "W2" not in inits
    fc1 = next(n for n in q.graph.node if n.name == "fc1_Q4")
    block = 128 if k >= 128 else 16
    nb = -(-k // block)
    assert {a.name: a.i for a in fc1.attribute} == {"K": k, "N": 64, "bits": 4, "block_size": block}
    assert len(fc1.input) == 3  # symmetric: no zero points
    b, s = inits[fc1.input[1]], inits[fc1.input[2]]
    assert b.dtype == np.uint8 and b.shape == (64, nb, block // 2)
    assert s.dtype == np.float32 and s.shape == (64 * nb,)
    # the packed weight, unpacked by the spec, is the float weight within half a step
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W1"))
    step = np.repeat(s.reshape(64, nb), block, axis=1)[:, :k].T
    err = np.abs(_spec_weight(fc1, inits) - w1)
    assert (err <= 0.5 * step * 1.0001).mean() > 0.97  # a few large values are clipped on purpose

    x = np.random.default_rng(5).standard_normal((6, k)).astype(np.float32)
    got = np.asarray(onnx2jax.load(q)(x)[0])
    # optimizations off: with them on, onnxruntime's result for the Gemm (int4 weight behind
    # DequantizeLinear) moves by up to 8e-3; MatMulNBits alone is compared both ways below
    np.testing.assert_allclose(got, run_ort(q, {"x": x}), rtol=1e-5, atol=1e-5)
    # the same int4 values as the standard DequantizeLinear form
    qdq = onnx2jax.quantize(model, weight_type="int4", int4_format="qdq")
    assert not any(n.domain == MS for n in qdq.graph.node)
    np.testing.assert_allclose(got, run_ort(qdq, {"x": x}), rtol=1e-5, atol=1e-5)
    # three int4 layers (MatMul, MatMul, Gemm) on random weights: ~0.13-0.22 measured
    floats = run_ort(model, {"x": x})
    assert np.linalg.norm(got - floats) < 0.3 * np.linalg.norm(floats)


def test_packed_weights_stay_packed_and_file_is_small():
    """onnx2jax's compiled program holds B as uint8 (unpacked inside it), never a float
    [K, N] constant; the file is >= 85 % smaller than float32; the weight error is no worse
    than onnxruntime's own symmetric MatMulNBitsQuantizer's."""
    k, n = 1024, 512
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "W"], ["y"])],
        "big",
        [oh.make_tensor_value_info("x", FLOAT, [2, k])],
        [oh.make_tensor_value_info("y", FLOAT, [2, n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    q = onnx2jax.quantize(model, weight_type="int4")
    assert {o.domain: o.version for o in q.opset_import}[""] == 17  # no DequantizeLinear: kept
    size, qsize = len(model.SerializeToString()), len(q.SerializeToString())
    assert qsize <= 0.15 * size, (qsize, size)
    m = onnx2jax.load(q)
    x = np.random.default_rng(1).standard_normal((2, k)).astype(np.float32)
    got = np.asarray(m(x)[0])
    for optimize in (False, True):
        np.testing.assert_allclose(got, run_ort(q, {"x": x}, optimize), rtol=1e-5, atol=1e-4)
    assert np.linalg.norm(got - x @ w) < 0.15 * np.linalg.norm(x @ w)  # one layer: ~0.10
    theirs = nbits.MatMulNBitsQuantizer(
        copy.deepcopy(model), block_size=128, is_symmetric=True, quant_format=QuantFormat.QOperator
    )
    theirs.process()
    ort_q = theirs.model.model
    assert [n.op_type for n in ort_q.graph.node] == ["MatMulNBits"]
    err = {}
    for name, qm in (("onnx2jax", q), ("onnxruntime", ort_q)):
        inits = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
        err[name] = np.sum((_spec_weight(qm.graph.node[0], inits) - w) ** 2)
        if name == "onnxruntime":  # the spec unpacker reads onnxruntime's own layout
            np.testing.assert_allclose(
                x @ _spec_weight(qm.graph.node[0], inits), run_ort(qm, {"x": x}), atol=1e-3
            )
    assert err["onnx2jax"] <= err["onnxruntime"], err
    hlo = m.lower(x)[0].compile().as_text()
    assert f"u8[{n},{k // 128},64]" in hlo
    assert f"f32[{n},{k}]{{1,0}} constant" not in hlo and f"f32[{k},{n}]{{1,0}} constant" not in hlo


def test_matmuls_that_stay_dequantizelinear():
    """A 1-D A, a 3-D weight and per_channel=False keep the DequantizeLinear form."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((256, 16)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((2, 16, 4)).astype(np.float32), "W3"),
    ]
    nodes = [
        oh.make_node("MatMul", ["v", "W"], ["a"]),
        oh.make_node("MatMul", ["t", "W3"], ["b"]),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [
            oh.make_tensor_value_info("v", FLOAT, [256]),
            oh.make_tensor_value_info("t", FLOAT, [2, 3, 16]),
        ],
        [oh.make_tensor_value_info("a", FLOAT, [16]), oh.make_tensor_value_info("b", FLOAT, None)],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])
    q = onnx2jax.quantize(model, weight_type="int4")
    assert not any(n.domain == MS for n in q.graph.node)
    feeds = {
        "v": rng.standard_normal(256).astype(np.float32),
        "t": rng.standard_normal((2, 3, 16)).astype(np.float32),
    }
    got = onnx2jax.load(q)(**feeds)
    np.testing.assert_allclose(np.asarray(got[0]), run_ort(q, feeds), rtol=1e-5, atol=1e-4)
    per_tensor = onnx2jax.quantize(_mlp(256, 16, 8), weight_type="int4", per_channel=False)
    assert not any(n.domain == MS for n in per_tensor.graph.node)


def test_bad_int4_format():
    with pytest.raises(QuantizationError, match="int4_format"):
        onnx2jax.quantize(_mlp(64, 16, 8), weight_type="int4", int4_format="packed")


def test_cli_int4_format(tmp_path):
    from onnx2jax import cli

    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_mlp(256, 32, 16), src)
    cmd = ["quantize", str(src), "-o", str(out), "--weight-type", "int4"]
    assert cli.main(cmd) == 0
    assert sum(n.op_type == "MatMulNBits" for n in onnx.load(out).graph.node) == 2
    assert cli.main([*cmd, "--int4-format", "qdq"]) == 0
    assert not any(n.domain == MS for n in onnx.load(out).graph.node)
