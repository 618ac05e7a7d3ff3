"""Load-time facts about a graph: which values must be known at trace time, which ops break jit."""

from __future__ import annotations

from ._ir import Graph, Node
from ._registry import STATIC_INPUTS

# Ops that read only the *shape* of their input, so needing their output's value does not make
# the input's value needed.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size", "EyeLike", "RandomNormalLike", "RandomUniformLike",
                            "SequenceLength", "OptionalHasElement"})

# Ops whose output shape depends on input *values*: they cannot live inside one XLA program.
DATA_DEPENDENT_SHAPE_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})


def subgraphs(node: Node) -> list[Graph]:
    out = []
    for v in node.attrs.values():
        for g in v if isinstance(v, list) else [v]:
            if isinstance(g, Graph):
                out.append(g)
    return out


def value_needs(graph: Graph) -> set[str]:
    """Names (inputs, initializers, node outputs) whose values must be concrete at trace time.

    Walks the graph backwards from every static op input (the STATIC_INPUTS table): a needed
    value produced by a node makes that node's inputs needed too, except for shape-only ops.
    """
    needed: set[str] = set()
    for node in reversed(graph.nodes):
        for i in STATIC_INPUTS.get((node.domain, node.op_type), ()):
            if i < len(node.inputs) and node.inputs[i]:
                needed.add(node.inputs[i])
        for g in subgraphs(node):
            needed |= value_needs(g) & g.outer_names
        if node.op_type not in SHAPE_ONLY_OPS and any(o in needed for o in node.outputs):
            needed.update(i for i in node.inputs if i)
            # A needed If/Loop output also needs every outer value its bodies read.
            for g in subgraphs(node):
                needed |= g.outer_names
    return needed


def is_param(name: str, array, needed: set[str]) -> bool:
    """Float initializers are trainable weights (params) unless their value decides a shape."""
    return (array.dtype.kind == "f" or array.dtype.name == "bfloat16") and name not in needed


def iter_nodes(graph: Graph):
    """Every node of ``graph`` and of its subgraphs, depth first."""
    for node in graph.nodes:
        yield node
        for g in subgraphs(node):
            yield from iter_nodes(g)
