"""``shard``: place an imported model's params over a device mesh by regex rules on their ONNX names."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

import onnx2jax
from onnx2jax._api import Jits

Rules = Mapping[str, Any] | Sequence[tuple[str, Any]]


def _rules(rules: Rules | None) -> list[tuple[re.Pattern, PartitionSpec]]:
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules or ())
    out = []
    for pattern, spec in items:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise onnx2jax.InputError(f"shard rule {pattern!r} is not a valid regex: {e}") from None
        if not isinstance(spec, PartitionSpec):
            spec = PartitionSpec(*spec) if isinstance(spec, (tuple, list)) else PartitionSpec(spec)
        out.append((rx, spec))
    return out


def _spec_for(name: str, value: Any, rules, mesh: Mesh) -> PartitionSpec:
    """The first rule whose regex ``re.search``-es ``name``; replicated when none does."""
    for rx, spec in rules:
        if not rx.search(name):
            continue
        if len(spec) > value.ndim:
            raise onnx2jax.InputError(
                f"shard rule {rx.pattern!r} gives {spec} to param {name!r} of shape "
                f"{list(value.shape)}: more axes than the param has"
            )
        for axis, names in enumerate(spec):
            if names is None:
                continue
            size = 1
            for n in (names,) if isinstance(names, str) else names:
                if n not in mesh.shape:
                    raise onnx2jax.InputError(
                        f"shard rule {rx.pattern!r} names mesh axis {n!r}; the mesh has "
                        f"{list(mesh.shape)}"
                    )
                size *= mesh.shape[n]
            if value.shape[axis] % size:
                raise onnx2jax.InputError(
                    f"shard rule {rx.pattern!r}: axis {axis} of param {name!r} (size "
                    f"{value.shape[axis]}) does not divide over {size} devices ({names!r})"
                )
        return spec
    return PartitionSpec()


def _name(path: tuple) -> str:
    key = path[-1]
    return str(getattr(key, "key", key))


@jax.tree_util.register_pytree_node_class
class ShardedModel:
    """An ``onnx2jax.Model`` whose params are placed over ``mesh``; a pytree like the Model.

    ``sharded(*inputs)`` places each input's first axis over the mesh's first axis (inputs whose
    first axis does not divide are replicated) and runs the model's jitted program, which XLA
    partitions following the shardings. ``jax.jit(sharded.apply)(sharded.params, ...)`` works
    the same with inputs you place yourself (:meth:`shard_inputs`).
    """

    def __init__(self, model: onnx2jax.Model, mesh: Mesh):
        self.model = model
        self.mesh = mesh

    def tree_flatten(self):
        return (self.model,), self.mesh

    @classmethod
    def tree_unflatten(cls, mesh, children):
        return cls(children[0], mesh)

    @property
    def params(self) -> dict[str, jax.Array]:
        return self.model.params

    @property
    def inputs(self):
        return self.model.inputs

    @property
    def outputs(self):
        return self.model.outputs

    @property
    def input_names(self) -> list[str]:
        return self.model.input_names

    @property
    def output_names(self) -> list[str]:
        return self.model.output_names

    def apply(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """``model.apply``: pure; the shardings of ``params`` and inputs decide the partitioning."""
        return self.model.apply(params, *args, **kwargs)

    def shard_inputs(self, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        """Inputs placed with their first (batch) axis over the mesh's first axis."""
        axis = self.mesh.axis_names[0]
        n = self.mesh.shape[axis]

        def place(x: Any) -> Any:
            if isinstance(x, jax.core.Tracer) or not hasattr(x, "shape"):
                return x
            spec = PartitionSpec(axis) if x.ndim and x.shape[0] % n == 0 else PartitionSpec()
            return jax.device_put(x, NamedSharding(self.mesh, spec))

        return tuple(place(a) for a in args), {k: place(v) for k, v in kwargs.items()}

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        args, kwargs = self.shard_inputs(*args, **kwargs)
        return self.model(*args, **kwargs)

    def __repr__(self) -> str:
        return f"onnx2jax.ShardedModel({self.model!r}, mesh={dict(self.mesh.shape)})"


def shard(model: onnx2jax.Model, mesh: Mesh, rules: Rules | None = None) -> ShardedModel:
    """Place ``model``'s params over ``mesh`` with ``NamedSharding``, chosen by name.

    Args:
        model: an ``onnx2jax.Model``.
        mesh: a ``jax.sharding.Mesh``; its first axis is the data (batch) axis for inputs.
            Its axes are used as ``AxisType.Auto`` (XLA propagates the shardings through
            the graph), whatever types the mesh was made with.
        rules: ``{regex: PartitionSpec}`` (or a list of pairs), tried in order against each
            param's ONNX name with ``re.search``; the first match wins, and a param no rule
            matches is replicated. A spec may be a ``PartitionSpec`` or a tuple such as
            ``(None, "model")``. Example, Megatron-style tensor parallelism::

                {r"(query|key|value|fc_in)\\.weight$": (None, "model"),
                 r"(query|key|value|fc_in)\\.bias$": ("model",),
                 r"(attention\\.output|fc_out)\\.weight$": ("model", None)}

    Returns:
        A :class:`ShardedModel` (call it like the model).

    Raises:
        InputError: a rule that is not a regex, names an axis the mesh lacks, has more axes
            than the param, or splits an axis that does not divide over the devices.
    """
    if not isinstance(mesh, Mesh):
        raise onnx2jax.InputError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    # The ops carry no sharding annotations, so axes must be Auto (XLA propagates shardings);
    # an Explicit mesh (jax.make_mesh's default in recent JAX) would make e.g. Gather on
    # batch-sharded indices an error. Same devices and names.
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    compiled = _rules(rules)

    def place(path, value):
        name = _name(path)
        return jax.device_put(value, NamedSharding(mesh, _spec_for(name, value, compiled, mesh)))

    # A model of its own (its own jit cache) that traces without onnx2jax's CPU kernels: XLA
    # cannot partition their custom calls and would gather every packed weight to each device.
    program = dataclasses.replace(model._program, kernels=False, jits=Jits())
    model = onnx2jax.Model(program, model.params)
    return ShardedModel(jax.tree_util.tree_map_with_path(place, model), mesh)
