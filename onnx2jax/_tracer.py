"""Runs an execution plan: walks the graph once, calling each op on numpy (static) or JAX values.

Values known at trace time stay numpy arrays; a node whose inputs are all numpy is evaluated
right away (constant folding at trace time, exact in 64 bits), so shape subgraphs never reach
XLA and every op input that decides a shape is a concrete value. Everything else is traced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ._analysis import subgraphs
from ._errors import NodeError, Onnx2JaxError, StaticValueError
from ._ir import Graph, Node
from ._registry import OpImpl, lookup

# Debug knob (read once, never mutated): ONNX2JAX_TRACE=1 prints every node as it is traced.
_TRACE_NODES = os.environ.get("ONNX2JAX_TRACE", "") not in ("", "0")


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


def build_plan(
    graph: Graph,
    opsets: Mapping[str, int],
    missing: list[str],
    _shared: dict[int, Plan] | None = None,
) -> Plan:
    """Bind every node (subgraphs too) to an implementation; unsupported uses go to ``missing``.

    All plans of one model share one ``subplans`` dict, so any level can find any subgraph.
    """
    from . import ops  # noqa: F401  (registers every op)

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
            shared[id(g)] = build_plan(g, opsets, missing, shared)
        steps.append(Step(node, impl, opset, bool(subs), impl.static_inputs))
    return Plan(graph, steps, shared)


def is_static(v: Any) -> bool:
    """True for values known at trace time: numpy arrays, or sequences of them."""
    if isinstance(v, np.ndarray):
        return True
    if isinstance(v, list):
        return all(is_static(x) for x in v)
    return v is None


def _to_static(v: Any) -> Any:
    if isinstance(v, list):
        return [_to_static(x) for x in v]
    if v is None:
        return None
    return np.asarray(v)


@contextlib.contextmanager
def _static_eval():
    """Evaluate eagerly even inside a jit trace, in 64 bits so shape arithmetic stays exact."""
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
        yield


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

    def run_subgraph(self, graph: Graph, *inputs: Any) -> list[Any]:
        """Run a subgraph attribute with positional inputs; it sees the enclosing scope."""
        env = dict(self.env)
        env.update(graph.initializers)
        for spec, v in zip(graph.inputs, inputs, strict=False):
            env[spec.name] = v
        return run(self.plan.subplans[id(graph)], env)


def run(plan: Plan, env: dict[str, Any], outputs: Sequence[str] | None = None) -> list[Any]:
    """Execute ``plan`` on ``env`` (graph inputs, params and constants by name); returns outputs.

    ``outputs`` names the values to return (default: the graph's outputs).
    """
    run_steps(plan, plan.steps, env)
    names = [o.name for o in plan.graph.outputs] if outputs is None else outputs
    try:
        return [env[name] for name in names]
    except KeyError as e:
        raise NodeError(
            f"graph {plan.graph.name!r}: output {e.args[0]!r} was never produced"
        ) from None


def run_steps(plan: Plan, steps: Sequence[Step], env: dict[str, Any]) -> None:
    """Execute ``steps`` (a part of ``plan``), writing every output into ``env``."""
    for step in steps:
        node = step.node
        args = [env[name] if name else None for name in node.inputs]
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
                with _static_eval():
                    result = step.impl.fn(*args, **kwargs)
                    result = (
                        _to_static(result)
                        if not isinstance(result, tuple)
                        else tuple(_to_static(r) for r in result)
                    )
            else:
                result = step.impl.fn(*args, **kwargs)
        except Onnx2JaxError:
            raise
        except Exception as e:
            raise NodeError(
                f"{node.describe()} (opset {step.opset}) failed on inputs "
                f"{_describe_args(node.inputs, args)}: {type(e).__name__}: {e}"
            ) from e
        outs = result if isinstance(result, tuple) else (result,)
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
