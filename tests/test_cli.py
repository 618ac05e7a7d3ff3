"""The command line: `onnx2jax info` and `onnx2jax run` on small models."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from models_in_code import affine_relu, reference

from onnx2jax.cli import main


@pytest.fixture()
def model_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(affine_relu(), path)
    return path


def test_info(model_path, capsys):
    assert main(["info", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "x: float32[batch, 4]" in out
    assert "params: 8 values" in out
    assert "Reshape" in out and "unsupported ops: none" in out
    assert "symbolic dims: batch" in out


def test_info_lists_unsupported_and_breaks(tmp_path, capsys):
    graph = oh.make_graph(
        [
            oh.make_node("NonZero", ["x"], ["y"], name="nz"),
            oh.make_node("Foo", ["y"], ["z"], domain="my.dom"),
        ],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
        [oh.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
    )
    path = tmp_path / "u.onnx"
    onnx.save(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("my.dom", 1)]),
        path,
    )
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "my.dom::Foo (opset 1)" in out
    assert "cannot run inside one jit" in out and "'nz'" in out


def test_run_random_compare(model_path, capsys):
    assert (
        main(
            [
                "run",
                str(model_path),
                "--random",
                "--dim",
                "batch=5",
                "--compare",
                "onnxruntime",
                "--runs",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "input  x: float32[5, 4]" in out
    assert "output y: float32[5, 4]" in out
    assert "median run" in out and "MATCH" in out


def test_run_with_input_file(model_path, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(model_path), "--input", f"x={tmp_path / 'x.npy'}", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    expected = reference(affine_relu(), x=x)[0]
    assert f"max {expected.max():.6g}" in out


def test_run_without_inputs_explains(model_path):
    with pytest.raises(SystemExit, match="--random"):
        main(["run", str(model_path)])


def test_run_corrupt_model_is_clean_error(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"garbage")
    assert main(["run", str(path), "--random"]) == 2
    assert "error" in capsys.readouterr().err
