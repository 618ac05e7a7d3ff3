"""Ray Serve: the same batchers and KServe v2 routes in each replica of a Ray Serve deployment."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnx2jax import InputError, Onnx2JaxError

from .config import BatchConfig

DEFAULT_BODY_LIMIT = 64 * 2**20  # app.py's; repeated so this module imports without starlette


@dataclass(frozen=True)
class RayPlan:
    """What :func:`deployment` hands Ray: checked in the driver, before Ray is touched.

    Attributes:
        models: name -> absolute path or serialized model bytes, loaded in every replica.
        config: the batching policy each replica's batchers follow.
        dims: sizes of non-batch symbolic dims, so warm-up compiles every bucket.
        body_limit: the largest request body a replica accepts, in bytes.
        options: the keyword arguments of ``ray.serve.deployment`` (``num_replicas``,
            ``max_ongoing_requests``, ...).
    """

    models: dict[str, str | bytes]
    config: BatchConfig
    dims: dict[str, int] = field(default_factory=dict)
    body_limit: int = DEFAULT_BODY_LIMIT
    options: dict[str, Any] = field(default_factory=dict)


def model_sources(models: Any) -> dict[str, str | bytes]:
    """``models`` as name -> source, the way ``onnx2jax serve`` names them.

    Accepts one path, a list of paths or ``NAME=PATH`` strings (a path's name is its file
    stem), or a mapping of names to paths or model bytes. Paths are made absolute (a replica's
    working directory need not be the driver's) and must exist here; on a cluster of several
    machines each path must exist on every machine, or pass the bytes instead.
    """
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    if isinstance(models, Mapping):
        items = [(str(n), src) for n, src in models.items()]
    elif isinstance(models, (list, tuple)):
        items = []
        for item in models:
            if not isinstance(item, (str, os.PathLike)):
                raise InputError(
                    f"model {item!r}: a list of models holds paths or NAME=PATH strings; "
                    "pass a dict to give bytes"
                )
            name, sep, path = os.fspath(item).partition("=")
            if not sep:
                path = os.fspath(item)
                name = os.path.splitext(os.path.basename(path))[0]
            items.append((name, path))
    else:
        raise InputError(
            f"models={models!r}: give a path, a list of paths / NAME=PATH strings, or a dict "
            "of names to paths or model bytes"
        )
    if not items:
        raise InputError("models is empty: give at least one model to serve")
    out: dict[str, str | bytes] = {}
    for name, src in items:
        if not name or name in out:
            raise InputError(f"model name {name!r} is empty or given twice; use NAME=PATH")
        if isinstance(src, (bytes, bytearray, memoryview)):
            out[name] = bytes(src)
        elif isinstance(src, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(src))
            if not os.path.isfile(path):
                raise InputError(f"model {name!r}: no such model file {os.fspath(src)!r}")
            out[name] = path
        else:
            # A loaded onnx2jax.Model is not shipped to the replicas: each loads its own.
            raise InputError(
                f"model {name!r}: got {type(src).__name__}; Ray replicas load each model "
                "themselves, so give its path or its serialized bytes"
            )
    return out


def plan(
    models: Any,
    *,
    num_replicas: int | str = 1,
    name: str = "onnx2jax",
    dims: Mapping[str, int] | None = None,
    body_limit: int = DEFAULT_BODY_LIMIT,
    ray_actor_options: Mapping[str, Any] | None = None,
    deployment_options: Mapping[str, Any] | None = None,
    **batcher_options: Any,
) -> RayPlan:
    """Check the arguments of :func:`deployment` and build what it hands Ray (no Ray needed).

    ``max_ongoing_requests`` (Ray's cap on requests in one replica at once, 5 by default)
    defaults to what the batcher itself admits: its queue plus the batches running
    (``max_queue_size + max_batch_size * replicas``), so batches fill and a full queue answers
    503 as it does in ``onnx2jax serve``, instead of requests waiting in Ray's router where no
    batch can form.
    """
    fields = {f.name for f in dataclasses.fields(BatchConfig)}
    unknown = sorted(set(batcher_options) - fields)
    if unknown:
        raise InputError(
            f"unknown option(s) {unknown}: the batcher takes {sorted(fields)}; Ray's own "
            "deployment options go in deployment_options={...}"
        )
    if "preferred_batch_sizes" in batcher_options:
        batcher_options["preferred_batch_sizes"] = tuple(batcher_options["preferred_batch_sizes"])
    config = BatchConfig(**batcher_options)
    if not (num_replicas == "auto" or isinstance(num_replicas, int) and num_replicas >= 1):
        raise InputError(f"num_replicas={num_replicas!r}: must be a whole number >= 1 or 'auto'")
    if not isinstance(body_limit, int) or body_limit < 1:
        raise InputError(f"body_limit={body_limit!r}: must be a whole number of bytes >= 1")
    dims = dict(dims or {})
    bad = {k: v for k, v in dims.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise InputError(f"dims {bad}: each symbolic dim's size must be a whole number >= 1")
    queue = config.max_queue_size or 1024  # unbounded queue: Ray's router holds the rest
    options: dict[str, Any] = {
        "name": name,
        "num_replicas": num_replicas,
        "max_ongoing_requests": queue + config.max_batch_size * config.replicas,
    }
    if ray_actor_options:
        options["ray_actor_options"] = dict(ray_actor_options)
    options.update(deployment_options or {})
    return RayPlan(model_sources(models), config, dims, body_limit, options)


class _Replica:
    """One Ray Serve replica: loads the models into batchers; the ASGI app of app.py (built
    by ``__serve_build_asgi_app__``) serves them, and its lifespan warms them up and drains
    them, as in ``onnx2jax serve``."""

    def __init__(self, plan: RayPlan):
        from .app import _cache_every_compile, load_batchers
        from .metrics import Metrics

        # Every bucket's program goes to JAX's persistent cache (ONNX2JAX_CACHE_DIR), so
        # replicas started after the first read them instead of compiling.
        _cache_every_compile()
        self._plan = plan
        self._metrics = Metrics(plan.config.max_batch_size)
        self._batchers = load_batchers(plan.models, plan.config, self._metrics, plan.dims)

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self._batchers, metrics=self._metrics, body_limit=self._plan.body_limit)

    def check_health(self) -> None:
        """Ray Serve's periodic health check: every batcher is warm and taking requests."""
        down = [n for n, b in self._batchers.items() if not b.ready]
        if down:
            raise RuntimeError(f"onnx2jax models not ready: {down}")


def _ray_serve():
    try:
        from ray import serve
    except ImportError as e:
        raise Onnx2JaxError(
            f"onnx2jax.serve.ray needs Ray Serve ({e}); install it with pip install 'onnx2jax[ray]'"
        ) from None
    return serve


def deployment(
    models: Any,
    *,
    num_replicas: int | str = 1,
    name: str = "onnx2jax",
    dims: Mapping[str, int] | None = None,
    body_limit: int = DEFAULT_BODY_LIMIT,
    ray_actor_options: Mapping[str, Any] | None = None,
    deployment_options: Mapping[str, Any] | None = None,
    **batcher_options: Any,
):
    """A Ray Serve application serving ``models`` with the KServe v2 / Open Inference Protocol.

    Each of the ``num_replicas`` replicas (Ray actors, on any machine of the Ray cluster) loads
    every model into its own :class:`~onnx2jax.serve.Batcher` and serves the same routes as
    ``onnx2jax serve`` (app.py's Starlette app is the deployment's ASGI ingress), so
    ``tritonclient`` talks to Ray's HTTP proxy as to one server. Run it with
    ``ray.serve.run(app)``.

    Args:
        models: a path, a list of paths or ``NAME=PATH`` strings, or a dict of names to paths
            or model bytes (see :func:`model_sources`).
        num_replicas: Ray Serve replicas (processes), or ``"auto"`` with an
            ``autoscaling_config`` in ``deployment_options``. Not ``BatchConfig.replicas``,
            which is worker threads within one replica.
        name: the deployment's name in Ray.
        dims: sizes of non-batch symbolic dims, to compile their buckets at warm-up.
        body_limit: the largest request body a replica accepts, in bytes (413 beyond).
        ray_actor_options: each replica's resources, e.g. ``{"num_cpus": 4}`` or
            ``{"num_gpus": 1}``.
        deployment_options: any other keyword of ``ray.serve.deployment`` (they win over the
            defaults here, ``max_ongoing_requests`` included).
        **batcher_options: :class:`~onnx2jax.serve.BatchConfig` fields (``max_batch_size``,
            ``max_queue_delay_ms``, ``max_queue_size``, ``default_timeout_ms``, ...).

    Returns:
        The bound ``ray.serve.Application``.

    Raises:
        InputError: a missing model file, an unknown option (before Ray is contacted).
        Onnx2JaxError: Ray Serve is not installed (the ``ray`` extra).
    """
    p = plan(
        models,
        num_replicas=num_replicas,
        name=name,
        dims=dims,
        body_limit=body_limit,
        ray_actor_options=ray_actor_options,
        deployment_options=deployment_options,
        **batcher_options,
    )
    serve = _ray_serve()
    return serve.deployment(**p.options)(serve.ingress()(_Replica)).bind(p)


def app_builder(args: Mapping[str, str]):
    """For Ray's CLI: ``serve run onnx2jax.serve.ray:app_builder models=a.onnx,b=b.onnx
    num_replicas=2 max_batch_size=16``. Each argument is a string: ``models`` a comma-separated
    list of paths or NAME=PATH, ``dims`` NAME=SIZE pairs, every other one a keyword of
    :func:`deployment`, converted to its type."""
    return deployment(**builder_kwargs(args))


def builder_kwargs(args: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of :func:`deployment` from ``serve run``'s string arguments."""
    args = dict(args)
    if "models" not in args:
        raise InputError("give models=PATH[,NAME=PATH...] (comma-separated)")
    kw: dict[str, Any] = {"models": [m for m in args.pop("models").split(",") if m]}
    if "dims" in args:
        dims = {}
        for item in args.pop("dims").split(","):
            k, sep, v = item.partition("=")
            if not sep or not v.isdigit():
                raise InputError(f"dims: {item!r} is not NAME=SIZE")
            dims[k] = int(v)
        kw["dims"] = dims
    defaults = {f.name: f.default for f in dataclasses.fields(BatchConfig)}
    defaults.update(body_limit=DEFAULT_BODY_LIMIT, name="")
    for key, text in args.items():
        if key == "num_replicas":
            kw[key] = text if text == "auto" else _number(key, text, int)
        elif key == "preferred_batch_sizes":
            kw[key] = tuple(_number(key, t, int) for t in text.split(",") if t)
        elif key not in defaults:
            raise InputError(
                f"unknown argument {key!r}: give models, dims, num_replicas or one of "
                f"{sorted(defaults)}"
            )
        elif isinstance(defaults[key], str):
            kw[key] = text
        else:
            kw[key] = _number(key, text, type(defaults[key]))
    return kw


def _number(key: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise InputError(f"{key}={text!r}: expected {kind.__name__}") from None
