"""Runs an execution plan: walks the graph once, calling each op on numpy (static) or JAX values.

Values known at trace time stay numpy arrays; a node whose inputs are all numpy is evaluated
right away (constant folding at trace time, exact in 64 bits), so shape subgraphs never reach
XLA and every op input that decides a shape is a concrete value. Everything else is traced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._analysis import subgraphs
from ._errors import NodeError, Onnx2JaxError, StaticValueError
from ._ir import Graph, Node
from ._registry import OpImpl, lookup
from .ops._common import is_static, static_eval, to_static

# Debug knob (read once, never mutated): ONNX2JAX_TRACE=1 prints every node as it is traced.
_TRACE_NODES = os.environ.get("ONNX2JAX_TRACE", "") not in ("", "0")

# The default of ``load(max_loop_iterations=...)``: the most iterations a Loop may run when its
# condition stays true, so that its trip count alone decides the length (ops/control_flow.py).
# A Loop with a malformed trip count (Cast(inf) is 2**63 - 1) then fails at once with a
# NodeError instead of running for hours. A million iterations of a small compiled body take
# about a second.
MAX_LOOP_ITERATIONS = 1_000_000


@dataclass(frozen=True)
class Step:
    node: Node
    impl: OpImpl
    opset: int
    has_subgraphs: bool
    static_inputs: tuple[int, ...]  # input slots that must be concrete (the STATIC_INPUTS table)
    # For a graph break: the error to raise when its static inputs are traced (under a user's
    # own jax.jit of model.apply), naming the break and what to do instead.
    break_note: str = ""


@dataclass
class Plan:
    """A graph with every node bound to its implementation, decided once at load time."""

    graph: Graph
    steps: list[Step]
    subplans: dict[int, Plan] = field(default_factory=dict)  # id(subgraph) -> plan
    # Every value of this graph something reads: node inputs, values its subgraphs read from
    # it, graph outputs. A node must give a value for each of its outputs named here.
    used: frozenset[str] = frozenset()
    max_loop_iterations: int = MAX_LOOP_ITERATIONS


def build_plan(
    graph: Graph,
    opsets: Mapping[str, int],
    missing: list[str],
    _shared: dict[int, Plan] | None = None,
    *,
    max_loop_iterations: int = MAX_LOOP_ITERATIONS,
) -> Plan:
    """Bind every node (subgraphs too) to an implementation; unsupported uses go to ``missing``.

    All plans of one model share one ``subplans`` dict, so any level can find any subgraph.
    """
    shared: dict[int, Plan] = {} if _shared is None else _shared
    steps = []
    for node in graph.nodes:
        domain = node.domain
        opset = opsets.get(domain, opsets.get("", 1) if domain == "" else 1)
        impl = lookup(domain, node.op_type, opset)
        if impl is None:
            missing.append(
                f"{domain or 'ai.onnx'}::{node.op_type} (opset {opset}), node {node.name!r}"
            )
            continue
        if impl.attr_names is not None:
            unknown = set(node.attrs) - impl.attr_names
            if unknown:
                missing.append(
                    f"{domain or 'ai.onnx'}::{node.op_type} (opset {opset}), node {node.name!r}: "
                    f"attribute(s) {sorted(unknown)} not supported"
                )
                continue
        subs = subgraphs(node)
        for g in subs:
            shared[id(g)] = build_plan(
                g, opsets, missing, shared, max_loop_iterations=max_loop_iterations
            )
        steps.append(Step(node, impl, opset, bool(subs), impl.static_inputs))
    used = {o.name for o in graph.outputs}
    for node in graph.nodes:
        used.update(node.inputs)
        for g in subgraphs(node):
            used |= g.outer_names
    used.discard("")
    return Plan(graph, steps, shared, frozenset(used), max_loop_iterations)


@dataclass
class NodeContext:
    """What an op may need beyond its inputs and attributes."""

    node: Node
    opset: int
    plan: Plan
    env: Mapping[str, Any]

    @property
    def num_outputs(self) -> int:
        return len(self.node.outputs)

    def reads(self, i: int) -> bool:
        """Whether the graph reads the node's output ``i`` (an op may skip computing it)."""
        return i < len(self.node.outputs) and self.node.outputs[i] in self.plan.used

    def run_subgraph(self, graph: Graph, *inputs: Any) -> list[Any]:
        """Run a subgraph attribute with positional inputs; it sees the enclosing scope."""
        env = dict(self.env)
        env.update(graph.initializers)
        for spec, v in zip(graph.inputs, inputs, strict=False):
            env[spec.name] = v
        return run(self.plan.subplans[id(graph)], env)


def run(
    plan: Plan,
    env: dict[str, Any],
    outputs: Sequence[str] | None = None,
    skip: frozenset[int] = frozenset(),
) -> list[Any]:
    """Execute ``plan`` on ``env`` (graph inputs, params and constants by name); returns outputs.

    ``outputs`` names the values to return (default: the graph's outputs); steps whose index is
    in ``skip`` are not run (their outputs are in ``env`` already: prepared weights).
    """
    steps = plan.steps if not skip else [s for i, s in enumerate(plan.steps) if i not in skip]
    run_steps(plan, steps, env)
    names = [o.name for o in plan.graph.outputs] if outputs is None else outputs
    try:
        return [env[name] for name in names]
    except KeyError as e:
        raise NodeError(
            f"graph {plan.graph.name!r}: output {e.args[0]!r} was never produced"
        ) from None


def _read(env: Mapping[str, Any], node: Node, name: str) -> Any:
    if not name:
        return None
    try:
        return env[name]
    except KeyError:
        # The loader checks that every input has a producer; this is a value its producer
        # did not give (or a subgraph that reads a name its caller never bound).
        raise NodeError(
            f"{node.describe()} reads {name!r}, which has no value here; the node that should "
            "produce it gave fewer outputs than it declares"
        ) from None


def run_steps(plan: Plan, steps: Sequence[Step], env: dict[str, Any]) -> None:
    """Execute ``steps`` (a part of ``plan``), writing every output into ``env``."""
    for step in steps:
        node = step.node
        args = [_read(env, node, name) for name in node.inputs]
        for i in step.static_inputs:
            if i < len(args) and not is_static(args[i]):
                if step.break_note:
                    raise StaticValueError(step.break_note)
                raise StaticValueError(
                    f"{node.describe()}: input {i} ({node.inputs[i]!r}) decides an output shape, so "
                    "it must be known at trace time, but it depends on runtime data. Feed it as a "
                    "constant/initializer, or pass that graph input as a concrete numpy value "
                    "(the model object does this for you; under your own jax.jit mark it static)."
                )
        if _TRACE_NODES:
            print(f"[onnx2jax] {node.describe()} inputs={[getattr(a, 'shape', a) for a in args]}")
        kwargs = dict(node.attrs)
        if step.impl.takes_ctx:
            kwargs["ctx"] = NodeContext(node, step.opset, plan, env)
        fold = not step.has_subgraphs and all(is_static(a) for a in args)
        try:
            if fold:
                with static_eval():
                    result = step.impl.fn(*args, **kwargs)
                    result = (
                        to_static(result)
                        if not isinstance(result, tuple)
                        else tuple(to_static(r) for r in result)
                    )
            else:
                result = step.impl.fn(*args, **kwargs)
        except (NodeError, StaticValueError) as e:
            if node.describe() in str(e):
                raise
            # An error of the hierarchy raised deep inside an op (a helper that cannot know
            # the node): same class, but naming the node.
            raise type(e)(f"{node.describe()} (opset {step.opset}): {e}") from e
        except Onnx2JaxError:
            raise
        except Exception as e:  # every other failure of an op is a NodeError naming the node
            raise NodeError(
                f"{node.describe()} (opset {step.opset}) failed on inputs "
                f"{_describe_args(node.inputs, args)}: {type(e).__name__}: {e}"
            ) from e
        outs = result if isinstance(result, tuple) else (result,)
        if len(outs) < len(node.outputs):
            lacking = [o for o in node.outputs[len(outs) :] if o in plan.used]
            if lacking:
                raise NodeError(
                    f"{node.describe()} (opset {step.opset}) declares {len(node.outputs)} "
                    f"outputs, but the op gives {len(outs)} here, so {lacking} never get a "
                    "value though the graph reads them. Fix the node's output list."
                )
        for name, value in zip(node.outputs, outs, strict=False):
            if name:
                env[name] = value


def _describe_args(names: Sequence[str], args: Sequence[Any]) -> str:
    parts = []
    for n, a in zip(names, args, strict=False):
        if a is None:
            parts.append(f"{n or '<absent>'}=None")
        elif hasattr(a, "shape"):
            parts.append(f"{n}:{getattr(a, 'dtype', '?')}{list(a.shape)}")
        else:
            parts.append(f"{n}:{type(a).__name__}")
    return "(" + ", ".join(parts) + ")"
