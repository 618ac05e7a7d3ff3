"""Serving: a vmap-based dynamic batcher and a KServe v2 / Open Inference Protocol server."""

from __future__ import annotations

from .batcher import Batcher as Batcher
from .batcher import Observer as Observer
from .batcher import QueueFullError as QueueFullError
from .batcher import RequestTimeoutError as RequestTimeoutError
from .batcher import ServeError as ServeError
from .batcher import ShuttingDownError as ShuttingDownError
from .batcher import batch_axis as batch_axis
from .config import BatchConfig as BatchConfig

__all__ = [
    "BatchConfig",
    "Batcher",
    "Observer",
    "QueueFullError",
    "RequestTimeoutError",
    "ServeError",
    "ShuttingDownError",
    "batch_axis",
    "create_app",
    "serve",
]


def __getattr__(name: str):
    # The HTTP side needs the `serve` extra (starlette, uvicorn, prometheus-client); the
    # batcher alone does not, so it is imported only when asked for.
    if name in ("create_app", "serve", "load_batchers"):
        from . import app

        return getattr(app, name)
    if name == "Metrics":
        from .metrics import Metrics

        return Metrics
    raise AttributeError(f"module 'onnx2jax.serve' has no attribute {name!r}")
