"""Programs with graph breaks: jitted segments run in order, break nodes on the host between them.

``_segments.partition`` decides the stages at load; this module runs them. Each segment is its
own cached ``jax.jit`` (with onnx2jax's compiler options), built once per program.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax

from . import _tracer
from ._compiler import compiler_options
from ._segments import Stage
from ._values import Frozen, as_output, check_params, concrete

if TYPE_CHECKING:
    from ._api import Program


def _segment_fn(prog: Program, stage: Stage):
    """The function of one segment: ``(params, dynamic, static) -> outputs`` (pure, jittable)."""
    steps = [prog.plan.steps[i] for i in stage.nodes]

    def run_segment(params, dynamic, static):
        env: dict[str, Any] = dict(prog.constants)
        env.update(params)
        env.update((k, f.value) for k, f in static)
        env.update(dynamic)
        _tracer.run_steps(prog.plan, steps, env)
        return tuple(env[o] for o in stage.outputs)

    return run_segment


class Staged:
    """A program's segments, each with its own cached ``jax.jit`` (built once per program)."""

    def __init__(self, prog: Program):
        assert prog.stages is not None
        self.calls = []
        for stage in prog.stages:
            fn = None if stage.host else _segment_fn(prog, stage)
            dynamic = tuple(k for k in stage.inputs if k not in stage.static)
            self.calls.append(
                (
                    stage,
                    fn,
                    jax.jit(fn, static_argnums=2, compiler_options=compiler_options())
                    if fn
                    else None,
                    dynamic,
                )
            )

    @property
    def segments(self) -> list:
        """The jitted segments, in order (``_cache_size()`` counts compiles)."""
        return [jitted for _, _, jitted, _ in self.calls if jitted is not None]


def staged(prog: Program) -> Staged:
    if prog.jits.stages is None:
        prog.jits.stages = Staged(prog)
    return prog.jits.stages


def run_stages(
    prog: Program, params: Mapping[str, Any], bound: Mapping[str, Any], jit: bool
) -> tuple[Any, ...]:
    """Run a program with graph breaks on concrete values: segments, then host steps."""
    check_params(prog, params)
    params = {**prog.buffers, **params}  # segments take buffers as arguments, as they do params
    values: dict[str, Any] = dict(bound)
    for stage, fn, jitted, dynamic in staged(prog).calls:
        if stage.host:
            values.update(_host_step(prog, stage, params, values))
            continue
        static = tuple((k, Frozen(values[k])) for k in stage.static)
        outs = (jitted if jit else fn)(
            {k: params[k] for k in stage.params}, {k: values[k] for k in dynamic}, static
        )
        values.update(zip(stage.outputs, outs, strict=True))
    outs = []
    for name in prog.output_names:
        v = (
            values[name]
            if name in values
            else params[name]
            if name in params
            else prog.constants[name]
        )
        outs.append(as_output(v))
    return tuple(outs)


def _host_step(
    prog: Program, stage: Stage, params: Mapping[str, Any], values: Mapping[str, Any]
) -> dict[str, Any]:
    """Run one break node on numpy values (its inputs are fetched from the device at once)."""
    fetched = jax.device_get(
        {**{k: params[k] for k in stage.params}, **{k: values[k] for k in stage.inputs}}
    )
    env: dict[str, Any] = dict(prog.constants)
    env.update({k: concrete(v) for k, v in fetched.items()})
    _tracer.run_steps(prog.plan, [prog.plan.steps[i] for i in stage.nodes], env)
    return {k: env[k] for k in stage.outputs}
