"""Flax wrappers of an imported model: an NNX module (``OnnxModule``) and a linen one (``OnnxLinen``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import linen, nnx

import onnx2jax


class OnnxBuffer(nnx.Variable):
    """A non-float weight of an imported model: state that ``nnx.grad`` and optimizers skip."""


def _without_buffers(model: onnx2jax.Model) -> tuple[onnx2jax.Model, dict[str, Any]]:
    """The model with its integer buffers (quantized weights) moved from the program into
    params, so they can be module state; and those buffers.

    The program's buffers are device arrays it passes into every jit; a program without them
    reads the same names from ``params`` instead (``apply`` and ``model(...)`` look params up
    after buffers), so the module's state is what runs, and it is not held twice.
    """
    program = model._program  # no public field for buffers yet
    buffers = dict(program.buffers)
    if not buffers:
        return model, {}
    # New jits: the program's cached ones close over the program that holds the buffers.
    bare = dataclasses.replace(
        program,
        buffers={},
        jits=type(program.jits)(main_options=dict(program.jits.main_options)),
    )
    return onnx2jax.Model(bare, {**model.params, **buffers}), buffers


class _Last:
    """The last ``onnx2jax.Model`` an ``OnnxModule`` ran, keyed by its weights' identities, so
    calls with unchanged weights reuse its prepared (param-only) values. Static for NNX."""

    __slots__ = ("key", "model")

    def __init__(self):
        self.key: tuple[int, ...] | None = None
        self.model: onnx2jax.Model | None = None


def _as_model(model_or_path: Any, load_kwargs: dict[str, Any]) -> onnx2jax.Model:
    if isinstance(model_or_path, onnx2jax.Model):
        if load_kwargs:
            raise onnx2jax.InputError(
                f"OnnxModule: load options {sorted(load_kwargs)} apply to a path, but an already "
                "loaded onnx2jax.Model was given; pass them to onnx2jax.load instead"
            )
        return model_or_path
    return onnx2jax.load(model_or_path, **load_kwargs)


def _trainable(value: Any) -> bool:
    return np.dtype(value.dtype).kind == "f" or np.dtype(value.dtype).name == "bfloat16"


class OnnxModule(nnx.Module):
    """An imported ONNX model as an NNX module.

    Float initializers become ``nnx.Param`` (keyed by their ONNX names in ``self.params``);
    large integer initializers (quantized weights) become ``OnnxBuffer`` variables in
    ``self.buffers``, non-trainable module state that ``nnx.state`` / ``nnx.split`` see and
    the graph reads (replace one and the outputs follow). The graph is static. The module works
    under ``nnx.jit``, ``nnx.grad`` and as a submodule of a larger NNX model (an imported
    backbone with a new head). Integer initializers that are shapes or indices stay constants
    of the graph.

    Example:
        >>> backbone = OnnxModule("resnet.onnx")
        >>> (logits,) = backbone(images)          # a tuple of outputs, in graph order
        >>> trainable = nnx.All(nnx.Param, backbone.param_filter(r"^fc\\."))

    Args:
        model_or_path: an ``onnx2jax.Model``, or anything ``onnx2jax.load`` takes.
        **load_kwargs: options for ``onnx2jax.load`` (``passes``, ``precision``, ...) when a
            path, bytes or proto is given.
    """

    def __init__(self, model_or_path: Any, **load_kwargs: Any):
        model, buffers = _without_buffers(_as_model(model_or_path, load_kwargs))
        # The treedef holds the static program; params and buffers are its leaves (by name).
        self._names = tuple(sorted(model.params))
        self._treedef = jax.tree_util.tree_structure(model)
        self.params = nnx.Dict(
            {
                k: nnx.Param(v) if _trainable(v) else OnnxBuffer(v)
                for k, v in model.params.items()
                if k not in buffers
            }
        )
        self.buffers = nnx.Dict({k: OnnxBuffer(v) for k, v in buffers.items()})
        self._last = _Last()

    @property
    def model(self) -> onnx2jax.Model:
        """The wrapped ``onnx2jax.Model``, holding this module's current weights (its params
        include the buffers)."""
        leaves = [
            (self.buffers[k] if k in self.buffers else self.params[k])[...] for k in self._names
        ]
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            return jax.tree_util.tree_unflatten(self._treedef, leaves)
        # Outside a transformation: the same Model while the weights are the same arrays, so
        # model(...) computes the param-only steps once (it caches them per params object).
        # The cached model holds the arrays, so their ids cannot be reused meanwhile.
        key = tuple(id(x) for x in leaves)
        if self._last.key != key:
            self._last.model = jax.tree_util.tree_unflatten(self._treedef, leaves)
            self._last.key = key
        return self._last.model

    @property
    def input_names(self) -> list[str]:
        return self.model.input_names

    @property
    def output_names(self) -> list[str]:
        return self.model.output_names

    def __call__(self, *inputs: Any, **named: Any) -> tuple[Any, ...]:
        """Run the graph on ``inputs`` (positional in graph order, or by name); a tuple of outputs.

        Outside a transformation this is the model's own cached ``jax.jit``; under ``nnx.jit``
        or ``nnx.grad`` the graph is traced into the caller's program.
        """
        return self.model(*inputs, **named)

    def param_filter(self, pattern: str) -> Callable[..., bool]:
        """An NNX filter matching this module's params whose ONNX name matches ``pattern``.

        ``re.search`` semantics. Use it to pick what trains, e.g.
        ``nnx.Optimizer(model, tx, wrt=nnx.All(nnx.Param, module.param_filter("^head")))``,
        or ``nnx.Not(...)`` of it to freeze those params.
        """
        rx = re.compile(pattern)

        def matches(path: tuple[Any, ...], value: Any) -> bool:
            return any(isinstance(p, str) and rx.search(p) for p in path)

        return matches


class OnnxLinen(linen.Module):
    """An imported ONNX model as a linen module: params are initialised to the ONNX weights.

    ``variables = OnnxLinen(model).init(rng, *inputs)`` gives ``{"params": {onnx name: array}}``
    (float weights); ``apply(variables, *inputs)`` returns the outputs as a tuple.
    """

    model: onnx2jax.Model

    @linen.compact
    def __call__(self, *inputs: Any, **named: Any) -> tuple[Any, ...]:
        params = {
            k: self.param(k, lambda _rng, v=v: v)
            for k, v in self.model.params.items()
            if _trainable(v)
        }
        # Non-float params (none today) stay as loaded; integer buffers (quantized weights)
        # stay in the program here (OnnxModule makes them module state).
        rest = {k: v for k, v in self.model.params.items() if k not in params}
        return self.model.apply({**rest, **params}, *inputs, **named)
