"""``load(dtype=...)``: run a float graph in bfloat16 or float16, params stored in that dtype.

The whole policy lives here, applied at load time to the plan: every op's traced float inputs
are cast to the compute dtype and its traced float outputs back to it (an op that makes a new
float32 value, a ``Cast(to=FLOAT)`` or a float32 constant operand promoting, computes that op in
float32 and rounds once). Graph outputs are returned in their declared float dtype. Matmuls
and convolutions accumulate half-precision operands in float32 in the ops themselves
(``preferred_element_type``, ops/linalg.py and ops/_conv_lowering.py).

Left alone: values known at trace time (numpy shape arithmetic stays exact), integers and
8-bit floats, and the float inputs of quantization ops (their scales keep their precision, so
integer results do not change).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ._errors import Onnx2JaxError
from ._ir import TensorSpec
from ._registry import OpImpl
from ._tracer import Plan
from .ops._common import is_static

DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}

# The float dtypes the policy rounds; float8 & co. are quantization types and stay as they are.
_ROUNDED = frozenset(np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64))

# Ops whose float inputs are quantization scales: they keep the graph's precision.
_QUANT_MODULES = ("quant", "contrib_quant", "quant4", "qat")


def resolve(dtype: Any) -> np.dtype | None:
    """``load(dtype=...)`` as a numpy dtype, or None for the graph's own dtypes."""
    if dtype is None:
        return None
    try:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except TypeError:
        name = repr(dtype)
    if name not in DTYPES:
        raise Onnx2JaxError(
            f"dtype={dtype!r} is not supported; use 'bfloat16', 'float16' or None (the dtypes "
            "the graph declares)"
        )
    return DTYPES[name]


def _keeps_precision(impl: OpImpl) -> bool:
    module = getattr(impl.fn, "__module__", "") or ""
    return module.rpartition(".")[2] in _QUANT_MODULES


def _all_steps(plan: Plan) -> Iterable:
    yield from plan.steps
    for sub in plan.subplans.values():
        yield from sub.steps


def _saturate(arr: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``arr`` in ``dt`` with finite values clipped to its range: float32's min (a common
    attention-mask constant) must not become -inf, or ``0 * mask`` gives NaN."""
    big = float(ml_dtypes.finfo(dt).max)
    out = np.where(np.isfinite(arr), np.clip(arr, -big, big), arr)
    return out.astype(dt)


def cast_params(params: Mapping[str, jax.Array], plan: Plan, dt: np.dtype) -> dict[str, Any]:
    """Float params in ``dt`` (saturating), except those only quantization ops read."""
    read_by_compute: set[str] = set()
    for step in _all_steps(plan):
        if not _keeps_precision(step.impl):
            read_by_compute.update(step.node.inputs)
    out = {}
    for name, value in params.items():
        if np.dtype(value.dtype) in _ROUNDED and name in read_by_compute:
            value = jnp.asarray(_saturate(np.asarray(value, np.float32), dt))
        out[name] = value
    return out


def _rounded(v: Any) -> bool:
    return hasattr(v, "dtype") and np.dtype(v.dtype) in _ROUNDED


def _to(v: Any, dt: np.dtype, numpy_too: bool = False) -> Any:
    if isinstance(v, list):
        return [_to(x, dt, numpy_too) for x in v]
    if isinstance(v, (np.ndarray, np.generic)):
        return _saturate(np.asarray(v), dt) if numpy_too and _rounded(v) else v
    if _rounded(v) and v.dtype != dt:
        return v.astype(dt)
    return v


def _wrap(impl: OpImpl, dt: np.dtype, outs: Sequence[np.dtype], subgraphs: bool) -> OpImpl:
    fn, cast_inputs = impl.fn, not _keeps_precision(impl)

    def run(*args: Any, **kwargs: Any) -> Any:
        if not subgraphs and all(is_static(a) for a in args):
            return fn(*args, **kwargs)  # folded at trace time: exact numpy
        if cast_inputs:
            # A node with subgraphs (Loop, Scan, If) casts numpy floats too: its carried
            # values must keep one dtype while the body computes in ``dt``.
            args = tuple(_to(a, dt, numpy_too=subgraphs) for a in args)
        result = fn(*args, **kwargs)
        if isinstance(result, tuple):
            return tuple(_to(r, outs[i] if i < len(outs) else dt) for i, r in enumerate(result))
        return _to(result, outs[0] if outs else dt)

    run.__module__ = fn.__module__
    return dataclasses.replace(impl, fn=run)


def _wrap_plan(plan: Plan, dt: np.dtype, declared: Mapping[str, np.dtype], shared: dict) -> Plan:
    steps = []
    for step in plan.steps:
        outs = [declared.get(o, dt) for o in step.node.outputs]
        impl = _wrap(step.impl, dt, outs, step.has_subgraphs)
        steps.append(dataclasses.replace(step, impl=impl))
    return dataclasses.replace(plan, steps=steps, subplans=shared)


def wrap_plan(plan: Plan, dt: np.dtype, outputs: Sequence[TensorSpec], x64: bool) -> Plan:
    """``plan`` computing in ``dt``; graph outputs come back in their declared float dtype
    (float64 as float32 unless ``x64``, as without the option)."""
    declared = {}
    for spec in outputs:
        if spec.dtype is not None and np.dtype(spec.dtype) in _ROUNDED:
            want = np.dtype(spec.dtype)
            declared[spec.name] = np.dtype(np.float32) if want.itemsize == 8 and not x64 else want
    shared: dict[int, Plan] = {}  # every plan of the model shares one subplans dict
    for key, sub in plan.subplans.items():
        shared[key] = _wrap_plan(sub, dt, {}, shared)
    return _wrap_plan(plan, dt, declared, shared)
