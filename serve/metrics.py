"""Prometheus metrics of the server (prometheus-client), one registry per server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batcher import Observer

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics(Observer):
    """The counters, gauges and histograms of one server, in their own registry (so several
    servers in one process, as in the tests, never share or clash).

    Names: ``onnx2jax_requests_total`` and ``onnx2jax_request_failures_total{reason}`` per
    model, ``onnx2jax_queue_depth``, ``onnx2jax_batch_size`` (examples per batch, before
    padding), ``onnx2jax_queue_seconds`` (each request's wait), ``onnx2jax_compute_seconds``
    (each batch), ``onnx2jax_compiles_total{phase="warmup"|"runtime"}``.
    """

    def __init__(self, max_batch_size: int = 32):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "onnx2jax_requests", "Inference requests received", ["model"], registry=r
        )
        self.failures = Counter(
            "onnx2jax_request_failures",
            "Inference requests that failed, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.depth = Gauge("onnx2jax_queue_depth", "Requests waiting", ["model"], registry=r)
        sizes, b = [], 1
        while b < max_batch_size:
            sizes.append(b)
            b *= 2
        sizes.append(max_batch_size)
        self.batch_size = Histogram(
            "onnx2jax_batch_size",
            "Examples per batch (before padding to a bucket)",
            ["model"],
            buckets=sizes,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "onnx2jax_queue_seconds",
            "Time a request waited in the queue",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "onnx2jax_compute_seconds",
            "Time to run one batch (stack, pad, compute, split)",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.compiles = Counter(
            "onnx2jax_compiles", "Programs compiled", ["model", "phase"], registry=r
        )
        # The labelled children, looked up once: ``labels()`` takes a lock and builds a key,
        # a cost paid on every request otherwise.
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- Observer -----------------------------------------------------------------------------
    def queue_depth(self, model: str, depth: int) -> None:
        self._child(self.depth, model).set(depth)

    def batch(self, model: str, size: int, bucket: int, waits: list[float], compute: float) -> None:
        self._child(self.batch_size, model).observe(size)
        h = self._child(self.queue_seconds, model)
        for w in waits:
            h.observe(w)
        self._child(self.compute_seconds, model).observe(compute)

    def compiled(self, model: str, phase: str, seconds: float) -> None:
        self.compiles.labels(model, phase).inc()

    # -- the HTTP layer -----------------------------------------------------------------------
    def request(self, model: str) -> None:
        self._child(self.requests, model).inc()

    def failure(self, model: str, reason: str) -> None:
        self._child(self.failures, model, reason).inc()

    def render(self) -> bytes:
        """The text exposition format for ``GET /metrics``."""
        return generate_latest(self.registry)
