"""A/B two builds of the kernel library in one process, interleaved: layers or whole models.

    LIBA=/tmp/a.so LIBB=/tmp/b.so python benchmarks/tools/kernel_ab.py --layers
    LIBA=/tmp/a.so LIBB=/tmp/b.so python benchmarks/tools/kernel_ab.py model.onnx:1,8 ...

Build each library from its sources as setup.py does, e.g. in onnx2jax/_kernels:
    g++ -O3 -std=c++17 -fvisibility=hidden -w -fPIC -shared -Iinclude -I. -o /tmp/a.so \\
        packed_matmul.cc packed_conv.cc depthwise_conv.cc inverted_residual.cc

Both libraries register their handlers under prefixed FFI target names ("A_...", "B_..."), and
each function is traced with one prefix, so both run in the same process against the same
inputs: on a VM whose speed moves by 2x between minutes this is the comparison to trust
(separate processes disagreed by up to 9% on identical builds; NOTES entry 26). Layer outputs
are checked to be bitwise equal. Prints B's median over A's per layer or model.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import onnx2jax
import onnx2jax._kernels._ffi as ffi
from onnx2jax._kernels import conv as kc
from onnx2jax._kernels import inverted_residual as kir
from onnx2jax._kernels import matmul as km

# (N, H=W, C, O, kernel, stride, groups): MobileNetV2- and ResNet-shaped layers
LAYERS = [
    (8, 224, 3, 32, 3, 2, 1),
    (8, 112, 32, 16, 1, 1, 1),
    (8, 112, 16, 96, 1, 1, 1),
    (1, 112, 32, 16, 1, 1, 1),
    (1, 224, 3, 64, 7, 2, 1),
    (1, 56, 64, 64, 3, 1, 1),
    (1, 14, 256, 256, 3, 1, 1),
    (1, 7, 512, 512, 3, 1, 1),
    (8, 112, 32, 32, 3, 1, 32),
    (8, 112, 96, 96, 3, 2, 96),
    (8, 56, 144, 144, 3, 1, 144),
    (1, 112, 32, 32, 3, 1, 32),
    (1, 14, 576, 576, 3, 1, 576),
    (1, 14, 576, 576, 3, 2, 576),
    (1, 7, 960, 960, 3, 1, 960),
    (1, 7, 160, 960, 1, 1, 1),
    (1, 28, 144, 144, 3, 1, 144),
]
DIMS = {"height": 224, "width": 224, "sequence": 128}


def register(tags: dict[str, str]) -> None:
    for tag, path in tags.items():
        lib = ctypes.CDLL(path)
        for target in ffi.TARGETS:
            if not hasattr(lib, target):  # a build older than the target: layers only
                continue
            capsule = jax.ffi.pycapsule(getattr(lib, target))
            jax.ffi.register_ffi_target(f"{tag}_{target}", capsule, "cpu")
    ffi._registered = lambda: True  # the unprefixed names stay unregistered: never traced


def use(tag: str) -> None:
    """Trace from here on against library ``tag``'s handlers."""
    kc._DENSE = f"{tag}_onnx2jax_packed_conv"
    kc._DENSE_ADD = f"{tag}_onnx2jax_packed_conv_add"
    kc._DEPTHWISE = f"{tag}_onnx2jax_depthwise_conv"
    kc._MAX_POOL = f"{tag}_onnx2jax_max_pool"
    km._TARGET = f"{tag}_onnx2jax_packed_matmul"
    kir._FUSED = f"{tag}_onnx2jax_inverted_residual"
    kir._FUSED_ADD = f"{tag}_onnx2jax_inverted_residual_add"


def interleave(fns: dict, rounds: int, seconds: float) -> dict[str, float]:
    """Median over rounds of each function's median call time (ms), alternating the order."""
    times = {tag: [] for tag in fns}
    for r in range(rounds):
        for tag in fns if r % 2 == 0 else reversed(list(fns)):
            ts, end = [], time.perf_counter() + seconds
            while time.perf_counter() < end or len(ts) < 3:
                t0 = time.perf_counter()
                fns[tag]()
                ts.append(time.perf_counter() - t0)
            times[tag].append(statistics.median(ts))
    return {tag: statistics.median(v) * 1e3 for tag, v in times.items()}


def layers(rounds: int) -> None:
    rng = np.random.default_rng(0)
    for n, hw, c, o, k, s, groups in LAYERS:
        x = jnp.asarray(rng.standard_normal((n, hw, hw, c)).astype(np.float32))
        w = rng.standard_normal((k, k, c // groups, o)).astype(np.float32) * 0.1
        p = (k - 1) // 2
        geo = kc.Geometry((k, k), o, (s, s), ((p, p), (p, p)), (1, 1), 0.0, 6.0, groups)
        packed, b = jnp.asarray(kc.pack(w)), jnp.zeros(o, jnp.float32)
        fns, outs = {}, []
        for tag in ("A", "B"):
            use(tag)
            f = jax.jit(lambda x, packed, b, geo=geo: kc.packed_conv(x, packed, b, geo))
            outs.append(np.asarray(f(x, packed, b)))
            fns[tag] = lambda f=f, a=(x, packed, b): f(*a).block_until_ready()
        assert np.array_equal(*outs), "the two libraries disagree"
        ms = interleave(fns, rounds, 0.1)
        name = f"{n}x{hw}x{hw}x{c} -> {o} {k}x{k}/{s}" + (" depthwise" if groups > 1 else "")
        print(f"{name:34s} A {ms['A']:8.3f}  B {ms['B']:8.3f}  B/A {ms['B'] / ms['A']:.3f}")


def models(specs: list[str], rounds: int) -> None:
    rng = np.random.default_rng(0)
    for spec in specs:
        path, _, batches = spec.partition(":")
        for batch in [int(v) for v in (batches or "1,8").split(",")]:
            fns, feeds = {}, None
            for tag in ("A", "B"):
                use(tag)
                model = onnx2jax.load(path)
                if feeds is None:  # the same inputs for both
                    feeds = {}
                    for i in model.inputs:
                        shape = [d if isinstance(d, int) else DIMS.get(d, batch) for d in i.shape]
                        feeds[i.name] = (
                            rng.standard_normal(shape).astype(i.dtype)
                            if i.dtype.kind == "f"
                            else np.ones(shape, i.dtype)
                        )
                fns[tag] = lambda m=model, f=feeds: jax.block_until_ready(m(**f))
                fns[tag]()  # compile with this tag's targets
            ms = interleave(fns, rounds, 0.4)
            load = os.getloadavg()[0]
            print(
                f"{os.path.basename(path):22s} b{batch}  A {ms['A']:8.2f}  B {ms['B']:8.2f}  "
                f"B/A {ms['B'] / ms['A']:.3f}  load {load:.2f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="*", help="MODEL.onnx[:batch,batch]")
    ap.add_argument("--layers", action="store_true", help="time LAYERS instead of models")
    ap.add_argument("--rounds", type=int, default=16)
    args = ap.parse_args()
    register({"A": os.environ["LIBA"], "B": os.environ["LIBB"]})
    if args.layers:
        layers(args.rounds)
    models(args.models, args.rounds)


if __name__ == "__main__":
    main()
