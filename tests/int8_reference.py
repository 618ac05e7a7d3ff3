"""Exact numpy references for the 8-bit integer product ops, and where onnxruntime is one too.

Why: on x86 CPUs without VNNI (AVX2, or AVX-512 without ``avx512_vnni``; no ``avx_vnni``
either), onnxruntime's uint8 x int8 kernels (MatMulInteger, QLinearMatMul, QLinearConv, QGemm,
DynamicQuantizeLSTM) multiply with ``vpmaddubsw``, which adds each pair of u8 x s8 products in
int16 *with saturation*, so their results depart from the exact integer product the ONNX spec
defines (docs/int8.md); ConvInteger computes W x im2col(X), so there uint8 *weights* x int8
activations saturate. In those cases onnxruntime is no reference for onnx2jax, which follows
the spec; ``ort_follows_spec`` / ``node_follows_spec`` say where it is one.

The references are independent of onnx2jax: integer products in numpy int64, then the float32
requantization the ops define, which for the com.microsoft ops onnxruntime defines:
``saturate(round_half_even(float32(acc) * multiplier) + zero_point)``, the multiplier computed
in float32 in onnxruntime's order. The tests check them against onnxruntime where it follows
the spec (uint8 x uint8, int8 x int8), so the float steps are onnxruntime's, and against
onnxruntime's uint8 x int8 results on CPUs without VNNI, which they must *not* match.

Only the product ops are here: ops without an 8-bit product (QuantizeLinear, QLinearAdd,
QLinearSoftmax, ...) follow the spec on onnxruntime, which stays their reference (its MLAS
float rounding is what onnx2jax reproduces bit for bit). ``EXACT_OPS`` are the same functions as
``onnx.reference.ReferenceEvaluator`` ops (``reference_evaluator(model)``): the com.microsoft
ones it lacks, and MatMulInteger/ConvInteger/QLinearMatMul/QLinearConv in place of its own
(which compute in int32, mis-broadcast a per-row zero point of ``a``, and requantize in float64,
one step apart from onnxruntime and onnx2jax at rounding ties).
"""

from __future__ import annotations

import functools
import itertools
import platform

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

MS = "com.microsoft"
F32 = np.float32
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


# -- when onnxruntime follows the spec -----------------------------------------------------------


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def ort_follows_spec(a_dtype, b_dtype) -> bool:
    """Whether onnxruntime's CPU integer product ``A x B`` of ``a_dtype`` x ``b_dtype``
    operands is the exact one the ONNX spec defines. A and B are the operands of its GEMM
    kernel (MLAS): the activation and the weight, except in ConvInteger (``node_follows_spec``).

    uint8 x int8 is exact only where onnxruntime's kernels use VNNI (``vpdpbusd``, 32-bit sums);
    on x86 without it they use ``vpmaddubsw``, whose int16 pair sums saturate. Conservative: on
    x86 with unknown flags (no /proc/cpuinfo) and on other architectures, whose kernels were not
    checked here, uint8 x int8 counts as deviating, so tests use the exact reference.
    uint8 x uint8, int8 x int8 and int8 x uint8 are exact (``test_ort_follows_spec`` in
    tests/test_ops_quant.py checks all four pairs with saturating values).
    """
    a, b = np.dtype(a_dtype), np.dtype(b_dtype)
    if (a, b) != (np.dtype(np.uint8), np.dtype(np.int8)):
        return True
    return platform.machine().lower() in X86 and bool(VNNI_FLAGS & cpu_flags())


# op: (input that is MLAS's A operand, input that is its B operand). ConvInteger multiplies the
# weights by the unfolded image, W x im2col(X), so there A is the weight: uint8 weights x int8
# activations saturate, uint8 activations x int8 weights do not (checked on an AVX2 CPU).
# QLinearConv uses another kernel, with the activation as A. DynamicQuantizeLSTM quantizes its
# float X and h to uint8 on the fly (None: always uint8).
GEMM_OPERANDS: dict[str, tuple[int | None, int]] = {
    "MatMulInteger": (0, 1),
    "ConvInteger": (1, 0),
    "QLinearMatMul": (0, 3),
    "QLinearConv": (0, 3),
    "QGemm": (0, 3),
    "DynamicQuantizeLSTM": (None, 1),
}


def node_follows_spec(op_type: str, input_dtypes: list) -> bool:
    """``ort_follows_spec`` for a node, from ``input_dtypes`` (each input's numpy dtype, None
    for an absent one). Ops without an 8-bit product (QuantizeLinear, QLinearAdd, ...) follow
    the spec."""
    if op_type not in GEMM_OPERANDS:
        return True
    ia, ib = GEMM_OPERANDS[op_type]
    a = np.uint8 if ia is None else input_dtypes[ia]
    return ort_follows_spec(a, input_dtypes[ib])


# -- integer arithmetic ------------------------------------------------------------------------


def _int_range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _i64(x) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


def _per_row(z, ndim: int) -> np.ndarray:
    """A zero point or scale of ``a``: scalar, or one per row ([M] -> [M, 1])."""
    z = np.asarray(z)
    return z.reshape(-1, 1) if z.ndim == 1 and z.size > 1 and ndim >= 2 else z


def _to_int32(acc: np.ndarray) -> np.ndarray:
    """An int64 accumulator as the spec's int32 result; the tests keep within int32."""
    assert np.abs(acc).max(initial=0) < 2**31, "accumulator overflows int32"
    return acc.astype(np.int32)


def int_matmul(a, b, a_zero_point=None, b_zero_point=None) -> np.ndarray:
    """(a - a_zero_point) @ (b - b_zero_point) in int64 (a's zero point scalar or per row,
    b's scalar, per column or N-D)."""
    a, b = _i64(a), _i64(b)
    if a_zero_point is not None:
        a = a - _i64(_per_row(a_zero_point, a.ndim))
    if b_zero_point is not None:
        b = b - _i64(b_zero_point)
    return a @ b


def _conv_pads(in_shape, kernel, strides, dilations, pads, auto_pad):
    """Begin/end pads per spatial axis, as the Conv spec defines them."""
    nd = len(in_shape)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for d, k, s, dil in zip(in_shape, kernel, strides, dilations):
            need = max(0, (-(-d // s) - 1) * s + (k - 1) * dil + 1 - d)
            small = need // 2
            begin.append(need - small if auto_pad == "SAME_LOWER" else small)
            end.append(need - begin[-1])
        return begin, end
    if auto_pad == "VALID" or pads is None:
        return [0] * nd, [0] * nd
    return list(pads[:nd]), list(pads[nd:])


def int_conv(
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
) -> np.ndarray:
    """ConvInteger's exact accumulator in int64: padding is with the zero point (the centered
    value 0); one einsum per kernel tap and group."""
    x, w = _i64(x), _i64(w)
    if x_zero_point is not None:
        x = x - _i64(x_zero_point).reshape(())
    if w_zero_point is not None:
        wz = _i64(w_zero_point)
        w = w - (wz.reshape(-1, *[1] * (w.ndim - 1)) if wz.size > 1 else wz.reshape(()))
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    nd = x.ndim - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    begin, end = _conv_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    x = np.pad(x, [(0, 0), (0, 0), *zip(begin, end)])
    out = [
        (x.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(nd)
    ]
    n, m = x.shape[0], w.shape[0]
    cg, mg = w.shape[1], m // group
    y = np.zeros((n, m, *out), np.int64)
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = x[
            (slice(None), slice(None))
            + tuple(
                slice(t * d, t * d + s * (o - 1) + 1, s)
                for t, d, s, o in zip(tap, dilations, strides, out)
            )
        ]
        for g in range(group):
            y[:, g * mg : (g + 1) * mg] += np.einsum(
                "nc...,mc->nm...",
                window[:, g * cg : (g + 1) * cg],
                w[(slice(g * mg, (g + 1) * mg), slice(None), *tap)],
            )
    return y


def requantize(acc, multiplier, zero_point, dtype) -> np.ndarray:
    """float32(acc) * float32 multiplier, rounded half to even, plus the zero point, saturated:
    onnxruntime's requantization (MlasRequantizeOutput), which onnx2jax follows."""
    v = np.asarray(acc).astype(F32) * np.asarray(multiplier, F32)  # one float32 rounding
    q = np.rint(v.astype(np.float64))
    if zero_point is not None:
        q = q + _i64(zero_point)
    lo, hi = _int_range(dtype)
    return np.clip(q, lo, hi).astype(dtype)


def _out_dtype(zero_point, default) -> np.dtype:
    return np.dtype(default if zero_point is None else np.asarray(zero_point).dtype)


# -- standard ops --------------------------------------------------------------------------------


def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    """QLinearMatMul: exact accumulator, multiplier float32 (a_scale * b_scale) / y_scale."""
    acc = _to_int32(int_matmul(a, b, a_zero_point, b_zero_point))
    multiplier = (_per_row(F32(a_scale), np.ndim(a)) * np.asarray(b_scale, F32)) / F32(y_scale)
    return requantize(acc, multiplier, y_zero_point, _out_dtype(y_zero_point, np.asarray(a).dtype))


def qlinear_conv(
    x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b=None, **attrs
):
    """QLinearConv: exact accumulator (+ the int32 bias), multiplier float32
    (x_scale * w_scale[m]) / y_scale per output channel."""
    acc = int_conv(x, w, x_zero_point, w_zero_point, **attrs)
    nd = acc.ndim - 2
    if b is not None:
        acc = acc + _i64(b).reshape(-1, *[1] * nd)
    ws = np.asarray(w_scale, F32)
    ws = ws.reshape(-1, *[1] * nd) if ws.size > 1 else ws.reshape(())
    multiplier = (np.asarray(x_scale, F32).reshape(()) * ws) / np.asarray(y_scale, F32).reshape(())
    out = _out_dtype(y_zero_point, np.asarray(x).dtype)
    return requantize(_to_int32(acc), multiplier, y_zero_point, out)


def dynamic_quantize_linear(x) -> tuple[np.ndarray, np.float32, np.uint8]:
    """DynamicQuantizeLinear: uint8 over [min(x, 0), max(x, 0)], scale (max - min) / 255 (1 if
    max == min, as onnxruntime), x / scale rounded half to even."""
    x = np.asarray(x, F32)
    hi, lo = F32(max(0.0, x.max())), F32(min(0.0, x.min()))
    scale = F32(1) if hi == lo else F32((hi - lo) / F32(255))
    zp = np.clip(np.rint(F32(0) - lo / scale), 0, 255)
    y = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return y, scale, np.uint8(zp)


# -- com.microsoft ops (onnxruntime defines them, float steps included) ----------------------------


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
    """com.microsoft QGemm: acc = (A' - za)(B' - zb) + C exactly; scale float32
    alpha * a_scale * b_scale (per column when b_scale is); float output acc * scale, else
    requantized with scale / y_scale."""
    a, b = np.asarray(a), np.asarray(b)
    a, b = (a.T if transA else a), (b.T if transB else b)
    acc = int_matmul(a, b, np.asarray(a_zero_point).reshape(()), b_zero_point)
    if c is not None:
        acc = acc + _i64(c)
    acc = _to_int32(acc)
    scale = F32(alpha) * np.asarray(a_scale, F32).reshape(()) * np.asarray(b_scale, F32)
    if y_scale is None:
        return acc.astype(F32) * scale
    scale = scale / np.asarray(y_scale, F32).reshape(())
    return requantize(acc, scale, y_zero_point, _out_dtype(y_zero_point, np.uint8))


def _sigmoid(v):
    return F32(1) / (F32(1) + np.exp(-v))


def dynamic_quantize_lstm(
    X,
    W,
    R,
    B=None,
    W_scale=None,
    W_zero_point=None,
    R_scale=None,
    R_zero_point=None,
    initial_h=None,
    initial_c=None,
    *,
    hidden_size,
    direction="forward",
):
    """com.microsoft DynamicQuantizeLSTM without sequence_lens or peepholes, default
    activations: a float32 LSTM (gates i, o, f, c) whose two products quantize their float
    operand with ``dynamic_quantize_linear`` (X once per direction, over all steps; h at every
    step) and multiply it exactly with the quantized weights ([D, in, 4H]).
    Returns Y [T, D, B, H], Y_h and Y_c [D, B, H]."""
    X = np.asarray(X, F32)
    nd, (t, batch, _), h = R.shape[0], X.shape, hidden_size

    def per_dir(v, d):  # a scale or zero point: [D] or [D, 4H]
        v = np.asarray(v).reshape(nd, -1)[d]
        return v.reshape(()) if v.size == 1 else v

    def qproduct(v, q, s, z):
        qv, sv, zv = dynamic_quantize_linear(v)
        return int_matmul(qv, q, zv, z).astype(F32) * (sv * np.asarray(s, F32))

    Y = np.zeros((t, nd, batch, h), F32)
    Y_h, Y_c = np.zeros((nd, batch, h), F32), np.zeros((nd, batch, h), F32)
    for d in range(nd):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        steps = range(t - 1, -1, -1) if reverse else range(t)
        xw = qproduct(X, W[d], per_dir(W_scale, d), per_dir(W_zero_point, d))
        bias = np.zeros(4 * h, F32) if B is None else B[d, : 4 * h] + B[d, 4 * h :]
        hs = np.zeros((batch, h), F32) if initial_h is None else np.asarray(initial_h, F32)[d]
        cs = np.zeros((batch, h), F32) if initial_c is None else np.asarray(initial_c, F32)[d]
        for step in steps:
            hr = qproduct(hs, R[d], per_dir(R_scale, d), per_dir(R_zero_point, d))
            gates = xw[step] + hr + bias
            i, o, f, c = (gates[:, k * h : (k + 1) * h] for k in range(4))
            cs = _sigmoid(f) * cs + _sigmoid(i) * np.tanh(c)
            hs = _sigmoid(o) * np.tanh(cs)
            Y[step, d] = hs
        Y_h[d], Y_c[d] = hs, cs
    return Y, Y_h, Y_c


# -- the same, as ReferenceEvaluator ops --------------------------------------------------------------


class QLinearMatMul(OpRun):
    op_domain = ""

    def _run(self, *inputs):
        return (qlinear_matmul(*inputs),)


class QLinearConv(OpRun):
    op_domain = ""

    def _run(
        self,
        *inputs,
        auto_pad="NOTSET",
        dilations=None,
        group=1,
        kernel_shape=None,
        pads=None,
        strides=None,
    ):
        attrs = dict(
            auto_pad=auto_pad,
            dilations=dilations,
            group=group,
            kernel_shape=kernel_shape,
            pads=pads,
            strides=strides,
        )
        return (qlinear_conv(*inputs, **attrs),)


class QGemm(OpRun):
    op_domain = MS

    def _run(self, *inputs, alpha=1.0, transA=0, transB=0):
        return (qgemm(*inputs, alpha=alpha, transA=transA, transB=transB),)


class MatMulInteger(OpRun):
    op_domain = ""

    def _run(self, a, b, a_zero_point=None, b_zero_point=None):
        return (_to_int32(int_matmul(a, b, a_zero_point, b_zero_point)),)


class ConvInteger(OpRun):
    op_domain = ""

    def _run(
        self,
        *inputs,
        auto_pad="NOTSET",
        dilations=None,
        group=1,
        kernel_shape=None,
        pads=None,
        strides=None,
    ):
        attrs = dict(
            auto_pad=auto_pad,
            dilations=dilations,
            group=group,
            kernel_shape=kernel_shape,
            pads=pads,
            strides=strides,
        )
        return (_to_int32(int_conv(*inputs, **attrs)),)


class DynamicQuantizeLSTM(OpRun):
    op_domain = MS

    def _run(
        self,
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
        hidden_size=None,
        direction="forward",
    ):
        if sequence_lens is not None or P is not None:
            raise NotImplementedError("DynamicQuantizeLSTM reference: no sequence_lens, no P")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        return dynamic_quantize_lstm(
            X,
            W,
            R,
            B,
            W_scale,
            W_zero_point,
            R_scale,
            R_zero_point,
            initial_h,
            initial_c,
            hidden_size=hidden_size,
            direction=direction,
        )


EXACT_OPS = [
    MatMulInteger,
    ConvInteger,
    QLinearMatMul,
    QLinearConv,
    QGemm,
    DynamicQuantizeLSTM,
]


def reference_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """onnx's ReferenceEvaluator with ``EXACT_OPS``: exact integer products."""
    return ReferenceEvaluator(model, new_ops=EXACT_OPS)
