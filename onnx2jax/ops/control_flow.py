"""Control flow: If, Loop and Scan, lowered at trace time to Python, lax.cond, lax.scan or lax.while_loop.

Subgraphs run through ``ctx.run_subgraph``, which sees the enclosing scope; under
``lax.cond``/``lax.scan``/``lax.while_loop`` the body closure reads outer values as closed-over
constants or tracers, which JAX lifts into the loop.

- **If**: a condition known at trace time runs only the taken branch (so the branches may
  differ in shape, and sequences or optionals may differ in structure). A runtime condition
  becomes ``lax.cond``, which needs both branches to give the same shapes and dtypes.
- **Loop** tries these lowerings in order and uses the first that fits:

  1. every input known at trace time: run the body in Python at trace time (constant folding),
     as long as everything it produces stays static, for at most ``MAX_UNROLL`` iterations
     (a longer loop is compiled by the next lowerings instead);
  2. static trip count, condition true throughout: ``lax.scan`` (scan outputs stacked);
  3. condition decided at trace time each iteration: unroll in Python with a static iteration
     number (needed when the body slices by the iteration number or grows a sequence; at most
     ``MAX_UNROLL`` iterations);
  4. otherwise ``lax.while_loop``: only without scan outputs, since their length would then be
     data-dependent, and with loop-carried values of fixed shapes.

  The trip count ``M`` is in ``STATIC_INPUTS``: scan outputs have ``M`` rows, so a graph input
  feeding it is specialised on its value (one compile per value). ``M <= 0`` runs no iteration.

  Where the condition stays true, so that ``M`` alone decides the length (``lax.scan``, or a
  ``lax.while_loop`` whose condition is a constant), a Loop may run at most
  ``load(max_loop_iterations=...)`` iterations (default 1,000,000); a longer one, or one
  without ``M`` that would never end, raises NodeError at once instead of running for hours
  (a malformed trip count such as Cast(inf) is 2**63 - 1). A loop whose condition is computed
  at run time is not limited.
- **Scan** (opset 8 with a batch axis, 9+ with axes and directions) is ``lax.scan``; when the
  body needs static values and the inputs are static it is unrolled at trace time instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._errors import NodeError, StaticValueError
from .._registry import register
from ._common import axis as norm_axis
from ._common import ints, is_static, static_eval, xp

# Most iterations unrolled (or folded on concrete values) at trace time: beyond this the
# jaxpr and compile time, or the time spent in Python, grow too large to be sensible.
MAX_UNROLL = 4096


class _Fallback(Exception):
    """This lowering does not fit the loop; the next one is tried (the message says why)."""


class _TooLong(Exception):
    """The loop provably runs more than ``max_loop_iterations``: no lowering is tried."""


def _where(ctx) -> str:
    return f"{ctx.node.describe()} (opset {ctx.opset})"


def _truth(cond: Any) -> bool:
    """A static single-element condition as a Python bool."""
    a = np.asarray(cond)
    if a.size != 1:
        raise ValueError(f"the condition must have one element, got shape {list(a.shape)}")
    return bool(a.reshape(-1)[0])


def _pred(cond: Any) -> jax.Array:
    """A traced single-element condition as a scalar bool."""
    return jnp.reshape(jnp.asarray(cond), ()).astype(bool)


def _canon(tree: Any) -> Any:
    """Every leaf as a JAX array (canonical dtype), as lax carries and branch outputs need."""
    return jax.tree.map(jnp.asarray, tree)


def _signature(tree: Any) -> tuple:
    """Structure, shapes and dtypes of a pytree of arrays (weak types ignored)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(x.shape), np.dtype(x.dtype)) for x in leaves)


def _describe(tree: Any) -> str:
    if tree is None:
        return "None (empty optional)"
    if isinstance(tree, (list, tuple)):
        return "[" + ", ".join(_describe(x) for x in tree) + "]"
    return f"{np.dtype(tree.dtype)}{list(tree.shape)}"


def _index_dtype() -> np.dtype:
    """int64 where JAX computes it (x64 on), else int32."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.int64))


def _stack(values: Sequence[Any], what: str) -> Any:
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) > 1:
        raise ValueError(f"{what} changes shape across iterations: {sorted(shapes)}")
    return xp(*values).stack(values)


# -- If -------------------------------------------------------------------------------------


@register("If")
def if_(cond, *, then_branch, else_branch, ctx):
    """https://onnx.ai/onnx/operators/onnx__If.html"""
    if is_static(cond):
        taken = then_branch if _truth(cond) else else_branch
        return tuple(ctx.run_subgraph(taken))
    seen: dict[str, Any] = {}

    def branch(graph, key: str) -> Callable[[], Any]:
        def run():
            outs = _canon(ctx.run_subgraph(graph))
            seen[key] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), outs)
            return outs

        return run

    try:
        outs = lax.cond(_pred(cond), branch(then_branch, "then"), branch(else_branch, "else"))
    except TypeError as e:
        if (
            "then" in seen
            and "else" in seen
            and _signature(seen["then"]) != _signature(seen["else"])
        ):
            raise NodeError(
                f"{_where(ctx)}: the condition depends on runtime data, so both branches are "
                "compiled into one jax.lax.cond, which needs them to give the same shapes and "
                f"dtypes, but the branches' shapes differ: then -> {_describe(seen['then'])}, "
                f"else -> {_describe(seen['else'])}. Make the condition a constant, run eagerly "
                "(model.apply on numpy inputs), or make both branches agree."
            ) from e
        raise
    return tuple(outs)


# -- Loop -----------------------------------------------------------------------------------


@register("Loop")
def loop(M=None, cond=None, *v_initial, body, ctx):
    """https://onnx.ai/onnx/operators/onnx__Loop.html (lowerings: see the module docstring)."""
    try:
        return _lower_loop(M, cond, v_initial, body, ctx)
    except _TooLong as e:
        raise NodeError(
            f"{_where(ctx)}: {e}, more than max_loop_iterations="
            f"{ctx.plan.max_loop_iterations}. Check the trip count M (a malformed one, e.g. "
            "Cast(inf), is 2**63 - 1) and the condition, or load with a larger "
            "onnx2jax.load(..., max_loop_iterations=N)."
        ) from None


def _lower_loop(M, cond, v_initial: Sequence[Any], body, ctx) -> tuple:
    n = len(v_initial)
    k = len(body.outputs) - 1 - n
    if k < 0 or len(body.inputs) != n + 2:
        raise ValueError(
            f"the body takes {len(body.inputs)} inputs and gives {len(body.outputs)} outputs, "
            f"which does not fit {n} loop-carried value(s)"
        )
    trips = None if M is None else ints(M)
    if trips is not None and len(trips) != 1:
        raise ValueError(f"the trip count M must have one element, got {len(trips)}")
    trip = None if trips is None else trips[0]
    lp = _Loop(ctx, body, trip, list(v_initial), k)
    if cond is not None and not is_static(cond):
        if k:
            raise NodeError(
                f"{_where(ctx)}: the loop condition depends on runtime data, so the number of "
                f"iterations, and with it the length of the {k} scan output(s), is only known at "
                "run time; one XLA program needs static shapes. Make the condition a constant, "
                "run eagerly (model.apply on numpy inputs), or collect results in a fixed-size "
                "loop-carried tensor instead of scan outputs."
            )
        try:
            return lp.while_loop(_pred(cond))
        except StaticValueError as e:
            raise StaticValueError(
                f"{_where(ctx)}: the loop condition depends on runtime data, so the loop runs as "
                "jax.lax.while_loop, where the iteration number and loop-carried values are "
                f"traced; but the body needs one of them known at trace time: {e}"
            ) from e
    if (cond is not None and not _truth(cond)) or (trip is not None and trip <= 0):
        return lp.no_iterations()
    attempts: list[tuple[str, Callable[[], tuple]]] = []
    if is_static(list(v_initial)):
        attempts.append(("folding at trace time", lambda: lp.unrolled(static_only=True)))
    if trip is not None:
        attempts.append(("lax.scan", lp.scan))
    attempts.append(("unrolling at trace time", lambda: lp.unrolled(static_only=False)))
    if k == 0:
        attempts.append(("lax.while_loop", lambda: lp.while_loop(True, lp.concrete)))
    reasons = []
    for name, attempt in attempts:
        try:
            return attempt()
        except _Fallback as e:
            reasons.append(f"{name}: {e}")
    raise NodeError(f"{_where(ctx)}: no lowering of this Loop fits: " + "; ".join(reasons))


class _Loop:
    """One Loop node's lowerings; each raises _Fallback when it does not fit."""

    def __init__(self, ctx, body, trip: int | None, v_initial: list, k: int):
        self.ctx, self.body, self.trip, self.v, self.k = ctx, body, trip, v_initial, k
        self.n = len(v_initial)
        self.limit = ctx.plan.max_loop_iterations
        # Set when folding gave up only for the number of iterations: every value the loop
        # reads is known at trace time, so it can run compiled, right now, with a bound.
        self.concrete = False

    def check_trip(self) -> None:
        """For a condition that stays true: the trip count alone decides the length."""
        if self.trip is None:
            raise _TooLong("its condition stays true and it has no trip count M: it never ends")
        if self.trip > self.limit:
            raise _TooLong(f"its condition stays true, so it runs M={self.trip} iterations")

    def step(self, i: Any, cond: Any, vs: Sequence[Any]) -> tuple[Any, list, list]:
        outs = self.ctx.run_subgraph(self.body, i, cond, *vs)
        return outs[0], list(outs[1 : 1 + self.n]), list(outs[1 + self.n :])

    def no_iterations(self) -> tuple:
        if not self.k:
            return tuple(self.v)
        # Scan outputs are empty; run the body once (dead code for XLA) just for their shapes.
        _, _, ys = self.step(np.asarray(0, np.int64), np.asarray(True), self.v)
        return (*self.v, *(xp(y).zeros((0, *y.shape), y.dtype) for y in ys))

    def unrolled(self, *, static_only: bool) -> tuple:
        if self.concrete:
            raise _Fallback("folding already went past the limit")
        i, go, vs, ys, traced = 0, True, self.v, [], False
        while go and (self.trip is None or i < self.trip):
            c, vs, y = self.step(np.asarray(i, np.int64), np.asarray(True), vs)
            if not is_static(c):
                raise _Fallback("the condition depends on runtime data")
            if not is_static([vs, y]):
                if static_only:
                    raise _Fallback("the body reads runtime data")
                traced = True
            if i >= MAX_UNROLL:
                self.concrete = not traced
                raise _Fallback(f"it would unroll more than {MAX_UNROLL} iterations")
            go = _truth(c)
            ys.append(y)
            i += 1
        scans = [_stack([y[j] for y in ys], f"scan output {j}") for j in range(self.k)]
        return (*vs, *scans)

    def scan(self) -> tuple:
        v0 = _canon(self.v)
        sig0 = _signature(v0)

        def step(carry, _):
            i, vs = carry
            c, vs, ys = self.step(i, np.asarray(True), vs)
            if not is_static(c):
                raise _Fallback("the condition depends on runtime data")
            if not _truth(c):
                raise _Fallback("the condition turns false")
            self.check_trip()  # a condition static inside the scan body is the same every time
            vs = _canon(vs)
            if _signature(vs) != sig0:
                raise _Fallback(
                    f"loop-carried values change shape: {_describe(self.v)} -> {_describe(vs)}"
                )
            return (i + 1, vs), _canon(ys)

        try:
            (_, vs), ys = lax.scan(
                step, (jnp.asarray(0, _index_dtype()), v0), None, length=self.trip
            )
        except StaticValueError as e:
            raise _Fallback(f"the body needs a static value ({e})") from e
        except NodeError as e:
            raise _Fallback(f"the body fails with a traced iteration number ({e})") from e
        return (*vs, *ys)

    def while_loop(self, go: Any, concrete: bool = False) -> tuple:
        """``lax.while_loop``; on a ``concrete`` loop it runs at once, at most ``limit`` times."""
        with static_eval() if concrete else contextlib.nullcontext():
            return self._while_loop(go, concrete)

    def _while_loop(self, go: Any, concrete: bool) -> tuple:
        v0 = _canon(self.v)
        sig0 = _signature(v0)
        idt = _index_dtype()
        trip = self.trip if self.trip is not None and self.trip <= np.iinfo(idt).max else None
        bound = self.limit if concrete else None

        def cond_fn(state):
            i, c, _ = state
            go = c if trip is None else c & (i < trip)
            return go if bound is None else go & (i < bound)

        def body_fn(state):
            i, _, vs = state
            # The body runs only while the condition holds, so its condition input is True:
            # a static True lets a body that passes it on show a condition that never ends.
            c, vs, _ = self.step(i, np.asarray(True), vs)
            if is_static(c) and _truth(c):
                self.check_trip()  # a constant true condition: M alone decides the length
            vs = _canon(vs)
            if _signature(vs) != sig0:
                raise NodeError(
                    f"{_where(self.ctx)}: the loop runs as jax.lax.while_loop (its condition "
                    "depends on runtime data), which needs loop-carried values of fixed shapes, "
                    f"but they change: {_describe(self.v)} -> {_describe(vs)}. Make the "
                    "condition and trip count constants so the loop can be unrolled."
                )
            return i + 1, _pred(c), vs

        i, c, vs = lax.while_loop(cond_fn, body_fn, (jnp.asarray(0, idt), _pred(go), v0))
        if bound is not None:
            if bool(c) and int(i) >= bound and (self.trip is None or self.trip > bound):
                raise _TooLong(f"it ran {bound} iterations on values known at trace time")
            return tuple(np.asarray(v) for v in vs)
        return tuple(vs)


# -- Scan -----------------------------------------------------------------------------------


def _scan_core(ctx, body, states: list, xs: list, length: int) -> tuple[list, list]:
    """Run ``body`` over axis 0 of ``xs`` with ``states`` carried; returns (states, stacked ys)."""
    n = len(states)

    def unroll(static_only: bool) -> tuple[list, list]:
        vs, ys = states, []
        for t in range(length):
            outs = ctx.run_subgraph(body, *vs, *(x[t] for x in xs))
            if static_only and not is_static(outs):
                raise _Fallback("the body reads runtime data")
            if not static_only and t >= MAX_UNROLL:
                raise _Fallback(f"it would unroll more than {MAX_UNROLL} iterations")
            vs = list(outs[:n])
            ys.append(outs[n:])
        k = len(body.outputs) - n
        return vs, [_stack([y[j] for y in ys], f"scan output {j}") for j in range(k)]

    if length > 0 and is_static([states, xs]):
        try:
            return unroll(static_only=True)
        except _Fallback:
            pass
    v0 = _canon(states)
    sig0 = _signature(v0)

    def step(carry, x):
        outs = ctx.run_subgraph(body, *carry, *x)
        vs = _canon(list(outs[:n]))
        if _signature(vs) != sig0:
            raise _Fallback(f"state values change shape: {_describe(v0)} -> {_describe(vs)}")
        return vs, _canon(list(outs[n:]))

    try:
        vs, ys = lax.scan(step, v0, _canon(xs), length=length)
        return list(vs), list(ys)
    except (_Fallback, StaticValueError, NodeError) as e:
        reason = e
    try:
        return unroll(static_only=False)
    except _Fallback as e:
        raise NodeError(
            f"{_where(ctx)}: cannot lower this Scan: lax.scan: {reason}; unrolling: {e}"
        ) from None


@register("Scan", since=8)
def scan_v8(sequence_lens, *args, body, num_scan_inputs, directions=None, ctx):
    """https://onnx.ai/onnx/operators/onnx__Scan.html (opset 8: axis 0 is a batch axis, axis 1
    the scanned one). ``sequence_lens`` must be absent or all equal to the sequence length."""
    n = len(args) - num_scan_inputs
    states, xs = list(args[:n]), list(args[n:])
    length = xs[0].shape[1]
    if sequence_lens is not None:
        if not is_static(sequence_lens) or any(s != length for s in ints(sequence_lens)):
            raise NodeError(
                f"{_where(ctx)}: sequence_lens shorter than the sequence (or not known at trace "
                "time) is not supported; pass no sequence_lens, or pad the batch."
            )
    dirs = directions or [0] * num_scan_inputs

    def one(states_b, xs_b):
        xs_b = [jnp.flip(x, 0) if d else x for x, d in zip(xs_b, dirs, strict=True)]
        return _scan_core(ctx, body, list(states_b), list(xs_b), length)

    vs, ys = jax.vmap(one)(_canon(states), _canon(xs))
    # ys are [batch, seq, ...] already (vmap adds the batch axis in front).
    return tuple([*vs, *ys])


@register("Scan", since=9)
def scan(
    *args,
    body,
    num_scan_inputs,
    scan_input_axes=None,
    scan_input_directions=None,
    scan_output_axes=None,
    scan_output_directions=None,
    ctx,
):
    """https://onnx.ai/onnx/operators/onnx__Scan.html"""
    m = num_scan_inputs
    n = len(args) - m
    k = len(body.outputs) - n
    states, xs = list(args[:n]), list(args[n:])
    in_axes = scan_input_axes or [0] * m
    in_dirs = scan_input_directions or [0] * m
    out_axes = scan_output_axes or [0] * k
    out_dirs = scan_output_directions or [0] * k
    moved = []
    for x, a, d in zip(xs, in_axes, in_dirs, strict=True):
        x = xp(x).moveaxis(x, norm_axis(a, x.ndim), 0)
        moved.append(xp(x).flip(x, 0) if d else x)
    lengths = {x.shape[0] for x in moved}
    if len(lengths) != 1:
        raise ValueError(f"scan inputs have different lengths along their scan axes: {lengths}")
    vs, ys = _scan_core(ctx, body, states, moved, lengths.pop())
    outs = []
    for y, a, d in zip(ys, out_axes, out_dirs, strict=True):
        y = xp(y).flip(y, 0) if d else y
        outs.append(xp(y).moveaxis(y, 0, norm_axis(a, y.ndim)))
    return tuple([*vs, *outs])
