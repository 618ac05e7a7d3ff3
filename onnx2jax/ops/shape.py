"""Shape and layout ops: Shape, Reshape, Constant, Identity, ... (https://onnx.ai/onnx/operators/)."""

from __future__ import annotations

import numpy as np

from .._registry import register
from ._common import ints, xp


@register("Constant")
def constant(*, value=None, value_float=None, value_floats=None, value_int=None,
             value_ints=None, value_string=None, value_strings=None, sparse_value=None):
    if value is not None:
        return np.asarray(value)
    if sparse_value is not None:
        return np.asarray(sparse_value)
    if value_float is not None:
        return np.asarray(value_float, np.float32)
    if value_floats is not None:
        return np.asarray(value_floats, np.float32)
    if value_int is not None:
        return np.asarray(value_int, np.int64)
    if value_ints is not None:
        return np.asarray(value_ints, np.int64)
    if value_string is not None:
        return np.asarray(value_string, object)
    if value_strings is not None:
        return np.asarray(value_strings, object)
    raise ValueError("Constant has no value attribute")


@register("Identity")
def identity(x):
    return x


@register("Shape")
def shape(x, *, start=0, end=None):
    return np.asarray(x.shape, np.int64)[start:end]


@register("Reshape")
def reshape(x, shape, *, allowzero=0):
    dims = ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return xp(x).reshape(x, dims)
