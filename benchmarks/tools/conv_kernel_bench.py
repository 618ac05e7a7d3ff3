"""Times the packed convolution kernel alone on a few ResNet/BERT-shaped layers (JSON out).

A/B two instruction sets in separate processes, since the kernel picks one per process:
    ONNX2JAX_KERNELS_ISA=avx2 python benchmarks/tools/conv_kernel_bench.py
    python benchmarks/tools/conv_kernel_bench.py            # the best this CPU runs
or two builds of the library: LIB=/path/to/lib.so python benchmarks/tools/conv_kernel_bench.py.
Interleave several rounds of each; this VM's speed moves by up to 2x between minutes.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import onnx2jax._kernels._ffi as ffi
from onnx2jax._kernels import conv as kc

# name: (N, H, W, C, O, kernel size, stride); the 1x1 "gemm" rows are products [H*W, C] @ [C, O]
CASES = {
    "3x3 64->64 56x56": (1, 56, 56, 64, 64, 3, 1),
    "3x3 256->256 14x14": (1, 14, 14, 256, 256, 3, 1),
    "3x3 b8 128->128 28x28": (8, 28, 28, 128, 128, 3, 1),
    "1x1 gemm 128x768->3072": (1, 1, 128, 768, 3072, 1, 1),
    "1x1 gemm 128x3072->768": (1, 1, 128, 3072, 768, 1, 1),
    "1x1 gemm 1024x768->768": (1, 1, 1024, 768, 768, 1, 1),
    "1x1 512->2048 7x7": (1, 7, 7, 512, 2048, 1, 1),
}


def time_case(n, h, w, c, o, k, s, rng, seconds=1.5):
    x = jnp.asarray(rng.standard_normal((n, h, w, c)).astype(np.float32))
    weight = rng.standard_normal((k, k, c, o)).astype(np.float32) * 0.1
    b = jnp.asarray(rng.standard_normal(o).astype(np.float32))
    p = (k - 1) // 2
    g = kc.Geometry((k, k), o, (s, s), ((p, p), (p, p)), (1, 1), 0.0)
    f = jax.jit(lambda x, packed, b: kc.packed_conv(x, packed, b, g))
    packed = jnp.asarray(kc.pack(weight))
    f(x, packed, b).block_until_ready()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        t0 = time.perf_counter()
        f(x, packed, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    ms = float(np.median(times)) * 1e3
    return ms, 2 * n * h * w * c * o * k * k / (ms * 1e-3) / 1e9


def main():
    if lib := os.environ.get("LIB"):
        ffi.library_path = lambda: lib
    assert ffi.available(), "the kernel library is not built or not enabled"
    rng = np.random.default_rng(0)
    out = {name: time_case(*shape, rng) for name, shape in CASES.items()}
    print(json.dumps({name: {"ms": ms, "gflops": gf} for name, (ms, gf) in out.items()}))


if __name__ == "__main__":
    main()
