"""Quantized com.microsoft contrib ops that onnxruntime's quantizer emits (QOperator format and
dynamic LSTM), with onnxruntime's exact integer semantics.

Reference: onnxruntime's CPU kernels (``contrib_ops/cpu/quantization`` and MLAS). The goal is
bit-exact agreement with onnxruntime run with graph optimizations disabled:

- QLinearAdd / QLinearMul: MLAS computes these in float32 with a fixed operation order (an FMA
  chain for Add). XLA contracts ``a * b + c`` into FMAs as it sees fit, so the arithmetic is not
  left to it: the result for every pair of 8-bit inputs is tabulated at trace time, in numpy,
  with onnxruntime's exact rounding steps, and the op is one gather. This needs the scales and
  zero points at trace time (they are initializers in every quantized model; ``STATIC_INPUTS``).
- QLinearSoftmax: onnxruntime's 256-entry exp table (built in double precision) and its
  sequential float32 row sums (a ``lax.scan``, so the order of additions is onnxruntime's).
- QGemm, QLinearGlobalAveragePool, QLinearConcat, QLinearLeakyRelu: exact int32 accumulation
  and onnxruntime's float32 requantization (products rounded once, round half to even,
  saturation), as in ``ops/quant.py``, whose helpers they share.
- DynamicQuantizeLSTM: the LSTM of ``ops/rnn.py`` whose two GEMMs quantize their float operand
  on the fly (uint8, range including 0, like DynamicQuantizeLinear) and multiply it with the
  int8/uint8 weights in int32. Its gates are float, so it agrees with onnxruntime to float
  tolerance, not bit for bit.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .._registry import register
from ._common import axis as norm_axis
from .quant import (
    _int_range,
    _matmul_acc,
    _requantize,
    dynamic_quantize_linear,
    exact_div,
)
from .rnn import _activations, _initial, _recurrence, lstm_update

MS = "com.microsoft"


def _scalar(v, what: str) -> float | int:
    """A per-tensor scale or zero point known at trace time, as a Python number."""
    if v is None:
        return 0
    if not isinstance(v, (np.ndarray, np.generic)):
        raise ValueError(f"{what} must be known at trace time (an initializer)")
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(
            f"{what} must be a scalar or a 1-element tensor, got shape {list(a.shape)}"
        )
    return a.reshape(()).item()


def _check_8bit(dtype, op: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise NotImplementedError(f"{op}: only uint8/int8 tensors are supported, got {dtype}")
    return dtype


def _codes(dtype) -> np.ndarray:
    """Every value of an 8-bit type, in the order of its unsigned bit patterns (0..255)."""
    return np.arange(256, dtype=np.uint8).view(dtype).astype(np.int64)


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _fma(x, y, z) -> np.ndarray:
    """float32 fused multiply-add (one rounding of x * y + z) for an 8-bit integer ``x``.

    x * y is exact in float64 (at most 9 + 24 significant bits); TwoSum gives the exact sum as
    s + e; s rounds to float32 correctly unless it sits exactly halfway between two float32
    values, where the sign of e decides.
    """
    f64 = np.float64
    p = np.asarray(x, f64) * np.asarray(y, f64)
    z = np.asarray(z, f64)
    s = p + z
    bp = s - z
    e = (p - bp) + (z - (s - bp))
    r = s.astype(np.float32)
    r64 = r.astype(f64)
    toward = np.where(s > r64, np.float32(np.inf), np.float32(-np.inf))
    other = np.nextafter(r, toward).astype(f64)
    tie = (s != r64) & (2 * s == r64 + other)
    wrong_way = tie & (e != 0) & ((e > 0) != (r64 > s))
    return np.where(wrong_way, other, r64).astype(np.float32)


def _saturate_rne(v: np.ndarray, dtype) -> np.ndarray:
    """float32 -> int as the SIMD code does it: round half to even to int32 (NaN and values
    out of int32's range give INT32_MIN, x86's "integer indefinite"), then saturate."""
    lo, hi = _int_range(dtype)
    with np.errstate(invalid="ignore"):
        r = np.rint(v.astype(np.float64))
        r = np.where(np.isnan(r) | (r < -(2.0**31)) | (r >= 2.0**31), -(2.0**31), r)
    return np.clip(r, lo, hi).astype(dtype)


def _broadcast_kind(a_shape, b_shape) -> str:
    """How onnxruntime's broadcast loop feeds the MLAS kernel: ``a`` or ``b`` when that input
    is one repeated value within each contiguous span of the output, else ``vector``."""
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if int(np.prod(a_shape)) == 1:
        return "a"
    if int(np.prod(b_shape)) == 1:
        return "b"
    out = np.broadcast_shapes(a_shape, b_shape)
    rank = len(out)
    a_full = (1,) * (rank - len(a_shape)) + a_shape
    b_full = (1,) * (rank - len(b_shape)) + b_shape
    for i in reversed(range(rank)):
        if out[i] == 1:
            continue
        if a_full[i] == 1:
            return "a"
        if b_full[i] == 1:
            return "b"
        return "vector"
    return "vector"


def _lookup2(table: np.ndarray, a, b, dtype):
    """``table[a, b]`` with broadcasting; ``a`` and ``b`` are 8-bit, ``table`` is 256 x 256."""
    ia = jnp.asarray(a).view(jnp.uint8).astype(jnp.int32)
    ib = jnp.asarray(b).view(jnp.uint8).astype(jnp.int32)
    return jnp.take(jnp.asarray(table.reshape(-1)), ia * 256 + ib, mode="clip").astype(dtype)


def _qlinear_add_table(kind, dtype, sa, za, sb, zb, sc, zc) -> np.ndarray:
    """MLAS's AVX2 QLinearAdd kernel, for every (a, b): scale ratios, a fixed part, FMAs.

    The kernel takes (vector, scalar-or-vector): onnxruntime passes a per-span scalar input
    second, so when ``a`` is the scalar the roles swap. With (p, q) the kernel's inputs:
    fixed = zc - (rp * zp + rq * zq), the sum contracted to one FMA; q's term joins through an
    FMA (once per span when q is a scalar), then p's: fma(p, rp, fma(q, rq, fixed)).
    """
    f32 = np.float32
    ra, rb = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
    vals = _codes(dtype)
    av, bv = vals[:, None], vals[None, :]
    if kind == "a":
        fixed = f32(f32(zc) - _fma(zb, rb, f32(ra * f32(za))))
        c = _fma(bv, rb, _fma(av, ra, fixed))
    else:
        fixed = f32(f32(zc) - _fma(za, ra, f32(rb * f32(zb))))
        c = _fma(av, ra, _fma(bv, rb, fixed))
    return _saturate_rne(c, dtype)


def _qlinear_mul_table(dtype, sa, za, sb, zb, sc, zc) -> np.ndarray:
    """MLAS's SSE2 QLinearMul: (a - za) * (b - zb) exactly, times (sa * sb / sc), plus zc, each
    step rounded to float32, then round half to even and saturate."""
    f32 = np.float32
    ratio = f32(f32(f32(sa) * f32(sb)) / f32(sc))
    vals = _codes(dtype)
    prod = ((vals[:, None] - za) * (vals[None, :] - zb)).astype(f32)  # |prod| < 2^17: exact
    c = f32(prod * ratio) + f32(zc)
    return _saturate_rne(c.astype(f32), dtype)


def _binary(op, a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point):
    dtype = _check_8bit(a.dtype, f"{MS}::{op}")
    if np.dtype(b.dtype) != dtype:
        raise ValueError(f"{MS}::{op}: A is {dtype} but B is {np.dtype(b.dtype)}")
    sa, sb, sc = (_scalar(s, f"{op} scale") for s in (a_scale, b_scale, c_scale))
    za, zb, zc = (
        int(_scalar(z, f"{op} zero point")) for z in (a_zero_point, b_zero_point, c_zero_point)
    )
    if op == "QLinearAdd":
        kind = _broadcast_kind(a.shape, b.shape)
        table = _cached_add(kind, dtype.str, sa, za, sb, zb, sc, zc)
    else:
        table = _cached_mul(dtype.str, sa, za, sb, zb, sc, zc)
    return _lookup2(table, a, b, dtype)


# Tables are keyed by their parameters: a model's many nodes often share them. Extreme scales
# (the quantized -inf of an attention mask) make inf/NaN ratios; onnxruntime computes the same.
@functools.lru_cache(maxsize=256)
def _cached_add(kind, dtype, *params):
    with np.errstate(all="ignore"):
        return _qlinear_add_table(kind, np.dtype(dtype), *params)


@functools.lru_cache(maxsize=256)
def _cached_mul(dtype, *params):
    with np.errstate(all="ignore"):
        return _qlinear_mul_table(np.dtype(dtype), *params)


@register("QLinearAdd", domain=MS)
def qlinear_add(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point=None):
    """com.microsoft QLinearAdd: C = quantize(dequantize(A) + dequantize(B)), as MLAS rounds it.

    https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.QLinearAdd
    """
    return _binary(
        "QLinearAdd", a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point
    )


@register("QLinearMul", domain=MS)
def qlinear_mul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point=None):
    """com.microsoft QLinearMul: C = quantize(dequantize(A) * dequantize(B)), as MLAS rounds it.

    https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.QLinearMul
    """
    return _binary(
        "QLinearMul", a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point
    )


# -- requantizing ops ----------------------------------------------------------------------------


def _quantize_f32(v, y_scale, y_zero_point, dtype):
    """MlasQuantizeLinear: round half to even of v / scale, plus the zero point, saturated."""
    q = jnp.round(exact_div(v, jnp.asarray(y_scale, jnp.float32).reshape(())))
    if y_zero_point is not None:
        q = q + jnp.asarray(y_zero_point).astype(jnp.float32).reshape(())
    lo, hi = _int_range(dtype)
    return jnp.clip(q, lo, hi).astype(dtype)


def _dequantize_f32(x, x_scale, x_zero_point):
    """scale * (x - zero point) in float32 (the int difference is exact)."""
    d = jnp.asarray(x).astype(jnp.int32)
    if x_zero_point is not None:
        d = d - jnp.asarray(x_zero_point).astype(jnp.int32).reshape(())
    return jnp.asarray(x_scale, jnp.float32).reshape(()) * d.astype(jnp.float32)


@register("QLinearConcat", domain=MS)
def qlinear_concat(y_scale, y_zero_point, *inputs, axis):
    """com.microsoft QLinearConcat: each (X, X_scale, X_zero_point) input requantized to Y's.

    onnxruntime requantizes each input through a 256-entry table, quantize(dequantize(x)),
    or copies it when its scale and zero point equal the output's; the arithmetic below is
    that table's, element by element.
    """
    if len(inputs) % 3:
        raise ValueError("QLinearConcat takes (tensor, scale, zero point) triples after Y's")
    dtype = _check_8bit(y_zero_point.dtype, f"{MS}::QLinearConcat")
    parts = []
    for i in range(0, len(inputs), 3):
        x, s, z = inputs[i : i + 3]
        same = (
            isinstance(s, np.ndarray)
            and isinstance(y_scale, np.ndarray)
            and isinstance(z, np.ndarray)
            and isinstance(y_zero_point, np.ndarray)
            and np.float32(s.reshape(())) == np.float32(y_scale.reshape(()))
            and int(z.reshape(())) == int(y_zero_point.reshape(()))
        )
        if same:
            parts.append(jnp.asarray(x))
        else:
            parts.append(_quantize_f32(_dequantize_f32(x, s, z), y_scale, y_zero_point, dtype))
    return jnp.concatenate(parts, axis=norm_axis(axis, parts[0].ndim))


@register("QLinearLeakyRelu", domain=MS)
def qlinear_leaky_relu(x, x_scale, x_zero_point, y_scale, y_zero_point=None, *, alpha=0.01):
    """com.microsoft QLinearLeakyRelu, as onnxruntime's table: quantize(leaky_relu(dequantize(x)))."""
    dtype = _check_8bit(x.dtype, f"{MS}::QLinearLeakyRelu")
    v = _dequantize_f32(x, x_scale, x_zero_point)
    v = jnp.where(v >= 0, v, v * np.float32(alpha))
    return _quantize_f32(v, y_scale, y_zero_point, dtype)


@register("QLinearGlobalAveragePool", domain=MS)
def qlinear_global_average_pool(
    x, x_scale, x_zero_point, y_scale, y_zero_point, *, channels_last=0
):
    """com.microsoft QLinearGlobalAveragePool: int32 channel sums, requantized in float32.

    The sum minus zero_point * image size is multiplied by x_scale / (y_scale * image size).
    """
    dtype = _check_8bit(x.dtype, f"{MS}::QLinearGlobalAveragePool")
    spatial = tuple(range(1, x.ndim - 1)) if channels_last else tuple(range(2, x.ndim))
    size = int(np.prod([x.shape[i] for i in spatial]))
    acc = jnp.sum(jnp.asarray(x).astype(jnp.int32), axis=spatial, keepdims=True)
    if x_zero_point is not None:
        acc = acc - jnp.asarray(x_zero_point).astype(jnp.int32).reshape(()) * size
    xs = jnp.asarray(x_scale, jnp.float32).reshape(())
    ys = jnp.asarray(y_scale, jnp.float32).reshape(())
    multiplier = exact_div(xs, ys * np.float32(size))
    return _requantize(acc, multiplier, _zp_scalar(y_zero_point), dtype)


def _zp_scalar(z):
    return None if z is None else jnp.asarray(z).reshape(())


@register("QGemm", domain=MS)
def qgemm(
    a,
    a_scale,
    a_zero_point,
    b,
    b_scale,
    b_zero_point,
    c=None,
    y_scale=None,
    y_zero_point=None,
    *,
    alpha=1.0,
    transA=0,
    transB=0,
):
    """com.microsoft QGemm: Y = alpha * A' B' (+ C, int32 in the accumulator's scale).

    Int32 accumulation; the output scale is alpha * a_scale * b_scale (per column when
    b_scale is), divided by y_scale when the output is quantized, else the output is float32.
    """
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if transA:
        a = a.T
    if transB:
        b = b.T
    acc = _matmul_acc(a, _zp_scalar(a_zero_point), b, b_zero_point)
    if c is not None:
        acc = acc + jnp.asarray(c).astype(jnp.int32)
    scale = (
        np.float32(alpha)
        * jnp.asarray(a_scale, jnp.float32).reshape(())
        * jnp.asarray(b_scale, jnp.float32)
    )
    if y_scale is None:
        return acc.astype(jnp.float32) * scale
    scale = exact_div(scale, jnp.asarray(y_scale, jnp.float32).reshape(()))
    out = np.dtype(y_zero_point.dtype) if y_zero_point is not None else np.dtype(np.uint8)
    return _requantize(acc, scale, _zp_scalar(y_zero_point), out)


# -- softmax ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _softmax_table(x_scale: float, reduce_len: int) -> np.ndarray:
    """onnxruntime's exp table: table[i] = exp((i - 255 + shift) * x_scale) for i in 0..255,
    in double, stored as float32, with a shift that keeps a row sum of ``reduce_len`` values
    finite."""
    with np.errstate(all="ignore"):  # an infinite x_scale (a quantized -inf mask) gives NaNs
        return _softmax_table_impl(x_scale, reduce_len)


def _softmax_table_impl(x_scale: float, reduce_len: int) -> np.ndarray:
    flt_max = float(np.finfo(np.float32).max)
    shift = math.log(float(np.float32(flt_max / np.float32(reduce_len))))
    shift = max(0.0, shift - 5.0) / float(np.float32(x_scale))
    i = np.arange(256, dtype=np.float64)
    return np.exp((i - 255.0 + shift) * float(np.float32(x_scale))).astype(np.float32)


def _sequential_sum(v):
    """Row sums over the last axis, added strictly left to right in float32 (as onnxruntime's
    scalar loop does), so the rounding matches."""

    def step(acc, col):
        return acc + col, None

    total, _ = jax.lax.scan(step, jnp.zeros(v.shape[:-1], v.dtype), jnp.moveaxis(v, -1, 0))
    return total


@register("QLinearSoftmax", domain=MS)
def qlinear_softmax(x, x_scale, x_zero_point, y_scale, y_zero_point=None, *, axis=None, opset):
    """com.microsoft QLinearSoftmax, onnxruntime's table algorithm.

    Each row's values index a 256-entry exp table shifted so the row maximum sits at 255;
    y = round((table value * floor(1 / y_scale)) / row sum) + zero point. ``opset`` < 13
    flattens from ``axis`` on (default 1), opset 13 uses the one ``axis`` (default -1).
    """
    dtype = _check_8bit(x.dtype, f"{MS}::QLinearSoftmax")
    x = jnp.asarray(x)
    if axis is None:
        axis = 1 if opset < 13 else -1
    ax = norm_axis(axis, x.ndim)
    shape = x.shape
    if opset < 13:
        rows = x.reshape(*shape[:ax], -1)
    else:
        rows = jnp.moveaxis(x, ax, -1)
    d = rows.shape[-1]
    table = jnp.asarray(_softmax_table(float(_scalar(x_scale, "QLinearSoftmax x_scale")), d))
    v = rows.astype(jnp.int32)
    idx = 255 - jnp.max(v, axis=-1, keepdims=True) + v  # the row maximum maps to 255
    t = jnp.take(table, idx)
    total = _sequential_sum(t)[..., None]
    ys = jnp.floor(exact_div(np.float32(1.0), jnp.asarray(y_scale, jnp.float32).reshape(())))
    q = jnp.round(exact_div(t * ys, total))
    zp = 0 if y_zero_point is None else jnp.asarray(y_zero_point).astype(jnp.int32).reshape(())
    q = q.astype(jnp.int32) + zp
    y = jnp.minimum(q, _int_range(dtype)[1]).astype(dtype)  # q >= the zero point >= min
    if opset < 13:
        return y.reshape(shape)
    return jnp.moveaxis(y, -1, ax)


# -- DynamicQuantizeLSTM --------------------------------------------------------------------------


def _dynamic_qgemm(a, w, w_scale, w_zero_point):
    """onnxruntime's quantized RNN GEMM: ``a`` (float, [..., K]) quantized to uint8 with one
    scale/zero point over the whole tensor, times ``w`` ([K, N], int8/uint8) in int32, scaled
    back by a_scale * w_scale (per column or per tensor)."""
    qa, sa, za = dynamic_quantize_linear(a)
    acc = _matmul_acc(qa, za, jnp.asarray(w), w_zero_point)
    return acc.astype(jnp.float32) * (sa * jnp.asarray(w_scale, jnp.float32))


@register("DynamicQuantizeLSTM", domain=MS)
def dynamic_quantize_lstm(
    X,
    W,
    R,
    B=None,
    sequence_lens=None,
    initial_h=None,
    initial_c=None,
    P=None,
    W_scale=None,
    W_zero_point=None,
    R_scale=None,
    R_zero_point=None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size=None,
    input_forget=0,
):
    """com.microsoft DynamicQuantizeLSTM: an LSTM whose GEMMs quantize their float operand.

    Gates i, o, f, c. Quantized weights W [directions, input, 4 * hidden] and R [directions,
    hidden, 4 * hidden] (transposed relative to the ONNX LSTM), scales/zero points per
    direction ([D]) or per column ([D, 4 * hidden]).

    Each direction's input projection quantizes X with one scale over all steps; each step
    quantizes that direction's previous hidden state.
    """
    X = jnp.asarray(X, jnp.float32)
    nd, batch, hs = R.shape[0], X.shape[1], R.shape[1]
    acts = _activations(
        activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh", "Tanh"], nd
    )
    f, g, hfn = ([a[k] for a in acts] for k in range(3))
    ws = jnp.asarray(W_scale, jnp.float32).reshape(nd, -1)
    rs = jnp.asarray(R_scale, jnp.float32).reshape(nd, -1)
    wz = jnp.asarray(W_zero_point).reshape(nd, -1)
    rz = jnp.asarray(R_zero_point).reshape(nd, -1)
    if B is None:
        bias = jnp.zeros((nd, 4 * hs), jnp.float32)
    else:
        B = jnp.asarray(B, jnp.float32)
        bias = B[:, : 4 * hs] + B[:, 4 * hs :]
    if P is not None:
        P = jnp.asarray(P, jnp.float32)[:, None, :]
        p_i, p_o, p_f = P[..., :hs], P[..., hs : 2 * hs], P[..., 2 * hs :]

    def project(xs):  # xs: [D, T, B, I] -> [T, D, B, 4H]
        out = jnp.stack([_dynamic_qgemm(xs[d], W[d], ws[d], _row(wz[d])) for d in range(nd)])
        return jnp.swapaxes(out, 0, 1)

    def cell_for(d):  # d: a slice of the directions
        peep = (p_i[d], p_f[d], p_o[d]) if P is not None else None
        own = range(nd)[d]

        def cell(xw, states):
            h, c = states
            hr = jnp.stack(
                [_dynamic_qgemm(h[k], R[i], rs[i], _row(rz[i])) for k, i in enumerate(own)]
            )
            return lstm_update(xw + hr, c, peep, f[d], g[d], hfn[d], clip, input_forget)

        return cell

    h0 = _initial(initial_h, nd, batch, hs, jnp.float32, 0)
    c0 = _initial(initial_c, nd, batch, hs, jnp.float32, 0)
    return _recurrence(
        cell_for, X, None, bias, (h0, c0), sequence_lens, direction, 0, project=project
    )


def _row(z):
    """A per-direction zero point: one value ([1]) applies to all columns."""
    return z.reshape(()) if z.size == 1 else z
