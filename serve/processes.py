"""Several server processes on one port (``onnx2jax serve --processes N``), balanced by the
kernel through ``SO_REUSEPORT``: past one event loop's worth of requests per second."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from typing import Any

from onnx2jax import Onnx2JaxError

from .config import BatchConfig


def serve_processes(
    models: Mapping[str, Any],
    processes: int,
    *,
    host: str,
    port: int,
    config: BatchConfig,
    dims: Mapping[str, int] | None,
    body_limit: int,
    log_level: str,
) -> None:
    """Run ``processes`` servers of ``models`` on ``host:port`` until SIGTERM/SIGINT.

    Each is a fresh (spawned, not forked: JAX is not fork-safe) process with its own batchers,
    listening on the same port with ``SO_REUSEPORT``, so the kernel spreads connections over
    them. Prints one ready line once all are warm; on SIGTERM/SIGINT each drains its queue,
    as one server does. If one exits, the others are stopped and this exits with status 1.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise Onnx2JaxError("--processes needs SO_REUSEPORT (Linux, macOS, BSD); run one")
    bad = [n for n, p in models.items() if not isinstance(p, (str, os.PathLike))]
    if bad:
        raise Onnx2JaxError(f"processes > 1 loads each model in each process: give paths for {bad}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Holds the port (bound, never listening: it gets no connections) so that port 0 gives
    # one port every process then joins.
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    port = holder.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in range(processes)]
    args = (dict(models), host, port, config, dict(dims or {}), body_limit, log_level)
    procs = [
        ctx.Process(target=_child, args=(*args, ev), name=f"onnx2jax-serve-{i}")
        for i, ev in enumerate(ready)
    ]
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        while not all(ev.is_set() for ev in ready):
            if stop.wait(0.05) or any(not p.is_alive() for p in procs):
                break
        else:
            names = ", ".join(models)
            print(
                f"onnx2jax serve: ready on http://{host}:{port} (models: {names}; "
                f"{processes} processes)",
                flush=True,
            )
        while not stop.is_set() and all(p.is_alive() for p in procs):
            stop.wait(0.2)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: it stops accepting, drains its queue and exits
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
                p.join()
        holder.close()
        for s, h in previous.items():
            signal.signal(s, h)
    if not stop.is_set():
        sys.exit(1)  # a process exited on its own (it printed why)


def _child(models, host, port, config, dims, body_limit, log_level, ready) -> None:
    from .app import serve

    serve(
        models,
        host=host,
        port=port,
        config=config,
        dims=dims,
        body_limit=body_limit,
        log_level=log_level,
        reuse_port=True,
        on_ready=ready.set,
    )
