"""What `onnx2jax info` reports: a model's signature, ops, weights and what forces recompiles."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from . import _tracer
from ._analysis import is_param, iter_nodes
from ._errors import InputError
from ._ir import TensorSpec
from ._loader import ModelSource, load_model
from ._segments import Break, find_breaks, partition


@dataclass
class ModelReport:
    """Facts about a model, gathered without compiling it."""

    opsets: dict[str, int]
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_histogram: Counter
    param_count: int
    param_bytes: int
    constant_bytes: int
    unsupported: list[str]
    value_inputs: list[str]  # one compile per distinct value
    symbolic_dims: list[str]  # one compile per distinct size
    breaks: list[Break] = field(default_factory=list)  # where the graph leaves jit
    segments: int = 1  # jitted segments the main graph runs as
    passes: object = None  # onnx2jax.passes.Report of the default pipeline, or None

    def format(self) -> str:
        lines = [
            f"producer: {self.producer or '?'}",
            "opsets: " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(self.opsets.items())),
        ]
        lines.append("inputs:")
        lines += [f"  {s}" for s in self.inputs]
        lines.append("outputs:")
        lines += [f"  {s}" for s in self.outputs]
        lines.append(
            f"params: {self.param_count:,} values, {self.param_bytes / 2**20:.2f} MiB "
            f"(+ {self.constant_bytes / 2**20:.2f} MiB of non-float constants)"
        )
        lines.append(f"ops ({sum(self.op_histogram.values())} nodes):")
        lines += [f"  {n:5d}  {op}" for op, n in self.op_histogram.most_common()]
        if self.unsupported:
            lines.append(f"UNSUPPORTED ({len(self.unsupported)}):")
            lines += [f"  {u}" for u in self.unsupported]
        else:
            lines.append("unsupported ops: none")
        lines.append("recompiles:")
        if self.symbolic_dims:
            lines.append(
                f"  once per distinct size of symbolic dims: {', '.join(self.symbolic_dims)}"
            )
        if self.value_inputs:
            lines.append(
                f"  once per distinct VALUE of inputs: {', '.join(self.value_inputs)} "
                "(they decide output shapes)"
            )
        if not self.symbolic_dims and not self.value_inputs:
            lines.append("  none: all input shapes are fixed")
        if self.breaks:
            lines.append(
                f"graph breaks ({len(self.breaks)}; cannot run inside one jit, so the model "
                f"runs as {self.segments} jitted segment(s) with host steps between):"
            )
            lines += [f"  {b}" for b in self.breaks]
        else:
            lines.append("graph breaks: none (one XLA program)")
        if self.passes is not None:
            lines.append(
                f"graph passes (load's default; passes=None turns them off): {self.passes}"
            )
        return "\n".join(lines)


def inspect_model(source: ModelSource) -> ModelReport:
    """Gather a :class:`ModelReport` for ``source`` (never raises for unsupported ops)."""
    ir = load_model(source)
    graph = ir.graph
    missing: list[str] = []
    _tracer.build_plan(graph, ir.opsets, missing)
    found = find_breaks(graph)
    needed = found.needed
    hist = Counter((f"{n.domain}::" if n.domain else "") + n.op_type for n in iter_nodes(graph))
    p_count = p_bytes = c_bytes = 0
    for name, arr in graph.initializers.items():
        if is_param(name, arr, needed):
            p_count += arr.size
            p_bytes += arr.nbytes
        else:
            c_bytes += arr.nbytes
    sym = symbolic_dims(graph.inputs)
    params = frozenset(k for k, a in graph.initializers.items() if is_param(k, a, needed))
    stages = partition(
        graph.nodes,
        found,
        params,
        frozenset(graph.initializers) - params,
        [o.name for o in graph.outputs],
    )
    return ModelReport(
        dict(ir.opsets),
        ir.producer,
        list(graph.inputs),
        list(graph.outputs),
        hist,
        int(p_count),
        int(p_bytes),
        int(c_bytes),
        missing,
        [s.name for s in graph.inputs if s.name in found.value_inputs],
        sym,
        list(found.breaks),
        sum(not s.host for s in stages),
        _pass_report(source, missing),
    )


def _pass_report(source: ModelSource, missing: list[str]):
    """What the default passes do to this model (None if it cannot load)."""
    if missing:
        return None
    from .passes import DEFAULT

    if hasattr(source, "seek"):
        source.seek(0)
    return load_model(source, passes=DEFAULT).pass_report


def symbolic_dims(specs: list[TensorSpec]) -> list[str]:
    """The names of the symbolic dims (``dim_param``) of ``specs``, sorted."""
    return sorted({d for s in specs if s.shape for d in s.shape if isinstance(d, str)})


def example_inputs(
    specs: list[TensorSpec], dims: dict[str, int], seed: int = 0, default_dim: int = 1
) -> dict[str, np.ndarray]:
    """Random inputs matching ``specs``: floats ~ N(0, 1), integers in [0, 8), random bools.

    Symbolic dims take their size from ``dims`` (else ``default_dim``).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if s.kind != "tensor" or s.dtype is None:
            raise InputError(
                f"cannot make a random value for input {s}: not a typed tensor; give it with "
                f"--input {s.name}=FILE.npy"
            )
        shape = tuple(
            d
            if isinstance(d, int) and d > 0
            else dims.get(d, default_dim)
            if isinstance(d, str)
            else default_dim
            for d in (s.shape or ())
        )
        if s.dtype.kind == "f" or s.dtype.name == "bfloat16":
            out[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype.kind in "iu":
            out[s.name] = rng.integers(0, 8, shape).astype(s.dtype)
        elif s.dtype.kind == "b":
            out[s.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise InputError(
                f"cannot make a random value for input {s} of dtype {s.dtype}; give it with "
                f"--input {s.name}=FILE.npy"
            )
    return out
