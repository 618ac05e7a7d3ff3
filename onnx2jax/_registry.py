"""The operator registry: (domain, op type) -> implementations keyed by opset version ranges.

An op's Python signature is its ONNX spec: inputs are positional (``None`` when an optional
input is absent), attributes are keyword arguments with the spec's defaults. Ops that need
more (output count, subgraphs, the opset) take a keyword-only ``ctx``.

An implementation registered with ``since=N`` serves every opset version of the op from N
up to the next registered version, including versions newer than any registered one: a new
opset version that only widens the type list keeps working without a code change.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx.defs

# Inputs whose *values* must be known at trace time (they decide shapes), by (domain, op type).
# This is the one place that knows this; the tracer, the loader's analysis and `onnx2jax info`
# all read it.
STATIC_INPUTS: dict[tuple[str, str], tuple[int, ...]] = {
    ("", "Reshape"): (1,),
    ("", "Expand"): (1,),
    ("", "Tile"): (1, 2),  # Tile-1 takes (tiles, axis) as inputs
    ("", "Slice"): (1, 2, 3, 4),
    ("", "Pad"): (1, 3),
    ("", "Squeeze"): (1,),
    ("", "Unsqueeze"): (1,),
    ("", "Split"): (1,),
    ("", "ConstantOfShape"): (0,),
    ("", "Range"): (0, 1, 2),
    ("", "TopK"): (1,),
    ("", "OneHot"): (1,),
    ("", "Resize"): (1, 2, 3),
    ("", "Upsample"): (1,),
    ("", "ReduceSum"): (1,),
    ("", "ReduceMean"): (1,),
    ("", "ReduceMax"): (1,),
    ("", "ReduceMin"): (1,),
    ("", "ReduceProd"): (1,),
    ("", "ReduceL1"): (1,),
    ("", "ReduceL2"): (1,),
    ("", "ReduceLogSum"): (1,),
    ("", "ReduceLogSumExp"): (1,),
    ("", "ReduceSumSquare"): (1,),
    ("", "CumSum"): (1,),
    ("", "CumProd"): (1,),
    ("", "Trilu"): (1,),
    ("", "CenterCropPad"): (1,),
    ("", "DFT"): (1, 2),
    ("", "STFT"): (1, 3),
    ("", "HannWindow"): (0,),
    ("", "HammingWindow"): (0,),
    ("", "BlackmanWindow"): (0,),
    ("", "MelWeightMatrix"): (0, 1, 2, 3, 4),
    ("", "Dropout"): (2,),
    ("", "AffineGrid"): (1,),
    ("", "MaxUnpool"): (2,),
    ("", "Col2Im"): (1, 2),
    ("", "SplitToSequence"): (1,),
    ("", "SequenceAt"): (1,),
    ("", "SequenceInsert"): (2,),
    ("", "SequenceErase"): (1,),
    ("", "Loop"): (0,),  # the trip count: scan outputs have M rows
    ("", "Unique"): (0,),  # data-dependent output shapes: computed at trace time
    ("", "NonZero"): (0,),
    ("", "Compress"): (1,),
    ("", "NonMaxSuppression"): (0, 1, 2, 3, 4),
    ("", "ImageDecoder"): (0,),  # decoded with Pillow at trace time
    # Quantized contrib ops computed through trace-time tables (ops/contrib_quant.py): their
    # scales and zero points, which are initializers in every quantized model.
    ("com.microsoft", "QLinearAdd"): (1, 2, 4, 5, 6, 7),
    ("com.microsoft", "QLinearMul"): (1, 2, 4, 5, 6, 7),
    ("com.microsoft", "QLinearSoftmax"): (1,),
    # total_sequence_length sets the present cache's length (ops/contrib_llm.py).
    ("com.microsoft", "GroupQueryAttention"): (6,),
}


@dataclass(frozen=True)
class OpImpl:
    """One registered implementation of an op for the opset range starting at ``since``."""

    fn: Callable[..., Any]
    domain: str
    op_type: str
    since: int
    takes_ctx: bool
    attr_names: frozenset[str] | None  # None when the function takes **attrs

    @property
    def static_inputs(self) -> tuple[int, ...]:
        return STATIC_INPUTS.get((self.domain, self.op_type), ())


_REGISTRY: dict[tuple[str, str], list[OpImpl]] = {}


def register(op_type: str, *, since: int = 1, domain: str = "") -> Callable:
    """Decorator: register ``fn`` as ``domain::op_type`` for opsets ``since`` and newer.

    Registering the same (domain, op type, since) twice raises.
    """

    def deco(fn: Callable) -> Callable:
        impls = _REGISTRY.setdefault((domain, op_type), [])
        if any(i.since == since for i in impls):
            raise RuntimeError(
                f"{domain or 'ai.onnx'}::{op_type} since {since} is registered twice"
            )
        sig = inspect.signature(fn)
        params = sig.parameters.values()
        takes_ctx = "ctx" in sig.parameters
        if any(p.kind is p.VAR_KEYWORD for p in params):
            attrs = None
        else:
            attrs = frozenset(
                p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "ctx"
            )
        impls.append(OpImpl(fn, domain, op_type, since, takes_ctx, attrs))
        impls.sort(key=lambda i: i.since)
        lookup.cache_clear()
        return fn

    return deco


def _schema_version(domain: str, op_type: str, opset: int) -> int:
    """The since-version of the op's schema in effect at ``opset`` (``opset`` if onnx has none)."""
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except Exception:  # custom domains (com.microsoft, ...) have no schema here
        return opset


@functools.cache
def lookup(domain: str, op_type: str, opset: int) -> OpImpl | None:
    """The implementation for ``op_type`` at ``opset``: the newest one not newer than the schema."""
    version = _schema_version(domain, op_type, opset)
    best = None
    for impl in _REGISTRY.get((domain, op_type), ()):
        if impl.since <= version:
            best = impl
    return best


def registered() -> dict[tuple[str, str], list[OpImpl]]:
    """A copy of the registry, for docs and coverage reports."""
    return {k: list(v) for k, v in _REGISTRY.items()}
