"""The command line: `onnx2jax info`, `run` and `bench`'s argument checks on small models;
every bad argument is a one-line error and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from models_in_code import affine_relu, reference

import onnx2jax
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


def _error_line(capsys) -> str:
    """The CLI's stderr, checked to be one `onnx2jax: error:` line."""
    err = capsys.readouterr().err
    assert err.startswith("onnx2jax: error: ") and err.count("\n") == 1, err
    return err


def test_run_without_inputs_explains(model_path, capsys):
    assert main(["run", str(model_path)]) == 2
    assert "--random" in _error_line(capsys)


def test_run_misspelt_dim_lists_symbolic_dims(model_path, capsys):
    # Ignoring it would run with the default size 1 and look like success.
    assert main(["run", str(model_path), "--random", "--dim", "bacth=4"]) == 2
    err = _error_line(capsys)
    assert "'bacth'" in err and "symbolic dims are: batch" in err and "did you mean 'batch'" in err


def test_run_dim_on_fixed_model(tmp_path, capsys):
    path = tmp_path / "fixed.onnx"
    onnx.save(affine_relu(batch=2), path)
    assert main(["run", str(path), "--random", "--dim", "batch=4"]) == 2
    assert "it has none" in _error_line(capsys)


@pytest.mark.parametrize("arg", ["batch=four", "batch=-1", "batch=", "batch"])
def test_run_bad_dim_size(model_path, capsys, arg):
    assert main(["run", str(model_path), "--random", "--dim", arg]) == 2
    assert "--dim" in _error_line(capsys)


def test_run_missing_npy(model_path, tmp_path, capsys):
    missing = tmp_path / "missing.npy"
    assert main(["run", str(model_path), "--input", f"x={missing}"]) == 2
    err = _error_line(capsys)
    assert f"--input x={missing}: no such file" in err


def test_run_unreadable_npy(model_path, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    assert main(["run", str(model_path), "--input", f"x={bad}"]) == 2
    assert "not a readable .npy file" in _error_line(capsys)


def test_run_unknown_input_name(model_path, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    assert main(["run", str(model_path), "--input", f"nope={tmp_path / 'x.npy'}"]) == 2
    assert "its inputs are ['x']" in _error_line(capsys)


def test_bad_dim_is_one_line_from_the_console(model_path):
    # The installed entry point: exit status and stderr as a user sees them.
    proc = subprocess.run(
        [sys.executable, "-m", "onnx2jax.cli", "run", str(model_path), "--random"]
        + ["--dim", "batch=four"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "onnx2jax: error: --dim batch=four: SIZE must be a whole number >= 0, e.g. --dim batch=4"
    )


@pytest.mark.parametrize("content", [None, b"garbage"])
def test_bench_checks_the_model_first(tmp_path, capsys, content):
    # Measuring the matmul peak first took ~12 s before the missing file was noticed.
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    t0 = time.perf_counter()
    assert main(["bench", str(path)]) == 2
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert "measuring" not in err and err.startswith("onnx2jax: error: "), err


def test_bench_misspelt_dim(model_path, capsys):
    assert main(["bench", str(model_path), "--dim", "bacth=4", "--no-peak"]) == 2
    assert "symbolic dims are: batch" in _error_line(capsys)


def test_bench_dim_of_batch_axis(model_path, capsys):
    # It would override --batch: every "batch size" would run at 4.
    assert main(["bench", str(model_path), "--dim", "batch=4", "--no-peak"]) == 2
    assert "set by --batch" in _error_line(capsys)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    # The installed metadata and onnx2jax.__version__ agree (pyproject.toml and __init__.py).
    assert capsys.readouterr().out == f"onnx2jax {onnx2jax.__version__}\n"


def test_tensor_spec_repr(model_path):
    # The short form the README shows for `print(model.inputs)`.
    model = onnx2jax.load(model_path)
    assert repr(model.inputs) == "(TensorSpec('x', float32, ('batch', 4)),)"
    spec = onnx2jax.TensorSpec("s", None, None, "sequence")
    assert repr(spec) == "TensorSpec('s', None, None, kind='sequence')"


def test_run_corrupt_model_is_clean_error(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"garbage")
    assert main(["run", str(path), "--random"]) == 2
    assert "error" in capsys.readouterr().err


def test_readme_python_example(monkeypatch, capsys):
    # The README's first Python block runs as written on examples/tiny_cnn.onnx, and what it
    # prints is what its comment says.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        block = f.read().split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(root)
    ns: dict = {}
    exec(block, ns)
    printed = capsys.readouterr().out.strip()
    assert f"print(model.inputs)                      # {printed}\n" in block
    assert ns["logits"].shape == (2, 10) and list(ns["named"]) == ["logits"]
    jax = ns["jax"]
    assert jax.vmap(lambda xi: ns["model"](xi)[0])(ns["xs"]).shape == (4, 2, 10)
