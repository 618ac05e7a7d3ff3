"""Element-wise math, comparisons, logic, bitwise ops and casts (https://onnx.ai/onnx/operators/)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from .._dtypes import canonical
from .._registry import register
from ._common import dtype_of, symbolic_dims, xp

# -- helpers ------------------------------------------------------------------------------------


def with_consumed_inputs(fn: Callable) -> Callable:
    """``fn`` as opset 1 declares it: also taking the obsolete ``consumed_inputs`` attribute
    (an in-place hint that does not change the result)."""

    def legacy(*args, consumed_inputs=None, **attrs):
        return fn(*args, **attrs)

    sig = inspect.signature(fn)
    extra = inspect.Parameter("consumed_inputs", inspect.Parameter.KEYWORD_ONLY, default=None)
    legacy.__signature__ = sig.replace(parameters=[*sig.parameters.values(), extra])
    legacy.__name__ = legacy.__qualname__ = f"{fn.__name__}_v1"
    legacy.__module__, legacy.__doc__ = fn.__module__, fn.__doc__
    return legacy


def _with_legacy_broadcast(fn: Callable) -> Callable:
    """``fn`` as opsets before 7 declare binary ops: ``b`` broadcasts only with ``broadcast=1``,
    its axes aligned to ``a``'s starting at ``axis`` (at the trailing axes by default)."""

    def legacy(a, b, *, broadcast=0, axis=None, consumed_inputs=None):
        if broadcast and axis is not None:
            start = axis + a.ndim if axis < 0 else axis
            b = xp(b).reshape(b, tuple(b.shape) + (1,) * (a.ndim - start - b.ndim))
        return fn(a, b)

    legacy.__name__ = legacy.__qualname__ = f"{fn.__name__}_v1"
    legacy.__doc__ = fn.__doc__
    return legacy


def _is_int(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.integer)


def _astype(x, dtype):
    """``x`` as ``dtype``: numpy values exactly, JAX values in the dtype JAX computes in."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x).astype(dtype)
    return x.astype(canonical(dtype))


# -- unary math ---------------------------------------------------------------------------------


def _unary(name: str) -> Callable:
    def op(x):
        return getattr(xp(x), name)(x)

    op.__name__ = op.__qualname__ = name
    return op


# op type -> numpy / jax.numpy function: static (numpy) inputs stay numpy for shape arithmetic.
_UNARY = {
    "Abs": "abs",
    "Neg": "negative",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Reciprocal": "reciprocal",
    "Floor": "floor",
    "Ceil": "ceil",
    "Round": "round",  # half to even, in numpy and jax.numpy alike
    "Sign": "sign",
    "Sin": "sin",
    "Cos": "cos",
    "Tan": "tan",
    "Asin": "arcsin",
    "Acos": "arccos",
    "Atan": "arctan",
    "Sinh": "sinh",
    "Cosh": "cosh",
    "Asinh": "arcsinh",
    "Acosh": "arccosh",
    "Atanh": "arctanh",
    "IsNaN": "isnan",
    "Not": "logical_not",
    "BitwiseNot": "invert",
}
# Ops whose opset-1 form carries ``consumed_inputs``; the plain form serves opset 6 on.
_V1_CONSUMED_INPUTS = {"Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil"}

for _op, _name in _UNARY.items():
    _fn = _unary(_name)
    if _op in _V1_CONSUMED_INPUTS:
        register(_op, since=1)(with_consumed_inputs(_fn))
        register(_op, since=6)(_fn)
    else:
        register(_op)(_fn)


@register("Erf", since=9)
def erf(x):
    """https://onnx.ai/onnx/operators/onnx__Erf.html (numpy has no erf; static inputs fold)."""
    return jax.lax.erf(x)


@register("IsInf", since=10)
def is_inf(x, *, detect_negative=1, detect_positive=1):
    """https://onnx.ai/onnx/operators/onnx__IsInf.html"""
    out = xp(x).isinf(x)
    if not detect_negative:
        out = out & (x > 0)
    if not detect_positive:
        out = out & (x < 0)
    return out


# -- binary arithmetic, comparisons, logic -------------------------------------------------------


def add(a, b):
    return xp(a, b).add(a, b)


def sub(a, b):
    return xp(a, b).subtract(a, b)


def mul(a, b):
    return xp(a, b).multiply(a, b)


def div(a, b):
    """https://onnx.ai/onnx/operators/onnx__Div.html: integers truncate toward zero, like C."""
    m = xp(a, b)
    if symbolic_dims(a) or symbolic_dims(b):  # shape arithmetic on jax.export dims (>= 0)
        return np.floor_divide(a, b)
    if not _is_int(a):
        return m.divide(a, b)
    if m is np:
        return np.floor_divide(a - np.fmod(a, b), b)  # exact: a - fmod(a, b) is a multiple of b
    return jax.lax.div(*jnp.broadcast_arrays(a, b))


def pow_(x, y):
    """https://onnx.ai/onnx/operators/onnx__Pow.html: the result has the base's type."""
    m = xp(x, y)
    n = _small_int_exponent(y)
    if m is jnp and n is not None and not _is_int(x):
        # x**3 of the tanh GELU, x**2 of a variance: multiplies, not XLA's general power
        # (exp(y * log|x|) with sign fix-ups), which is slower and no more exact.
        out = jax.lax.integer_pow(x, n)
        shape = np.broadcast_shapes(x.shape, y.shape)
        return out if out.shape == shape else jnp.broadcast_to(out, shape)
    if _is_int(x) and not _is_int(y):  # integer base, float exponent: compute in float
        return _astype(m.power(_astype(x, y.dtype), y), x.dtype)
    return _astype(m.power(x, y), x.dtype)


def _small_int_exponent(y) -> int | None:
    """``y`` as an int when it is one static value in [-4, 4] that is a whole number."""
    if not isinstance(y, (np.ndarray, np.generic)) or y.size != 1:
        return None
    v = float(np.asarray(y).reshape(-1)[0])
    return int(v) if v.is_integer() and abs(v) <= 4 else None


def _binary(name: str) -> Callable:
    def op(a, b):
        return getattr(xp(a, b), name)(a, b)

    op.__name__ = op.__qualname__ = name
    return op


equal, less, greater = _binary("equal"), _binary("less"), _binary("greater")
logical_and, logical_or, logical_xor = (
    _binary(n) for n in ("logical_and", "logical_or", "logical_xor")
)

# Binary ops whose forms before opset 7 take ``broadcast``/``axis`` (Add etc. also ``consumed_inputs``).
for _op, _fn in {
    "Add": add,
    "Sub": sub,
    "Mul": mul,
    "Div": div,
    "Pow": pow_,
    "Equal": equal,
    "Less": less,
    "Greater": greater,
    "And": logical_and,
    "Or": logical_or,
    "Xor": logical_xor,
}.items():
    register(_op, since=1)(_with_legacy_broadcast(_fn))
    register(_op, since=7)(_fn)

for _op, _name in {
    "LessOrEqual": "less_equal",
    "GreaterOrEqual": "greater_equal",
    "BitwiseAnd": "bitwise_and",
    "BitwiseOr": "bitwise_or",
    "BitwiseXor": "bitwise_xor",
}.items():
    register(_op)(_binary(_name))


@register("Mod", since=10)
def mod(a, b, *, fmod=0):
    """https://onnx.ai/onnx/operators/onnx__Mod.html: ``fmod=0`` takes the divisor's sign
    (Python's %), ``fmod=1`` the dividend's (C's fmod)."""
    m = xp(a, b)
    return m.fmod(a, b) if fmod else m.remainder(a, b)


@register("BitShift", since=11)
def bit_shift(x, y, *, direction):
    """https://onnx.ai/onnx/operators/onnx__BitShift.html

    XLA's shifts already give what opset 28 specifies for shifts out of range (negative or
    at least the bit width): 0, or -1 for a right shift of a negative value.
    """
    if direction == "LEFT":
        return jnp.left_shift(x, y)
    if direction == "RIGHT":
        return jnp.right_shift(x, y)  # arithmetic for signed types
    raise ValueError(f"BitShift direction must be 'LEFT' or 'RIGHT', got {direction!r}")


# -- variadic and selection ----------------------------------------------------------------------


def _variadic(name: str) -> Callable:
    def op(*xs):
        return functools.reduce(getattr(xp(*xs), name), xs)

    op.__name__ = op.__qualname__ = name
    return op


def mean(*xs):
    # Times 1/n rather than / n: XLA rewrites a division by a constant that way under jit
    # anyway, so eager and jitted results agree to the bit.
    return _variadic("add")(*xs) * (1 / len(xs))


for _op, _fn in {
    "Sum": _variadic("add"),
    "Max": _variadic("maximum"),
    "Min": _variadic("minimum"),
    "Mean": mean,
}.items():
    register(_op, since=1)(with_consumed_inputs(_fn))
    register(_op, since=6)(_fn)


@register("Where", since=9)
def where(condition, x, y):
    return xp(condition, x, y).where(condition, x, y)


def _clip(x, lo, hi):
    m = xp(x, lo, hi)
    if lo is not None:
        x = m.maximum(x, lo)
    if hi is not None:  # after the lower bound: min > max gives max, as the spec says
        x = m.minimum(x, hi)
    return x


_FLT_MAX = float(np.finfo(np.float32).max)


@register("Clip", since=1)
def clip_v1(x, *, min=None, max=None, consumed_inputs=None):
    return _clip(x, min, max)


@register("Clip", since=6)
def clip_v6(x, *, min=-_FLT_MAX, max=_FLT_MAX):
    return _clip(x, min, max)


@register("Clip", since=11)
def clip(x, min=None, max=None):
    """https://onnx.ai/onnx/operators/onnx__Clip.html (bounds moved to inputs at opset 11)."""
    return _clip(x, min, max)


# -- casts ---------------------------------------------------------------------------------------

_FLOAT8 = {
    np.dtype(t)
    for t in (
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
    )
}
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
# Cast-1 names its target type instead of giving the TensorProto code.
_V1_TYPE_NAMES = {
    "FLOAT": np.float32,
    "DOUBLE": np.float64,
    "FLOAT16": np.float16,
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "STRING": object,
}


def _is_string(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in "OSU"


def _cast_strings(x, dtype: np.dtype):
    """Strings exist only at trace time (numpy): parse them, or format numbers as text."""
    if not isinstance(x, (np.ndarray, np.generic)):
        raise TypeError(
            "string tensors cannot be traced by JAX; only casts of values known at "
            "trace time (constants, shape arithmetic) can involve strings"
        )
    text = np.asarray(x).astype(np.str_)
    if _is_string(dtype):
        return text.astype(object)
    try:
        return text.astype(dtype)
    except (TypeError, ValueError):  # "1e3" as an integer, or a numpy-unknown dtype
        return text.astype(np.float64).astype(dtype)


def _to_e8m0(x, saturate: int, round_mode: str):
    """Float to float8e8m0 (a bare exponent), following onnx.numpy_helper.to_float8e8m0."""
    m = xp(x)
    x = _astype(x, np.float32)
    bits = x.view(np.uint32) if m is np else jax.lax.bitcast_convert_type(x, jnp.uint32)
    exponent = (bits >> 23) & 0xFF
    special = exponent == 0xFF  # NaN and inf keep the all-ones exponent (NaN)
    if round_mode == "up":
        up = (bits & 0x7FFFFF) != 0
    elif round_mode == "nearest":
        guard, rest = (bits & 0x400000) != 0, (bits & 0x3FFFFF) != 0
        up = guard & (rest | (exponent > 0))
    elif round_mode == "down":
        up = m.zeros(bits.shape, bool)
    else:
        raise ValueError(f"round_mode must be 'up', 'down' or 'nearest', got {round_mode!r}")
    up = up & ~special
    if saturate:
        up = up & (exponent != 0xFE)
    out = m.where(special, 0xFF, exponent + up).astype(np.uint8)
    return out.view(_E8M0) if m is np else jax.lax.bitcast_convert_type(out, _E8M0)


def _cast(x, dtype, saturate: int = 1, round_mode: str = "up"):
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and symbolic_dims(x):  # jax.export dims stay dims
        return x
    if _is_string(dtype) or _is_string(x.dtype):
        return _cast_strings(x, dtype)
    if dtype == _E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if dtype in _FLOAT8 and saturate:  # out-of-range values and infinities become +-max
        if x.dtype != np.float64:  # float32 holds every narrower value and each format's max
            x = _astype(x, np.float32)
        big = float(ml_dtypes.finfo(dtype).max)
        x = xp(x).clip(x, -big, big)
    narrow_int = jnp.issubdtype(dtype, jnp.integer) and jnp.iinfo(dtype).bits < 32
    if narrow_int and jnp.issubdtype(x.dtype, jnp.floating):
        # Through int32, so values out of range wrap as in onnxruntime and the reference
        # (XLA alone would saturate; the spec leaves it undefined).
        x = _astype(x, np.int32)
    return _astype(x, dtype)


@register("Cast", since=1)
def cast_v1(x, *, to):
    return _cast(x, _V1_TYPE_NAMES[to.upper()])


@register("Cast", since=6)
def cast(x, *, to, saturate=1, round_mode="up"):
    """https://onnx.ai/onnx/operators/onnx__Cast.html (``saturate`` only affects float8 targets,
    ``round_mode`` only float8e8m0)."""
    return _cast(x, dtype_of(to), saturate, round_mode)


@register("CastLike", since=15)
def cast_like(x, target_type, *, saturate=1, round_mode="up"):
    return _cast(x, target_type.dtype, saturate, round_mode)


@register("BitCast", since=26)
def bit_cast(x, *, to):
    """https://onnx.ai/onnx/operators/onnx__BitCast.html: same bits, another type of equal width."""
    dtype = dtype_of(to)
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x).view(dtype)
    return x.view(canonical(dtype))
