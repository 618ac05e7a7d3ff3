"""Load-time facts about a graph: which values must be known at trace time, which ops break jit."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from ._ir import Graph, Node
from ._registry import STATIC_INPUTS

# Ops that read only the *shape* of their input, so needing their output's value does not make
# the input's value needed.
SHAPE_ONLY_OPS = frozenset(
    {
        "Shape",
        "Size",
        "EyeLike",
        "RandomNormalLike",
        "RandomUniformLike",
        "SequenceLength",
        "OptionalHasElement",
    }
)

# Ops whose output shape depends on input *values*: they cannot live inside one XLA program.
DATA_DEPENDENT_SHAPE_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})


def subgraphs(node: Node) -> list[Graph]:
    out = []
    for v in node.attrs.values():
        for g in v if isinstance(v, list) else [v]:
            if isinstance(g, Graph):
                out.append(g)
    return out


def is_data_dependent(node: Node) -> bool:
    """True for ops whose output shape depends on their input values (NonZero, Unique, ...)."""
    return node.domain == "" and node.op_type in DATA_DEPENDENT_SHAPE_OPS


def static_reads(node: Node) -> list[str]:
    """The values ``node`` needs concrete at trace time: its STATIC_INPUTS slots, and the outer
    values its subgraphs need concrete."""
    reads = [
        node.inputs[i]
        for i in STATIC_INPUTS.get((node.domain, node.op_type), ())
        if i < len(node.inputs) and node.inputs[i]
    ]
    for g in subgraphs(node):
        reads += sorted(value_needs(g) & g.outer_names)
    return reads


def needs(nodes: Iterable[Node], skip: Collection[int] = ()) -> tuple[set[str], set[str]]:
    """``(needed, computed)``: the names whose values must be concrete at trace time, and those
    of them needed because a node computes a needed value from them (not read directly).

    Walks ``nodes`` (topologically sorted) backwards from every static read: a needed value
    produced by a node makes that node's inputs needed too, except for shape-only ops. Nodes
    whose ``id`` is in ``skip`` (graph breaks) neither seed needs nor pass them on: they run on
    concrete values anyway.
    """
    needed: set[str] = set()
    computed: set[str] = set()
    for node in reversed(list(nodes)):
        if id(node) in skip:
            continue
        needed.update(static_reads(node))
        if node.op_type not in SHAPE_ONLY_OPS and any(o in needed for o in node.outputs):
            inputs = {i for i in node.inputs if i}
            # A needed If/Loop output also needs every outer value its bodies read.
            for g in subgraphs(node):
                inputs |= g.outer_names
            needed |= inputs
            computed |= inputs
    return needed, computed


def value_needs(graph: Graph) -> set[str]:
    """Names (inputs, initializers, node outputs) whose values must be concrete at trace time."""
    return needs(graph.nodes)[0]


def is_param(name: str, array, needed: Collection[str]) -> bool:
    """Float initializers are trainable weights (params) unless their value decides a shape."""
    return (array.dtype.kind == "f" or array.dtype.name == "bfloat16") and name not in needed


# Integer initializers this large are weights (quantized or packed), not shape data: they live
# on the device as non-trainable buffers passed into the compiled program, instead of numpy
# constants that XLA would embed in the HLO (an int8 768x768 weight as an s32 literal: slow
# compiles, gigabytes of RSS) and fold at every compile.
_BUFFER_MIN_SIZE = 1024


def is_buffer(name: str, array, needed: Collection[str]) -> bool:
    """Large integer initializers of at most 16 bits (quantized weights) whose value decides no shape."""
    dt = array.dtype
    return (
        (dt.kind in "iu" or dt.name in ("int4", "uint4", "int2", "uint2"))
        and dt.itemsize <= 2
        and array.size >= _BUFFER_MIN_SIZE
        and name not in needed
    )


def iter_nodes(graph: Graph):
    """Every node of ``graph`` and of its subgraphs, depth first."""
    for node in graph.nodes:
        yield node
        for g in subgraphs(node):
            yield from iter_nodes(g)
