"""Wall-clock time inside each of onnx2jax's kernel calls in a model, by position in the program.

    python benchmarks/tools/kernel_calls.py MODEL.onnx [--batch 1] [--dim name=N ...] [--runs 50]

Builds the kernel library with ``-DONNX2JAX_CALL_LOG`` (parallel.h then logs every
``ParallelFor`` call's duration and the start delay of its pool task) into a temporary folder,
runs the model with it and prints, per call position, the median duration over the runs, then
their sum against the whole call's median. Use it instead of ``jax.profiler`` for these
kernels: the profiler's thunk durations inflate multi-threaded FFI calls (the first five
MobileNetV2 layers chained: 490 µs by wall clock, ~1450 µs of thunks; NOTES entry 28).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np

KERNELS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "onnx2jax", "_kernels")


def build(out: str) -> str:
    sources = sorted(glob.glob(os.path.join(KERNELS, "*.cc")))
    cmd = ["g++", "-O3", "-std=c++17", "-fvisibility=hidden", "-w", "-fPIC", "-shared"]
    cmd += [f"-I{KERNELS}", f"-I{os.path.join(KERNELS, 'include')}", "-DONNX2JAX_CALL_LOG"]
    subprocess.run([*cmd, "-o", out, *sources], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dim", action="append", default=[], help="another symbolic dim: name=N")
    ap.add_argument("--runs", type=int, default=50)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build(os.path.join(tmp, "call_log.so"))
        # Before anything imports the handlers: the logging build replaces the installed one.
        import onnx2jax._kernels._ffi as ffi

        ffi.library_path = lambda: path
        import jax
        from profile_ops import feeds  # benchmarks/tools, beside this file

        import onnx2jax

        dims = {"batch": a.batch} | {k: int(v) for k, v in (d.split("=") for d in a.dim)}
        model = onnx2jax.load(a.model)
        inputs = {k: jax.device_put(v) for k, v in feeds(model, dims).items()}
        lowered, args = model.lower(**inputs)
        compiled = lowered.compile()
        lib = ctypes.CDLL(path)
        cap = 1 << 20
        durations, delays = (ctypes.c_int64 * cap)(), (ctypes.c_int64 * cap)()
        starts = ctypes.c_int64()

        def read() -> tuple[np.ndarray, np.ndarray]:
            n = lib.onnx2jax_call_log(durations, delays, cap, ctypes.byref(starts))
            return np.array(durations[:n]) / 1e3, np.array(delays[: starts.value]) / 1e3

        for _ in range(5):
            jax.block_until_ready(compiled(*args))
        read()
        walls, per_run, waits = [], [], []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            walls.append(time.perf_counter() - t0)
            d, w = read()
            per_run.append(d)
            waits.append(w)
    counts = {len(d) for d in per_run}
    if len(counts) != 1:
        raise SystemExit(f"the number of kernel calls changed between runs: {sorted(counts)}")
    med = np.median(np.stack(per_run), axis=0)
    wall = statistics.median(walls) * 1e3
    print(f"{os.path.basename(a.model)} batch {a.batch}: {len(med)} kernel calls per run")
    print("median µs per call, in program order:")
    print(" ".join(f"{v:.0f}" for v in med))
    print(f"sum {med.sum() / 1e3:.3f} ms inside the kernels; the whole call {wall:.3f} ms")
    w = np.concatenate(waits)
    if w.size:
        p50, p90, p99 = np.percentile(w, [50, 90, 99])
        print(f"pool task start delay: median {p50:.1f} µs, p90 {p90:.1f}, p99 {p99:.1f}")


if __name__ == "__main__":
    main()
