"""The execution IR: a small, protobuf-free picture of an ONNX graph that ops and the tracer read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Dim = int | str | None
"""One dimension of a declared shape: a size, a symbolic name (``dim_param``) or unknown."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and declared shape of a graph input or output.

    ``dtype`` is ``None`` for non-tensor values (sequences, optionals) and ``shape`` is
    ``None`` when the rank is unknown.
    """

    name: str
    dtype: np.dtype | None
    shape: tuple[Dim, ...] | None
    kind: str = "tensor"  # "tensor", "sequence", "optional", "map", "sparse_tensor"

    def __str__(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        )
        dt = "?" if self.dtype is None else str(self.dtype)
        return f"{self.name}: {self.kind if self.kind != 'tensor' else dt}{dims}"

    def __repr__(self) -> str:
        # Short, as users read it in `print(model.inputs)`: the dtype by name, kind only when
        # it is not a tensor.
        dt = "None" if self.dtype is None else str(self.dtype)
        kind = "" if self.kind == "tensor" else f", kind={self.kind!r}"
        return f"TensorSpec({self.name!r}, {dt}, {self.shape!r}{kind})"


@dataclass(frozen=True)
class Node:
    """One ONNX node. Attribute values are plain Python: int, float, str, lists, numpy arrays,
    :class:`Graph` for subgraphs; missing optional inputs are ``""``."""

    op_type: str
    domain: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> str:
        dom = self.domain or "ai.onnx"
        return f"node {self.name!r} ({dom}::{self.op_type})"


@dataclass
class Graph:
    """A topologically sorted graph. ``initializers`` hold constants and weights as numpy arrays."""

    name: str
    nodes: list[Node]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    initializers: dict[str, np.ndarray]
    # Names visible from an enclosing graph that this (sub)graph reads.
    outer_names: frozenset[str] = frozenset()


@dataclass
class Model:
    """A whole model: its main graph, the opset of each domain and provenance."""

    graph: Graph
    opsets: dict[str, int]
    ir_version: int
    producer: str = ""
    base_dir: str | None = None
    # What the graph passes did (onnx2jax.passes.Report), or None when none ran.
    pass_report: Any = None
