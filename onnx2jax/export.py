"""jax.export artifacts: ``convert`` an ONNX model with symbolic dims, ``load_exported`` it without onnx."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

import onnx2jax  # its error classes are plain Python, importable without onnx

from . import _kernels
from ._cache import enable_default_cache  # jax only
from ._compiler import compiler_options  # jax only

# The artifact is a zip: the serialized jax.export.Exported, a JSON header, and the weights
# (raw bytes), so a fine-tuned params dict can replace them without re-exporting.
_FORMAT = "onnx2jax-exported/1"


def _symbol(name: str, taken: set[str]) -> str:
    """A valid, unused symbol name for the ONNX dim_param ``name``."""
    base = re.sub(r"\W", "_", name)
    if not base or base[0].isdigit():
        base = "d_" + base
    sym, n = base, 1
    while sym in taken:
        sym, n = f"{base}_{n}", n + 1
    taken.add(sym)
    return sym


def symbolic_specs(
    inputs: Sequence[Any],
    dims: Mapping[str, int] | None = None,
    constraints: Sequence[str] = (),
    x64: bool = False,
) -> tuple[list[jax.ShapeDtypeStruct], dict[str, str]]:
    """``jax.ShapeDtypeStruct`` per input (``onnx2jax.TensorSpec``), every dim_param symbolic.

    Dims named in ``dims`` are fixed to that size; an unnamed unknown dim gets a fresh symbol.
    ``constraints`` (e.g. ``"seq >= 2"``) use the symbol names returned in the mapping
    ``{dim_param: symbol}``. Symbols are >= 1.
    """
    dims = dict(dims or {})
    taken: set[str] = set()
    symbols: dict[str, str] = {}
    anon = 0
    per_input = []
    for spec in inputs:
        if spec.kind != "tensor" or spec.shape is None or spec.dtype is None:
            raise onnx2jax.Onnx2JaxError(
                f"input {spec.name!r} ({spec}) has no tensor type with a rank: jax.export needs "
                "one; give the model's input a shape (dims may be symbolic)"
            )
        shape = []
        for d in spec.shape:
            if isinstance(d, int) and d > 0:
                shape.append(str(d))
                continue
            if not isinstance(d, str):  # unknown and unnamed: its own symbol
                anon += 1
                d = f"{spec.name}_dim{anon}"
            if d in dims:
                shape.append(str(int(dims[d])))
                continue
            if d not in symbols:
                symbols[d] = _symbol(d, taken)
            shape.append(symbols[d])
        per_input.append(shape)
    unknown = sorted(set(dims) - {d for s in inputs for d in (s.shape or ()) if isinstance(d, str)})
    if unknown:
        raise onnx2jax.Onnx2JaxError(f"dims {unknown} are not symbolic dims of the model's inputs")
    parsed: dict[str, Any] = {}
    if symbols:
        syms = list(symbols.values())
        try:
            values = jax_export.symbolic_shape(", ".join(syms), constraints=tuple(constraints))
        except Exception as e:  # a malformed constraint
            raise onnx2jax.Onnx2JaxError(f"constraints {list(constraints)}: {e}") from None
        parsed = dict(zip(syms, values))
    out = []
    with jax.enable_x64(x64):
        for spec, shape in zip(inputs, per_input):
            dt = jax.dtypes.canonicalize_dtype(spec.dtype)
            out.append(
                jax.ShapeDtypeStruct(tuple(parsed[s] if s in parsed else int(s) for s in shape), dt)
            )
    return out, symbols


def convert(
    source: Any,
    output: str | os.PathLike | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    constraints: Sequence[str] = (),
    platforms: Sequence[str] | None = None,
    x64: bool = False,
    vjp_order: int = 0,
    prepare: bool | None = None,
    **load_kwargs: Any,
) -> bytes:
    """Export an ONNX model as a serialized ``jax.export`` artifact with symbolic dims.

    Every ``dim_param`` of the inputs becomes a symbolic dimension, so the artifact runs at any
    batch or sequence size; ``dims={"batch": 8}`` specialises a dim instead. Needs onnx;
    :func:`load_exported` does not.

    Args:
        source: anything ``onnx2jax.load`` takes.
        output: where to write the artifact (optional; the bytes are returned too).
        dims: dim_param name -> size, for dims to fix.
        constraints: ``jax.export`` shape constraints such as ``"seq >= 2"`` or
            ``"seq <= 512"``, where shape arithmetic needs them; symbols are the dim_param names
            (non-identifier characters replaced by ``_``).
        platforms: lowering platforms (default: the current backend), e.g. ``["cpu", "cuda"]``.
        x64: compute int64/float64 in 64 bits (as ``onnx2jax.load(x64=True)``).
        vjp_order: also store this many orders of VJPs, so ``jax.grad`` of the loaded model's
            ``apply`` works (1 for fine-tuning; 0, the default, keeps the artifact small).
        prepare: store the prepared weights (``Model.prepare()``: weights laid out for the
            kernels, folded BatchNorms, dequantized weights) and export ``apply_prepared``, so
            the program does not redo those steps per call; the artifact's params are then the
            prepared values (internal value names) plus the ONNX params the program still
            reads. ``False``: the ONNX-named params, prepared inside every call, gradients by
            ONNX name. Default: ``True`` unless ``vjp_order`` asks for gradients.
        **load_kwargs: other ``onnx2jax.load`` options (``passes``, ``precision``, ...).

    Raises:
        NodeError: a node cannot be traced with symbolic dims (it reads a dim as a value, e.g.
            Shape feeding Reshape); names the node. Fix the dims it depends on with ``dims``.
        Onnx2JaxError: graph breaks, inputs that decide shapes, or inputs without a shape.
    """
    with _kernels.disabled():  # an artifact holds no custom calls (nor packed weights)
        return _convert(source, output, dims, constraints, platforms, x64, vjp_order, prepare,
                        load_kwargs)  # fmt: skip


def _convert(source, output, dims, constraints, platforms, x64, vjp_order, prepare, load_kwargs):
    model = onnx2jax.load(source, x64=x64, **load_kwargs)
    if model.graph_breaks:
        names = ", ".join(f"{b.node!r} ({b.op_type})" for b in model.graph_breaks)
        raise onnx2jax.Onnx2JaxError(
            f"cannot export: the graph breaks at {names} (data-dependent output shapes), so it is "
            "not one XLA program; load with max_sizes / dynamic_bound to bound those nodes"
        )
    if model.value_inputs:
        raise onnx2jax.Onnx2JaxError(
            f"cannot export: input(s) {sorted(model.value_inputs)} decide output shapes by their "
            "value; make them constants (initializers) in the model"
        )
    specs, symbols = symbolic_specs(model.inputs, dims, constraints, x64)
    if prepare is None:
        prepare = vjp_order == 0

    def run(params, *inputs):
        return model.apply(params, *inputs)

    try:
        with jax.enable_x64(x64):
            weights = dict(model.params)
            if prepare:
                weights, run = _prepared_program(model, specs)
            weight_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
            exported = jax_export.export(jax.jit(run), platforms=platforms)(weight_specs, *specs)
    except onnx2jax.Onnx2JaxError as e:
        names = ", ".join(symbols)
        first = str(e).splitlines()[0]  # jax's explanation that follows is pages long
        raise type(e)(
            f"cannot export with symbolic dims ({names}): {first}. Fix the dims this node "
            "depends on (onnx2jax convert --dim NAME=N, or dims={...}), or add constraints "
            "where jax asks for them"
        ) from e
    except Exception as e:  # jax's shape-polymorphism errors outside a node
        if "symbolic" not in str(e).lower() and "dimension" not in str(e).lower():
            raise
        raise onnx2jax.Onnx2JaxError(
            f"cannot export with symbolic dims: {type(e).__name__}: {str(e).splitlines()[0]}. "
            "Fix the dims with "
            "--dim NAME=N (dims={...}), or add constraints"
        ) from e
    header = {
        "format": _FORMAT,
        "inputs": [s.name for s in model.inputs],
        "outputs": model.output_names,
        "symbols": symbols,
        "dims": dict(dims or {}),
        "x64": x64,
        "prepared": bool(prepare),
        "params": {k: [str(v.dtype), list(v.shape)] for k, v in weights.items()},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("header.json", json.dumps(header))
        z.writestr("exported.bin", bytes(exported.serialize(vjp_order=vjp_order)))
        for i, v in enumerate(weights.values()):
            z.writestr(f"params/{i}", np.asarray(v).tobytes())
    data = buf.getvalue()
    if output is not None:
        with open(output, "wb") as f:
            f.write(data)
    return data


def _prepared_program(model: Any, specs: Sequence[Any]) -> tuple[dict[str, Any], Any]:
    """The artifact's weights and function for ``convert(prepare=True)``.

    Weights: ``model.prepare()`` (laid-out and folded weights, integer buffers) plus the ONNX
    params that the rest of the program still reads; params read only by the param-only steps
    are left out of the artifact (the function passes zeros for them, which XLA drops).
    """
    prepared = model.prepare()
    shapes = {k: (v.shape, v.dtype) for k, v in model.params.items()}

    def run_all(params, prep, *inputs):
        return model.apply_prepared(params, prep, *inputs)

    def spec(tree):
        return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in tree.items()}

    closed = jax.make_jaxpr(run_all)(spec(model.params), spec(prepared), *specs)
    read = {id(v) for e in closed.jaxpr.eqns for v in e.invars}
    read |= {id(v) for v in closed.jaxpr.outvars}
    # make_jaxpr flattens the params dict in sorted key order: its first invars.
    params_in = closed.jaxpr.invars[: len(model.params)]
    kept = [k for k, v in zip(sorted(model.params), params_in, strict=True) if id(v) in read]
    weights = {**{k: model.params[k] for k in kept}, **prepared}

    def run(weights, *inputs):
        params = {
            k: weights[k] if k in weights else jax.numpy.zeros(*shapes[k]) for k in model.params
        }
        return model.apply_prepared(params, {k: weights[k] for k in prepared}, *inputs)

    return weights, run


class ExportedModel:
    """A model loaded from a ``jax.export`` artifact: callable like ``onnx2jax.Model``.

    ``model(*inputs, **named)`` returns the outputs as a tuple; ``model.apply(params, ...)`` is
    pure (``jax.jit`` and ``jax.vmap`` work; ``jax.grad`` where the artifact was written with
    ``vjp_order >= 1``). The graph is never traced again: a new input shape only compiles the
    stored program for that shape.
    """

    def __init__(self, exported: jax_export.Exported, params: dict[str, Any], header: dict):
        self.exported = exported
        self.params = params
        self.input_names: list[str] = header["inputs"]
        self.output_names: list[str] = header["outputs"]
        self.x64: bool = header["x64"]
        # ``prepared``: params are Model.prepare()'s values (internal names), not ONNX-named.
        self.prepared: bool = header.get("prepared", False)
        # onnx2jax's XLA options (YNNPACK convs/dots on CPU), as ``onnx2jax.load`` compiles with.
        self._jitted = jax.jit(exported.call, compiler_options=compiler_options())

    @property
    def input_shapes(self) -> dict[str, tuple]:
        """Input shapes, symbolic dims as ``jax.export`` dimension expressions."""
        return {
            n: a.shape for n, a in zip(self.input_names, self.exported.in_avals[len(self.params) :])
        }

    def _bind(self, args: tuple, kwargs: dict) -> list[Any]:
        names = self.input_names
        bound = dict(zip(names, args))
        if len(args) > len(names) or set(kwargs) - set(names) or set(kwargs) & set(bound):
            raise onnx2jax.InputError(
                f"expected inputs {names}, got {len(args)} positional and {sorted(kwargs)}"
            )
        bound.update(kwargs)
        missing = [n for n in names if n not in bound]
        if missing:
            raise onnx2jax.InputError(f"missing input(s) {missing}; the model takes {names}")
        return [bound[n] for n in names]

    def apply(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run with ``params`` (a dict like :attr:`params`); pure."""
        with jax.enable_x64(self.x64):
            return tuple(self.exported.call(dict(params), *self._bind(args, kwargs)))

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        with jax.enable_x64(self.x64):
            return tuple(self._jitted(self.params, *self._bind(args, kwargs)))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {list(s)}" for n, s in self.input_shapes.items())
        return f"onnx2jax.ExportedModel(({shapes}) -> {self.output_names})"


def load_exported(source: str | os.PathLike | bytes) -> ExportedModel:
    """Load an artifact written by :func:`convert` / ``onnx2jax convert``; needs jax only.

    Args:
        source: the artifact's path, or its bytes.

    Raises:
        Onnx2JaxError: the file is not such an artifact.
    """
    what = "the given bytes" if isinstance(source, bytes) else repr(os.fspath(source))
    enable_default_cache()  # as load() does: a restarted process compiles from the cache
    try:
        z = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
        header = json.loads(z.read("header.json"))
        if header.get("format") != _FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {_FORMAT!r}")
        exported = jax_export.deserialize(bytearray(z.read("exported.bin")))
        params = {}
        with jax.enable_x64(header["x64"]):
            for i, (k, (dtype, shape)) in enumerate(header["params"].items()):
                raw = np.frombuffer(z.read(f"params/{i}"), dtype=np.dtype(_dtype(dtype)))
                params[k] = jax.numpy.asarray(raw.reshape(shape))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise onnx2jax.Onnx2JaxError(
            f"{what} is not an onnx2jax exported artifact ({type(e).__name__}: {e}); "
            "write one with `onnx2jax convert MODEL -o OUT`"
        ) from None
    return ExportedModel(exported, params, header)


def _dtype(name: str) -> Any:
    import ml_dtypes  # bfloat16 & co. by name

    return getattr(ml_dtypes, name) if hasattr(ml_dtypes, name) else name
