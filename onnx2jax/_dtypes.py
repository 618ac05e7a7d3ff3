"""ONNX element types as numpy/ml_dtypes dtypes, and the int64/float64 policy.

Policy: onnx2jax never flips JAX's global x64 switch. With x64 off (JAX's default), int64
tensors are computed as int32 and float64 as float32, exactly as ``jnp.asarray`` would;
shape arithmetic stays exact because it runs in numpy at trace time. Load with
``x64=True`` (or enable ``jax_enable_x64`` yourself) to compute in 64 bits.
"""

from __future__ import annotations

import numpy as np
import onnx.helper

# TensorProto.DataType code -> numpy dtype (ml_dtypes for bfloat16, float8, int4, ...).
_ONNX_TO_NUMPY: dict[int, np.dtype] = {}
for _name, _code in onnx.TensorProto.DataType.items():
    if _code != 0:
        _ONNX_TO_NUMPY[_code] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(_code))
_NUMPY_TO_ONNX: dict[np.dtype, int] = {v: k for k, v in reversed(_ONNX_TO_NUMPY.items())}


def to_numpy_dtype(code: int) -> np.dtype:
    """The numpy dtype of an ONNX ``TensorProto.DataType`` code (e.g. Cast's ``to``)."""
    try:
        return _ONNX_TO_NUMPY[int(code)]
    except KeyError:
        raise ValueError(f"unknown ONNX element type code {code}") from None


def is_numeric(dtype: np.dtype) -> bool:
    """True for dtypes JAX computes with: bool, ints, floats (ml_dtypes too), complex."""
    dtype = np.dtype(dtype)
    if dtype.kind in "biufc":
        return True
    return dtype.kind == "V" and dtype.newbyteorder("=") in _NUMPY_TO_ONNX


def to_onnx_dtype(dtype: np.dtype) -> int:
    """The ONNX ``TensorProto.DataType`` code of a numpy dtype."""
    return _NUMPY_TO_ONNX[np.dtype(dtype)]


def canonical(dtype: np.dtype) -> np.dtype:
    """The dtype JAX actually computes in for ``dtype`` under the current x64 setting."""
    import jax

    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))
