"""``load`` from a path reads weights one at a time and keeps one copy of each; same results."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnx2jax
from onnx2jax import _loader

RNG = np.random.default_rng(8)
X = RNG.standard_normal((2, 4)).astype(np.float32)
N = 600  # the length of the weights: W, B, H above the lean reader's 1000-byte line


def _model() -> onnx.ModelProto:
    """Initializers in several encodings: raw float32, float_data, float16, bfloat16, bool, int64;
    large ones (> 1000 bytes) are read apart from the proto, small ones stay in it."""
    n = N
    w = numpy_helper.from_array(RNG.standard_normal((4, n)).astype(np.float32), "W")
    b = helper.make_tensor("B", TensorProto.FLOAT, [n], RNG.standard_normal(n))  # float_data
    h = numpy_helper.from_array(RNG.standard_normal(n).astype(np.float16), "H")
    bf = helper.make_tensor(
        "BF",
        TensorProto.BFLOAT16,
        [n],
        RNG.standard_normal(n).astype(ml_dtypes.bfloat16).view(np.uint16).tobytes(),
        raw=True,
    )
    m = numpy_helper.from_array(RNG.standard_normal(n) > 0, "M")
    idx = numpy_helper.from_array(np.array([2, 0], np.int64), "idx")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["y0"]),
        helper.make_node("Cast", ["H"], ["h32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["BF"], ["bf32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["y0", "h32"], ["y1"]),
        helper.make_node("Mul", ["y1", "bf32"], ["y2"]),
        helper.make_node("Where", ["M", "y2", "zero"], ["Y"]),
        helper.make_node("Gather", ["Y", "idx"], ["G"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, N]),
            helper.make_tensor_value_info("G", TensorProto.FLOAT, [2, 2]),
        ],
        [w, b, h, bf, m, idx, zero],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def saved(tmp_path):
    proto = _model()
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, path)
    return proto, path


@pytest.mark.parametrize("passes", ["default", None])
def test_path_load_matches_bytes_load_and_reference(saved, passes):
    proto, path = saved
    want = ReferenceEvaluator(proto).run(None, {"X": X})
    from_path = onnx2jax.load(path, passes=passes)
    from_bytes = onnx2jax.load(proto.SerializeToString(), passes=passes)
    for got_path, got_bytes, ref in zip(from_path(X), from_bytes(X), want, strict=True):
        np.testing.assert_allclose(np.asarray(got_path), ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(got_path), np.asarray(got_bytes))
    # Same params; from a path in the file's order (the bytes route's shape inference, through
    # onnx-ir, re-registers large initializers last).
    assert sorted(from_path.params) == sorted(from_bytes.params)
    file_order = [t.name for t in proto.graph.initializer]
    assert list(from_path.params) == [k for k in file_order if k in from_path.params]
    for k, v in from_bytes.params.items():
        np.testing.assert_array_equal(np.asarray(from_path.params[k]), np.asarray(v))


def test_lean_reader_gives_the_same_ir_as_the_full_parse(saved):
    proto, path = saved
    lean = _loader._read_lean(Path(path), str(path.parent))
    assert lean is not None
    stripped, arrays = lean
    # Decoded one by one, not kept in the proto; small and ml_dtypes tensors stay in it.
    assert all(arrays[k] is not None for k in ("W", "B", "H"))
    assert all(arrays[k] is None for k in ("BF", "M", "idx", "zero"))
    assert arrays["W"].ctypes.data % 64 == 0 and not arrays["W"].flags.writeable
    assert stripped.ByteSize() < proto.ByteSize()
    a = _loader.convert(proto, str(path.parent)).graph
    b = _loader.convert(stripped, str(path.parent), arrays).graph
    assert list(a.initializers) == list(b.initializers)
    for k, x in a.initializers.items():
        y = b.initializers[k]
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]


def test_a_file_the_reader_does_not_expect_falls_back_to_the_full_parse(tmp_path):
    # Protobuf merges a repeated message field; the lean reader leaves such files to protobuf.
    proto = _model()
    data = proto.SerializeToString() + _loader._key(7, 0)
    path = tmp_path / "twice.onnx"
    path.write_bytes(data)
    assert _loader._read_lean(path, str(tmp_path)) is None
    got = onnx2jax.load(path)(X)
    want = ReferenceEvaluator(proto).run(None, {"X": X})
    np.testing.assert_allclose(np.asarray(got[0]), want[0], rtol=1e-6, atol=1e-6)


def test_ir_initializers_share_the_device_params_memory(saved):
    _, path = saved
    import jax

    if jax.default_backend() != "cpu":  # pragma: no cover (CI and the tests run on CPU)
        pytest.skip("views of device memory exist on CPU only")
    model = onnx2jax.load(path, passes=None)
    inits = model._program.ir.graph.initializers
    w = np.asarray(model.params["W"])
    assert np.shares_memory(inits["W"], w)  # one copy of each weight, not two
    assert not inits["W"].flags.writeable


def test_a_weight_of_megabytes_gets_its_own_mapping_and_the_right_values(tmp_path):
    # From 2 MiB a weight is read into its own (huge-page) mapping rather than np.empty.
    w = RNG.standard_normal((4, 1 << 17)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "big",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, w.shape[1]])],
        [numpy_helper.from_array(w, "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "big.onnx"
    onnx.save_model(proto, path)
    _, arrays = _loader._read_lean(path, str(tmp_path))
    np.testing.assert_array_equal(arrays["W"], w)
    model = onnx2jax.load(path)
    np.testing.assert_array_equal(np.asarray(model.params["W"]), w)
    np.testing.assert_allclose(np.asarray(model(X)[0]), X @ w, rtol=1e-5, atol=1e-5)
