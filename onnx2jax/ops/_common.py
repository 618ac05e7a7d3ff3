"""Helpers shared by op implementations: numpy-or-jnp dispatch and static argument handling."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._dtypes import to_numpy_dtype


def xp(*arrays: Any):
    """``numpy`` when every given array is a numpy value (known at trace time), else ``jax.numpy``.

    Ops on the shape path use this so shape arithmetic stays in exact, cheap numpy.
    """
    for a in arrays:
        if a is not None and not isinstance(a, (np.ndarray, np.generic, int, float, bool)):
            return jnp
    return np


def ints(v: Any) -> list[int]:
    """A static integer tensor (or list) as a list of Python ints (symbolic dims of jax.export
    kept as they are: Shape of a symbolic input gives an object array of them)."""
    a = np.asarray(v)
    if a.dtype == object:
        return [x if _symbolic(x) else int(x) for x in a.reshape(-1)]
    return [int(x) for x in a.reshape(-1)]


def _symbolic(x: Any) -> bool:
    return not isinstance(x, (int, np.integer)) and hasattr(x, "_to_term")  # jax DimExpr


def symbolic_dims(v: Any) -> bool:
    """True for a static value holding symbolic dims (Shape of an input under jax.export)."""
    return isinstance(v, np.ndarray) and v.dtype == object and any(map(_symbolic, v.reshape(-1)))


def axis(a: int, rank: int) -> int:
    """Normalize a possibly negative axis."""
    return a + rank if a < 0 else a


def axes_list(axes: Sequence[int] | None, rank: int) -> list[int]:
    return [axis(int(a), rank) for a in axes] if axes is not None else list(range(rank))


def dtype_of(code: int) -> np.dtype:
    """The numpy dtype of an ONNX element type code (Cast's ``to``, EyeLike's ``dtype``, ...)."""
    return to_numpy_dtype(code)


def astype(x: Any, dtype: np.dtype) -> Any:
    """Cast with numpy for static values (exact int64), jnp otherwise (canonical dtypes)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x).astype(dtype)
    return x.astype(dtype)


# -- trace-time values (the tracer and control flow share these) -------------------------------


def is_static(v: Any) -> bool:
    """True for values known at trace time: numpy arrays, or sequences of them."""
    if isinstance(v, np.ndarray):
        return True
    if isinstance(v, list):
        return all(is_static(x) for x in v)
    return v is None


def to_static(v: Any) -> Any:
    if isinstance(v, list):
        return [to_static(x) for x in v]
    if v is None:
        return None
    return np.asarray(v)


@contextlib.contextmanager
def static_eval():
    """Evaluate eagerly even inside a jit trace, in 64 bits so shape arithmetic stays exact."""
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
        yield
