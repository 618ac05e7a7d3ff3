"""Param-only nodes: computed once per params object by the model, inside the trace by ``apply``.

A node whose inputs are all params (float initializers), constants or outputs of other such
nodes computes a function of the weights alone: a weight laid out for a kernel (the layout
pass's Transpose), a BatchNorm folded into a conv, a dequantized weight. XLA cannot fold these
when params are traced arguments, so every call would redo them (PERF_NOTES: 45 ms of
ResNet-18's 107 ms). ``model(...)`` therefore runs them once per params object in their own
jitted function and passes the results into the main program; ``model.apply(params, ...)``
still runs them inside its trace, so it stays pure and differentiable with respect to the
ONNX-named params.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ._analysis import subgraphs
from ._ir import Node

# Nodes with no data inputs that must still run every call (fresh random draws).
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout"}
)  # fmt: skip


@dataclass(frozen=True)
class Prep:
    """Which plan steps run once per params object, and the values they hand to the program."""

    steps: tuple[int, ...] = ()  # indices into plan.steps, in order
    outputs: tuple[str, ...] = ()  # values of those steps that later steps or outputs read
    # The params the other steps and the outputs read (the rest only feed prep): all that
    # ``model(...)`` passes its program, each argument leaf costing ~1 µs of dispatch.
    reads: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.steps)


def find_prep(
    nodes: Sequence[Node],
    params: Collection[str],
    constants: Collection[str],
    needed: Collection[str],
    graph_outputs: Collection[str],
) -> Prep:
    """The param-only steps of ``nodes`` (topologically sorted).

    A step qualifies when every input is a param, a constant or a param-only value, at least
    one is a param-only value or a param (all-constant nodes fold at trace time anyway), it has
    no subgraph, is deterministic, and none of its outputs decides a shape (``needed``: those
    must stay concrete numpy at trace time).
    """
    fixed = set(params)
    derived: set[str] = set(params)
    steps = []
    for i, node in enumerate(nodes):
        ins = [n for n in node.inputs if n]
        if (
            ins
            and node.op_type not in _NONDETERMINISTIC
            and not subgraphs(node)
            and all(n in derived or n in constants for n in ins)
            and any(n in derived for n in ins)
            and not any(o in needed for o in node.outputs)
        ):
            steps.append(i)
            derived.update(o for o in node.outputs if o)
    if not steps:
        return Prep()
    produced = {o for i in steps for o in nodes[i].outputs if o}
    chosen = set(steps)
    read = set(graph_outputs)
    for i, node in enumerate(nodes):
        if i not in chosen:
            read.update(node.inputs)
            for g in subgraphs(node):
                read |= g.outer_names
    outputs = tuple(sorted(produced & read - fixed))
    return Prep(tuple(steps), outputs, frozenset(read & fixed))
