"""Registers the kernel library's handlers with JAX's FFI, once, and says whether they run."""

from __future__ import annotations

import ctypes
import functools

import jax

from . import enabled, library_path

# The handlers the library exports (each an XLA FFI handler symbol of the same name).
TARGETS = (
    "onnx2jax_packed_matmul",
    "onnx2jax_packed_conv",
    "onnx2jax_packed_conv_add",
    "onnx2jax_depthwise_conv",
    "onnx2jax_max_pool",
    "onnx2jax_inverted_residual",
    "onnx2jax_inverted_residual_add",
)


@functools.cache
def _registered() -> bool:
    try:
        lib = ctypes.CDLL(library_path())
    except OSError:
        return False
    for target in TARGETS:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), "cpu")
    return True


def available() -> bool:
    """Whether the kernels run here: built, enabled, and JAX's default backend is the CPU
    (elsewhere XLA's dots and convolutions are the fast path)."""
    return enabled() and jax.default_backend() == "cpu" and _registered()
