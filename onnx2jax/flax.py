"""Flax wrappers of an imported model: an NNX module (``OnnxModule``) and a linen one (``OnnxLinen``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import linen, nnx

import onnx2jax


class OnnxBuffer(nnx.Variable):
    """A non-float weight of an imported model: state that ``nnx.grad`` and optimizers skip."""


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

    Float initializers become ``nnx.Param`` (keyed by their ONNX names in ``self.params``),
    other weights ``OnnxBuffer`` (non-trainable); the graph is static. The module works under
    ``nnx.jit``, ``nnx.grad`` and as a submodule of a larger NNX model (an imported backbone with
    a new head). Integer initializers that are shapes or indices stay constants of the graph.

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
        model = _as_model(model_or_path, load_kwargs)
        names = sorted(model.params)
        # The treedef holds the static program; params are its leaves (sorted by name).
        self._names = tuple(names)
        self._treedef = jax.tree_util.tree_structure(model)
        self.params = nnx.Dict(
            {k: nnx.Param(v) if _trainable(v) else OnnxBuffer(v) for k, v in model.params.items()}
        )

    @property
    def model(self) -> onnx2jax.Model:
        """The wrapped ``onnx2jax.Model``, holding this module's current weights."""
        leaves = [self.params[k][...] for k in self._names]
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

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
        # Non-float weights (none today: the loader keeps them as graph constants) stay as loaded.
        rest = {k: v for k, v in self.model.params.items() if k not in params}
        return self.model.apply({**rest, **params}, *inputs, **named)
