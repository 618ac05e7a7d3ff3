"""What `onnx2jax info` reports: a model's signature, ops, weights and what forces recompiles."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from . import _tracer
from ._analysis import DATA_DEPENDENT_SHAPE_OPS, is_param, iter_nodes, value_needs
from ._ir import TensorSpec
from ._loader import ModelSource, load_model


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
    not_jittable: list[str] = field(default_factory=list)  # data-dependent output shapes

    def format(self) -> str:
        lines = [f"producer: {self.producer or '?'}",
                 "opsets: " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(self.opsets.items()))]
        lines.append("inputs:")
        lines += [f"  {s}" for s in self.inputs]
        lines.append("outputs:")
        lines += [f"  {s}" for s in self.outputs]
        lines.append(f"params: {self.param_count:,} values, {self.param_bytes / 2**20:.2f} MiB "
                     f"(+ {self.constant_bytes / 2**20:.2f} MiB of non-float constants)")
        lines.append(f"ops ({sum(self.op_histogram.values())} nodes):")
        lines += [f"  {n:5d}  {op}" for op, n in self.op_histogram.most_common()]
        if self.unsupported:
            lines.append(f"UNSUPPORTED ({len(self.unsupported)}):")
            lines += [f"  {u}" for u in self.unsupported]
        else:
            lines.append("unsupported ops: none")
        lines.append("recompiles:")
        if self.symbolic_dims:
            lines.append(f"  once per distinct size of symbolic dims: {', '.join(self.symbolic_dims)}")
        if self.value_inputs:
            lines.append(f"  once per distinct VALUE of inputs: {', '.join(self.value_inputs)} "
                         "(they decide output shapes)")
        if not self.symbolic_dims and not self.value_inputs:
            lines.append("  none: all input shapes are fixed")
        if self.not_jittable:
            lines.append("cannot run inside one jit (data-dependent output shapes):")
            lines += [f"  {n}" for n in self.not_jittable]
        return "\n".join(lines)


def inspect_model(source: ModelSource) -> ModelReport:
    """Gather a :class:`ModelReport` for ``source`` (never raises for unsupported ops)."""
    ir = load_model(source)
    graph = ir.graph
    missing: list[str] = []
    _tracer.build_plan(graph, ir.opsets, missing)
    needed = value_needs(graph)
    hist = Counter((f"{n.domain}::" if n.domain else "") + n.op_type for n in iter_nodes(graph))
    p_count = p_bytes = c_bytes = 0
    for name, arr in graph.initializers.items():
        if is_param(name, arr, needed):
            p_count += arr.size
            p_bytes += arr.nbytes
        else:
            c_bytes += arr.nbytes
    sym = sorted({d for s in graph.inputs if s.shape for d in s.shape if isinstance(d, str)})
    breaks = [f"{n.describe()}" for n in iter_nodes(graph)
              if n.op_type in DATA_DEPENDENT_SHAPE_OPS and n.domain == ""]
    return ModelReport(dict(ir.opsets), ir.producer, list(graph.inputs), list(graph.outputs), hist,
                       int(p_count), int(p_bytes), int(c_bytes), missing,
                       [s.name for s in graph.inputs if s.name in needed], sym, breaks)


def example_inputs(specs: list[TensorSpec], dims: dict[str, int], seed: int = 0,
                   default_dim: int = 1) -> dict[str, np.ndarray]:
    """Random inputs matching ``specs``: floats ~ N(0, 1), integers in [0, 8), random bools.

    Symbolic dims take their size from ``dims`` (else ``default_dim``).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if s.kind != "tensor" or s.dtype is None:
            raise ValueError(f"cannot make a random value for input {s}: not a typed tensor")
        shape = tuple(d if isinstance(d, int) and d > 0 else dims.get(d, default_dim) if isinstance(d, str)
                      else default_dim for d in (s.shape or ()))
        if s.dtype.kind == "f" or s.dtype.name == "bfloat16":
            out[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype.kind in "iu":
            out[s.name] = rng.integers(0, 8, shape).astype(s.dtype)
        elif s.dtype.kind == "b":
            out[s.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise ValueError(f"cannot make a random value for input {s} of dtype {s.dtype}")
    return out
