"""Small graph helpers shared by the passes (on onnx-ir; no JAX here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

# The domain of the ops that passes introduce; onnx2jax implements them natively (ops/nhwc.py,
# ops/linalg.py, ops/attention.py, ops/normalization.py) and `onnx2jax optimize` writes a
# function body for each (functions.py), in standard ONNX, so onnxruntime runs the file too.
DOMAIN = "ai.onnx2jax"


class CountingPass(ir.passes.InPlacePass):
    """An in-place onnx-ir pass that counts its rewrites by pattern (``matches``), which the
    pipeline's report and ``onnx2jax info`` show; ``call`` starts each run with ``reset()``."""

    def __init__(self):
        super().__init__()
        self.matches: dict[str, int] = {}

    def reset(self) -> None:
        self.matches = {}

    def hit(self, key: str) -> None:
        self.matches[key] = self.matches.get(key, 0) + 1


ONNX_DOMAINS = ("", "ai.onnx")


def is_op(node: ir.Node | None, op_type: str) -> bool:
    """``node`` is the standard-domain ``op_type``."""
    return node is not None and node.op_type == op_type and node.domain in ONNX_DOMAINS


def sole_producer(value: ir.Value | None) -> ir.Node | None:
    """The node computing ``value`` when nothing else reads it."""
    if value is None or only_user(value) is None:
        return None
    return value.producer()


def const_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor of a constant value (initializer or Constant node); None for graph inputs
    (an initializer that is also an input can be fed) and computed values."""
    if value is None or value.is_graph_input():
        return None
    return ir.convenience.get_const_tensor(value)


def scalar(value: ir.Value | None) -> float | None:
    """The value of a one-element constant, else None."""
    tensor = const_tensor(value)
    if tensor is None or tensor.size != 1:
        return None
    return float(tensor.numpy().reshape(-1)[0])


def count_nodes(graph: ir.Graph) -> int:
    return sum(1 for _ in graph.all_nodes())


def attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def only_user(value: ir.Value) -> ir.Node | None:
    """The single node that reads ``value`` (None if several, none, or a graph output)."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def is_param(value: ir.Value | None) -> bool:
    """A value fixed for the model's life: an initializer (a weight or a constant)."""
    return value is not None and value.is_initializer() and not value.is_graph_input()


def param_derived(value: ir.Value | None) -> bool:
    """Computed from initializers and constants only (so onnx2jax computes it once).

    Iterative (graphs are deep); stops at the first graph input or node with a subgraph.
    """
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen or is_param(v):
            continue
        seen.add(id(v))
        producer = v.producer()
        if producer is None:
            return False  # a graph input
        if producer.op_type == "Constant":
            continue
        if any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in producer.attributes.values()
        ):
            return False
        stack.extend(producer.inputs)
    return True


def rank(value: ir.Value) -> int | None:
    shape = value.shape
    if shape is None:
        tensor = value.const_value
        return None if tensor is None else len(tensor.shape)
    return len(shape)


def constant(tape: ir.tape.Tape, array: np.ndarray | Sequence[int]) -> ir.Value:
    """A small constant (a shape, a perm, an epsilon) as a Constant node on ``tape``."""
    array = np.asarray(array)
    if array.dtype.kind == "i":
        array = array.astype(np.int64)
    return tape.op("Constant", [], attributes={"value": ir.tensor(array)})


def replace(
    graph: ir.Graph,
    old: Sequence[ir.Node],
    tape: ir.tape.Tape,
    old_values: Sequence[ir.Value],
    new_values: Sequence[ir.Value],
) -> None:
    """Insert ``tape``'s nodes after ``old[0]``, rewire ``old_values`` to ``new_values`` (names,
    types and graph outputs carry over), and drop ``old``."""
    ir.convenience.replace_nodes_and_values(
        graph, old[0], list(old), list(tape.nodes), list(old_values), list(new_values)
    )


def new_initializer(graph: ir.Graph, taken: set[str], name: str, values) -> ir.Value:
    """An initializer named ``name`` (made unique among ``taken`` names, which it joins):
    ``values`` as int64 unless it is already an array. For shapes and pads that prep
    (onnx2jax/_prepare.py) must see as constants: it reads initializers, not Constant nodes."""
    base, i = name, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    array = values if isinstance(values, np.ndarray) else np.asarray(values, np.int64)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value
