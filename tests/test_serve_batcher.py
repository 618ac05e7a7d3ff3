"""The dynamic batcher without sockets: results routed back to their requests (against
onnxruntime), batches that form, buckets compiled at warm-up only, per-shape batches, bad
requests rejected alone, the bounded queue, timeouts while queued, cancellation and draining."""

from __future__ import annotations

import asyncio
import functools
import time

import numpy as np
import pytest
from onnx2jax.serve import (
    BatchConfig,
    Batcher,
    Observer,
    QueueFullError,
    RequestTimeoutError,
    ShuttingDownError,
    batch_axis,
)
from serve_models import bertish, mlp, ort

import onnx2jax

RNG = np.random.default_rng(0)


@functools.cache
def _model(kind: str) -> onnx2jax.Model:
    return {"mlp": lambda: onnx2jax.load(mlp()), "mlp1": lambda: onnx2jax.load(mlp(1)),
            "mlp2": lambda: onnx2jax.load(mlp(2)), "bert": lambda: onnx2jax.load(bertish())}[kind]()  # fmt: skip


class Record(Observer):
    def __init__(self):
        self.batches: list[tuple[int, int]] = []
        self.compiles: list[str] = []

    def batch(self, model, size, bucket, waits, compute):
        self.batches.append((size, bucket))

    def compiled(self, model, phase, seconds):
        self.compiles.append(phase)


def _x(k: int) -> np.ndarray:
    return RNG.standard_normal((k, 8)).astype(np.float32)


def _run(coro):
    return asyncio.run(coro)


async def _started(kind: str, **config) -> tuple[Batcher, Record]:
    rec = Record()
    dims = config.pop("dims", None)
    b = Batcher(_model(kind), kind, BatchConfig(**config), dims=dims, observer=rec)
    await b.start()
    return b, rec


def _check_mlp(x: np.ndarray, out: dict, batch1: bool = False) -> None:
    if batch1:  # a batch-1 export: onnxruntime runs one row at a time
        refs = [ort(mlp(1), x=x[i : i + 1]) for i in range(len(x))]
        ref = {k: np.concatenate([r[k] for r in refs]) for k in ("y", "hidden")}
    else:
        ref = ort(mlp(), x=x)
    for name in ("y", "hidden"):
        assert out[name].shape == ref[name].shape
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)


def test_batch_axis_kinds():
    assert batch_axis(_model("mlp")) == "symbolic"
    assert batch_axis(_model("mlp1")) == "export1"
    assert batch_axis(_model("mlp2")) is None
    assert batch_axis(_model("bert")) == "symbolic"


def test_config_buckets_and_checks():
    assert BatchConfig(max_batch_size=12).buckets == (1, 2, 4, 8, 12)
    assert BatchConfig(max_batch_size=8, preferred_batch_sizes=(3,)).buckets == (3, 8)
    for bad in (
        {"max_batch_size": 0},
        {"max_batch_size": 4, "preferred_batch_sizes": (5,)},
        {"max_queue_delay_ms": -1},
        {"max_queue_size": -1},
        {"default_timeout_ms": -2},
        {"batch_mode": "pmap"},
        {"replicas": 0},
    ):
        with pytest.raises(onnx2jax.Onnx2JaxError, match="BatchConfig"):
            BatchConfig(**bad)


@pytest.mark.parametrize("mode", ["vmap", "axis"])
def test_requests_batched_and_routed_back(mode):
    async def main():
        b, rec = await _started("mlp", max_batch_size=8, max_queue_delay_ms=50, batch_mode=mode)
        xs = [_x(k) for k in (1, 2, 3, 1, 1, 2, 1, 4, 1)]
        outs = await asyncio.gather(*(b.infer({"x": x}) for x in xs))
        await b.stop()
        return xs, outs, rec

    xs, outs, rec = _run(main())
    for x, out in zip(xs, outs):
        _check_mlp(x, out)
    assert max(size for size, _ in rec.batches) > 1, rec.batches
    assert all(size <= bucket <= 8 for size, bucket in rec.batches)
    assert sum(size for size, _ in rec.batches) == sum(len(x) for x in xs)
    # every bucket compiled at warm-up, none while serving
    assert rec.compiles == ["warmup"] * len(BatchConfig(max_batch_size=8).buckets)


def test_batch1_export_served_batched():
    async def main():
        b, rec = await _started("mlp1", max_batch_size=4, max_queue_delay_ms=50)
        xs = [_x(1) for _ in range(6)] + [_x(3)]
        outs = await asyncio.gather(*(b.infer({"x": x}) for x in xs))
        await b.stop()
        return xs, outs, rec

    xs, outs, rec = _run(main())
    for x, out in zip(xs, outs):
        _check_mlp(x, out, batch1=True)
    assert max(size for size, _ in rec.batches) > 1
    assert set(rec.compiles) == {"warmup"}


def test_different_shapes_form_different_batches():
    def req(seq):
        ids = RNG.integers(0, 50, (1, seq)).astype(np.int64)
        mask = (RNG.random((1, seq)) > 0.3).astype(np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    async def main():
        b, rec = await _started("bert", max_batch_size=4, max_queue_delay_ms=50, dims={"seq": 5})
        reqs = [req(5), req(7), req(5), req(7), req(5)]
        outs = await asyncio.gather(*(b.infer(r) for r in reqs))
        await b.stop()
        return reqs, outs, rec

    reqs, outs, rec = _run(main())
    for r, out in zip(reqs, outs):
        ref = ort(bertish(), **r)
        assert out["logits"].dtype == np.float32
        np.testing.assert_allclose(out["logits"], ref["logits"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["hidden"], ref["hidden"], rtol=1e-5, atol=1e-6)
    assert sorted(size for size, _ in rec.batches) == [2, 3]
    # seq=5 was compiled at warm-up (--dim); seq=7 only when it came
    assert rec.compiles.count("runtime") == 1


def test_bad_requests_rejected_alone():
    bad = {
        "dtype float64": ({"x": np.zeros((1, 8))}, "'x' has dtype float64"),
        "size on axis 1": ({"x": np.zeros((1, 7), np.float32)}, "size 7 on axis 1"),
        "rank": ({"x": np.zeros((8,), np.float32)}, "takes rank 2"),
        "unknown": ({"x": _x(1), "z": _x(1)}, "no input"),
        "missing": ({}, "missing input"),
        "too many examples": ({"x": _x(9)}, "carries 9 examples"),
    }

    async def main():
        b, rec = await _started("mlp", max_batch_size=8, max_queue_delay_ms=50)
        good = [_x(1) for _ in range(3)]
        tasks = [b.infer({"x": x}) for x in good] + [b.infer(r) for r, _ in bad.values()]
        outs = await asyncio.gather(*tasks, return_exceptions=True)
        await b.stop()
        return good, outs, rec

    good, outs, rec = _run(main())
    for x, out in zip(good, outs[:3]):
        _check_mlp(x, out)
    for (what, (_, msg)), err in zip(bad.items(), outs[3:]):
        assert isinstance(err, onnx2jax.InputError), what
        assert msg in str(err), (what, str(err))
    assert rec.batches == [(3, 4)]  # the good ones ran together; no bad one joined


def test_queue_full_rejects_at_once_and_stop_drains():
    async def main():
        b, _ = await _started("mlp", max_batch_size=8, max_queue_delay_ms=5000, max_queue_size=2)
        xs = [_x(1), _x(1)]
        waiting = [asyncio.ensure_future(b.infer({"x": x})) for x in xs]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        with pytest.raises(QueueFullError, match="queue is full"):
            await b.infer({"x": _x(1)})
        rejected_in = time.perf_counter() - t0
        t0 = time.perf_counter()
        await b.stop()  # drains: the queued two run now, not after the 5 s delay
        drained_in = time.perf_counter() - t0
        with pytest.raises(ShuttingDownError):
            await b.infer({"x": _x(1)})
        return xs, [w.result() for w in waiting], rejected_in, drained_in

    xs, outs, rejected_in, drained_in = _run(main())
    assert rejected_in < 0.05
    assert drained_in < 2.0
    for x, out in zip(xs, outs):
        _check_mlp(x, out)


def test_timeout_fires_while_waiting():
    async def main():
        b, _ = await _started(
            "mlp", max_batch_size=8, max_queue_delay_ms=3000, default_timeout_ms=150
        )
        t0 = time.perf_counter()
        with pytest.raises(RequestTimeoutError, match="timed out"):
            await b.infer({"x": _x(1)})
        default_in = time.perf_counter() - t0
        t0 = time.perf_counter()
        with pytest.raises(RequestTimeoutError):
            await b.infer({"x": _x(1)}, timeout_ms=50)
        own_in = time.perf_counter() - t0
        depth = b.queue_depth
        await b.stop()
        return default_in, own_in, depth

    default_in, own_in, depth = _run(main())
    # the timeout fired long before a batch would have formed (3 s)
    assert 0.14 < default_in < 1.0
    assert 0.045 < own_in < 1.0
    assert depth == 0


def test_cancelled_request_leaves_the_queue():
    async def main():
        b, rec = await _started("mlp", max_batch_size=8, max_queue_delay_ms=3000)
        task = asyncio.ensure_future(b.infer({"x": _x(1)}))
        await asyncio.sleep(0.05)
        assert b.queue_depth == 1
        task.cancel()
        await asyncio.sleep(0)
        depth = b.queue_depth
        await b.stop()
        return depth, rec

    depth, rec = _run(main())
    assert depth == 0
    assert rec.batches == []  # nothing ran for the request that left


def test_model_without_batch_axis_runs_alone():
    async def main():
        b, rec = await _started("mlp2", max_batch_size=8, max_queue_delay_ms=20)
        xs = [_x(2), _x(2)]
        outs = await asyncio.gather(*(b.infer({"x": x}) for x in xs))
        with pytest.raises(onnx2jax.InputError, match="size 3 on axis 0"):
            await b.infer({"x": _x(3)})
        await b.stop()
        return b, xs, outs, rec

    b, xs, outs, rec = _run(main())
    assert b.max_batch_size == 0
    for x, out in zip(xs, outs):
        _check_mlp(x, out)
    assert rec.batches == [(1, 1), (1, 1)]


def _primitives(fn, *args) -> list[tuple[str, tuple]]:
    """Every primitive of ``fn``'s jaxpr (nested ones too) with its first output's shape."""
    import jax
    from jax.extend.core import jaxprs_in_params

    out = []

    def walk(jaxpr):
        for e in jaxpr.eqns:
            for sub in jaxprs_in_params(e.params):
                walk(sub)
            out.append((e.primitive.name, tuple(e.outvars[0].aval.shape) if e.outvars else ()))

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return out


def test_weights_prepared_once_not_per_batch():
    """The served program reads ``model.prepare()``: the nhwc pass's weight transposes (and
    folded BatchNorms, dequantized weights) run once at start-up, not inside every batch."""
    import pathlib

    import jax
    import onnx

    path = pathlib.Path(__file__).parents[1] / "examples" / "tiny_cnn.onnx"
    cnn = onnx2jax.load(path)
    laid_out = {tuple(v.shape) for v in cnn.prepare().values()}
    assert laid_out, "the nhwc pass should leave weight transposes to prepare"
    x = RNG.standard_normal((4, 3, 32, 32)).astype(np.float32)

    async def main():
        b = Batcher(cnn, "cnn", BatchConfig(max_batch_size=4))
        await b.start()
        try:
            outs = await asyncio.gather(*(b.infer({"image": x[i : i + 1]}) for i in range(4)))
        finally:
            await b.stop()
        return b, outs

    b, outs = _run(main())
    ref = ort(onnx.load(path), image=x)["logits"]
    np.testing.assert_allclose(np.concatenate([o["logits"] for o in outs]), ref, 1e-4, 1e-4)

    def transposed(fn, *args):
        return [s for p, s in _primitives(fn, *args) if p == "transpose" and s in laid_out]

    assert not transposed(b._batched_fn(), *b._weights(), x)
    # the check can fail: vmap of the plain apply transposes the weights in the program
    one = jax.vmap(lambda p, e: cnn.apply(p, e[None])[0][0], in_axes=(None, 0))
    assert transposed(one, cnn.params, x)


@pytest.mark.parametrize("replicas", [1, 2])
def test_replicas_run_batches_at_once_and_route_back(replicas):
    """With ``replicas`` N, up to N batches run at once (one worker thread each); every request
    still gets exactly its rows, and stop() waits for the batches in flight."""
    import threading

    busy, most, lock = [0], [0], threading.Lock()

    async def main():
        b, rec = await _started("mlp", max_batch_size=2, max_queue_delay_ms=1, replicas=replicas)
        run = b._run

        def slow_run(key, batch):  # each batch holds its worker a while, to see them overlap
            with lock:
                busy[0] += 1
                most[0] = max(most[0], busy[0])
            time.sleep(0.15)
            with lock:
                busy[0] -= 1
            return run(key, batch)

        b._run = slow_run
        xs = [_x(1) for _ in range(8)]
        futs = [asyncio.ensure_future(b.infer({"x": x})) for x in xs]
        await asyncio.sleep(0.05)
        await b.stop()  # drains the queue and waits for the batches in flight
        return xs, [f.result() for f in futs], rec

    xs, outs, rec = _run(main())
    for x, out in zip(xs, outs):
        _check_mlp(x, out)
    assert sum(size for size, _ in rec.batches) == 8
    assert most[0] == replicas


@pytest.mark.parametrize("mode", ["vmap", "axis"])
def test_batch_split_over_devices(mode):
    """``devices=0``: a batch is split over every local device (conftest makes 4 CPU devices),
    buckets rounded up to a multiple of them; the results are still each request's rows."""
    import jax

    n = jax.local_device_count()
    assert n == 4, "tests/conftest.py sets --xla_force_host_platform_device_count=4"

    async def main():
        b, rec = await _started(
            "mlp", max_batch_size=6, max_queue_delay_ms=50, devices=0, batch_mode=mode
        )
        xs = [_x(1), _x(2), _x(1), _x(1)]
        outs = await asyncio.gather(*(b.infer({"x": x}) for x in xs))
        await b.stop()
        return b, rec, xs, outs

    b, rec, xs, outs = _run(main())
    assert b.buckets == (4, 8)  # 1, 2, 4, 6 rounded up to multiples of 4
    for x, out in zip(xs, outs):
        _check_mlp(x, out)
    assert rec.batches == [(5, 8)]
    (prog,) = [p for (key, bucket), p in b._compiled.items() if bucket == 8]
    placed = prog.input_shardings[0][-1]  # the input x: split over all four devices
    assert placed.device_set == set(jax.local_devices())
    assert not placed.is_fully_replicated
    with pytest.raises(onnx2jax.Onnx2JaxError, match="devices=9"):
        Batcher(_model("mlp"), "mlp", BatchConfig(devices=9))
