"""Process-wide XLA settings onnx2jax chooses (the persistent compilation cache of _cache.py, the
compiler options of _compiler.py), each checked in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = (
    "import onnx2jax, jax; onnx2jax.load('examples/tiny_cnn.onnx'); "
    "print(jax.config.jax_compilation_cache_dir)"
)


def _cache_dir(tmp_path, **env) -> str:
    full = {
        k: v for k, v in os.environ.items() if k not in ("ONNX2JAX_CACHE_DIR", "XDG_CACHE_HOME")
    }
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_default_folder_follows_xdg(tmp_path):
    got = _cache_dir(tmp_path, XDG_CACHE_HOME=str(tmp_path))
    assert got == str(tmp_path / "onnx2jax" / "xla") and os.path.isdir(got)


def test_env_folder_and_off_switch(tmp_path):
    assert _cache_dir(tmp_path, ONNX2JAX_CACHE_DIR=str(tmp_path / "c")) == str(tmp_path / "c")
    assert _cache_dir(tmp_path, ONNX2JAX_CACHE_DIR="off") == "None"


def test_a_folder_the_user_chose_is_kept(tmp_path):
    mine = str(tmp_path / "mine")
    probe = f"import jax; jax.config.update('jax_compilation_cache_dir', {mine!r}); " + PROBE
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == mine


def test_compiler_options_switch():
    """onnx2jax.compiler_options(): YNNPACK for dots (and reductions) on CPU, off by
    environment."""
    probe = "import onnx2jax; print(sorted(onnx2jax.compiler_options().items()))"
    env = {k: v for k, v in os.environ.items() if k != "ONNX2JAX_XLA_LIBRARY"}
    on = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    env["ONNX2JAX_XLA_LIBRARY"] = "off"
    off = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert off.stdout.strip() == "[]"
    # a jaxlib without the option runs without it
    assert on.stdout.strip() == "[]" or "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT" in on.stdout
