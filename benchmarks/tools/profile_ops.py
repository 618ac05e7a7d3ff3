"""Where a model's compiled program spends its time: top XLA thunks from a jax.profiler trace.

python benchmarks/tools/profile_ops.py MODEL.onnx [--dim name=N ...] [--runs 5] [--top 25] [--kinds]

``--kinds`` sums the thunks by name without their ``.N`` suffix (``ynn_fusion`` = YNNPACK dots
and convolutions, ``loop_*_fusion`` / ``reduce-window`` / ``copy`` = XLA's own kernels).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import numpy as np

import onnx2jax


def feeds(model: onnx2jax.Model, dims: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for spec in model.inputs:
        shape = [d if isinstance(d, int) else dims.get(d, 1) for d in spec.shape]
        if spec.dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.integers(0, 100, shape).astype(spec.dtype)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--dim", action="append", default=[])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--kinds", action="store_true", help="sum thunks by kind (name sans .N)")
    a = ap.parse_args()
    dims = {k: int(v) for k, v in (d.split("=") for d in a.dim)}
    model = onnx2jax.load(a.model)
    lowered, args = model.lower(**feeds(model, dims))
    compiled = lowered.compile()
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(a.runs):
                jax.block_until_ready(compiled(*args))
        (path,) = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(path))["traceEvents"]
    total: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            name = re.sub(r"\.\d+$", "", e["name"]) if a.kinds else e["name"]
            total[name] += e["dur"] / a.runs / 1e3
    for name, ms in total.most_common(a.top):
        print(f"{ms:9.3f} ms  {name}")


if __name__ == "__main__":
    main()
