"""onnx2jax's own CPU kernels, called from XLA programs through JAX's FFI.

Two, each on a weight packed once into panels of output columns, in prep:

- a product with few rows (a decode step, a classifier head, an RNN step), on 8-column panels
  (packed_matmul.cc; JAX side ``matmul.py``). XLA's CPU dots re-pack the weight on every call;
  for few rows that doubles the traffic over a weight the product is bound by reading
  (benchmarks/NOTES.md, entry 16);
- channels-last 2-D convolutions with their bias and a ReLU/Clip epilogue, on 16-channel
  panels (JAX side ``conv.py``): dense ones as an indirect GEMM (packed_conv.cc, 1.0-2x XLA's
  CPU convolutions, entry 18), depthwise ones with channels in the vector lanes
  (depthwise_conv.cc, entry 19); beside them an NHWC max pool that needs no weight
  (depthwise_conv.cc, ``conv.max_pool``, entry 27), and a MobileNet inverted-residual block
  (expansion, depthwise, projection) in one call over bands of rows on the same tiles
  (inverted_residual.cc; JAX side ``inverted_residual.py``, entry 29).

Both are C++, built into one library by ``pip install`` when a C++ compiler is there. This
module says whether it is there without loading JAX (the graph passes read it).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
from collections.abc import Iterator

PANEL = 8  # output columns per panel of the few-row product (one AVX2 vector of float32)
CONV_PANEL = 16  # output channels per panel of the convolution (two AVX2 vectors)
# Up to here the kernel beats XLA's dots (8 rows: 1.4-1.9x; 32 rows: 1.2x); at 128 rows and
# more XLA's GEMMs win by 1.3x even counting a per-call relayout of the packed weight.
MAX_ROWS = 64
# Products on 16-column panels (the convolution kernel's GEMM, as a 1x1 convolution) up to here:
# 64-256 rows run 1.05-1.6x faster than XLA's dots, which re-pack the weight on every call; by
# 384-640 rows the two are even, and at 1,024 XLA's win (benchmarks/NOTES.md, entry 23).
GEMM_MAX_ROWS = 256


@functools.cache
def library_path() -> str | None:
    """The built kernel library, or None (no C++ compiler at install time)."""
    found = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "_lib*.so")))
    return found[0] if found else None


_disabled = 0  # > 0 inside ``disabled()``


def enabled() -> bool:
    """Whether the kernels were built and are not switched off (``ONNX2JAX_KERNELS=off``, or
    inside ``disabled()``)."""
    if _disabled or os.environ.get("ONNX2JAX_KERNELS", "").strip().lower() in (
        "0", "off", "none", "no"
    ):  # fmt: skip
        return False
    return library_path() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Load and trace with XLA's dots and convolutions only: what ``jax.export`` artifacts need (they refuse
    custom calls they do not know, and must run where this library is not)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1
