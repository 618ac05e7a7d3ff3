"""Resize and Upsample: separable interpolation planned at trace time, one gather or matmul per axis."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._registry import register
from ._common import axes_list, ints

# Output sizes are static, so everything about the interpolation except the data is decided at
# trace time in float64 numpy, following onnx's reference (onnx/reference/ops/op_resize.py):
# per resized axis, the source taps of each output position and their weights. The traced
# work is then one gather (nearest) or one matmul with an [out, in] weight matrix (linear,
# cubic, antialias) per axis, which XLA maps to the MXU/tensor cores. Above _DENSE_LIMIT
# weight-matrix entries the taps are gathered instead (a k-tap weighted sum), so huge axes do
# not cost out*in work.
_DENSE_LIMIT = 1 << 22


def _source_coords(ctm, out_size, scale, in_size, roi):
    """Source coordinate of every output index (float64), and where tf_crop_and_resize
    extrapolates (None for other modes)."""
    y = np.arange(out_size, dtype=np.float64)
    out_w = scale * in_size  # the reference divides by this float, not by out_size
    extrapolated = None
    if ctm == "align_corners":
        x = np.zeros(out_size) if out_w == 1 else y * (in_size - 1) / (out_w - 1)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        lo, hi = roi
        if out_w == 1:
            x = np.full(out_size, (hi - lo) * (in_size - 1) / 2)
        else:
            x = y * (hi - lo) * (in_size - 1) / (out_w - 1)
        x = x + lo * (in_size - 1)
        extrapolated = (x < 0) | (x > in_size - 1)
    elif ctm == "pytorch_half_pixel":
        x = np.full(out_size, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / out_w)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"unsupported coordinate_transformation_mode {ctm!r}")
    return x, extrapolated


def _cubic(r, a):
    """Keys cubic convolution weights of the 4 taps around a point at fraction ``r``."""
    s = 1 - r
    return np.stack(
        [
            ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
            ((a + 2) * r - (a + 3)) * r * r + 1,
            ((a + 2) * s - (a + 3)) * s * s + 1,
            ((a * (s + 1) - 5 * a) * (s + 1) + 8 * a) * (s + 1) - 4 * a,
        ],
        axis=-1,
    )


def _coeffs(mode, ratio, scale, *, nearest_mode, cubic_a, antialias):
    """Tap weights [out, n] for ratios in (0, 1] (1 where the source is exactly a pixel)."""
    r = ratio[:, None]
    if mode == "nearest":
        first = {
            "round_prefer_floor": r <= 0.5,
            "round_prefer_ceil": r < 0.5,
            "floor": np.ones_like(r, bool),
            "ceil": np.zeros_like(r, bool),
        }[nearest_mode]
        first = first & (r != 1)  # an exact pixel is the second tap, in every mode
        return np.concatenate([first, ~first], axis=1).astype(np.float64)
    if antialias and scale < 1:
        # antialiasing widens the kernel by 1/scale when downsampling
        if mode == "linear":
            start = int(np.floor(-1 / scale) + 1)
            taps = np.arange(start, 2 - start)
            w = np.clip(1 - np.abs((taps - r) * scale), 0, 1)
        else:
            start = int(np.floor(-2 / scale) + 1)
            x = np.abs(scale * (np.arange(start, 2 - start) - r))
            a = cubic_a
            w = np.where(
                x <= 1,
                (a + 2) * x**3 - (a + 3) * x**2 + 1,
                np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0),
            )
        return w / w.sum(axis=1, keepdims=True)
    if mode == "linear":
        return np.concatenate([1 - r, r], axis=1)
    if mode == "cubic":
        return _cubic(ratio, cubic_a)
    raise ValueError(f"unsupported mode {mode!r}")


def _axis_plan(
    in_size, out_size, scale, roi, *, mode, ctm, nearest_mode, cubic_a, exclude_outside, antialias
):
    """Per output position: tap indices [out, n] (clamped to the axis), weights [out, n], and
    the extrapolated mask (or None)."""
    x, extrapolated = _source_coords(ctm, out_size, scale, in_size, roi)
    fl = np.floor(x)
    ratio = np.where(x == fl, 1.0, x - fl)  # the reference prefers the pixel left of x
    w = _coeffs(mode, ratio, scale, nearest_mode=nearest_mode, cubic_a=cubic_a, antialias=antialias)
    n = w.shape[1]
    # the n pixels nearest x, ties to the smaller index (the reference's _get_neighbor)
    pad = int(np.ceil(n / 2))
    xp_ = x + pad
    p = np.floor(xp_).astype(np.int64)
    frac = xp_ - p
    if n % 2 == 0:
        start = p + np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        start = p + np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    idx = start[:, None] + np.arange(n)[None, :] - pad
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_size), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_size - 1), w, extrapolated


def _nearest_plan(in_size, out_size, scale):
    """Resize-10 / Upsample nearest (onnxruntime's rule): asymmetric source coordinates,
    floored when upsampling and ceiled when downsampling."""
    x = np.arange(out_size, dtype=np.float64) / scale
    idx = np.ceil(x) if scale < 1 else np.floor(x)
    return np.clip(idx.astype(np.int64), 0, in_size - 1)


def _is_gather(w):
    """True when every output copies one input pixel (nearest, or exact positions)."""
    return bool(np.all(((w == 0) | (w == 1)) & (w.sum(axis=1, keepdims=True) == 1)))


def _apply_axis(x, axis, idx, w, extrapolated, extrapolation_value):
    """Resample ``x`` along ``axis`` with taps ``idx`` and weights ``w`` ([out, n]).

    ``x`` is floating unless the plan is a gather (exact for every dtype).
    """
    out, n = w.shape
    if _is_gather(w):
        y = jnp.take(x, jnp.asarray(idx[np.arange(out), w.argmax(axis=1)]), axis=axis)
    elif out * x.shape[axis] <= _DENSE_LIMIT:
        m = np.zeros((out, x.shape[axis]))
        np.add.at(m, (np.repeat(np.arange(out), n), idx.reshape(-1)), w.reshape(-1))
        # HIGHEST: this matmul stands in for a gather, so it must not drop to bf16 passes on
        # TPU; half types accumulate in float32 (as onnxruntime does)
        acc = jnp.float32 if x.dtype.itemsize < 4 else x.dtype
        y = jnp.tensordot(
            x,
            jnp.asarray(m, x.dtype),
            axes=([axis], [1]),
            precision=jax.lax.Precision.HIGHEST,
            preferred_element_type=acc,
        )
        y = jnp.moveaxis(y.astype(x.dtype), -1, axis)
    else:
        shape = [1] * x.ndim
        shape[axis] = out
        y = sum(
            jnp.take(x, jnp.asarray(idx[:, k]), axis=axis)
            * jnp.asarray(w[:, k].reshape(shape), x.dtype)
            for k in range(n)
        )
    if extrapolated is not None and extrapolated.any():
        shape = [1] * x.ndim
        shape[axis] = out
        y = jnp.where(
            jnp.asarray(extrapolated.reshape(shape)), jnp.asarray(extrapolation_value, y.dtype), y
        )
    return y


def _resize(
    X,
    roi,
    scales,
    sizes,
    *,
    axes=None,
    antialias=0,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    keep_aspect_ratio_policy="stretch",
    mode="nearest",
    nearest_mode="round_prefer_floor",
):
    rank = X.ndim
    ax = axes_list(axes, rank)
    scales = (
        None
        if scales is None or np.size(scales) == 0
        else [float(s) for s in np.asarray(scales).ravel()]
    )
    sizes = None if sizes is None or np.size(sizes) == 0 else ints(sizes)
    roi = None if roi is None or np.size(roi) == 0 else [float(r) for r in np.asarray(roi).ravel()]
    shape = list(X.shape)
    if roi is not None and len(roi) == 2 * len(ax) and len(ax) != rank:
        full = [0.0] * rank + [1.0] * rank
        for i, d in enumerate(ax):
            full[d], full[rank + d] = roi[i], roi[len(ax) + i]
        roi = full
    if sizes is not None:
        scale = {d: sizes[i] / shape[d] for i, d in enumerate(ax)}
        out = {d: sizes[i] for i, d in enumerate(ax)}
        if keep_aspect_ratio_policy != "stretch":
            pick = {"not_larger": min, "not_smaller": max}[keep_aspect_ratio_policy]
            s = pick(scale.values())
            scale = dict.fromkeys(ax, s)
            out = {d: int(s * shape[d] + 0.5) for d in ax}  # round half up
    elif scales is not None:
        scale = {d: scales[i] for i, d in enumerate(ax)}
        out = {d: int(scale[d] * shape[d]) for d in ax}
    else:
        raise ValueError("Resize needs scales or sizes")
    if coordinate_transformation_mode == "tf_crop_and_resize" and roi is None:
        raise ValueError("tf_crop_and_resize needs roi")
    plans = []
    for d in ax:
        axis_roi = None if roi is None else (roi[d], roi[d + rank])
        if (
            math.isclose(scale[d], 1.0)
            and out[d] == shape[d]
            and (
                axis_roi is None
                or (math.isclose(axis_roi[0], 0.0) and math.isclose(axis_roi[1], 1.0))
            )
        ):
            continue  # identity along this axis
        if out[d] == 0:
            plans.append((d, None))
            continue
        plans.append(
            (
                d,
                _axis_plan(
                    shape[d],
                    out[d],
                    scale[d],
                    axis_roi,
                    mode=mode,
                    ctm=coordinate_transformation_mode,
                    nearest_mode=nearest_mode,
                    cubic_a=cubic_coeff_a,
                    exclude_outside=exclude_outside,
                    antialias=antialias,
                ),
            )
        )
    # Integers interpolate in the widest float JAX computes in (float64 under x64), rounded
    # once at the end, as the reference does, so half-way values round alike.
    dtype = X.dtype
    interpolates = any(p is not None and not _is_gather(p[1]) for _, p in plans)
    cast = interpolates and not jnp.issubdtype(dtype, jnp.floating)
    y = jnp.asarray(X).astype(jax.dtypes.canonicalize_dtype(np.float64)) if cast else X
    for d, plan in plans:
        if plan is None:
            y = jnp.zeros(y.shape[:d] + (0,) + y.shape[d + 1 :], y.dtype)
        else:
            y = _apply_axis(y, d, *plan, extrapolation_value)
    if cast:  # round half to even and saturate, like the reference's saturate_cast
        info = jnp.iinfo(dtype)
        y = jnp.clip(jnp.round(y), info.min, info.max).astype(dtype)
    return y


@register("Resize", since=11)
def resize(
    X,
    roi=None,
    scales=None,
    sizes=None,
    *,
    antialias=0,
    axes=None,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    keep_aspect_ratio_policy="stretch",
    mode="nearest",
    nearest_mode="round_prefer_floor",
):
    """https://onnx.ai/onnx/operators/onnx__Resize.html (roi/scales optional: 13; antialias,
    axes, keep_aspect_ratio_policy: 18; half_pixel_symmetric: 19)."""
    return _resize(
        X,
        roi,
        scales,
        sizes,
        axes=axes,
        antialias=antialias,
        coordinate_transformation_mode=coordinate_transformation_mode,
        cubic_coeff_a=cubic_coeff_a,
        exclude_outside=exclude_outside,
        extrapolation_value=extrapolation_value,
        keep_aspect_ratio_policy=keep_aspect_ratio_policy,
        mode=mode,
        nearest_mode=nearest_mode,
    )


def _upsample(X, scales, mode):
    """Resize-10 and Upsample: asymmetric coordinates; nearest follows onnxruntime (floor when
    upsampling, ceil when downsampling); output size floor(in * scale)."""
    scales = [float(s) for s in np.asarray(scales).ravel()]
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
    if mode != "nearest":
        return _resize(
            X,
            None,
            np.asarray(scales),
            None,
            mode=mode,
            coordinate_transformation_mode="asymmetric",
        )
    y = X
    for d, s in enumerate(scales):
        out = int(s * X.shape[d])
        if out == X.shape[d] and s == 1.0:
            continue
        y = jnp.take(y, jnp.asarray(_nearest_plan(X.shape[d], out, s)), axis=d)
    return y


@register("Resize", since=10)
def resize_10(X, scales, *, mode="nearest"):
    """https://onnx.ai/onnx/operators/onnx__Resize.html#resize-10"""
    return _upsample(X, scales, mode)


@register("Upsample", since=9)
def upsample(X, scales, *, mode="nearest"):
    """https://onnx.ai/onnx/operators/onnx__Upsample.html (scales as an input; deprecated in 10)."""
    return _upsample(X, scales, mode)


@register("Upsample", since=7)
def upsample_7(X, *, scales, mode="nearest"):
    """https://onnx.ai/onnx/operators/onnx__Upsample.html#upsample-7"""
    return _upsample(X, scales, mode)


@register("Upsample", since=1)
def upsample_1(X, *, height_scale, width_scale, mode="nearest"):
    """https://onnx.ai/onnx/operators/onnx__Upsample.html#upsample-1 (NCHW; mode bilinear)."""
    return _upsample(X, [1.0, 1.0, height_scale, width_scale], mode)
