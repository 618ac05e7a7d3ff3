"""Time the lowerings of ``ai.onnx2jax::Attention`` on this machine's default JAX backend.

python benchmarks/tools/attention_forms.py [--dtype float32|bfloat16] [--rounds 5]

Forms: the chain as exporters write it (matmul, scale, mask, softmax, matmul), onnx2jax's
blocked form (256-query blocks under lax.map, onnx2jax/ops/attention.py) and
``jax.nn.dot_product_attention`` (cuDNN's fused kernel on NVIDIA GPUs where it applies).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from onnx2jax.ops import attention as ops

SHAPES = {  # batch, heads, queries = keys, head size
    "bert b8 s128": (8, 12, 128, 64),
    "whisper b1 s1500": (1, 6, 1500, 64),
    "whisper b8 s1500": (8, 6, 1500, 64),
    "gpt2 b1 s1024": (1, 12, 1024, 64),
    "long b1 s4096": (1, 16, 4096, 64),
}


def written(q, kt, v, mask, scale):
    p = jax.nn.softmax(jnp.matmul(q, kt) * scale + mask, axis=-1)
    return jnp.matmul(p, v)


def blocked(q, kt, v, mask, scale):
    return ops._blocked_attention(q, kt, v, mask, scale, False)


def fused_library(q, kt, v, mask, scale):
    # dot_product_attention takes [batch, seq, heads, size]; a [b, 1, 1, sk] additive mask
    # broadcasts as its bias.
    o = jax.nn.dot_product_attention(
        q.transpose(0, 2, 1, 3),
        kt.transpose(0, 3, 1, 2),
        v.transpose(0, 2, 1, 3),
        bias=mask.astype(q.dtype),
        scale=scale,
    )
    return o.transpose(0, 2, 1, 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    dtype = jnp.dtype(a.dtype)
    print(jax.devices()[0].device_kind, a.dtype, flush=True)
    rng = np.random.default_rng(0)
    for name, (b, h, s, d) in SHAPES.items():
        q, v = (jnp.asarray(rng.standard_normal((b, h, s, d)), dtype) for _ in range(2))
        kt = jnp.asarray(rng.standard_normal((b, h, d, s)), dtype)
        mask = jnp.zeros((b, 1, 1, s), dtype).at[:, ..., -7:].set(-1e4)
        ref = np.asarray(written(q, kt, v, mask, d**-0.5), np.float32)
        times = {}
        for form in (written, blocked, fused_library):
            fn = jax.jit(form, static_argnums=4)
            try:
                got = np.asarray(fn(q, kt, v, mask, d**-0.5), np.float32)
            except Exception as e:  # e.g. no fused kernel for this dtype or backend
                times[form.__name__] = f"n/a ({type(e).__name__})"
                continue
            err = float(np.abs(got - ref).max())
            runs = []
            for _ in range(a.rounds):
                t0 = time.perf_counter()
                for _ in range(5):
                    out = fn(q, kt, v, mask, d**-0.5)
                out.block_until_ready()
                runs.append((time.perf_counter() - t0) / 5)
            times[form.__name__] = f"{min(runs) * 1e3:.3f} ms (err {err:.1e})"
        print(f"{name}: {times}", flush=True)


if __name__ == "__main__":
    main()
