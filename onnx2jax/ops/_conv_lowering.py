"""The one place where convolutions become XLA: a lowering strategy is chosen per shape."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Strategies (measured on a 2-core CPU: benchmarks/PERF_NOTES_conv.md):
#   "matmul":   every kernel dim is 1 -> (strided slice) + one (grouped) matmul; ~2x XLA's conv.
#   "taps":     few input channels per group (depthwise, ResNeXt-style groups) -> one broadcast
#               multiply-add per (input channel, tap), fused into one loop; 20-50x XLA's
#               grouped conv, which on CPU is very slow.
#   "im2col":   patches gathered by shifted slices, then one (grouped) matmul: wins for tiny
#               reductions (RGB stems) and for grouped convs with many channels per group.
#   "xla":      lax.conv_general_dilated in NCHW.
#   "xla_nhwc": lax.conv_general_dilated with activations transposed to NHWC around it: equal to
#               or a bit faster than NCHW on CPU; the default for ordinary dense convolutions.
# ConvTranspose reuses all of these: it becomes one stride-1 conv (see conv_transpose).
STRATEGIES = ("matmul", "taps", "im2col", "xla", "xla_nhwc")

_MAX_TAPS = 81  # depthwise taps per output; beyond, the unrolled loop compiles slowly
_MAX_GROUP_TAPS = 36  # products per output of a grouped conv (4 channels x 3x3): more -> im2col
_SMALL_K = 32  # a dense conv reducing over at most this many values goes through im2col
_PATCH_BYTES = 16 << 20  # larger im2col buffers fall out of cache: then build them per sample


def acc_dtype(dtype) -> np.dtype:
    """Accumulate half-precision products in float32 (as onnxruntime does), else in ``dtype``."""
    dtype = np.dtype(dtype)
    if (dtype.itemsize < 4 and dtype.kind == "f") or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    return dtype


# -- shapes and padding ---------------------------------------------------------------------


def conv_pads(
    auto_pad: str,
    in_shape: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
) -> list[tuple[int, int]]:
    """Per spatial dim (lo, hi) padding of a convolution or pooling window (no ceil_mode)."""
    n = len(in_shape)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(n):
            o = -(-in_shape[i] // strides[i])
            total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_shape[i])
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        return out
    if auto_pad == "VALID" or not pads:
        return [(0, 0)] * n
    if auto_pad not in ("NOTSET", ""):
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    return [(int(pads[i]), int(pads[i + n])) for i in range(n)]


def out_size(size: int, k: int, s: int, d: int, lo: int, hi: int) -> int:
    """Output length of a window sweep over ``size`` padded by (lo, hi)."""
    return (size + lo + hi - (k - 1) * d - 1) // s + 1


def pad_spatial(x, pads: Sequence[tuple[int, int]], value=0):
    """Pad (or crop, for negative pads) the trailing spatial dims of an N, C, ... array."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    cfg = [(0, 0, 0)] * (x.ndim - len(pads)) + [(lo, hi, 0) for lo, hi in pads]
    return lax.pad(x, jnp.asarray(value, x.dtype), cfg)


def windows(
    xp,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out_shape: Sequence[int],
) -> Iterator[tuple[tuple[int, ...], object]]:
    """(tap, slice of padded ``xp``) for every kernel tap, in row-major tap order.

    The slice of tap t holds, at output position o, the input at o * stride + t * dilation.
    """
    lead = xp.ndim - len(kernel)
    for tap in itertools.product(*(range(k) for k in kernel)):
        start = [0] * lead + [t * d for t, d in zip(tap, dilations, strict=True)]
        limit = list(xp.shape[:lead]) + [
            st + (o - 1) * s + 1 for st, o, s in zip(start[lead:], out_shape, strides, strict=True)
        ]
        yield tap, lax.slice(xp, start, limit, [1] * lead + list(strides))


# -- strategy choice ------------------------------------------------------------------------


def choose(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    groups: int,
) -> str:
    """The lowering for this convolution, decided from static shapes (and the backend) only."""
    reduce = w_shape[1] * math.prod(w_shape[2:])  # products summed per output value
    if math.prod(w_shape[2:]) == 1:
        return "matmul"
    if groups > 1 and ((w_shape[1] == 1 and reduce <= _MAX_TAPS) or reduce <= _MAX_GROUP_TAPS):
        return "taps"
    if jax.default_backend() != "cpu":
        # GPU convolution libraries handle dense and grouped convs well (measured on an H200)
        return "xla"
    if groups > 1 or reduce <= _SMALL_K:
        return "im2col"
    return "xla_nhwc"


# -- the lowering ---------------------------------------------------------------------------


def conv(
    x,
    w,
    b=None,
    *,
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilations: Sequence[int],
    groups: int,
    strategy: str | None = None,
):
    """N-d grouped convolution in ONNX layout: x (N, C, *S), w (O, C/groups, *K), b (O,)."""
    strategy = strategy or choose(x.shape, w.shape, strides, dilations, groups)
    dtype = x.dtype
    w = w.astype(dtype)
    if strategy == "matmul":
        y = _conv_matmul(x, w, strides, pads, dilations, groups)
    elif strategy == "taps":
        y = _conv_taps(x, w, strides, pads, dilations, groups)
    elif strategy == "im2col":
        y = _conv_im2col(x, w, strides, pads, dilations, groups)
    elif strategy in ("xla", "xla_nhwc"):
        y = _conv_xla(x, w, strides, pads, dilations, groups, nhwc=strategy == "xla_nhwc")
    else:
        raise ValueError(f"unknown conv strategy {strategy!r}; one of {STRATEGIES}")
    if b is not None:
        y = y + b.astype(y.dtype).reshape((-1,) + (1,) * (x.ndim - 2))
    return y.astype(dtype)


def _out_shape(x, w, strides, pads, dilations) -> list[int]:
    return [
        out_size(n, k, s, d, lo, hi)
        for n, k, s, d, (lo, hi) in zip(
            x.shape[2:], w.shape[2:], strides, dilations, pads, strict=True
        )
    ]


def _grouped_matmul(w2, p, groups: int):
    """w2 (O, K), p (N, groups * K, P) -> (N, O, P), accumulating in ``acc_dtype``."""
    n, _, npix = p.shape
    o, k = w2.shape
    acc = acc_dtype(p.dtype)
    wg = w2.reshape(groups, o // groups, k)
    pg = p.reshape(n, groups, k, npix)
    if npix < _SMALL_P:
        # few pixels: contract with pixels as rows (N*P x K times K x O), like NHWC
        y = jnp.einsum("gok,ngkp->ngop", wg, pg, preferred_element_type=acc)
    else:
        # W (O x K) @ X[n] (K x P) batched over n and groups lands directly in NCHW order
        wb = jnp.broadcast_to(wg, (n,) + wg.shape)
        y = lax.dot_general(wb, pg, (((3,), (2,)), ((0, 1), (0, 1))), preferred_element_type=acc)
    return y.reshape(n, o, npix)


_SMALL_P = 256


def _conv_matmul(x, w, strides, pads, dilations, groups):
    # 1x1 kernel: NCHW is already the layout of W @ X[n] (O x C times C x HW).
    out = _out_shape(x, w, strides, pads, dilations)
    xp = pad_spatial(x, pads)
    if any(s != 1 for s in strides) or list(xp.shape[2:]) != out:
        xp = lax.slice(
            xp,
            [0] * x.ndim,
            list(xp.shape[:2]) + [(o - 1) * s + 1 for o, s in zip(out, strides, strict=True)],
            [1, 1] + list(strides),
        )
    n, c = x.shape[:2]
    y = _grouped_matmul(w.reshape(w.shape[0], -1), xp.reshape(n, c, -1), groups)
    return y.reshape(n, w.shape[0], *out)


def _conv_taps(x, w, strides, pads, dilations, groups):
    # Few input channels per group: each (input channel, tap) pair is one broadcast multiply-add
    # over the whole output, and XLA fuses them all into one loop.
    out = _out_shape(x, w, strides, pads, dilations)
    o_ch, cg = w.shape[:2]
    mult = o_ch // groups
    acc = acc_dtype(x.dtype)
    xp = pad_spatial(x, pads)
    n, sp = x.shape[0], xp.shape[2:]
    wk = w.reshape(o_ch, cg, -1).astype(acc)
    bshape = (o_ch,) + (1,) * len(out)
    y = None
    for j in range(cg):
        # (N, groups, ...) channel j of every group; groups == 1 broadcasts over outputs
        xj = xp if cg == 1 else xp.reshape(n, groups, cg, *sp)[:, :, j]
        if mult > 1 and groups > 1:
            xj = jnp.repeat(xj, mult, axis=1)
        for i, (_, sl) in enumerate(windows(xj, w.shape[2:], strides, dilations, out)):
            term = sl.astype(acc) * wk[:, j, i].reshape(bshape)
            y = term if y is None else y + term
    return y


def _conv_im2col(x, w, strides, pads, dilations, groups):
    out = _out_shape(x, w, strides, pads, dilations)
    xp = pad_spatial(x, pads)
    n, c = x.shape[:2]
    w2 = w.reshape(w.shape[0], -1)

    def one(xs):
        taps = [sl for _, sl in windows(xs, w.shape[2:], strides, dilations, out)]
        # (n, C, T, *out): per channel its T taps, matching w.reshape(O, C/g * T).
        p = jnp.stack(taps, axis=2).reshape(xs.shape[0], c * len(taps), -1)
        return _grouped_matmul(w2, p, groups)

    patch_bytes = n * c * math.prod(w.shape[2:]) * math.prod(out) * x.dtype.itemsize
    if n > 1 and patch_bytes > _PATCH_BYTES and jax.default_backend() == "cpu":
        # one sample at a time keeps the patch buffer in cache (4x faster at batch 8)
        y = lax.map(lambda xs: one(xs[None])[0], xp)
    else:
        y = one(xp)
    return y.reshape(n, w.shape[0], *out)


def _spatial_letters(nd: int) -> str:
    return "DHW"[-nd:] if nd <= 3 else "".join(chr(ord("a") + i) for i in range(nd))


def _conv_xla(x, w, strides, pads, dilations, groups, *, nhwc: bool):
    nd = x.ndim - 2
    sp = _spatial_letters(nd)
    acc = acc_dtype(x.dtype)
    if nhwc:
        perm = (0, *range(2, x.ndim), 1)
        y = lax.conv_general_dilated(
            x.transpose(perm),
            w,
            window_strides=tuple(strides),
            padding=list(pads),
            rhs_dilation=tuple(dilations),
            feature_group_count=groups,
            dimension_numbers=("N" + sp + "C", "OI" + sp, "N" + sp + "C"),
            preferred_element_type=acc,
        )
        return y.transpose((0, x.ndim - 1, *range(1, x.ndim - 1)))
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=tuple(strides),
        padding=list(pads),
        rhs_dilation=tuple(dilations),
        feature_group_count=groups,
        dimension_numbers=("NC" + sp, "OI" + sp, "NC" + sp),
        preferred_element_type=acc,
    )


# -- transposed convolution -----------------------------------------------------------------


def conv_transpose(
    x,
    w,
    b=None,
    *,
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilations: Sequence[int],
    groups: int,
    output_padding: Sequence[int],
    strategy: str | None = None,
):
    """N-d grouped transposed convolution in ONNX layout: x (N, C, *S), w (C, O/groups, *K).

    Lowered as one ordinary stride-1 convolution over the input with ``prod(strides)`` times
    the output channels (one per output phase), then a depth-to-space interleave: no work is
    spent on the zeros a dilated-input formulation multiplies, and ``conv`` picks the kernel
    strategy (a kernel equal to the stride becomes a plain matmul).
    """
    dtype = x.dtype
    w = w.astype(dtype)
    nd = x.ndim - 2
    if strategy == "xla_dilated":
        y = _conv_transpose_xla(x, w, strides, pads, dilations, groups, output_padding)
    else:
        y = _conv_transpose_phases(x, w, strides, pads, dilations, groups, output_padding, strategy)
    if b is not None:
        y = y + b.astype(y.dtype).reshape((-1,) + (1,) * nd)
    return y.astype(dtype)


def _conv_transpose_phases(x, w, strides, pads, dilations, groups, output_padding, strategy):
    nd = x.ndim - 2
    cin, cog = w.shape[:2]
    cig = cin // groups
    # a dilated kernel is the kernel with zeros in between
    if any(d > 1 for d in dilations):
        w = lax.pad(w, jnp.zeros((), w.dtype), [(0, 0, 0)] * 2 + [(0, 0, d - 1) for d in dilations])
    k = list(w.shape[2:])
    kk = [-(-ki // s) for ki, s in zip(k, strides, strict=True)]  # taps per output phase
    # tap t = m * s + r: phase r, sub-tap m (flipped, since the transpose correlates backwards)
    w = lax.pad(
        w,
        jnp.zeros((), w.dtype),
        [(0, 0, 0)] * 2 + [(0, m * s - ki, 0) for ki, m, s in zip(k, kk, strides, strict=True)],
    )
    w = w.reshape(
        [groups, cig, cog] + [v for m, s in zip(kk, strides, strict=True) for v in (m, s)]
    )
    w = lax.rev(w, [3 + 2 * i for i in range(nd)])
    perm = [0, 2] + [4 + 2 * i for i in range(nd)] + [1] + [3 + 2 * i for i in range(nd)]
    nphase = math.prod(strides)
    w = w.transpose(perm).reshape([groups * cog * nphase, cig] + kk)
    y = conv(
        x,
        w,
        strides=[1] * nd,
        pads=[(m - 1, m - 1) for m in kk],
        dilations=[1] * nd,
        groups=groups,
        strategy=strategy,
    )
    # (N, O, s..., Q...) -> (N, O, Q1, s1, Q2, s2, ...) -> (N, O, Q1*s1, ...)
    n, q = x.shape[0], list(y.shape[2:])
    y = y.reshape([n, groups * cog] + list(strides) + q)
    y = y.transpose([0, 1] + [v for i in range(nd) for v in (2 + nd + i, 2 + i)])
    y = y.reshape([n, groups * cog] + [qi * s for qi, s in zip(q, strides, strict=True)])
    full = [s * (size - 1) + ki for s, size, ki in zip(strides, x.shape[2:], k, strict=True)]
    return pad_spatial(
        y,
        [
            (-lo, f - hi + op - qs)
            for (lo, hi), f, op, qs in zip(pads, full, output_padding, y.shape[2:], strict=True)
        ],
    )


def _conv_transpose_xla(x, w, strides, pads, dilations, groups, output_padding):
    # The textbook form: correlate the stride-dilated input with the flipped kernel.
    nd = x.ndim - 2
    cin, cog = w.shape[:2]
    k = w.shape[2:]
    w = (
        w.reshape(groups, cin // groups, cog, *k)
        .swapaxes(1, 2)
        .reshape(groups * cog, cin // groups, *k)
    )
    w = lax.rev(w, list(range(2, 2 + nd)))
    sp = _spatial_letters(nd)
    pad = [
        (d * (ki - 1) - lo, d * (ki - 1) - hi + op)
        for d, ki, (lo, hi), op in zip(dilations, k, pads, output_padding, strict=True)
    ]
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=(1,) * nd,
        padding=pad,
        lhs_dilation=tuple(strides),
        rhs_dilation=tuple(dilations),
        feature_group_count=groups,
        dimension_numbers=("NC" + sp, "OI" + sp, "NC" + sp),
        preferred_element_type=acc_dtype(x.dtype),
    )


# -- channels-last (the layout pass's NhwcConv) ------------------------------------------------


def conv_nhwc(
    x,
    w,
    b=None,
    *,
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilations: Sequence[int],
    groups: int,
):
    """2-D grouped convolution, channels last: x (N, H, W, C), w (KH, KW, C/groups, O), b (O,).

    The weight arrives already in HWIO (the layout pass transposes it once, outside the
    per-call path). Strategies as for NCHW, in the layout where each is natural: a 1x1 conv is
    one matmul over the trailing channel axis; depthwise taps broadcast along channels.
    """
    dtype = x.dtype
    w = w.astype(dtype)
    acc = acc_dtype(dtype)
    kh, kw, cg, o = w.shape
    if kh == kw == 1 and groups == 1:
        xp = _pad_hw(x, pads)
        if any(s != 1 for s in strides):
            xp = xp[:, :: strides[0], :: strides[1], :]
        y = jnp.einsum("nhwc,co->nhwo", xp, w[0, 0], preferred_element_type=acc)
    elif groups > 1 and cg == 1 and kh * kw <= _MAX_TAPS:
        y = _conv_nhwc_depthwise(x, w, strides, pads, dilations, groups)
    else:
        y = lax.conv_general_dilated(
            x,
            w,
            window_strides=tuple(strides),
            padding=list(pads),
            rhs_dilation=tuple(dilations),
            feature_group_count=groups,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=acc,
        )
    if b is not None:
        y = y + b.astype(y.dtype)
    return y.astype(dtype)


def _pad_hw(x, pads):
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    cfg = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _conv_nhwc_depthwise(x, w, strides, pads, dilations, groups):
    # One multiply-add per tap over the whole output, channels in the vector lanes.
    kh, kw, _, o = w.shape
    mult = o // groups
    acc = acc_dtype(x.dtype)
    xp = _pad_hw(x, pads)
    if mult > 1:
        xp = jnp.repeat(xp, mult, axis=3)
    n, hp, wp, _ = xp.shape
    ho = (hp - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    wo = (wp - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = None
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilations[0], j * dilations[1]
            sl = lax.slice(
                xp,
                (0, r0, c0, 0),
                (n, r0 + (ho - 1) * strides[0] + 1, c0 + (wo - 1) * strides[1] + 1, o),
                (1, strides[0], strides[1], 1),
            )
            term = sl.astype(acc) * w[i, j, 0].astype(acc)
            y = term if y is None else y + term
    return y
