"""JAX's persistent compilation cache, on by default in a per-user folder.

A compiled XLA program is keyed by the program, the compile options and the jax/jaxlib version,
so a stale entry is never used; a warm cache turns a model's cold start (seconds of XLA
compile) into a file read. JAX writes entries atomically, so several processes may share the
folder. Nothing is changed when the user configured a cache folder already
(``jax_compilation_cache_dir``); otherwise the folder is ``$ONNX2JAX_CACHE_DIR``, else
``$XDG_CACHE_HOME/onnx2jax/xla`` (``~/.cache/onnx2jax/xla``). ``ONNX2JAX_CACHE_DIR=off`` (or
``0``/``none``) turns it off.
"""

from __future__ import annotations

import functools
import os

_OFF = ("", "0", "off", "none", "false", "no")


def cache_dir() -> str | None:
    """The folder onnx2jax would use, or None when turned off."""
    explicit = os.environ.get("ONNX2JAX_CACHE_DIR")
    if explicit is not None:
        return None if explicit.strip().lower() in _OFF else explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "onnx2jax", "xla")


@functools.cache
def enable_default_cache() -> str | None:
    """Point JAX at onnx2jax's cache folder unless the user chose one; returns the folder used.

    Runs once per process (on the first ``onnx2jax.load``).
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    folder = cache_dir()
    if folder is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without a cache rather than fail
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder
