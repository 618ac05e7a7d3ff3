"""onnx2jax.quantize (calibration under jit, the QDQ writer), QAT and `onnx2jax quantize`.

References: onnxruntime run with graph optimizations off, which executes each QDQ node as the
spec defines it (with optimizations on, onnxruntime fuses QDQ groups into uint8 x int8 kernels
that saturate on x86 CPUs without VNNI, docs/int8.md), onnx2jax's own float model, and
onnxruntime's quantize_static on the same calibration data for the accuracy comparison.
"""

from __future__ import annotations

import functools
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import numpy_helper

import onnx2jax
from onnx2jax import cli
from onnx2jax.quantization import QuantizationError, _calibrate, finish_qat, prepare_qat

ort = pytest.importorskip("onnxruntime")
FLOAT = onnx.TensorProto.FLOAT


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _small_cnn(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Conv -> Relu -> Reshape -> Gemm -> Relu -> Gemm(transB) on [b, 1, 6, 6] images."""
    rng = np.random.default_rng(seed)
    arrays = {
        "Wc": rng.standard_normal((4, 1, 3, 3)) * 0.5,
        "bc": rng.standard_normal(4) * 0.1,
        "W1": rng.standard_normal((64, 32)) * 0.2,
        "b1": rng.standard_normal(32) * 0.1,
        "W2": rng.standard_normal((10, 32)) * 0.2,
        "b2": rng.standard_normal(10) * 0.1,
    }
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    inits.append(numpy_helper.from_array(np.array([-1, 64], np.int64), "shape"))
    nodes = [
        oh.make_node("Conv", ["img", "Wc", "bc"], ["c"], strides=[1, 1]),
        oh.make_node("Relu", ["c"], ["r"]),
        oh.make_node("Reshape", ["r", "shape"], ["x"]),
        oh.make_node("Gemm", ["x", "W1", "b1"], ["h"]),
        oh.make_node("Relu", ["h"], ["hr"]),
        oh.make_node("Gemm", ["hr", "W2", "b2"], ["logits"], transB=1),
    ]
    graph = oh.make_graph(
        nodes,
        "cnn",
        [oh.make_tensor_value_info("img", FLOAT, ["b", 1, 6, 6])],
        [oh.make_tensor_value_info("logits", FLOAT, ["b", 10])],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 6, 6)).astype(np.float32)


CALIB = [{"img": _images(2, i)} for i in range(20)]


def _with_quantized_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The model with every QuantizeLinear / DynamicQuantizeLinear output as a graph output."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    names = [n.output[0] for n in m.graph.node if "QuantizeLinear" in n.op_type]
    names = [n for n in names if n not in {o.name for o in m.graph.output}]
    m.graph.output.extend(oh.make_value_info(n, onnx.TypeProto()) for n in names)
    return m, names


@functools.cache
def _quantized(kind: str) -> onnx.ModelProto:
    model = _small_cnn()
    if kind == "static":
        return onnx2jax.quantize(model, CALIB)
    if kind == "per_tensor":
        return onnx2jax.quantize(model, CALIB, per_channel=False)
    if kind == "entropy":
        return onnx2jax.quantize(model.SerializeToString(), CALIB, method="entropy")
    if kind == "dynamic":
        return onnx2jax.quantize(model, mode="dynamic")
    return onnx2jax.quantize(model, weight_type="int4")


@pytest.mark.parametrize("kind", ["static", "per_tensor", "entropy", "dynamic", "int4"])
def test_quantized_model_matches_onnxruntime(kind):
    """Every quantized tensor within one step of onnxruntime's, float outputs close to it."""
    q = _quantized(kind)
    onnx.checker.check_model(q, full_check=True)
    ops = {n.op_type for n in q.graph.node}
    assert "DequantizeLinear" in ops
    assert ("QuantizeLinear" in ops) == (kind in ("static", "per_tensor", "entropy"))
    assert ("DynamicQuantizeLinear" in ops) == (kind == "dynamic")
    probe, names = _with_quantized_outputs(q)
    x = _images(5, 99)
    expected = run_ort(probe, {"img": x})
    got = onnx2jax.load(probe)(x)
    for name, e, g in zip(["logits", *names], expected, got, strict=True):
        g = np.asarray(g)
        assert g.dtype == e.dtype, name
        if e.dtype.kind in "iu":
            assert np.abs(g.astype(int) - e.astype(int)).max() <= 1, name
        else:
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)
    # quantization changes the logits, but not by much (entropy clips on purpose; int4 is coarse)
    floats = np.asarray(onnx2jax.load(_small_cnn())(x)[0])
    bound = {"entropy": 0.5, "int4": 0.2}.get(kind, 0.1)
    assert np.abs(np.asarray(got[0]) - floats).max() < bound * np.abs(floats).max()


def test_static_quantizes_activations_weights_and_biases():
    q = _quantized("static")
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert inits["Wc_quantized"].dtype == np.int8 and inits["bc_quantized"].dtype == np.int32
    assert inits["Wc_scale"].shape == (4,)  # per output channel
    assert inits["W2_scale"].shape == (10,)  # Gemm transB: channels on axis 0
    assert inits["img_zero_point"].dtype == np.int8
    assert not {"Wc", "W1", "W2", "b1"} & set(inits)  # float weights are gone
    # the ranges are the calibration data's: img's quantized range covers its min and max
    lo = min(c["img"].min() for c in CALIB)
    hi = max(c["img"].max() for c in CALIB)
    s, z = float(inits["img_scale"]), int(inits["img_zero_point"])
    assert (-128 - z) * s <= lo + s / 2 and (127 - z) * s >= hi - s / 2
    per_tensor = {
        i.name: numpy_helper.to_array(i) for i in _quantized("per_tensor").graph.initializer
    }
    assert per_tensor["Wc_scale"].shape == ()


def test_percentile_and_entropy_clip_outliers():
    """On 10^6 normal values plus a few huge outliers, minmax stretches, the others do not."""
    x = np.random.default_rng(0).standard_normal(1_000_000)
    x[:3] = [40.0, -30.0, 25.0]
    lo, hi = float(x.min()), float(x.max())
    h, _ = np.histogram(x, bins=_calibrate.BINS, range=(lo, hi))
    for method in (_calibrate._percentile, _calibrate._entropy):
        a, b = method(h.astype(np.float64), lo, hi)
        assert -10 < a < -1 and 1 < b < 10, (method.__name__, a, b)
    # the same through quantize(): a calibration set with one outlier, entropy vs minmax
    data = [{"img": _images(4, i)} for i in range(6)]
    data[3]["img"][0, 0, 0, 0] = 500.0
    scales = {}
    for method in ("minmax", "entropy"):
        q = onnx2jax.quantize(_small_cnn(), iter(data), method=method, op_types=["Conv"])
        init = next(i for i in q.graph.initializer if i.name == "img_scale")
        scales[method] = float(numpy_helper.to_array(init))
    assert scales["entropy"] < scales["minmax"] / 5


def test_exclude_and_op_types():
    q = onnx2jax.quantize(_small_cnn(), CALIB, op_types=["Gemm"], exclude=["gemm_out"])
    weights = {i.name for i in q.graph.initializer if i.name.endswith("_quantized")}
    assert weights == {"W1_quantized", "W2_quantized", "b1_quantized", "b2_quantized"}
    model = _small_cnn()
    model.graph.node[5].name = "last"
    q = onnx2jax.quantize(model, CALIB, exclude=["last"])
    weights = {i.name for i in q.graph.initializer if i.name.endswith("_quantized")}
    assert "W2_quantized" not in weights and "W1_quantized" in weights


def test_int4_raises_the_opset_and_packs_weights():
    q = _quantized("int4")
    assert {o.domain: o.version for o in q.opset_import}[""] == 21
    w = next(i for i in q.graph.initializer if i.name == "W1_quantized")
    assert w.data_type == onnx.TensorProto.INT4 and len(w.raw_data) == 64 * 32 // 2
    # K = 64 is shorter than a block: one scale per output channel (axis 1 of [K, N])
    dq = next(n for n in q.graph.node if n.input[0] == "W1_quantized")
    assert {a.name: a.i for a in dq.attribute} == {"axis": 1} and len(dq.input) == 2
    # MatMul weights are MatMulNBits by default (tests/test_quantize_int4.py); "qdq" keeps them
    # behind DequantizeLinear
    big = onnx2jax.quantize(_big_model(), weight_type="int4", int4_format="qdq")
    dq = next(n for n in big.graph.node if n.input[0] == "W1_quantized")
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": 128}
    assert len(dq.input) == 2  # symmetric: no zero point stored
    scale = next(i for i in big.graph.initializer if i.name == "W1_scale")
    assert list(scale.dims) == [4, 512]


def test_int4_scales_minimise_the_error():
    """Each int4 scale is the clip ratio (of the block's max) with the least squared error:
    never worse than plain absmax scaling, better on heavy-tailed weights."""
    from onnx2jax.quantization import _qdq

    w = np.random.default_rng(0).standard_t(3, (256, 64)).astype(np.float32)
    q, s, _ = _qdq.weight_int4_blocked(w, 0, 128)
    err = np.sum((q.astype(np.float32) * np.repeat(s, 128, axis=0) - w) ** 2)
    plain = np.max(np.abs(w.reshape(2, 128, 64)), axis=1) / 7
    qp = np.clip(np.round(w / np.repeat(plain, 128, axis=0)), -8, 7)
    err_plain = np.sum((qp * np.repeat(plain, 128, axis=0) - w) ** 2)
    assert err < 0.8 * err_plain


def _big_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal((512, 256)).astype(np.float32), "W2"),
    ]
    nodes = [
        oh.make_node("MatMul", ["x", "W1"], ["h"]),
        oh.make_node("Relu", ["h"], ["r"]),
        oh.make_node("MatMul", ["r", "W2"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "big",
        [oh.make_tensor_value_info("x", FLOAT, ["b", 512])],
        [oh.make_tensor_value_info("y", FLOAT, ["b", 256])],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])


def test_file_size():
    """int8 weights >= 70 % smaller than float32, int4 >= 85 %."""
    model = _big_model()
    size = len(model.SerializeToString())
    calib = [
        {"x": np.random.default_rng(i).standard_normal((4, 512)).astype(np.float32)}
        for i in range(4)
    ]
    int8 = len(onnx2jax.quantize(model, calib).SerializeToString())
    int4 = len(onnx2jax.quantize(model, weight_type="int4").SerializeToString())
    assert int8 <= 0.30 * size, (int8, size)
    assert int4 <= 0.15 * size, (int4, size)


def test_qat_straight_through_gradients_train():
    """jax.grad through a QDQ model is non-zero with prepare_qat, and SGD lowers the loss."""
    q = _quantized("static")
    plain = onnx2jax.load(q)
    m = onnx2jax.load(prepare_qat(q))
    x = _images(16, 7)
    target = np.eye(10, dtype=np.float32)[np.arange(16) % 10]
    # same forward values as the QDQ model (onnxruntime runs it as the spec says)
    np.testing.assert_allclose(np.asarray(m(x)[0]), run_ort(q, {"img": x})[0], atol=1e-5)

    def loss(params):
        return jnp.mean((m.apply(params, x)[0] - target) ** 2)

    # without straight-through rounding, the QDQ model has no trainable weights at all
    assert not any(k.startswith("W") and not k.endswith("scale") for k in plain.params)
    params, losses = m.params, []
    step = jax.jit(jax.value_and_grad(loss))
    for i in range(8):
        value, g = step(params)
        if i == 0:
            assert {"Wc", "W1", "W2", "img_scale"} <= set(g)
            assert all(float(jnp.abs(g[k]).max()) > 0 for k in ("Wc", "W1", "W2", "img_scale"))
        losses.append(float(value))
        params = jax.tree.map(lambda p, d: p - 0.05 * d, params, g)
    assert losses[-1] < 0.7 * losses[0], losses
    # the trained model written back as QDQ gives the trained forward values
    done = finish_qat(prepare_qat(q), params)
    assert not any(n.domain == "ai.onnx2jax" for n in done.graph.node)
    np.testing.assert_allclose(
        run_ort(done, {"img": x})[0], np.asarray(m.apply(params, x)[0]), rtol=1e-4, atol=1e-4
    )


def test_bad_arguments_are_clear_errors():
    model = _small_cnn()
    with pytest.raises(QuantizationError, match="calibration"):
        onnx2jax.quantize(model)  # static int8 without data
    with pytest.raises(QuantizationError, match="mode"):
        onnx2jax.quantize(model, CALIB, mode="fast")
    with pytest.raises(QuantizationError, match="weight_type"):
        onnx2jax.quantize(model, CALIB, weight_type="int2")
    with pytest.raises(QuantizationError, match="op_types"):
        onnx2jax.quantize(model, CALIB, op_types=["LSTM"])
    with pytest.raises(QuantizationError, match="model must be"):
        onnx2jax.quantize(42, CALIB)
    with pytest.raises(QuantizationError, match="calibration is empty"):
        onnx2jax.quantize(model, [])
    with pytest.raises(onnx2jax.Onnx2JaxError):
        onnx2jax.quantize(model, [{"wrong": _images(1, 0)}])
    # an opset-11 model cannot become opset 21 silently: ReduceMean's axes became an input (18)
    old = _small_cnn(opset=11)
    old.graph.node.append(oh.make_node("ReduceMean", ["logits"], ["d"], axes=[1]))
    with pytest.raises(QuantizationError, match="convert_version"):
        onnx2jax.quantize(old, weight_type="int4")


def test_cli_quantize(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_small_cnn(), src)
    np.save(tmp_path / "a.npy", _images(3, 0))
    cmd = ["quantize", str(src), "-o", str(out)]
    assert cli.main([*cmd, "--calibrate", str(tmp_path / "a.npy")]) == 0
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)
    assert "smaller" in capsys.readouterr().out
    assert cli.main([*cmd, "--random", "4", "--weight-type", "int4"]) == 0
    assert onnx.load(out).graph.initializer[0].data_type in (onnx.TensorProto.INT4, FLOAT)
    assert cli.main(cmd) == 2  # static without data
    assert "calibration" in capsys.readouterr().err
    assert cli.main([*cmd, "--calibrate", str(tmp_path / "missing.npy")]) == 2


# -- accuracy on a real data set: scikit-learn's digits ----------------------------------------


@functools.cache
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], d.target[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _train(init: dict, forward, steps: int, lr: float = 0.1) -> dict:
    """Full-batch gradient descent with momentum on the digits' training split."""
    xtr, ytr, _, _ = _digits()
    onehot = np.eye(10, dtype=np.float32)[ytr]

    def loss(p):
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(forward(p, xtr)) * onehot, axis=1))

    @jax.jit
    def step(p, v):
        g = jax.grad(loss)(p)
        v = jax.tree.map(lambda a, b: 0.9 * a + b, v, g)
        return jax.tree.map(lambda a, b: a - lr * b, p, v), v

    p, v = init, jax.tree.map(jnp.zeros_like, init)
    for _ in range(steps):
        p, v = step(p, v)
    return {k: np.asarray(a) for k, a in p.items()}


def _mlp_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    init = {
        "W1": (rng.standard_normal((64, 128)) * 0.1).astype(np.float32),
        "b1": np.zeros(128, np.float32),
        "W2": (rng.standard_normal((128, 10)) * 0.1).astype(np.float32),
        "b2": np.zeros(10, np.float32),
    }

    def forward(p, x):
        return jax.nn.relu(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]

    p = _train(init, forward, 300)
    nodes = [
        oh.make_node("Gemm", ["x", "W1", "b1"], ["h"]),
        oh.make_node("Relu", ["h"], ["hr"]),
        oh.make_node("Gemm", ["hr", "W2", "b2"], ["logits"]),
    ]
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", FLOAT, ["b", 64])],
        [oh.make_tensor_value_info("logits", FLOAT, ["b", 10])],
        [numpy_helper.from_array(a, n) for n, a in p.items()],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


def _cnn_model() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    init = {
        "C1": (rng.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32),
        "c1": np.zeros(8, np.float32),
        "C2": (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32),
        "c2": np.zeros(16, np.float32),
        "W": (rng.standard_normal((256, 10)) * 0.05).astype(np.float32),
        "b": np.zeros(10, np.float32),
    }

    def conv(x, w, b, stride):
        y = jax.lax.conv_general_dilated(x, w, (stride, stride), [(1, 1), (1, 1)])
        return jax.nn.relu(y + b[None, :, None, None])

    def forward(p, x):
        h = conv(conv(x.reshape(-1, 1, 8, 8), p["C1"], p["c1"], 1), p["C2"], p["c2"], 2)
        return h.reshape(h.shape[0], -1) @ p["W"] + p["b"]

    p = _train(init, forward, 200, lr=0.05)
    nodes = [
        oh.make_node("Reshape", ["x", "img_shape"], ["img"]),
        oh.make_node("Conv", ["img", "C1", "c1"], ["h1"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["h1"], ["r1"]),
        oh.make_node("Conv", ["r1", "C2", "c2"], ["h2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        oh.make_node("Relu", ["h2"], ["r2"]),
        oh.make_node("Flatten", ["r2"], ["f"]),
        oh.make_node("Gemm", ["f", "W", "b"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in p.items()]
    inits.append(numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "img_shape"))
    graph = oh.make_graph(
        nodes,
        "cnn",
        [oh.make_tensor_value_info("x", FLOAT, ["b", 64])],
        [oh.make_tensor_value_info("logits", FLOAT, ["b", 10])],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


def _accuracy(model: onnx.ModelProto, *, engine: str = "onnx2jax") -> float:
    _, _, xte, yte = _digits()
    if engine == "onnx2jax":
        logits = np.asarray(onnx2jax.load(model)(xte)[0])
    else:
        logits = run_ort(model, {"x": xte})[0]
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == yte))


def _ort_quantize_static(model: onnx.ModelProto, calib: list[dict]) -> onnx.ModelProto:
    """onnxruntime's quantize_static on the same data: QDQ, per channel, int8 x int8, minmax."""
    from onnxruntime import quantization as oq

    class Reader(oq.CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        onnx.save(model, src)
        oq.quantize_static(
            src,
            dst,
            Reader(),
            quant_format=oq.QuantFormat.QDQ,
            per_channel=True,
            activation_type=oq.QuantType.QInt8,
            weight_type=oq.QuantType.QInt8,
            calibrate_method=oq.CalibrationMethod.MinMax,
        )
        return onnx.load(dst)


def _accuracy_check(model: onnx.ModelProto) -> dict[str, float]:
    xtr = _digits()[0]
    calib = [{"x": xtr[i : i + 8]} for i in range(0, 256, 8)]
    ours = onnx2jax.quantize(model, calib)
    theirs = _ort_quantize_static(model, calib)
    acc = {
        "float": _accuracy(model),
        "onnx2jax int8": _accuracy(ours),
        "onnxruntime int8": _accuracy(theirs),
        "onnx2jax int8 in onnxruntime": _accuracy(ours, engine="onnxruntime"),
    }
    print(acc)
    assert acc["float"] > 90, acc
    assert acc["onnx2jax int8"] >= acc["float"] - 1.0, acc
    assert acc["onnx2jax int8"] >= acc["onnxruntime int8"], acc
    assert acc["onnx2jax int8 in onnxruntime"] == acc["onnx2jax int8"], acc
    return acc


def test_digits_mlp_accuracy():
    """A trained MLP: INT8 within 1 point of float, no worse than onnxruntime's quantizer."""
    _accuracy_check(_mlp_model())


@pytest.mark.slow
def test_digits_cnn_accuracy():
    """The same for a small trained CNN (two convs, one Gemm)."""
    _accuracy_check(_cnn_model())


def test_calibration_ranges_are_the_data_s_with_a_graph_break():
    """A graph that breaks (NonZero) cannot be jitted whole: calibration falls back to the
    model object, and the ranges are exactly numpy's min/max of the tensor."""
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    nodes = [
        oh.make_node("MatMul", ["x", "W"], ["y"]),
        oh.make_node("NonZero", ["y"], ["nz"]),
        oh.make_node("Relu", ["y"], ["r"]),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", FLOAT, ["b", 8])],
        [
            oh.make_tensor_value_info("r", FLOAT, ["b", 4]),
            oh.make_tensor_value_info("nz", onnx.TensorProto.INT64, [2, None]),
        ],
        [numpy_helper.from_array(w, "W")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    assert onnx2jax.load(model).graph_breaks
    data = [np.random.default_rng(i).standard_normal((2, 8)).astype(np.float32) for i in range(5)]
    q = onnx2jax.quantize(model, data)  # arrays for a one-input model
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    ys = np.stack([d @ w for d in data])
    lo, hi = min(ys.min(), 0.0), max(ys.max(), 0.0)
    np.testing.assert_allclose(inits["y_scale"], (hi - lo) / 255, rtol=1e-6)
    assert inits["y_zero_point"] == np.clip(np.round(-128 - lo / inits["y_scale"]), -128, 127)


@pytest.mark.parametrize("kind", ["static", "int4"])
def test_embedding_table(kind):
    """Gather from a constant table (an embedding) gets a quantized table, one scale per row
    (int4: blocks along the row); the indices are left alone. Same results as onnxruntime."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 128)).astype(np.float32)
    w = (rng.standard_normal((128, 8)) * 0.1).astype(np.float32)
    nodes = [oh.make_node("Gather", ["E", "ids"], ["e"]), oh.make_node("MatMul", ["e", "W"], ["y"])]
    graph = oh.make_graph(
        nodes,
        "emb",
        [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["b", 5])],
        [oh.make_tensor_value_info("y", FLOAT, ["b", 5, 8])],
        [numpy_helper.from_array(table, "E"), numpy_helper.from_array(w, "W")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    ids = [{"ids": rng.integers(0, 50, (2, 5))} for _ in range(4)]
    q = (
        onnx2jax.quantize(model, ids)
        if kind == "static"
        else onnx2jax.quantize(model, weight_type=kind)
    )
    inits = {i.name: i for i in q.graph.initializer}
    assert "E" not in inits and "E_quantized" in inits
    scale = numpy_helper.to_array(inits["E_scale"])
    assert scale.shape == ((50,) if kind == "static" else (50, 1))
    x = {"ids": rng.integers(0, 50, (3, 5))}
    np.testing.assert_allclose(
        np.asarray(onnx2jax.load(q)(**x)[0]), run_ort(q, x)[0], rtol=1e-5, atol=1e-5
    )
    assert len(q.SerializeToString()) < 0.35 * len(model.SerializeToString())


def test_non_finite_calibration_values_are_ignored():
    """An inf or NaN in the data (a -inf attention mask, a bad sample) leaves the ranges finite."""
    data = [{"img": _images(2, i)} for i in range(3)]
    data[1]["img"][0, 0, 0, 0] = np.inf
    data[2]["img"][1, 0, 2, 2] = np.nan
    for method in ("minmax", "percentile"):
        q = onnx2jax.quantize(_small_cnn(), data, method=method)
        scales = [
            numpy_helper.to_array(i) for i in q.graph.initializer if i.name.endswith("_scale")
        ]
        assert all(np.isfinite(s).all() and (s > 0).all() for s in scales), method
    finite = np.concatenate([d["img"][np.isfinite(d["img"])] for d in data])
    img_scale = next(i for i in q.graph.initializer if i.name == "img_scale")
    assert numpy_helper.to_array(img_scale) <= (finite.max() - finite.min()) / 255 * 1.0001


def test_qat_round_trip_of_an_int4_model():
    """prepare_qat on int4 weights (no stored zero point) keeps the forward values, and
    finish_qat with unchanged params gives back the same int4 weights."""
    q = _quantized("int4")
    qat = prepare_qat(q)
    assert {n.op_type for n in qat.graph.node if n.domain == "ai.onnx2jax"} == {
        "FakeQuantizeLinear"
    }
    m = onnx2jax.load(qat)
    x = _images(4, 3)
    np.testing.assert_allclose(np.asarray(m(x)[0]), run_ort(q, {"img": x})[0], atol=1e-5)
    back = finish_qat(qat, m.params)
    before = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in back.graph.initializer}
    for name in ("Wc_quantized", "W1_quantized", "W2_quantized"):
        np.testing.assert_array_equal(after[name], before[name])
