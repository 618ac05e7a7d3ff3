"""Load and soak of ``onnx2jax serve`` (slow): many concurrent tritonclient clients against a
server process, every response checked against onnxruntime, throughput with batching vs max
batch 1 and vs the model called directly, and RSS over a soak.

Run: ``python -m pytest tests/test_serve_load.py -m slow -s`` (prints the numbers);
``ONNX2JAX_SOAK_S=600`` for the 10-minute soak (default 60 s).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from serve_models import ort

import onnx2jax

pytestmark = pytest.mark.slow
CNN = pathlib.Path(__file__).parents[1] / "examples" / "tiny_cnn.onnx"
RNG = np.random.default_rng(3)
POOL = [RNG.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(64)]


def _start(*flags: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, ONNX2JAX_XLA_LIBRARY="on", XLA_FLAGS="")  # as a user runs it
    cmd = [sys.executable, "-m", "onnx2jax.cli", "serve", f"cnn={CNN}", "--port", "0", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert "ready on http://" in line, line
    return proc, line.split("http://")[1].split()[0]


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _load(url: str, n: int, clients: int, expected: list[np.ndarray]) -> dict:
    """``n`` requests from ``clients`` concurrent clients; each response checked."""
    lat: list[float] = []
    bad = {"lost": 0, "mismatched": 0}
    counter = iter(range(n))

    async def client():
        c = tha.InferenceServerClient(url, conn_limit=1)
        try:
            for i in counter:
                x = POOL[i % len(POOL)]
                inp = th.InferInput("image", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                t0 = time.perf_counter()
                try:
                    r = await c.infer("cnn", [inp])
                except Exception:
                    bad["lost"] += 1
                    continue
                lat.append(time.perf_counter() - t0)
                if not np.allclose(r.as_numpy("logits"), expected[i % len(POOL)], 1e-4, 1e-4):
                    bad["mismatched"] += 1
        finally:
            await c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    took = time.perf_counter() - t0
    lat.sort()
    return {
        "requests/s": n / took,
        "p50 ms": 1e3 * statistics.median(lat),
        "p99 ms": 1e3 * lat[int(0.99 * (len(lat) - 1))],
        **bad,
    }


def _direct_items_per_s(batch: int) -> float:
    """The model's own speed at ``batch``: ``model(x)`` in a loop, no server."""
    model = onnx2jax.load(CNN)
    x = np.concatenate([POOL[i % len(POOL)] for i in range(batch)])
    np.asarray(model(x)[0])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3:
        np.asarray(model(x)[0])
        n += 1
    return n * batch / (time.perf_counter() - t0)


def _metric(url: str, name: str) -> float:
    import urllib.request

    from serve_models import metric

    text = urllib.request.urlopen(f"http://{url}/metrics").read().decode()
    return metric(text, name, model="cnn")


def test_load_batching_vs_batch1_and_direct():
    expected = [ort(onnx.load(CNN), image=x)["logits"] for x in POOL]
    n, clients = int(os.environ.get("ONNX2JAX_LOAD_N", "4000")), 32
    results = {}
    for label, flags in [("batched", ["--max-batch-size", "32"]), ("max batch 1", ["--max-batch-size", "1"])]:  # fmt: skip
        proc, url = _start(*flags, "--max-queue-delay-ms", "2")
        try:
            asyncio.run(_load(url, 200, clients, expected))  # warm the connections
            results[label] = asyncio.run(_load(url, n, clients, expected))
            count = _metric(url, "onnx2jax_batch_size_count")
            results[label]["mean batch"] = _metric(url, "onnx2jax_batch_size_sum") / count
        finally:
            _stop(proc)
    formed = max(1, round(results["batched"]["mean batch"]))
    direct = _direct_items_per_s(formed)
    for label, r in results.items():
        print(f"\n{label}: " + ", ".join(f"{k} {v:,.1f}" for k, v in r.items()))
    speedup = results["batched"]["requests/s"] / results["max batch 1"]["requests/s"]
    share = results["batched"]["requests/s"] / direct
    print(f"direct model at batch {formed}: {direct:,.0f} items/s; served/direct {share:.0%}")
    print(f"batching speed-up over max batch 1: {speedup:.1f}x")
    for r in results.values():
        assert r["lost"] == 0 and r["mismatched"] == 0
    assert speedup > 1.5


def test_soak_rss_stays_flat():
    expected = [ort(onnx.load(CNN), image=x)["logits"] for x in POOL]
    seconds = float(os.environ.get("ONNX2JAX_SOAK_S", "60"))
    proc, url = _start("--max-batch-size", "32", "--max-queue-delay-ms", "2")
    try:
        asyncio.run(_load(url, 2000, 32, expected))  # warm-up
        rss0 = _rss_mb(proc.pid)
        t0, total = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            r = asyncio.run(_load(url, 2000, 32, expected))
            assert r["lost"] == 0 and r["mismatched"] == 0
            total += 2000
        rss1 = _rss_mb(proc.pid)
    finally:
        _stop(proc)
    growth = rss1 / rss0 - 1
    print(
        f"\nsoak {seconds:.0f} s, {total} requests: RSS {rss0:.0f} -> {rss1:.0f} MB ({growth:+.1%})"
    )
    assert growth < 0.10
