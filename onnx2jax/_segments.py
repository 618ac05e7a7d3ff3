"""Graph breaks: where the main graph is split into jitted segments around host steps, decided once.

A node whose output *shape* depends on values computed at run time cannot live in one XLA
program. Instead of specialising the model on a graph input's value (a compile per value), the
graph breaks there:

- a **host** break (NonZero, Compress, Unique, NonMaxSuppression on computed data; a Loop
  whose condition is only known at run time while it has scan outputs or a body that needs the
  iteration number at trace time) runs that node on concrete values between two jitted segments;
- a **value** break (any other op whose shape input, e.g. a Reshape's shape, is computed from
  run-time data) starts a new segment that receives that input as a concrete value (one compile
  per distinct value, which the output shape needs anyway).

Graph inputs that feed shape inputs directly, or through integer arithmetic, are still
specialised on their value (``value_inputs``): that keeps one XLA program. A float input is
specialised only when it *is* the shape input (e.g. Resize scales); values computed from float
data break the graph instead. ``load`` and ``onnx2jax info`` both read :func:`find_breaks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._analysis import is_data_dependent, is_param, needs, static_reads, subgraphs
from ._errors import Onnx2JaxError
from ._ir import Graph, Node, TensorSpec

# Ops that have a padded, fixed-size version for the bounded mode (``_bounded.py``).
BOUNDABLE_OPS = frozenset({"NonZero", "Compress", "Unique"})

# Ops whose result is concrete even for a traced input: they read only its shape or length.
_SHAPE_RESULT_OPS = frozenset({"Shape", "Size", "EyeLike", "SequenceLength", "OptionalHasElement"})


@dataclass(frozen=True)
class Break:
    """One graph break at ``graph.nodes[index]``.

    ``kind`` is ``"host"`` (the node runs on numpy between two segments) or ``"value"`` (a new
    segment starts at the node and receives ``reads`` as concrete values).
    """

    index: int
    node: str
    op_type: str
    kind: str
    reads: tuple[str, ...]

    @property
    def reason(self) -> str:
        names = ", ".join(repr(r) for r in self.reads)
        verb = "decides" if len(self.reads) == 1 else "decide"
        if self.kind == "host":
            return (
                f"{names} {verb} output shapes and {'is' if len(self.reads) == 1 else 'are'} "
                "only known at run time: runs on the host between jitted segments"
            )
        return (
            f"{names} {verb} output shapes and {'is' if len(self.reads) == 1 else 'are'} "
            "computed from run-time data: a new segment starts here, compiled once per value"
        )

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op_type}): {self.reason}"


@dataclass(frozen=True)
class Breaks:
    """What the load-time analysis decided for a main graph."""

    needed: frozenset[
        str
    ]  # values needed at trace time somewhere (their initializers are constants)
    value_inputs: frozenset[str]  # graph inputs specialised on their value
    breaks: tuple[Break, ...]
    bounds: Mapping[int, int]  # node index -> bound, for data-dependent ops run padded instead


@dataclass(frozen=True)
class Stage:
    """One jitted segment (a run of nodes) or one host step (a single break node).

    ``nodes`` are positions in the main graph. ``inputs`` are the values it reads from graph
    inputs or earlier stages, ``static`` those of them that must be concrete (static jit
    arguments), ``params`` the weights it reads, ``outputs`` what later stages or the graph
    outputs read from it.
    """

    nodes: tuple[int, ...]
    host: bool
    inputs: tuple[str, ...]
    static: tuple[str, ...]
    params: tuple[str, ...]
    outputs: tuple[str, ...]


def find_breaks(
    graph: Graph, max_sizes: Mapping[str, int] | None = None, dynamic_bound: int | None = None
) -> Breaks:
    """Decide value specialisation, graph breaks and bounded nodes for ``graph`` (main graph).

    Raises:
        Onnx2JaxError: ``max_sizes`` names a node that is not a graph break of a NonZero,
            Compress or Unique node, or a bound is not a non-negative int.
    """
    max_sizes = dict(max_sizes or {})
    _check_bounds(max_sizes, dynamic_bound)
    nodes = graph.nodes
    needed_all = needs(nodes)[0]  # initializers needed anywhere stay constants, as before
    dd = {id(n) for n in nodes if is_data_dependent(n)}
    needed, computed = needs(nodes, skip=dd)
    value_inputs = frozenset(s.name for s in graph.inputs if _specialised(s, needed, computed))
    known = {k for k, a in graph.initializers.items() if not is_param(k, a, needed_all)}
    known |= value_inputs | {""}
    breaks: list[Break] = []
    bounds: dict[int, int] = {}
    for i, node in enumerate(nodes):
        unknown = tuple(dict.fromkeys(r for r in static_reads(node) if r not in known))
        if _runtime_loop(node, known):
            cond = (node.inputs[1],)
            breaks.append(Break(i, node.name, node.op_type, "host", cond + unknown))
            continue
        if unknown and is_data_dependent(node):
            bound = _bound_for(node, max_sizes, dynamic_bound)
            if bound is None:
                breaks.append(Break(i, node.name, node.op_type, "host", unknown))
            else:
                bounds[i] = bound
            continue  # its outputs are run-time data
        if unknown:
            breaks.append(Break(i, node.name, node.op_type, "value", unknown))
            known.update(unknown)
        if node.op_type in _SHAPE_RESULT_OPS or all(r in known for r in _reads(node)):
            known.update(node.outputs)
    _check_named(max_sizes, {nodes[i].name for i in bounds}, breaks)
    return Breaks(frozenset(needed_all), value_inputs, tuple(breaks), bounds)


def _runtime_loop(node: Node, known: set[str]) -> bool:
    """A Loop whose condition input is only known at run time, and that has scan outputs (their
    length is the iteration count) or a body that needs the iteration number or loop-carried
    values at trace time: no jax loop can express it, so it runs on the host."""
    if node.domain != "" or node.op_type != "Loop" or len(node.inputs) < 2:
        return False
    if not node.inputs[1] or node.inputs[1] in known:
        return False
    body = node.attrs.get("body")
    if not isinstance(body, Graph):
        return False  # malformed: the loader or the Loop op itself names the problem
    if len(body.outputs) > 1 + (len(node.inputs) - 2):
        return True
    return bool(needs(body.nodes)[0] & {s.name for s in body.inputs})


def _specialised(spec: TensorSpec, needed: set[str], computed: set[str]) -> bool:
    if spec.dtype is not None and spec.dtype.kind in "OSU":
        return True  # strings cannot be JAX values: always concrete
    if spec.name not in needed:
        return False
    is_float = spec.dtype is not None and (spec.dtype.kind == "f" or spec.dtype.name == "bfloat16")
    # Shapes computed from float data change with every input: break there instead.
    return not (is_float and spec.name in computed)


def _reads(node: Node) -> list[str]:
    """Every value ``node`` reads: its inputs and the outer values its subgraphs read."""
    reads = [i for i in node.inputs if i]
    for g in subgraphs(node):
        reads += sorted(g.outer_names)
    return reads


def _bound_for(node: Node, max_sizes: Mapping[str, int], dynamic_bound: int | None) -> int | None:
    if node.name in max_sizes:
        if node.op_type not in BOUNDABLE_OPS:
            raise Onnx2JaxError(
                f"max_sizes names {node.describe()}, but the bounded mode supports only "
                f"{', '.join(sorted(BOUNDABLE_OPS))}; drop it from max_sizes (it stays a graph break)"
            )
        return max_sizes[node.name]
    return dynamic_bound if node.op_type in BOUNDABLE_OPS else None


def _check_bounds(max_sizes: Mapping[str, int], dynamic_bound: int | None) -> None:
    for name, n in [*max_sizes.items(), ("dynamic_bound", dynamic_bound)]:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            what = "dynamic_bound" if name == "dynamic_bound" else f"max_sizes[{name!r}]"
            raise Onnx2JaxError(f"{what} must be a non-negative int, got {n!r}")


def _check_named(max_sizes: Mapping[str, int], bounded: set[str], breaks: list[Break]) -> None:
    unknown = sorted(set(max_sizes) - bounded)
    if unknown:
        candidates = sorted({b.node for b in breaks if b.op_type in BOUNDABLE_OPS} | bounded)
        raise Onnx2JaxError(
            f"max_sizes names {unknown}, which are not NonZero/Compress/Unique nodes that break the "
            f"graph; the nodes it can bound are {candidates or 'none'} (`onnx2jax info` lists "
            "graph breaks)"
        )


def partition(
    nodes: Sequence[Node],
    found: Breaks,
    params: frozenset[str],
    constants: frozenset[str],
    outputs: Sequence[str],
) -> tuple[Stage, ...]:
    """Split ``nodes`` (the main graph's, bounded ones already rewritten) into stages.

    A host break is a stage of its own; a value break starts a new segment. Each stage carries
    exactly the values later stages and the graph ``outputs`` read.
    """
    at = {b.index: b for b in found.breaks}
    groups: list[tuple[bool, list[int]]] = []
    current: list[int] = []
    for i in range(len(nodes)):
        b = at.get(i)
        if b is not None:
            if current:
                groups.append((False, current))
            current = []
            if b.kind == "host":
                groups.append((True, [i]))
                continue
        current.append(i)
    if current:
        groups.append((False, current))
    bounded = {id(nodes[i]) for i in found.bounds}
    later = set(outputs)
    stages = []
    for host, idx in reversed(groups):
        seg = [nodes[i] for i in idx]
        made = [o for n in seg for o in n.outputs if o]
        reads = [r for r in dict.fromkeys(r for n in seg for r in _reads(n)) if r not in set(made)]
        inputs = tuple(r for r in reads if r not in params and r not in constants)
        needed = set() if host else needs(seg, skip=bounded)[0]
        static = tuple(r for r in inputs if r in needed)
        stages.append(
            Stage(
                tuple(idx),
                host,
                inputs,
                static,
                tuple(r for r in reads if r in params),
                tuple(o for o in made if o in later),
            )
        )
        later |= set(reads)
    return tuple(reversed(stages))
