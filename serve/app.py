"""The Open Inference Protocol (KServe v2) over HTTP on Starlette: a thin translation onto the
batchers, plus ``/metrics``; ``serve()`` runs it under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import onnx2jax
from onnx2jax import InputError, Onnx2JaxError

from . import protocol
from .batcher import Batcher, QueueFullError, RequestTimeoutError, ShuttingDownError
from .config import BatchConfig
from .metrics import Metrics

VERSION = "1"  # each model is served as its one version
DEFAULT_BODY_LIMIT = 64 * 2**20


def _instance_kind() -> str:
    import jax

    return "KIND_CPU" if jax.default_backend() == "cpu" else "KIND_GPU"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Server:
    """The state behind the routes: the batchers by name, the metrics, the body limit."""

    def __init__(self, batchers: Mapping[str, Batcher], metrics: Metrics, body_limit: int):
        self.batchers = dict(batchers)
        self.metrics = metrics
        self.body_limit = body_limit

    def model(self, request: Request) -> Batcher:
        name = request.path_params["name"]
        b = self.batchers.get(name)
        if b is None:
            raise _HTTPError(
                404, f"unknown model {name!r}; this server has {sorted(self.batchers)}"
            )
        version = request.path_params.get("version")
        if version is not None and version != VERSION:
            raise _HTTPError(
                404, f"model {name!r} has no version {version!r}; its one version is {VERSION!r}"
            )
        return b

    # -- health and metadata ------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        ok = bool(self.batchers) and all(b.ready for b in self.batchers.values())
        return Response(status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {
                "name": "onnx2jax",
                "version": onnx2jax.__version__,
                "extensions": ["binary_tensor_data", "model_configuration", "statistics"],
            }
        )

    async def model_metadata(self, request: Request) -> Response:
        b = self.model(request)

        def tensors(specs, output):
            return [
                {
                    "name": s.name,
                    "datatype": protocol.datatype(s.dtype),
                    "shape": b.metadata_shape(s, output),
                }
                for s in specs
            ]

        return JSONResponse(
            {
                "name": b.name,
                "versions": [VERSION],
                "platform": "onnx2jax",
                "inputs": tensors(b.model.inputs, False),
                "outputs": tensors(b.model.outputs, True),
            }
        )

    async def model_ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.model(request).ready else 503)

    async def model_config(self, request: Request) -> Response:
        """Triton's model configuration (``tritonclient``'s ``get_model_config``)."""
        b = self.model(request)
        c = b.config

        def tensors(specs, output):
            out = []
            for s in specs:
                dims = b.metadata_shape(s, output)
                out.append(
                    {
                        "name": s.name,
                        # Triton's config calls the protocol's BYTES TYPE_STRING
                        "data_type": "TYPE_"
                        + protocol.datatype(s.dtype).replace("BYTES", "STRING"),
                        "dims": dims[1:] if b.batched else dims,
                    }
                )
            return out

        doc: dict[str, Any] = {
            "name": b.name,
            "platform": "onnx2jax",
            "max_batch_size": b.max_batch_size,
            "input": tensors(b.model.inputs, False),
            "output": tensors(b.model.outputs, True),
            "instance_group": [{"count": c.replicas, "kind": _instance_kind()}],
        }
        if b.batched:
            doc["dynamic_batching"] = {
                "preferred_batch_size": list(b.buckets),
                "max_queue_delay_microseconds": int(c.max_queue_delay_ms * 1000),
                "default_queue_policy": {
                    "timeout_action": "REJECT",
                    "default_timeout_microseconds": int(c.default_timeout_ms * 1000),
                    "max_queue_size": c.max_queue_size,
                },
            }
        return JSONResponse(doc)

    async def metrics_text(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- inference ----------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        b = self.model(request)
        self.metrics.request(b.name)
        try:
            body = await self._body(request)
            req = protocol.parse_infer(body, request.headers.get("inference-header-content-length"))
            wanted = self._wanted(b, req)
            outs = await self._until_disconnect(
                request, b.infer(req.inputs, timeout_ms=req.timeout_ms)
            )
        except _HTTPError as e:
            self.metrics.failure(b.name, e.reason)
            raise
        except protocol.BodyTooLarge as e:
            self.metrics.failure(b.name, "too_large")
            return _error(413, str(e))
        except InputError as e:
            self.metrics.failure(b.name, "bad_request")
            return _error(400, str(e))
        except (QueueFullError, ShuttingDownError) as e:
            self.metrics.failure(b.name, "unavailable")
            return _error(503, str(e))
        except RequestTimeoutError as e:
            self.metrics.failure(b.name, "timeout")
            return _error(504, str(e))
        except Onnx2JaxError as e:
            self.metrics.failure(b.name, "model_error")
            return _error(500, str(e))
        tensors = [(n, outs[n], binary) for n, binary in wanted]
        data, header = protocol.encode_infer(b.name, VERSION, tensors, req.id)
        headers = {"Inference-Header-Content-Length": str(header)} if header is not None else None
        media = "application/json" if header is None else "application/octet-stream"
        return Response(data, headers=headers, media_type=media)

    async def _body(self, request: Request) -> bytes:
        """The body, refused past the limit before it is all read (and after inflating)."""
        limit = self.body_limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise protocol.BodyTooLarge(
                f"the request body has {declared} bytes, over this server's limit of {limit}"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise protocol.BodyTooLarge(
                    f"the request body is over this server's limit of {limit} bytes"
                )
            chunks.append(chunk)
        body = b"".join(chunks)
        return protocol.decompress(body, request.headers.get("content-encoding"), limit)

    @staticmethod
    def _wanted(b: Batcher, req: protocol.InferRequest) -> list[tuple[str, bool]]:
        names = b.model.output_names
        if req.outputs is None:
            return [(n, req.binary_default) for n in names]
        unknown = [n for n, _ in req.outputs if n not in names]
        if unknown:
            raise InputError(
                f"model {b.name!r} has no output(s) {unknown}; its outputs are {names}"
            )
        return req.outputs

    @staticmethod
    async def _until_disconnect(request: Request, work) -> Any:
        """Await ``work``; if the client disconnects first, cancel it (the batcher then drops
        the request from its queue) instead of computing for no one.

        One watcher task per request, which cancels this one when the client goes: cheaper
        than running ``work`` as a task of its own and waiting on both.
        """
        task = asyncio.current_task()
        state = {"finished": False, "gone": False}

        def on_gone(f: asyncio.Future) -> None:
            if not f.cancelled() and not state["finished"] and task is not None:
                state["gone"] = True
                task.cancel()

        gone = asyncio.ensure_future(_disconnected(request))
        gone.add_done_callback(on_gone)
        try:
            return await work
        except asyncio.CancelledError:
            if not state["gone"]:
                raise  # the server is cancelling us (shutdown): not the client's doing
            if hasattr(task, "uncancel"):  # 3.11+: the cancel is handled, not pending
                task.uncancel()
            raise _HTTPError(499, "the client disconnected", "disconnected") from None
        finally:
            state["finished"] = True
            gone.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body was read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, reason: str = "not_found"):
        super().__init__(message)
        self.status, self.reason = status, reason


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _HTTPError)
    return _error(exc.status, str(exc))


def create_app(
    batchers: Mapping[str, Batcher],
    *,
    metrics: Metrics | None = None,
    body_limit: int = DEFAULT_BODY_LIMIT,
    on_ready: Callable[[], None] | None = None,
) -> Starlette:
    """The ASGI app serving ``batchers`` by name.

    Its lifespan warms every batcher up (compiles each bucket) before the app takes requests
    and, at shutdown, lets each finish what is queued.

    Args:
        batchers: the models to serve, by the name requests address them with. Pass each
            batcher the same ``metrics`` as its observer to have its queue and batches counted.
        metrics: the Prometheus metrics (a fresh ``Metrics`` when None).
        body_limit: the largest request body accepted, in bytes (413 beyond it).
        on_ready: called once every model is warm.
    """
    metrics = metrics or Metrics()
    s = _Server(batchers, metrics, body_limit)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for b in s.batchers.values():
            await b.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await asyncio.gather(*(b.stop() for b in s.batchers.values()))

    m = "/v2/models/{name}"
    v = "/v2/models/{name}/versions/{version}"
    # The router tries routes in order, one regex each: the infer routes, the hot path, first.
    routes = [Route(base + "/infer", s.infer, methods=["POST"]) for base in (m, v)]
    routes += [
        Route("/v2/health/live", s.live),
        Route("/v2/health/ready", s.ready),
        Route("/v2", s.server_metadata),
        Route("/metrics", s.metrics_text),
    ]
    for base in (m, v):
        routes += [
            Route(base, s.model_metadata),
            Route(base + "/ready", s.model_ready),
            Route(base + "/config", s.model_config),
        ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={_HTTPError: _http_error})


def load_batchers(
    models: Mapping[str, Any],
    config: BatchConfig,
    metrics: Metrics,
    dims: Mapping[str, int] | None = None,
) -> dict[str, Batcher]:
    """Load each model (a path, bytes or ``onnx2jax.Model``) into a batcher reporting to
    ``metrics``."""
    out = {}
    for name, src in models.items():
        model = src if isinstance(src, onnx2jax.Model) else onnx2jax.load(src)
        out[name] = Batcher(model, name, config, dims=dims, observer=metrics)
    return out


def _cache_every_compile() -> None:
    """Let JAX's persistent compilation cache (on by default in onnx2jax) keep every bucket's
    program, not only those that took over a second (JAX's default threshold): a second
    replica, or a restart, then starts warm (ResNet-18's buckets 1-8 on a busy 2-core machine:
    compiled in 6.2 s cold, read in 0.5 s from 200 KB of cache; on a fast machine each compile
    is under JAX's 1 s, so none would be kept). The user's own setting wins."""
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        import jax

        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def serve(
    models: Mapping[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: BatchConfig | None = None,
    dims: Mapping[str, int] | None = None,
    body_limit: int = DEFAULT_BODY_LIMIT,
    log_level: str = "warning",
    processes: int = 1,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve ``models`` (name -> path or Model) until SIGTERM/SIGINT, then drain and return.

    Binds ``host:port`` (loopback by default; port 0 picks a free one) before warming up, and
    prints one line, ``onnx2jax serve: ready on http://HOST:PORT (models: ...)``, once every
    model is compiled and requests are taken.

    Args:
        processes: run this many server processes on the one port (``SO_REUSEPORT``, the
            kernel spreads connections), each with its own batchers; models must be paths.
        reuse_port: bind with ``SO_REUSEPORT`` (what each of those processes does).
        on_ready: called when ready, instead of printing the line.
    """
    config = config or BatchConfig()
    if processes > 1:
        from .processes import serve_processes

        kw = dict(host=host, port=port, config=config, dims=dims, body_limit=body_limit)
        return serve_processes(models, processes, log_level=log_level, **kw)
    import uvicorn

    _cache_every_compile()
    metrics = Metrics(config.max_batch_size)
    batchers = load_batchers(models, config, metrics, dims)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections made once "ready" is printed wait in the backlog
    bound = sock.getsockname()[1]

    def ready() -> None:
        if on_ready is not None:
            on_ready()
            return
        names = ", ".join(batchers)
        print(f"onnx2jax serve: ready on http://{host}:{bound} (models: {names})", flush=True)

    app = create_app(batchers, metrics=metrics, body_limit=body_limit, on_ready=ready)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=30)
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        sys.exit(1)  # the lifespan failed (e.g. a compile error): uvicorn logged why
