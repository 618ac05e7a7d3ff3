"""Values crossing between the host and onnx2jax's programs: value-specialised inputs made
hashable, outputs as returned to the caller, the params a program needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._errors import InputError


def concrete(value: Any) -> Any:
    """A value-specialised input as numpy: an array, a list of them (a sequence) or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [concrete(v) for v in value]
    return np.asarray(value)


def _key(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return ("seq", tuple(_key(v) for v in value))
    data = tuple(value.ravel().tolist()) if value.dtype.kind == "O" else value.tobytes()
    return (value.dtype.str, value.shape, data)


class Frozen:
    """A concrete input value made hashable, so it can be a static ``jax.jit`` argument."""

    __slots__ = ("value", "_key")

    def __init__(self, value: Any):
        self.value = concrete(value)
        self._key = _key(self.value)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frozen) and self._key == other._key


def check_params(prog, params: Mapping[str, Any]) -> None:
    """Raise ``InputError`` naming the weights a program needs that ``params`` lacks."""
    missing = [
        k
        for k in prog.ir.graph.initializers
        if k not in prog.constants and k not in prog.buffers and k not in params
    ]
    if missing:
        raise InputError(f"params lacks {len(missing)} weight(s): {missing[:5]}; pass model.params")


def as_output(v: Any) -> Any:
    """An output as the caller gets it: numbers as JAX arrays, strings as numpy, lists as lists."""
    if isinstance(v, np.ndarray):
        return v if v.dtype.kind in "OSU" else jnp.asarray(v)
    if isinstance(v, list):
        return [as_output(x) for x in v]
    return v
