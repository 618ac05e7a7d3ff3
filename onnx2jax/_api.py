"""The public API: ``load`` an ONNX model into a :class:`Model`, a pytree of params plus a pure graph."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _tracer
from ._analysis import is_param, value_needs
from ._dtypes import canonical
from ._errors import InputError, StaticValueError, UnsupportedOpsError
from ._ir import Model as IRModel
from ._ir import TensorSpec
from ._loader import ModelSource, load_model

Params = dict[str, jax.Array]


@dataclass(frozen=True, eq=False)
class Program:
    """Everything decided at load time: the plan, signatures, constants and which inputs are static.

    Hashed by identity, so it can be the static part of a pytree and of ``jax.jit``.
    """

    ir: IRModel
    plan: _tracer.Plan
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    constants: dict[str, np.ndarray]
    value_inputs: frozenset[str]  # graph inputs specialised on their value (one compile per value)
    x64: bool

    @property
    def string_outputs(self) -> bool:
        return any(o.dtype is not None and o.dtype.kind in "OSU" for o in self.outputs)

    def context(self):
        return jax.enable_x64(True) if self.x64 else contextlib.nullcontext()


def _concrete(value: Any) -> Any:
    """A value-specialised input as numpy: an array, a list of them (a sequence) or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_concrete(v) for v in value]
    return np.asarray(value)


def _key(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return ("seq", tuple(_key(v) for v in value))
    data = tuple(value.ravel().tolist()) if value.dtype.kind == "O" else value.tobytes()
    return (value.dtype.str, value.shape, data)


class _Frozen:
    """A concrete input value made hashable, so it can be a static ``jax.jit`` argument."""

    __slots__ = ("value", "_key")

    def __init__(self, value: Any):
        self.value = _concrete(value)
        self._key = _key(self.value)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen) and self._key == other._key


@jax.tree_util.register_pytree_node_class
class Model:
    """An imported ONNX model: ``params`` (a dict of weights, the pytree leaves) and a pure graph.

    ``model.apply(params, *inputs, **named_inputs)`` is pure and composes with ``jax.jit``,
    ``jax.grad`` and ``jax.vmap``. ``model(*inputs)`` runs a cached ``jax.jit`` with
    ``model.params`` bound. Both return a tuple of outputs in graph order; use
    :meth:`outputs_dict` for a dict keyed by output name.
    """

    def __init__(self, program: Program, params: Params):
        self._program = program
        self.params = params

    # -- pytree: params are leaves, the program is static ------------------------------------
    def tree_flatten(self):
        return (self.params,), self._program

    @classmethod
    def tree_unflatten(cls, program: Program, children):
        return cls(program, children[0])

    # -- signatures ---------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Graph inputs: name, dtype and shape (symbolic dims kept as names)."""
        return self._program.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Graph outputs, in the order ``apply`` returns them."""
        return self._program.outputs

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def opsets(self) -> dict[str, int]:
        return dict(self._program.ir.opsets)

    @property
    def value_inputs(self) -> frozenset[str]:
        """Inputs whose values decide shapes: each distinct value compiles once."""
        return self._program.value_inputs

    def outputs_dict(self, outputs: tuple[Any, ...]) -> dict[str, Any]:
        """Key a result tuple of ``apply`` or ``__call__`` by output name."""
        return dict(zip(self.output_names, outputs))

    def __repr__(self) -> str:
        n = sum(int(np.prod(p.shape)) for p in self.params.values())
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        return f"onnx2jax.Model(({ins}) -> ({outs}), {len(self.params)} params / {n:,} values)"

    # -- running ------------------------------------------------------------------------------
    def apply(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run the graph with ``params``; pure, so it can be jitted, differentiated and vmapped."""
        prog = self._program
        with prog.context():
            bound = _bind(prog, args, kwargs)
            static = {k: v for k, v in bound.items() if k in prog.value_inputs}
            for k, v in static.items():
                if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(v)):
                    raise StaticValueError(
                        f"input {k!r} decides output shapes, so it must be a concrete value, not "
                        f"a traced one. Call the model object (it handles this), or close over a "
                        f"numpy value: jax.jit(functools.partial(model.apply, {k}=np.array(...)))"
                    )
            dynamic = {k: v for k, v in bound.items() if k not in prog.value_inputs}
            return _run(prog, params, dynamic, {k: _concrete(v) for k, v in static.items()})

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run with ``self.params`` through a cached ``jax.jit`` (one compile per input shape)."""
        prog = self._program
        with prog.context():
            bound = _bind(prog, args, kwargs)
            static = tuple(sorted((k, _Frozen(v)) for k, v in bound.items()
                                  if k in prog.value_inputs))
            dynamic = {k: v for k, v in bound.items() if k not in prog.value_inputs}
            if prog.string_outputs:
                # Strings cannot leave an XLA program; such graphs run eagerly (numeric ops
                # inside still dispatch to XLA one by one).
                return _run(prog, self.params, dynamic, {k: f.value for k, f in static})
            return _jitted(self._program)(self.params, dynamic, static)


def _jitted(prog: Program):
    """One ``jax.jit`` per program, stored on it so every Model sharing the program shares it."""
    fn = getattr(prog, "_jit", None)
    if fn is None:
        def run_static(params, dynamic, static):
            return _run(prog, params, dynamic, {k: f.value for k, f in static})

        fn = jax.jit(run_static, static_argnums=2)
        object.__setattr__(prog, "_jit", fn)
    return fn


def _run(prog: Program, params: Mapping[str, Any], dynamic: Mapping[str, Any],
         static: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    missing = [k for k in prog.ir.graph.initializers if k not in prog.constants and k not in params]
    if missing:
        raise InputError(f"params lacks {len(missing)} weight(s): {missing[:5]}; pass model.params")
    env: dict[str, Any] = dict(prog.constants)
    env.update(params)
    env.update(static)
    env.update(dynamic)
    outs = _tracer.run(prog.plan, env)
    return tuple(_as_output(o) for o in outs)


def _as_output(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v if v.dtype.kind in "OSU" else jnp.asarray(v)
    if isinstance(v, list):
        return [_as_output(x) for x in v]
    return v


def _bind(prog: Program, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Match call arguments to graph inputs and check each one's dtype and shape."""
    names = [s.name for s in prog.inputs]
    if len(args) > len(names):
        raise InputError(
            f"got {len(args)} positional inputs, but the model takes {len(names)}: {names}"
        )
    bound = dict(zip(names, args))
    for k, v in kwargs.items():
        if k in bound:
            raise InputError(f"input {k!r} given both by position and by name")
        bound[k] = v
    extra = [k for k in bound if k not in names]
    if extra:
        raise InputError(f"unknown input(s) {extra}; the model's inputs are {names}")
    missing = [n for n in names if n not in bound]
    if missing:
        sig = ", ".join(str(s) for s in prog.inputs)
        raise InputError(f"missing input(s) {missing}; the model takes ({sig})")
    dims: dict[str, tuple[str, int]] = {}
    for spec in prog.inputs:
        bound[spec.name] = _check_input(spec, bound[spec.name], dims)
    return bound


def _check_input(spec: TensorSpec, value: Any, dims: dict[str, tuple[str, int]]) -> Any:
    if spec.kind != "tensor":
        return value
    if not hasattr(value, "dtype"):
        value = np.asarray(value, dtype=spec.dtype)
    if spec.dtype is not None and value.dtype != spec.dtype:
        # Accept what JAX would compute in anyway (int64 given as int32 with x64 off, numpy's
        # default float64 for a float32 input) and cast; refuse a real mismatch.
        if canonical(spec.dtype) != canonical(value.dtype):
            raise InputError(
                f"input {spec.name!r} has dtype {value.dtype}, but the model declares {spec.dtype}; "
                f"cast it, e.g. x.astype(np.{spec.dtype})"
            )
        if isinstance(value, (np.ndarray, np.generic)):
            value = np.asarray(value).astype(spec.dtype)
        elif value.dtype != canonical(spec.dtype):
            value = value.astype(canonical(spec.dtype))
    if spec.shape is not None:
        shape = tuple(value.shape)
        if len(shape) != len(spec.shape):
            raise InputError(
                f"input {spec.name!r} has rank {len(shape)} (shape {list(shape)}), but the model "
                f"declares rank {len(spec.shape)}: {spec}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise InputError(
                    f"input {spec.name!r} has size {got} on axis {axis}, but the model fixes it "
                    f"to {want}: {spec}"
                )
            if isinstance(want, str):
                seen = dims.setdefault(want, (spec.name, got))
                if seen[1] != got:
                    raise InputError(
                        f"dimension {want!r} is {got} in input {spec.name!r} but {seen[1]} in "
                        f"input {seen[0]!r}; inputs sharing a symbolic dimension must agree"
                    )
    return value


def load(source: ModelSource, *, x64: bool = False, base_dir: str | None = None) -> Model:
    """Load an ONNX model as a :class:`Model`.

    Args:
        source: a path, bytes, a binary file object or an ``onnx.ModelProto``. External data is
            read relative to the model's folder (or ``base_dir``); locations that escape that
            folder are refused.
        x64: compute int64/float64 tensors in 64 bits (runs the graph under
            ``jax.enable_x64``). Off by default: they are computed as int32/float32, JAX's default.
        base_dir: folder for external data when ``source`` is not a path.

    Raises:
        ModelLoadError: unreadable, corrupt or malformed model (cycle, dangling input).
        ExternalDataError: missing or unsafe external data.
        UnsupportedOpsError: lists every unsupported op use, with domain, opset and node.
    """
    ir = load_model(source, base_dir)
    missing: list[str] = []
    plan = _tracer.build_plan(ir.graph, ir.opsets, missing)
    if missing:
        raise UnsupportedOpsError(missing)
    graph = ir.graph
    needed = value_needs(graph)
    constants, params = {}, {}
    with jax.enable_x64(True) if x64 else contextlib.nullcontext():
        for name, arr in graph.initializers.items():
            if is_param(name, arr, needed):
                params[name] = jnp.asarray(arr)
            else:
                constants[name] = arr
    # String tensors cannot be JAX values: they are always specialised on their value.
    value_inputs = frozenset(s.name for s in graph.inputs
                             if s.name in needed or (s.dtype is not None and s.dtype.kind in "OSU"))
    for s in graph.inputs:
        if s.name in value_inputs and s.dtype is not None and s.dtype.kind == "f":
            warnings.warn(
                f"input {s.name!r} decides output shapes (it feeds an op whose output shape depends "
                "on values, e.g. NonZero, Unique, NonMaxSuppression), so onnx2jax specialises on its "
                "value: every distinct value compiles anew. `onnx2jax info` lists such inputs.",
                stacklevel=2,
            )
    prog = Program(ir, plan, tuple(graph.inputs), tuple(graph.outputs), constants, value_inputs, x64)
    return Model(prog, params)
