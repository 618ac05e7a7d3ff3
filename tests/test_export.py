"""onnx2jax.convert / load_exported: jax.export artifacts with symbolic dims, run without onnx."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax_models
import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

import onnx2jax
from onnx2jax import _kernels
from onnx2jax.cli import main as cli

CNN = str(pathlib.Path(__file__).parents[1] / "examples" / "tiny_cnn.onnx")


def _ort(proto_or_path, feeds: dict) -> list[np.ndarray]:
    data = proto_or_path if isinstance(proto_or_path, str) else proto_or_path.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize(
    "build", [pytest.param(jax_models.bert, marks=pytest.mark.slow), jax_models.gpt2]
)
def test_transformer_runs_at_any_batch_and_seq(build):
    proto = build(layers=1)
    exported = onnx2jax.load_exported(onnx2jax.convert(proto))
    shapes = exported.input_shapes
    assert [str(d) for d in shapes["input_ids"]] == ["batch", "seq"], shapes
    for batch, seq in [(1, 3), (2, 7), (5, 4)]:
        feeds = jax_models.inputs(proto, batch, seq)
        (got,) = exported(**feeds)
        np.testing.assert_allclose(np.asarray(got), _ort(proto, feeds)[0], rtol=1e-4, atol=1e-4)


def _shape_chains() -> onnx.ModelProto:
    """The shape arithmetic of torch's TorchScript exporter on a symbolic batch and seq:
    Shape -> Gather -> Mul / Div -> Unsqueeze -> Concat -> Reshape, Shape -> Slice, Cast,
    Expand to a computed shape."""
    c = onnx.numpy_helper.from_array

    def i64(v, name):
        return c(np.array(v, np.int64), name)

    nodes = [
        oh.make_node("Shape", ["x"], ["s"]),
        oh.make_node("Cast", ["s"], ["s64"], to=onnx.TensorProto.INT64),
        oh.make_node("Gather", ["s64", "zero"], ["b"], axis=0),
        oh.make_node("Gather", ["s64", "one"], ["q"], axis=0),
        oh.make_node("Mul", ["b", "q"], ["bq"]),
        oh.make_node("Div", ["bq", "one"], ["bq1"]),
        oh.make_node("Unsqueeze", ["bq1", "axes"], ["bq2"]),
        oh.make_node("Concat", ["bq2", "minus1"], ["flat_shape"], axis=0),
        oh.make_node("Reshape", ["x", "flat_shape"], ["rows"]),  # [batch * seq, 4]
        oh.make_node("Slice", ["s64", "zero1", "two1"], ["bs"]),
        oh.make_node("Concat", ["bs", "two1", "two1"], ["split_shape"], axis=0),
        oh.make_node("Reshape", ["x", "split_shape"], ["split"]),  # [batch, seq, 2, 2]
        oh.make_node("Expand", ["half", "s"], ["halves"]),
        oh.make_node("Mul", ["x", "halves"], ["scaled"]),
    ]
    graph = oh.make_graph(
        nodes,
        "chains",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "seq", 4])],
        [
            oh.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, None),
            oh.make_tensor_value_info("split", onnx.TensorProto.FLOAT, None),
            oh.make_tensor_value_info("scaled", onnx.TensorProto.FLOAT, None),
        ],
        [
            i64(0, "zero"),
            i64(1, "one"),
            i64([0], "axes"),
            i64([-1], "minus1"),
            i64([0], "zero1"),
            i64([2], "two1"),
            c(np.array(0.5, np.float32), "half"),
        ],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_shape_arithmetic_exports_with_symbolic_dims():
    proto = _shape_chains()
    exported = onnx2jax.load_exported(onnx2jax.convert(proto))
    assert [str(d) for d in exported.input_shapes["x"]] == ["batch", "seq", "4"]
    for batch, seq in [(1, 3), (4, 5)]:
        x = np.random.default_rng(batch).standard_normal((batch, seq, 4)).astype(np.float32)
        got = exported(x)
        for g, r in zip(got, _ort(proto, {"x": x}), strict=True):
            assert g.shape == r.shape
            np.testing.assert_allclose(np.asarray(g), r, rtol=1e-6)


def _positions_by_shape() -> onnx.ModelProto:
    """Range over the sequence length: an output whose length is a value read from a dim."""
    c = onnx.numpy_helper.from_array
    nodes = [
        oh.make_node("Shape", ["x"], ["s"]),
        oh.make_node("Gather", ["s", "one"], ["n"], axis=0),
        oh.make_node("Range", ["zero", "n", "one"], ["pos"], name="positions"),
        oh.make_node("Cast", ["pos"], ["posf"], to=onnx.TensorProto.FLOAT),
        oh.make_node("Add", ["x", "posf"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "positions",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "seq"])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "seq"])],
        [c(np.array(0, np.int64), "zero"), c(np.array(1, np.int64), "one")],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_a_dim_read_as_a_value_names_the_node_and_dim_specialises(tmp_path):
    with pytest.raises(onnx2jax.NodeError, match=r"positions.*--dim NAME=N"):
        onnx2jax.convert(_positions_by_shape())
    exported = onnx2jax.load_exported(onnx2jax.convert(_positions_by_shape(), dims={"seq": 6}))
    assert [str(d) for d in exported.input_shapes["x"]] == ["batch", "6"]
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(exported(x)[0]), x + np.arange(6, dtype=np.float32))
    with pytest.raises(onnx2jax.Onnx2JaxError, match="not symbolic dims"):
        onnx2jax.convert(_positions_by_shape(), dims={"sqe": 4})


@pytest.mark.slow
def test_torchscript_export_with_view_exports_symbolically(tmp_path):
    """torch.onnx's TorchScript exporter writes x.view(b, n, h, d) as Shape/Gather/Concat."""
    import torch  # only -m slow needs torch (the dev venv has it; CI's does not)

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(16, 16)
            self.fc = torch.nn.Linear(16 * 8, 4)

        def forward(self, x):
            b, n, d = x.shape
            q = self.q(x).view(b, n, 4, 4).transpose(1, 2)
            return self.fc(q.transpose(1, 2).reshape(b, n, d).reshape(x.size(0), -1))

    path = str(tmp_path / "heads.onnx")
    torch.onnx.export(
        Heads().eval(),
        (torch.randn(2, 8, 16),),
        path,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
        opset_version=17,
    )
    assert "Shape" in {n.op_type for n in onnx.load(path).graph.node}
    exported = onnx2jax.load_exported(onnx2jax.convert(path))
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 16)).astype(np.float32)
        np.testing.assert_allclose(
            np.asarray(exported(x)[0]), _ort(path, {"x": x})[0], rtol=1e-5, atol=1e-5
        )


def test_cli_convert_with_dim(tmp_path, capsys):
    out = tmp_path / "cnn.jaxexp"
    assert cli(["convert", CNN, "-o", str(out), "--dim", "batch=8"]) == 0
    assert "batch=8" in capsys.readouterr().out
    exported = onnx2jax.load_exported(out)
    assert exported.input_shapes["image"] == (8, 3, 32, 32)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(
        np.asarray(exported(x)[0]), _ort(CNN, {"image": x})[0], rtol=1e-4, atol=1e-5
    )
    assert cli(["convert", CNN, "-o", str(out), "--dim", "bacth=8"]) == 2
    assert "bacth" in capsys.readouterr().err


def test_bad_artifact_is_refused(tmp_path):
    bad = tmp_path / "x.jaxexp"
    bad.write_bytes(b"not a zip")
    with pytest.raises(onnx2jax.Onnx2JaxError, match="not an onnx2jax exported artifact"):
        onnx2jax.load_exported(bad)


def test_apply_is_pure_and_differentiable_with_vjp_order_1():
    model = onnx2jax.load(CNN)
    exported = onnx2jax.load_exported(onnx2jax.convert(CNN, vjp_order=1))
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)

    def loss(apply, params):
        return jnp.sum(apply(params, x)[0] ** 2)

    got = jax.jit(jax.grad(lambda p: loss(exported.apply, p)))(exported.params)
    ref = jax.jit(jax.grad(lambda p: loss(model.apply, p)))(model.params)
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-4, atol=1e-6)


_NO_ONNX = """
import sys, time
sys.modules["onnx"] = None  # any `import onnx` now fails
import numpy as np
t0 = time.perf_counter()
import onnx2jax
model = onnx2jax.load_exported(sys.argv[1])
outs = {}
for b in (1, 6):
    x = np.random.default_rng(b).standard_normal((b, 3, 32, 32)).astype(np.float32)
    outs[f"b{b}"] = np.asarray(model(x)[0])
    if b == 1:
        print(f"first result after {time.perf_counter() - t0:.3f} s")
np.savez(sys.argv[2], **outs)
assert "onnx2jax._tracer" not in sys.modules and "onnx2jax._api" not in sys.modules
assert not hasattr(onnx2jax, "load")
try:
    onnx2jax.load_exported(b"junk")
except onnx2jax.Onnx2JaxError as e:  # the error classes need no onnx
    assert "not an onnx2jax exported artifact" in str(e)
else:
    raise AssertionError("junk loaded")
print("ok")
"""


def test_load_exported_runs_without_onnx_and_without_the_tracer(tmp_path):
    artifact, result = tmp_path / "cnn.jaxexp", tmp_path / "out.npz"
    onnx2jax.convert(CNN, artifact)
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_ONNX, str(artifact), str(result)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    outs = np.load(result)
    model = onnx2jax.load(CNN)
    for b in (1, 6):
        x = np.random.default_rng(b).standard_normal((b, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(outs[f"b{b}"], np.asarray(model(x)[0]), rtol=1e-5, atol=1e-6)


def _transposes(exported) -> int:
    return exported.mlir_module().count("stablehlo.transpose")


def test_artifact_holds_prepared_weights_and_matches_load():
    """The default artifact stores model.prepare()'s values: the channels-last pass's weight
    transposes run once at convert time, not in every call; outputs equal load()'s."""
    with _kernels.disabled():  # as convert loads: artifacts hold no packed few-row weights
        model = onnx2jax.load(CNN)
    prepared = model.prepare()
    laid_out = set(prepared) - set(model.params)
    assert laid_out, "the nhwc pass should leave weight transposes to prepare"
    fast = onnx2jax.load_exported(onnx2jax.convert(CNN))
    slow = onnx2jax.load_exported(onnx2jax.convert(CNN, prepare=False))
    assert fast.prepared and not slow.prepared
    assert laid_out <= set(fast.params) and set(slow.params) == set(model.params)
    for k in laid_out:
        np.testing.assert_array_equal(np.asarray(fast.params[k]), np.asarray(prepared[k]))
    # ONNX weights read only by the transposes are not stored twice
    assert sum(np.asarray(v).size for v in fast.params.values()) < sum(
        np.asarray(v).size for v in {**model.params, **prepared}.values()
    )
    # the check can fail: the ONNX-named artifact transposes every conv weight per call
    assert _transposes(fast.exported) + len(laid_out) <= _transposes(slow.exported)
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        (want,) = model(x)
        np.testing.assert_array_equal(np.asarray(fast(x)[0]), np.asarray(want))  # same program
        np.testing.assert_allclose(np.asarray(slow(x)[0]), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_loaded_artifact_compiles_with_onnx2jax_compiler_options(monkeypatch):
    """load_exported's jit gets onnx2jax.compiler_options(): a bogus option reaches XLA."""
    import onnx2jax.export as export

    artifact = onnx2jax.convert(CNN)
    monkeypatch.setattr(export, "compiler_options", lambda: {"xla_no_such_option_12": "1"})
    model = onnx2jax.load_exported(artifact)
    x = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(Exception, match="xla_no_such_option_12"):
        model(x)


def test_cli_convert_bfloat16_matches_load_with_dtype(tmp_path):
    out = tmp_path / "cnn_bf16.jaxexp"
    assert cli(["convert", CNN, "-o", str(out), "--dtype", "bfloat16"]) == 0
    exported = onnx2jax.load_exported(out)
    assert {str(v.dtype) for v in exported.params.values()} == {"bfloat16"}
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32), dtype=np.float32)
    (got,) = exported(x)
    assert got.dtype == np.float32
    (want,) = onnx2jax.load(CNN, dtype="bfloat16")(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
