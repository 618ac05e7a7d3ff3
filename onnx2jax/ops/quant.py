"""Quantization ops: (De)QuantizeLinear, DynamicQuantizeLinear and the integer MatMul/Conv family."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from .._dtypes import canonical
from .._registry import register
from ._common import astype, dtype_of, ints, xp
from ._common import axis as norm_axis
from ._conv_lowering import conv_pads

# Integer semantics are exact: products accumulate in int32 (wrapping, as the spec allows and
# onnxruntime does), x / scale rounds half to even, and results saturate to the target range
# before the cast. Requantization (QLinearMatMul/QLinearConv) multiplies the int32 accumulator
# by a float32 a_scale * b_scale / y_scale, as onnxruntime does.

_FLOAT8 = frozenset(
    np.dtype(t)
    for t in (
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
    )
)


def _is_float(dtype) -> bool:
    """Float types, ml_dtypes' (bfloat16, float8, float4, ...) included; int4/int2 are not."""
    return np.dtype(dtype).name.startswith(("float", "bfloat"))


def _int_range(dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype)  # knows int2/int4 as well as the numpy integers
    return int(info.min), int(info.max)


def _param(v, shape, axis, block_size):
    """Broadcast a scale or zero point against ``shape``: per tensor, per axis, or blocked."""
    m = xp(v)
    if v.ndim == 0 or (v.size == 1 and not block_size):
        return m.reshape(v, ())
    a = norm_axis(axis, len(shape))
    if not block_size:
        if v.ndim != 1 or v.shape[0] != shape[a]:
            raise ValueError(
                f"a per-axis scale/zero point must be 1-D of length {shape[a]} (axis {axis} of "
                f"{list(shape)}), got shape {list(v.shape)}"
            )
        return m.reshape(v, [shape[a] if i == a else 1 for i in range(len(shape))])
    if v.ndim != len(shape):
        raise ValueError(
            f"a blocked scale/zero point must have rank {len(shape)}, got shape {list(v.shape)}"
        )
    # Each scale covers block_size consecutive elements on the axis; the last block may be short.
    v = m.repeat(v, block_size, axis=a)
    v = m.take(v, m.arange(shape[a]), axis=a)
    if tuple(v.shape) != tuple(shape):
        raise ValueError(
            f"blocked scale/zero point of shape {list(v.shape)} does not fit x {list(shape)}"
        )
    return v


def exact_div(a, b):
    """``a / b``, correctly rounded (IEEE division), with numpy or JAX operands.

    XLA rewrites a division by a broadcast or constant divisor into a multiplication by its
    reciprocal, which is one ulp off for about a quarter of all values; in quantization one
    ulp decides a rounding tie, so results would differ from onnxruntime's. Hiding the
    divisor behind an optimization barrier keeps the true division (the barrier vanishes
    after simplification: nothing is materialized).
    """
    if isinstance(a, (np.ndarray, np.generic)) and isinstance(b, (np.ndarray, np.generic)):
        return a / b
    a, b = jnp.asarray(a), jnp.asarray(b)
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    return jnp.broadcast_to(a, shape) / jax.lax.optimization_barrier(jnp.broadcast_to(b, shape))


def _saturate_int(m, q, dtype):
    """Rounded float values -> integer ``dtype``, clipped to its range first (no wraparound)."""
    lo, hi = _int_range(dtype)
    return astype(m.clip(q, lo, hi), dtype)


def _to_float8(m, q, dtype, saturate):
    if saturate:
        # Out-of-range values (infinities included) become the largest finite value; NaN stays.
        big = float(ml_dtypes.finfo(dtype).max)
        q = m.where(m.isnan(q), q, m.clip(q, -big, big))
    return astype(q, dtype)


def _quantize(x, scale, zero_point, out_dtype, *, axis=1, saturate=1, block_size=0, precision=0):
    """y = saturate(round(x / scale) + zero_point), as QuantizeLinear defines it."""
    m = xp(x, scale, zero_point)
    shape = tuple(x.shape)
    s = _param(scale, shape, axis, block_size)
    if precision:
        dt = dtype_of(precision)
    elif not _is_float(x.dtype):
        dt = np.dtype(np.float64)  # integer x: true division, as numpy (and the reference) does
    elif _is_float(s.dtype):
        # A float8e8m0 scale (a power of two) has no promotion path; divide in float32.
        sdt = np.float32 if np.dtype(s.dtype).itemsize == 1 else s.dtype
        dt = np.dtype(jnp.promote_types(x.dtype, sdt))
    else:
        dt = np.dtype(x.dtype)  # an int32 scale divides in x's type
    dt = dt if m is np else canonical(dt)
    q = exact_div(astype(x, dt), astype(s, dt))
    zp = None if zero_point is None else _param(zero_point, shape, axis, block_size)
    out_dtype = np.dtype(out_dtype)
    if not _is_float(out_dtype):
        q = m.round(q)  # half to even, in both numpy and JAX
        if zp is not None:
            q = q + astype(zp, dt)
        return _saturate_int(m, q, out_dtype)
    if out_dtype in _FLOAT8:
        return _to_float8(m, q, out_dtype, saturate)  # float8 zero points must be 0: ignored
    # float4e2m1, float6: no infinity encoding, so the cast itself saturates.
    if zp is not None:
        q = q + astype(zp, dt)
    if m is not np and out_dtype.itemsize == 1 and out_dtype.name.startswith("float6"):
        raise NotImplementedError(f"XLA has no {out_dtype.name} type; only constant inputs work")
    return astype(q, out_dtype)


@register("QuantizeLinear", since=10)
def quantize_linear(
    x, y_scale, y_zero_point=None, *, axis=1, saturate=1, block_size=0, output_dtype=0, precision=0
):
    """https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html (all versions: axis 13,
    saturate 19, block_size/output_dtype 21, precision 23)."""
    if y_zero_point is not None:
        out = np.dtype(y_zero_point.dtype)
        if output_dtype and dtype_of(output_dtype) != out:
            raise ValueError(
                f"output_dtype {dtype_of(output_dtype)} differs from the zero point's {out}"
            )
    else:
        out = dtype_of(output_dtype) if output_dtype else np.dtype(np.uint8)
    return _quantize(
        x,
        y_scale,
        y_zero_point,
        out,
        axis=axis,
        saturate=saturate,
        block_size=block_size,
        precision=precision,
    )


@register("DequantizeLinear", since=10)
def dequantize_linear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    """https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html: y = (x - zero_point) * scale.

    Computed in float32 (the spec's types are at most float32) and cast to ``output_dtype``
    (opset 23), else to the scale's type (float32 for a float8e8m0 scale). Float8/float4 zero
    points must be 0 and are ignored.
    """
    shape = tuple(x.shape)
    dx = astype(x, np.float32)
    if x_zero_point is not None and not _is_float(x.dtype):
        dx = dx - astype(_param(x_zero_point, shape, axis, block_size), np.float32)
    y = dx * astype(_param(x_scale, shape, axis, block_size), np.float32)
    if output_dtype:
        out = dtype_of(output_dtype)
    elif np.dtype(x_scale.dtype).itemsize == 1:
        out = np.dtype(np.float32)  # a float8e8m0 scale is no output type; float32 is its value
    else:
        out = np.dtype(x_scale.dtype)
    return astype(y, out)


@register("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(x):
    """https://onnx.ai/onnx/operators/onnx__DynamicQuantizeLinear.html -> (y, scale, zero point).

    The range always includes 0. An all-zero input gets scale 1, as in onnxruntime (onnx's
    reference gives 1/255); y and the zero point are 0 either way.
    """
    x = jnp.asarray(x, jnp.float32)
    hi = jnp.maximum(0.0, jnp.max(x))
    lo = jnp.minimum(0.0, jnp.min(x))
    scale = jnp.where(hi == lo, jnp.float32(1.0), exact_div(hi - lo, jnp.float32(255.0)))
    zp = jnp.round(jnp.clip(0.0 - exact_div(lo, scale), 0.0, 255.0))
    y = jnp.clip(jnp.round(exact_div(x, scale)) + zp, 0.0, 255.0).astype(jnp.uint8)
    return y, scale, zp.astype(jnp.uint8)


# -- integer matmul and convolution ----------------------------------------------------------


def _row_param(v):
    """A per-row parameter of the left matmul operand: a 1-D [M] vector applies along rows."""
    m = xp(v)
    return m.reshape(v, (-1, 1)) if v.ndim == 1 else v


def _centered(x, zero_point, *, rows=False):
    """x - zero_point in int32 (exact for every 8/16-bit input)."""
    x = jnp.asarray(x).astype(jnp.int32)
    if zero_point is None:
        return x
    zp = _row_param(zero_point) if rows else zero_point
    return x - jnp.asarray(zp).astype(jnp.int32)


def _is_int8(*xs) -> bool:
    return all(np.dtype(x.dtype) in (np.dtype(np.int8), np.dtype(np.uint8)) for x in xs)


def _int8(x, zero_point):
    """An 8-bit operand and its zero point as (int8 x, int32 zero point or None), same x - zp.

    uint8 shifts by -128 (``x ^ 0x80``) and its zero point with it, so products run as
    s8 x s8 -> s32, which XLA's CPU dot runs about 2x faster than s32 x s32 (benchmarks/NOTES.md
    entry 6). A zero point known to be 0 at trace time is None: no correction term.
    """
    x = jnp.asarray(x)
    shift = 128 if x.dtype == jnp.uint8 else 0
    if shift:
        x = jax.lax.bitcast_convert_type(x ^ np.uint8(0x80), jnp.int8)
    zp = np.int32(0) if zero_point is None else zero_point
    zp = astype(zp, np.int32) - np.int32(shift)
    if isinstance(zp, (np.ndarray, np.generic)) and not zp.any():
        return x, None
    return x, zp


def _int_matmul(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.int32)


def _matmul_acc(a, a_zero_point, b, b_zero_point):
    """sum_k (a - za)(b - zb) in int32; zero points per tensor, per row of a, per column of b.

    8-bit operands multiply as int8 and the zero points enter as corrections:
    sum (a - za)(b - zb) = sum a*b - zb * sum_k a - za * sum_k (b - zb), exact modulo 2^32 as the
    int32 accumulation of the spec is.
    """
    za = None if a_zero_point is None else _row_param(a_zero_point)
    if not _is_int8(a, b) or a.ndim < 2 or b.ndim < 2:
        return _int_matmul(_centered(a, za), _centered(b, b_zero_point))
    a8, za = _int8(a, za)
    b8, zb = _int8(b, b_zero_point)
    if za is None:
        acc = _int_matmul(a8, b8)
    else:
        # sum_k b (per column) comes from the same dot: a row of ones appended to a. A separate
        # reduction would read the weight again as int32 on every call (BERT-base: ~100 ms).
        k = a8.shape[-1]
        rows = a8.reshape(-1, k) if b8.ndim == 2 else a8
        ones = jnp.ones((*rows.shape[:-2], 1, k), jnp.int8)
        full = _int_matmul(jnp.concatenate([rows, ones], axis=-2), b8)
        acc, colsum = full[..., :-1, :], full[..., -1:, :]
        if b8.ndim == 2:
            acc = acc.reshape(*a8.shape[:-1], acc.shape[-1])
        if zb is not None:
            colsum = colsum - k * zb
        acc = acc - za * colsum
    if zb is not None:
        acc = acc - jnp.sum(a8, axis=-1, keepdims=True, dtype=jnp.int32) * zb
    return acc


@register("MatMulInteger", since=10)
def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    """https://onnx.ai/onnx/operators/onnx__MatMulInteger.html; int32 accumulation.

    Zero points: scalar, per row of ``a`` ([M]) / per column of ``b`` ([N]), or N-D.
    """
    return _matmul_acc(a, a_zero_point, b, b_zero_point)


def _requantize(acc, multiplier, y_zero_point, out_dtype):
    """Round acc * multiplier half to even, add the zero point, saturate to ``out_dtype``."""
    q = jnp.round(acc.astype(jnp.float32) * multiplier)
    if y_zero_point is not None:
        q = q + jnp.asarray(y_zero_point).astype(jnp.float32)
    lo, hi = _int_range(out_dtype)
    return jnp.clip(q, lo, hi).astype(out_dtype)


def _f32(v):
    return jnp.asarray(v).astype(jnp.float32)


@register("QLinearMatMul", since=10)
def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    """https://onnx.ai/onnx/operators/onnx__QLinearMatMul.html (float8 operands: opset 21)."""
    out = np.dtype(y_zero_point.dtype) if y_zero_point is not None else np.dtype(a.dtype)
    if _is_float(a.dtype) or _is_float(out):
        # float8: dequantize, multiply in float32, quantize (zero points are 0 for float8).
        av = _f32(a) * _f32(_row_param(a_scale))
        bv = _f32(b) * _f32(b_scale)
        return _quantize(jnp.matmul(av, bv), _f32(y_scale), y_zero_point, out)
    acc = _matmul_acc(a, a_zero_point, b, b_zero_point)
    multiplier = exact_div(_f32(_row_param(a_scale)) * _f32(b_scale), _f32(y_scale))
    return _requantize(acc, multiplier, y_zero_point, out)


def _conv_taps(x, pad_value, kernel, *, auto_pad, dilations, pads, strides):
    """The padded kernel taps of ``x`` [N, C, *spatial]: a list of [N, C, *out], and out."""
    nd = x.ndim - 2
    strides = ints(strides) if strides else [1] * nd
    dilations = ints(dilations) if dilations else [1] * nd
    pad = conv_pads(auto_pad, x.shape[2:], kernel, strides, dilations, pads)
    x = jnp.pad(x, [(0, 0), (0, 0), *pad], constant_values=pad_value)
    n, c = x.shape[:2]
    out_sp = [
        (x.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(nd)
    ]
    taps = []
    for tap in np.ndindex(*kernel):
        start = [0, 0] + [t * d for t, d in zip(tap, dilations, strict=True)]
        limit = [n, c] + [
            s + (o - 1) * st + 1 for s, o, st in zip(start[2:], out_sp, strides, strict=True)
        ]
        taps.append(jax.lax.slice(x, start, limit, [1, 1, *strides]))
    return taps, out_sp


def _patches(taps, group):
    """Taps [N, C, *out] stacked as [group, C/group * taps, N * out] (N = 1: no transpose)."""
    n = taps[0].shape[0]
    patches = jnp.stack(taps, axis=2).reshape(n, group, -1, math.prod(taps[0].shape[2:]))
    return _group_major(patches)


def _group_major(patches):
    """[N, group, K, out] -> [group, K, N * out]."""
    return jnp.moveaxis(patches, 0, 2).reshape(patches.shape[1], patches.shape[2], -1)


def _tiles(x, kernel, group, *, auto_pad, dilations, pads, strides):
    """Patches of a conv whose windows tile the input (stride = kernel, no padding or dilation,
    e.g. a ViT patch embedding) by one reshape and transpose, or None for any other conv: a
    16x16 kernel would otherwise be 256 slices (a 20 s compile)."""
    nd, kernel = x.ndim - 2, list(kernel)
    if (
        (strides and ints(strides) != kernel)
        or (not strides and kernel != [1] * nd)
        or (dilations and ints(dilations) != [1] * nd)
        or (pads and any(ints(pads)))
        or auto_pad not in ("NOTSET", "VALID")
    ):
        return None
    n, c, sp = x.shape[0], x.shape[1], x.shape[2:]
    out = [s // k for s, k in zip(sp, kernel, strict=True)]
    x = x[(slice(None), slice(None), *[slice(0, o * k) for o, k in zip(out, kernel, strict=True)])]
    x = x.reshape(n, c, *[d for o, k in zip(out, kernel, strict=True) for d in (o, k)])
    # [n, c, o1, k1, o2, k2, ...] -> [n, c, k1, k2, ..., o1, o2, ...]
    order = [0, 1, *[3 + 2 * i for i in range(nd)], *[2 + 2 * i for i in range(nd)]]
    x = jnp.transpose(x, order).reshape(n, group, -1, math.prod(out))
    return _group_major(x), out


def _depthwise_acc(taps, w, zx, zw):
    """A depthwise conv (one input channel per group) as a sum of per-channel products of its
    taps, which XLA fuses into one loop (as a grouped dot it would be C tiny dots)."""
    m_out, nd = w.shape[0], taps[0].ndim - 2
    mult = m_out // taps[0].shape[1]
    wt = w.astype(jnp.int32).reshape(m_out, -1)  # [M, taps]
    if zw is not None:
        zw = jnp.broadcast_to(jnp.reshape(zw, (-1,)), (m_out,)).astype(jnp.int32)
        wt = wt - zw[:, None]
    shape = (1, m_out, *[1] * nd)
    acc = 0
    for t, tap in enumerate(taps):
        x = tap.astype(jnp.int32)
        if mult > 1:
            x = jnp.repeat(x, mult, axis=1)
        acc = acc + x * wt[:, t].reshape(shape)
    if zx is not None:
        acc = acc - jnp.asarray(zx).astype(jnp.int32).reshape(()) * jnp.sum(wt, 1).reshape(shape)
    return acc


def _conv_acc(x, w, x_zero_point, w_zero_point, *, kernel_shape, group, **attrs):
    """Grouped N-D sum over windows of (x - zx)(w - zw) in int32, padding with zx.

    Lowered to one integer dot W [M, K] x patches [K, N * out] (im2col) rather than an integer
    XLA convolution: not every backend has one (GPU convolutions are float-only), and XLA's
    CPU integer convolution falls off a cliff (100x) when its input is a transposed NCHW tensor.
    The weight is the left operand in its ONNX layout, so no call re-lays it out, and the
    output comes out NCHW. 8-bit operands multiply as int8 with zero-point corrections, as in
    ``_matmul_acc``; sum_k w per output channel comes from the same dot (a ones column).
    """
    nd = x.ndim - 2
    w = jnp.asarray(w)
    kernel = list(w.shape[2:])
    if kernel_shape and ints(kernel_shape) != kernel:
        raise ValueError(
            f"kernel_shape {ints(kernel_shape)} does not match W's shape {list(w.shape)}"
        )
    m_out, g, n = w.shape[0], group, x.shape[0]
    wzp = None if w_zero_point is None else _channel_param(w_zero_point, nd + 1)
    if _is_int8(x, w):
        x, zx = _int8(x, x_zero_point)
        w, zw = _int8(w, wzp)
    else:
        x, zx = _centered(x, x_zero_point), None
        w, zw = _centered(w, wzp), None
    pad_value = 0 if zx is None else jnp.asarray(zx).astype(x.dtype).reshape(())
    tiled = None if g == x.shape[1] > 1 else _tiles(x, kernel, g, **attrs)
    if tiled is not None:
        patches, out_sp = tiled
    else:
        taps, out_sp = _conv_taps(x, pad_value, kernel, **attrs)
        if g > 1 and g == x.shape[1]:
            return _depthwise_acc(taps, w, zx, zw)
        patches = _patches(taps, g)
    q = patches.shape[-1]
    if zx is not None:
        patches = jnp.concatenate([patches, jnp.ones((g, patches.shape[1], 1), x.dtype)], -1)
    wk = w.reshape(g, m_out // g, -1)
    y = jax.lax.dot_general(
        wk, patches, (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.int32
    )  # [g, m/g, q (+1)]
    acc = y[..., :q]
    if zw is not None:  # per tensor or per output channel -> [g, m/g, 1]
        zw = jnp.broadcast_to(jnp.reshape(zw, (-1,)), (m_out,)).reshape(g, -1, 1)
        window = jnp.sum(patches[..., :q], axis=1, dtype=jnp.int32)  # [g, q]
        acc = acc - window[:, None, :] * zw
    if zx is not None:
        wsum = y[..., q:]  # [g, m/g, 1]
        if zw is not None:
            wsum = wsum - patches.shape[1] * zw
        acc = acc - jnp.asarray(zx).reshape(()) * wsum
    acc = acc.reshape(m_out, n, *out_sp)
    return jnp.moveaxis(acc, 1, 0)


def _channel_param(v, nd):
    """A per-output-channel [M] parameter, shaped to broadcast against [N, M, *spatial]."""
    m = xp(v)
    return m.reshape(v, (-1, *([1] * nd))) if v.ndim == 1 and v.size > 1 else m.reshape(v, ())


@register("ConvInteger", since=10)
def conv_integer(
    x,
    w,
    x_zero_point=None,
    w_zero_point=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    """https://onnx.ai/onnx/operators/onnx__ConvInteger.html; int32 accumulation.

    Padding is with the zero point (the centered value 0), so padded taps contribute nothing.
    """
    return _conv_acc(
        x,
        w,
        x_zero_point,
        w_zero_point,
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )


@register("QLinearConv", since=10)
def qlinear_conv(
    x,
    x_scale,
    x_zero_point,
    w,
    w_scale,
    w_zero_point,
    y_scale,
    y_zero_point,
    b=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    """https://onnx.ai/onnx/operators/onnx__QLinearConv.html; ``b`` is int32 (scale x*w, zp 0)."""
    nd = x.ndim - 2
    acc = conv_integer(
        x,
        w,
        x_zero_point,
        w_zero_point,
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    if b is not None:
        acc = acc + jnp.asarray(b).astype(jnp.int32).reshape(-1, *([1] * nd))
    multiplier = exact_div(
        _f32(x_scale).reshape(()) * _f32(_channel_param(w_scale, nd)), _f32(y_scale).reshape(())
    )
    out = np.dtype(y_zero_point.dtype) if y_zero_point is not None else np.dtype(x.dtype)
    return _requantize(acc, multiplier, y_zero_point, out)
