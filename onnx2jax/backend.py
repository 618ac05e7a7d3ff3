"""``onnx.backend.base.Backend`` for onnx2jax, so the ONNX conformance suite can run through it.

Every model is loaded with ``onnx2jax.load(model, x64=True)``: the ONNX suite expects int64 and
float64 results to be exact and of those dtypes, while onnx2jax's default (``x64=False``)
computes them as int32/float32 like JAX does. Pass ``x64=False`` to :meth:`Backend.prepare` to
test the default user setting instead.

:meth:`BackendRep.run` executes through ``Model.__call__``, the cached ``jax.jit`` of the whole
graph, which is exactly the path users get; nothing here evaluates nodes one by one. (Graphs with
string outputs cannot leave XLA, so ``Model.__call__`` runs those eagerly;
:attr:`OnnxJaxBackendRep.jitted` tells which path a prepared model took.)

Outputs come back as numpy arrays with the dtypes the graph computed (under ``x64=True`` these
are the ONNX dtypes; they are deliberately *not* cast to the declared output types, so that an
op returning the wrong dtype fails conformance instead of being hidden). Sequence outputs are
lists of arrays; an empty optional output is ``None``.

Example::

    import onnx2jax.backend as backend

    rep = backend.prepare(model_proto)
    (y,) = rep.run([x])          # or rep.run({"x": x}); rep.run(x) for a one-input model
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import onnx
import onnx.helper as oh
from onnx.backend.base import Backend, BackendRep, namedtupledict

from . import _api
from ._dtypes import to_onnx_dtype
from ._errors import InputError
from ._values import concrete  # outputs to numpy: arrays, sequences as lists, None

_PLATFORMS = {"CPU": "cpu", "CUDA": "gpu", "GPU": "gpu", "ROCM": "gpu", "TPU": "tpu"}


def _device(device: str) -> jax.Device | None:
    """The JAX device for an ONNX device string (``'CPU'``, ``'CUDA:1'``, ``'TPU'``), or None."""
    kind, _, index = str(device).upper().partition(":")
    platform = _PLATFORMS.get(kind)
    if platform is None:
        return None
    try:
        devices = jax.devices(platform)
    except RuntimeError:  # no backend of that platform
        return None
    i = int(index) if index else 0
    return devices[i] if 0 <= i < len(devices) else None


def _as_input(value: Any) -> Any:
    """Normalize one input: TensorProto -> numpy, numpy scalar -> 0-d array, sequences kept."""
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, (list, tuple)):
        return [_as_input(v) for v in value]
    return value


class OnnxJaxBackendRep(BackendRep):
    """A prepared model: :meth:`run` calls the whole-graph ``jax.jit`` of :class:`onnx2jax.Model`."""

    def __init__(self, model: _api.Model, device: jax.Device | None = None):
        self.model = model
        self.device = device
        self._result_type = namedtupledict("Outputs", model.output_names)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run the model.

        Args:
            inputs: a list/tuple in graph-input order, a dict keyed by input name, or a single
                array for a one-input model.

        Returns:
            A tuple (indexable by output name too) of numpy arrays; lists for sequence outputs,
            ``None`` for an empty optional output.
        """
        if isinstance(inputs, Mapping):
            args, named = (), {k: _as_input(v) for k, v in inputs.items()}
        elif isinstance(inputs, (list, tuple)):
            args, named = tuple(_as_input(v) for v in inputs), {}
        else:
            args, named = (_as_input(inputs),), {}
        if self.device is None:
            outs = self.model(*args, **named)
        else:
            with jax.default_device(self.device):
                outs = self.model(*args, **named)
        return self._result_type(*(concrete(o) for o in outs))

    @property
    def jitted(self) -> bool:
        """True once :meth:`run` has gone through the whole-graph ``jax.jit``.

        Stays False for graphs that ``Model.__call__`` runs eagerly (string outputs).
        """
        prog = self.model._program
        ran_jit = prog.jits.main is not None or prog.jits.stages is not None
        return ran_jit and not prog.string_outputs


class OnnxJaxBackend(Backend):
    """The ONNX backend API over onnx2jax; see the module docstring."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(
        cls, model: Any, device: str = "CPU", x64: bool = True, **kwargs: Any
    ) -> OnnxJaxBackendRep:
        """Load ``model`` (ModelProto, bytes or path) with ``onnx2jax.load(model, x64=x64)``.

        Other keyword arguments (the ONNX runner passes per-test ones such as ``rtol``) are
        accepted and ignored.
        """
        if not cls.supports_device(device):
            raise ValueError(
                f"device {device!r} is not available to JAX here; "
                f"JAX sees {[str(d) for d in jax.devices()]}"
            )
        dev = _device(device)
        if dev == jax.devices()[0]:
            dev = None  # JAX's default device: run exactly as a user's ``model(x)`` would
        if dev is None:
            return OnnxJaxBackendRep(_api.load(model, x64=x64))
        with jax.default_device(dev):  # params are placed when loaded
            return OnnxJaxBackendRep(_api.load(model, x64=x64), dev)

    @classmethod
    def run_model(
        cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any
    ) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Any,
        device: str = "CPU",
        outputs_info: Sequence[tuple[Any, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Run a single node on ``inputs`` by wrapping it in a one-node model.

        Args:
            node: the NodeProto.
            inputs: a dict keyed by the node's input names, or a list matching either all of
                ``node.input`` (``None`` where an optional input is absent, i.e. named ``""``)
                or only its non-empty names.
            outputs_info: optional ``(dtype, shape)`` per output, used as declared output types.
            kwargs: ``opset_version`` (default: the newest onnx knows); ``x64``; others ignored.
        """
        model = node_model(
            node, inputs, outputs_info, opset_version=kwargs.pop("opset_version", None)
        )
        rep = cls.prepare(model, device, **kwargs)
        feeds = {n: v for n, v in _node_feeds(node, inputs).items() if v is not None}
        return rep.run(feeds)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """CPU always; CUDA/GPU/ROCM/TPU (optionally ``:index``) when JAX has such a device."""
        kind = str(device).upper().partition(":")[0]
        if kind == "CPU":
            return True
        return _device(device) is not None


def _node_feeds(node: onnx.NodeProto, inputs: Any) -> dict[str, Any]:
    names = list(node.input)
    if isinstance(inputs, Mapping):
        unknown = [k for k in inputs if k not in names]
        if unknown:
            raise InputError(f"run_node: {unknown} are not inputs of the node; it reads {names}")
        return {k: _as_input(v) for k, v in inputs.items()}
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    present = [n for n in names if n]
    if len(inputs) == len(names):
        pairs = zip(names, inputs, strict=True)
    elif len(inputs) == len(present):
        pairs = zip(present, inputs, strict=True)
    else:
        raise InputError(f"run_node: got {len(inputs)} inputs, but the node reads {names}")
    return {n: _as_input(v) for n, v in pairs if n}


def _type_of(value: Any) -> onnx.TypeProto:
    if isinstance(value, list):
        elem = (
            _type_of(value[0]) if value else oh.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)
        )
        return oh.make_sequence_type_proto(elem)
    arr = np.asarray(value)
    return oh.make_tensor_type_proto(to_onnx_dtype(arr.dtype), arr.shape)


def node_model(
    node: onnx.NodeProto,
    inputs: Any,
    outputs_info: Sequence[tuple[Any, tuple[int, ...]]] | None = None,
    opset_version: int | None = None,
) -> onnx.ModelProto:
    """A one-node model around ``node``; input types are inferred from the given values."""
    feeds = _node_feeds(node, inputs)
    graph_inputs = [oh.make_value_info(n, _type_of(v)) for n, v in feeds.items() if v is not None]
    graph_outputs = []
    for i, name in enumerate(o for o in node.output if o):
        if outputs_info is not None and i < len(outputs_info):
            dtype, shape = outputs_info[i]
            graph_outputs.append(
                oh.make_tensor_value_info(name, to_onnx_dtype(np.dtype(dtype)), shape)
            )
        else:
            graph_outputs.append(oh.make_value_info(name, onnx.TypeProto()))
    graph = oh.make_graph([node], f"run_node_{node.op_type}", graph_inputs, graph_outputs)
    imports = [oh.make_opsetid("", opset_version or onnx.defs.onnx_opset_version())]
    if node.domain not in ("", "ai.onnx"):
        try:
            version = onnx.defs.get_schema(node.op_type, node.domain).since_version
        except Exception:  # a domain onnx has no schemas for
            version = 1
        imports.append(oh.make_opsetid(node.domain, version))
    return oh.make_model(graph, opset_imports=imports)


prepare = OnnxJaxBackend.prepare
run_model = OnnxJaxBackend.run_model
run_node = OnnxJaxBackend.run_node
supports_device = OnnxJaxBackend.supports_device
is_compatible = OnnxJaxBackend.is_compatible

__all__ = [
    "OnnxJaxBackend",
    "OnnxJaxBackendRep",
    "is_compatible",
    "node_model",
    "prepare",
    "run_model",
    "run_node",
    "supports_device",
]
