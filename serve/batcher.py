"""The dynamic batcher: an asyncio queue that stacks requests and runs them through ``jax.vmap``.

It knows nothing of HTTP (app.py translates the protocol onto it), and it uses only the public
``onnx2jax`` API: ``Model.inputs`` / ``outputs`` for the signature, ``Model.prepare`` (the
param-only values, computed once) and ``Model.apply_prepared`` (pure) for the computation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from onnx2jax import InputError, Model, Onnx2JaxError, TensorSpec, compiler_options

from .config import BatchConfig


class ServeError(Onnx2JaxError):
    """A request the server could not serve for a reason other than its inputs."""


class QueueFullError(ServeError):
    """The model's queue holds ``max_queue_size`` requests already (HTTP 503)."""


class RequestTimeoutError(ServeError):
    """The request waited in the queue longer than its timeout (HTTP 504)."""


class ShuttingDownError(ServeError):
    """The batcher is draining its queue before it stops and takes no new request (HTTP 503)."""


class Observer:
    """What a batcher reports (metrics.py records it); this base class ignores everything."""

    def queue_depth(self, model: str, depth: int) -> None:
        """The number of requests waiting, after each change."""

    def batch(self, model: str, size: int, bucket: int, waits: list[float], compute: float) -> None:
        """A batch ran: its examples, the bucket it was padded to, each request's queue wait
        and the compute time, in seconds."""

    def compiled(self, model: str, phase: str, seconds: float) -> None:
        """A program was compiled, at ``"warmup"`` or (for a shape unknown then) ``"runtime"``."""


@dataclass(eq=False)
class _Request:
    key: tuple  # the per-example shapes: only requests with the same key share a batch
    inputs: list[np.ndarray]  # in model input order, each [k, ...]
    k: int
    future: asyncio.Future
    enqueued: float
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


def batch_axis(model: Model) -> str | None:
    """How ``model`` takes a batch: ``"symbolic"`` (every input's first dim is one symbolic
    dim), ``"export1"`` (every input's first dim is 1: a batch-1 export) or None (no batch
    axis, or a model ``jax.vmap`` cannot trace: graph breaks, shape-deciding inputs)."""
    specs = model.inputs
    if not specs or model.graph_breaks or model.value_inputs:
        return None
    if any(s.kind != "tensor" or s.dtype is None or not s.shape for s in specs):
        return None
    if any(s.dtype.kind in "OSU" for s in specs):
        return None
    firsts = [s.shape[0] for s in specs]
    if all(f == 1 for f in firsts):
        return "export1"
    named = {f for f in firsts if isinstance(f, str)}
    if all(f is None or isinstance(f, str) for f in firsts) and len(named) <= 1:
        return "symbolic"
    return None


def wire_dtype(spec: TensorSpec) -> np.dtype:
    """The dtype a request must send for ``spec`` (the model's declared dtype)."""
    return np.dtype(spec.dtype)


class Batcher:
    """Serves one model: queues requests, forms batches, runs them on a worker thread.

    Requests follow Triton's convention: for a model with a batch axis (a symbolic first dim
    shared by the inputs, or a batch-1 export whose first dims are 1), each input carries that
    axis with k >= 1 examples. Examples of several requests with the same per-example shapes
    are stacked, padded to the next bucket (``BatchConfig.buckets``) and run as one call of
    ``jax.jit(jax.vmap(model.apply_prepared))``, with the params and ``model.prepare()`` (the
    laid-out, folded and dequantized weights, computed once at start-up) broadcast to every
    example; each request gets back exactly its rows. Models without a batch axis run one
    request at a time (``model(...)``, which reuses its prepared weights too).

    Args:
        model: the loaded model.
        name: the name requests address it by (in errors and metrics).
        config: the batching policy.
        dims: sizes for symbolic dims other than the batch axis, so that warm-up can compile
            every bucket ahead of time (a shape not known at start-up compiles when first seen).
        observer: receives queue depth, batches and compiles (``metrics.Metrics``).
    """

    def __init__(
        self,
        model: Model,
        name: str,
        config: BatchConfig | None = None,
        *,
        dims: Mapping[str, int] | None = None,
        observer: Observer | None = None,
    ):
        self.model = model
        self.name = name
        self.config = config or BatchConfig()
        self.dims = dict(dims or {})
        self.observer = observer or Observer()
        self.kind = batch_axis(model)
        if self.config.batch_mode == "axis" and self.kind == "export1":
            raise Onnx2JaxError(
                f"model {name!r}: batch_mode='axis' needs a symbolic batch axis, but its inputs "
                "have batch size 1 (a batch-1 export); use batch_mode='vmap'"
            )
        self.ready = False
        self._closing = False
        self._queued: dict[int, _Request] = {}  # insertion order = arrival order
        self._ids = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # One worker thread per replica: up to `replicas` batches run at once, so one batch's
        # host work (stacking, copying out, splitting) overlaps another's compute.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.config.replicas, thread_name_prefix=f"serve-{name}"
        )
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self._compile_lock = threading.Lock()
        self._mesh = self._device_mesh()
        # With a batch split over n devices, every bucket is a multiple of n.
        n = 1 if self._mesh is None else self._mesh.size
        self.buckets = tuple(sorted({-(-b // n) * n for b in self.config.buckets}))
        self._compiled: dict[tuple, Any] = {}
        self._fn = None
        self._prepared: tuple[Any, Any] | None = None  # (params, model.prepare()), at warm-up

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def batched(self) -> bool:
        return self.kind is not None

    @property
    def max_batch_size(self) -> int:
        """Triton's meaning: 0 for a model without a batch axis."""
        return self.config.max_batch_size if self.batched else 0

    async def start(self) -> None:
        """Compile every bucket (in the worker thread) and start taking requests."""
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.config.replicas)
        await loop.run_in_executor(self._pool, self._warmup)
        self._task = asyncio.create_task(self._schedule(), name=f"batcher-{self.name}")
        self.ready = True

    async def stop(self) -> None:
        """Take no new requests, finish every queued one, then stop the worker."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running)
        self.ready = False
        self._pool.shutdown(wait=True)

    @property
    def queue_depth(self) -> int:
        return len(self._queued)

    # -- requests -----------------------------------------------------------------------------
    async def infer(
        self, inputs: Mapping[str, np.ndarray], *, timeout_ms: float | None = None
    ) -> dict[str, np.ndarray]:
        """Run one request; returns every output by name, with the request's batch axis.

        Raises:
            InputError: a wrong input name, dtype or shape (checked before queueing, so a bad
                request never joins a batch).
            QueueFullError: the queue is full.
            RequestTimeoutError: still queued after ``timeout_ms`` (or the config's default).
            ShuttingDownError: the batcher is stopping.
        """
        if self._closing or not self.ready:
            raise ShuttingDownError(f"model {self.name!r} is not taking requests (shutting down)")
        arrays, k, key = self.check(inputs)
        limit = self.config.max_queue_size
        if limit and len(self._queued) >= limit:
            raise QueueFullError(
                f"model {self.name!r}: the queue is full ({limit} requests waiting); retry later "
                "or raise --max-queue-size"
            )
        loop = asyncio.get_running_loop()
        req = _Request(key, arrays, k, loop.create_future(), time.perf_counter())
        rid = next(self._ids)
        self._queued[rid] = req
        timeout = self.config.default_timeout_ms if timeout_ms is None else timeout_ms
        if timeout and timeout > 0:
            req.timer = loop.call_later(timeout / 1000, self._expire, rid, timeout)
        self.observer.queue_depth(self.name, len(self._queued))
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await req.future
        except asyncio.CancelledError:
            # The caller went away (e.g. the client disconnected): drop it if still queued.
            self._drop(rid)
            raise

    def check(self, inputs: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], int, tuple]:
        """Validate one request's inputs: ``(arrays in input order, examples, batch key)``."""
        specs = self.model.inputs
        names = [s.name for s in specs]
        unknown = [n for n in inputs if n not in names]
        if unknown:
            raise InputError(
                f"model {self.name!r} has no input(s) {unknown}; its inputs are {names}"
            )
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InputError(f"model {self.name!r}: missing input(s) {missing}; give {names}")
        arrays, shapes, dims, ks = [], [], {}, set()
        for spec in specs:
            a = np.asarray(inputs[spec.name])
            want = wire_dtype(spec) if spec.dtype is not None else a.dtype
            if a.dtype != want:
                raise InputError(
                    f"model {self.name!r}: input {spec.name!r} has dtype {a.dtype}, but the model "
                    f"takes {want}"
                )
            shape = self._check_shape(spec, a.shape, dims)
            if self.batched:
                ks.add(a.shape[0])
            arrays.append(a)
            shapes.append(shape)
        if len(ks) > 1:
            raise InputError(
                f"model {self.name!r}: the inputs disagree on the batch size (first dim): "
                f"{sorted(ks)}; every input must carry the same number of examples"
            )
        k = ks.pop() if ks else 1
        # JAX computes int64/float64 as int32/float32 (x64 off): convert here, on the event
        # loop, where the request is still alone, not in the batch.
        arrays = [
            a
            if a.dtype.kind in "OSU"
            else a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)
            for a in arrays
        ]
        return arrays, k, tuple(shapes)

    def _check_shape(self, spec: TensorSpec, shape: tuple, dims: dict) -> tuple:
        """Check one input's shape; returns its per-example shape (its whole shape unbatched)."""
        declared = spec.shape
        if declared is None:
            return tuple(shape)
        shown = [-1 if not isinstance(d, int) else d for d in declared]
        if self.batched:
            shown[0] = -1
        if len(shape) != len(declared):
            raise InputError(
                f"model {self.name!r}: input {spec.name!r} has shape {list(shape)}, but the model "
                f"takes rank {len(declared)}: {shown}"
            )
        start = 0
        if self.batched:
            start = 1
            if not 1 <= shape[0] <= self.config.max_batch_size:
                raise InputError(
                    f"model {self.name!r}: input {spec.name!r} carries {shape[0]} examples "
                    f"(first dim), but a request takes 1 to {self.config.max_batch_size}"
                )
        for axis in range(start, len(declared)):
            want, got = declared[axis], shape[axis]
            if isinstance(want, int) and want >= 0 and want != got:
                raise InputError(
                    f"model {self.name!r}: input {spec.name!r} has size {got} on axis {axis}, "
                    f"but the model takes {shown}"
                )
            if isinstance(want, str):
                seen = dims.setdefault(want, (spec.name, got))
                if seen[1] != got:
                    raise InputError(
                        f"model {self.name!r}: dim {want!r} is {got} in input {spec.name!r} but "
                        f"{seen[1]} in input {seen[0]!r}; they must agree"
                    )
        return tuple(shape[start:])

    def _expire(self, rid: int, timeout: float) -> None:
        req = self._queued.pop(rid, None)
        if req is None:
            return
        self.observer.queue_depth(self.name, len(self._queued))
        if not req.future.done():
            waited = (time.perf_counter() - req.enqueued) * 1000
            req.future.set_exception(
                RequestTimeoutError(
                    f"model {self.name!r}: request timed out after {waited:.0f} ms in the queue "
                    f"(timeout {timeout:g} ms)"
                )
            )

    def _drop(self, rid: int) -> None:
        req = self._queued.pop(rid, None)
        if req is not None:
            if req.timer is not None:
                req.timer.cancel()
            self.observer.queue_depth(self.name, len(self._queued))

    # -- scheduling ---------------------------------------------------------------------------
    async def _schedule(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        delay = self.config.max_queue_delay_ms / 1000
        while True:
            if not self._queued:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # A free replica first: while all are busy, the queue keeps filling the next batch.
            await self._slots.acquire()
            if not self._queued:  # what was queued left (timed out, cancelled) meanwhile
                self._slots.release()
                continue
            rid, oldest = next(iter(self._queued.items()))
            deadline = oldest.enqueued + delay
            # Wait for the batch to fill, until the oldest request's delay is up (or it left).
            while (
                self.batched
                and not self._closing
                and rid in self._queued
                and self._examples(oldest.key) < self.config.max_batch_size
            ):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:  # the builtin's alias only from 3.11
                    break
            if rid not in self._queued:
                self._slots.release()
                continue
            batch = self._take(oldest.key)
            task = asyncio.create_task(self._dispatch(oldest.key, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _dispatch(self, key: tuple, batch: list[_Request]) -> None:
        """Run one batch on a worker thread and answer its requests; frees the replica."""
        assert self._slots is not None
        try:
            waits = [time.perf_counter() - r.enqueued for r in batch]
            t0 = time.perf_counter()
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(self._pool, self._run, key, batch)
            except Exception as e:  # the model itself failed: every request of the batch hears
                err = e if isinstance(e, Onnx2JaxError) else ServeError(f"model {self.name!r}: {e}")
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(err)
                return
            n = sum(r.k for r in batch)
            self.observer.batch(self.name, n, self._bucket(n), waits, time.perf_counter() - t0)
            for r, out in zip(batch, results):
                if not r.future.done():  # cancelled meanwhile: its result is dropped
                    r.future.set_result(out)
        finally:
            self._slots.release()

    def _examples(self, key: tuple) -> int:
        return sum(r.k for r in self._queued.values() if r.key == key)

    def _take(self, key: tuple) -> list[_Request]:
        """The oldest requests with ``key`` whose examples fit in one batch."""
        room = self.config.max_batch_size if self.batched else 1
        batch = []
        for rid, r in list(self._queued.items()):
            if r.key != key or r.k > room:
                continue
            batch.append(self._queued.pop(rid))
            if r.timer is not None:
                r.timer.cancel()  # the timeout covers the wait in the queue only
            room -= r.k
            if room == 0 or not self.batched:
                break
        self.observer.queue_depth(self.name, len(self._queued))
        return batch

    def _bucket(self, n: int) -> int:
        if not self.batched:
            return 1
        return next(b for b in self.buckets if b >= n)

    # -- the worker thread --------------------------------------------------------------------
    def _run(self, key: tuple, batch: list[_Request]) -> list[dict[str, np.ndarray]]:
        names = self.model.output_names
        if not self.batched:
            outs = self.model(*batch[0].inputs)
            return [{n: self._declared(s, o) for n, s, o in zip(names, self.model.outputs, outs)}]
        n = sum(r.k for r in batch)
        bucket = self._bucket(n)
        xs = []
        for i in range(len(self.model.inputs)):
            x = (
                np.concatenate([r.inputs[i] for r in batch])
                if len(batch) > 1
                else batch[0].inputs[i]
            )
            if bucket > n:  # pad with copies of the last example: valid values for any model
                x = np.concatenate([x, np.repeat(x[-1:], bucket - n, axis=0)])
            xs.append(x)
        if self._mesh is not None:  # each device takes its slice of the batch
            xs = jax.device_put(xs, self._sharding(True))
        outs = self._program(key, bucket)(*self._weights(), *xs)
        outs = [self._declared(spec, o) for spec, o in zip(self.model.outputs, outs)]
        results, start = [], 0
        for r in batch:
            results.append({nm: o[start : start + r.k] for nm, o in zip(names, outs)})
            start += r.k
        return results

    @staticmethod
    def _declared(spec: TensorSpec, value: Any) -> np.ndarray:
        """An output as numpy in the model's declared dtype (int64 computed as int32 goes back
        to int64, as the metadata promises)."""
        a = np.asarray(value)
        if spec.dtype is not None and spec.dtype.kind not in "OSU" and a.dtype != spec.dtype:
            a = a.astype(spec.dtype)
        return a

    def _device_mesh(self):
        """The mesh a batch is split over (``BatchConfig.devices``), or None for one device."""
        want = self.config.devices
        have = jax.local_devices()
        n = len(have) if want == 0 else want
        if n > len(have):
            raise Onnx2JaxError(
                f"model {self.name!r}: BatchConfig.devices={want}, but this process sees "
                f"{len(have)} {have[0].platform} device(s); use at most {len(have)} (0: all)"
            )
        if n <= 1 or not self.batched:
            return None
        from jax.sharding import AxisType, Mesh

        # Auto axes: the ops carry no sharding annotations, XLA propagates the batch split.
        return Mesh(np.array(have[:n]), ("batch",), axis_types=(AxisType.Auto,))

    def _sharding(self, split: bool):
        from jax.sharding import NamedSharding, PartitionSpec

        assert self._mesh is not None
        return NamedSharding(self._mesh, PartitionSpec("batch" if split else None))

    def _weights(self) -> tuple[Any, Any]:
        """``(params, prepared)``: the param-only steps (weights transposed to the kernels'
        layout, folded BatchNorms, dequantized weights) run once here, not in every batch."""
        if self._prepared is None:  # at warm-up, before any replica runs
            # On the device once, so no batch copies host arrays in (a no-op for jax arrays).
            where = None if self._mesh is None else self._sharding(False)  # on every device
            self._prepared = jax.device_put((self.model.params, self.model.prepare()), where)
        return self._prepared

    def _batched_fn(self):
        """``(params, prepared, *xs[B, ...]) -> outputs[B, ...]`` for the batch mode."""
        if self._fn is not None:
            return self._fn
        model = self.model
        if self.config.batch_mode == "axis":

            def fn(params, prepared, *xs):
                return model.apply_prepared(params, prepared, *xs)

        else:

            def one(params, prepared, *xs):
                # One example keeps a batch axis of 1 (both a symbolic axis and a batch-1
                # export take that); an output whose first dim is 1 loses it again, so the
                # stacked result has one row per example.
                outs = model.apply_prepared(params, prepared, *(x[None] for x in xs))
                return tuple(o[0] if o.ndim and o.shape[0] == 1 else o for o in outs)

            # The weights are broadcast (in_axes None): the same arrays for every example.
            in_axes = (None, None) + (0,) * len(model.inputs)

            def fn(params, prepared, *xs):
                return jax.vmap(one, in_axes=in_axes)(params, prepared, *xs)

        self._fn = jax.jit(fn, compiler_options=compiler_options())
        return self._fn

    def _program(self, key: tuple, bucket: int, phase: str = "runtime"):
        prog = self._compiled.get((key, bucket))
        if prog is None:
            with self._compile_lock:  # two replicas meeting a new shape compile it once
                return self._compile(key, bucket, phase)
        return prog

    def _compile(self, key: tuple, bucket: int, phase: str):
        prog = self._compiled.get((key, bucket))
        if prog is None:
            t0 = time.perf_counter()
            split = None if self._mesh is None else self._sharding(True)
            args = [
                jax.ShapeDtypeStruct(
                    (bucket, *shape),
                    jax.dtypes.canonicalize_dtype(wire_dtype(spec)),
                    sharding=split,
                )
                for spec, shape in zip(self.model.inputs, key)
            ]
            prog = self._batched_fn().lower(*self._weights(), *args).compile()
            self._compiled[(key, bucket)] = prog
            self.observer.compiled(self.name, phase, time.perf_counter() - t0)
        return prog

    def _warmup(self) -> None:
        """Prepare the weights, compile every bucket for the per-example shapes known now and
        run each once."""
        if self.batched:
            self._weights()
        key = self._warmup_key()
        if key is None:
            return
        for bucket in self.buckets:
            xs = [
                np.zeros((bucket, *shape), jax.dtypes.canonicalize_dtype(wire_dtype(spec)))
                for spec, shape in zip(self.model.inputs, key)
            ]
            if self._mesh is not None:
                xs = jax.device_put(xs, self._sharding(True))
            outs = self._program(key, bucket, "warmup")(*self._weights(), *xs)
            jax.block_until_ready(outs)

    def _warmup_key(self) -> tuple | None:
        if not self.batched:
            return None
        key = []
        for spec in self.model.inputs:
            shape = []
            for d in spec.shape[1:]:
                if isinstance(d, int) and d >= 0:
                    shape.append(d)
                elif isinstance(d, str) and d in self.dims:
                    shape.append(self.dims[d])
                else:
                    return None  # compiled when first seen (counted as a runtime compile)
            key.append(tuple(shape))
        return tuple(key)

    def metadata_shape(self, spec: TensorSpec, output: bool = False) -> list[int]:
        """``spec``'s shape as the protocol shows it: -1 for the batch axis and dynamic dims."""
        if spec.shape is None:
            return [-1]
        shape = [d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape]
        if self.batched and shape and (not output or shape[0] in (-1, 1)):
            shape[0] = -1
        return shape
