"""Image ops: GridSample, AffineGrid, RoiAlign, Col2Im, MaxUnpool and ImageDecoder."""

from __future__ import annotations

import io
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from .._registry import register
from ._common import ints, xp

# -- GridSample ---------------------------------------------------------------------------------
# Semantics follow onnx's reference (onnx/reference/ops/op_grid_sample.py, itself PyTorch's
# grid_sampler): a coordinate outside the border range is first moved by the padding mode
# (clamped or reflected), then each interpolation tap reads the input through the padding mode
# again (zero, clamped or reflected index). All taps of all dimensions are gathered at once.


def _reflect(x, lo, hi):
    """Reflect ``x`` into [lo, hi] by the nearest border, repeatedly (float coordinates)."""
    rng = hi - lo
    if rng <= 0:
        return jnp.full_like(x, lo)
    below = x < lo
    dx = jnp.where(below, lo - x, x - hi)
    n = jnp.trunc(dx / rng)
    r = dx - n * rng
    even = jnp.mod(n, 2) == 0
    low_side = jnp.where(below, lo + r, hi - r)
    high_side = jnp.where(below, hi - r, lo + r)
    return jnp.where((x >= lo) & (x <= hi), x, jnp.where(even, low_side, high_side))


def _cubic_weights(t, a=-0.75):
    """Keys cubic weights of taps -1, 0, 1, 2 around fraction ``t`` (stacked last).

    The outer taps use the factored form a*s*(1-s)^2 of a*|d|^3 - 5a*d^2 + 8a*|d| - 4a: the
    expanded polynomial cancels terms of size ~6 and loses about 1e-6 in float32.
    """
    u = 1 - t
    return jnp.stack(
        [
            a * t * u * u,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * u - (a + 3)) * u * u + 1,
            a * u * t * t,
        ],
        axis=-1,
    )


def _grid_taps(x, size, mode, padding_mode, align_corners):
    """Tap indices (int32, in range) and weights of one input dimension, both ``[..., taps]``,
    for source coordinates ``x`` (already denormalised)."""
    lo, hi = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    if mode == "nearest":
        x = jnp.round(x)  # half to even, like PyTorch
    outside = (x < lo) | (x > hi)
    if padding_mode == "border":
        x = jnp.where(outside, jnp.clip(x, 0, size - 1), x)
    elif padding_mode == "reflection":
        x = jnp.where(outside, _reflect(x, lo, hi), x)
    if mode == "nearest":
        idx = jnp.trunc(x)[..., None]
        w = jnp.ones_like(idx)
    else:
        base = jnp.floor(x)
        t = x - base
        if mode == "linear":
            idx = base[..., None] + jnp.arange(2, dtype=x.dtype)
            w = jnp.stack([1 - t, t], axis=-1)
        else:
            idx = base[..., None] + jnp.arange(-1, 3, dtype=x.dtype)
            w = _cubic_weights(t)
    # read each tap through the padding mode
    if padding_mode == "zeros":
        w = jnp.where((idx >= 0) & (idx < size), w, 0)
    elif padding_mode == "reflection":
        idx = jnp.trunc(_reflect(idx, lo, hi))
    return jnp.clip(idx, 0, size - 1).astype(jnp.int32), w


def _grid_sample(X, grid, mode, padding_mode, align_corners):
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    if mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"unsupported mode {mode!r}")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise ValueError(f"unsupported padding_mode {padding_mode!r}")
    n, c, *dims = X.shape
    nd = len(dims)
    out_sp = tuple(grid.shape[1:-1])
    grid = jnp.asarray(grid)
    g = grid.reshape(n, -1, nd)  # [N, Q, nd], the last entry indexes the first spatial dim...
    idx = jnp.zeros((n, g.shape[1], 1), jnp.int32)
    w = jnp.ones((n, g.shape[1], 1), grid.dtype)
    for i, size in enumerate(dims):  # ...so spatial dim i reads grid entry nd-1-i
        v = g[..., nd - 1 - i]
        if align_corners:
            x = (v + 1) / 2 * (size - 1)
        else:
            x = ((v + 1) * size - 1) / 2
        ti, tw = _grid_taps(x, size, mode, padding_mode, align_corners)
        idx = (idx[..., :, None] * size + ti[..., None, :]).reshape(n, g.shape[1], -1)
        w = (w[..., :, None] * tw[..., None, :]).reshape(n, g.shape[1], -1)
    taps = idx.shape[-1]
    flat = jnp.asarray(X).reshape(n, c, -1)
    vals = jnp.take_along_axis(flat, idx.reshape(n, 1, -1), axis=2).reshape(n, c, -1, taps)
    dt = X.dtype if jnp.issubdtype(X.dtype, jnp.floating) else w.dtype
    y = jnp.einsum("ncqt,nqt->ncq", vals.astype(dt), w.astype(dt))
    return y.astype(X.dtype).reshape((n, c) + out_sp)


@register("GridSample", since=16)
def grid_sample_16(X, grid, *, align_corners=0, mode="bilinear", padding_mode="zeros"):
    """https://onnx.ai/onnx/operators/onnx__GridSample.html#gridsample-16 (4-D; bilinear,
    bicubic)."""
    return _grid_sample(X, grid, mode, padding_mode, align_corners)


@register("GridSample", since=20)
def grid_sample(X, grid, *, align_corners=0, mode="linear", padding_mode="zeros"):
    """https://onnx.ai/onnx/operators/onnx__GridSample.html (N-D; linear, cubic: opset 20)."""
    return _grid_sample(X, grid, mode, padding_mode, align_corners)


# -- AffineGrid ---------------------------------------------------------------------------------


def _base_coords(size, align_corners):
    """Normalised pixel centres along one axis (float64), in [-1, 1]."""
    if size == 1:
        return np.zeros(1)
    if align_corners:
        return np.linspace(-1.0, 1.0, size)
    return (2 * np.arange(size) + 1) / size - 1


@register("AffineGrid", since=20)
def affine_grid(theta, size, *, align_corners=0):
    """https://onnx.ai/onnx/operators/onnx__AffineGrid.html: theta [N, 2, 3] with size
    (N, C, H, W), or [N, 3, 4] with (N, C, D, H, W); the grid's last axis is (x, y[, z])."""
    sp = ints(size)[2:]
    axes = [_base_coords(s, align_corners) for s in sp]
    mesh = np.meshgrid(*axes, indexing="ij")  # one array per spatial axis, (D,) H, W
    base = np.stack([*mesh[::-1], np.ones(tuple(sp))], axis=-1)  # (x, y[, z], 1)
    m = xp(theta)
    base = m.asarray(base.astype(theta.dtype))
    return m.einsum("...k,njk->n...j", base, theta)


# -- RoiAlign -----------------------------------------------------------------------------------
# Semantics follow onnx's reference (itself onnxruntime's CPU kernel). Bilinear sampling is
# separable, so the sample positions, corner indices and weights are computed per axis and
# combined by broadcasting; the corners of every sample of every bin are gathered at once
# (in chunks, in a loop, when traced rois decide the number of samples).


def _roi_axis(pos, size):
    """Corner indices [..., 2] and weights [..., 2] of sample positions ``pos`` on one axis."""
    invalid = (pos < -1.0) | (pos > size)
    pos = jnp.maximum(pos, 0)
    low = jnp.floor(pos)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    pos = jnp.where(at_end, low, pos)
    frac = pos - low
    w = jnp.stack([1 - frac, frac], axis=-1)
    w = jnp.where(invalid[..., None], 0, w)
    return jnp.stack([low, high], axis=-1).astype(jnp.int32), w


def _roi_align(
    X,
    rois,
    batch_indices,
    *,
    half_pixel,
    mode,
    output_height,
    output_width,
    sampling_ratio,
    spatial_scale,
):
    if mode not in ("avg", "max"):
        raise ValueError(f"unsupported mode {mode!r}")
    n, c, h, w = X.shape
    oh, ow = output_height, output_width
    m = xp(rois)
    dt = rois.dtype.type
    # in the rois' own precision, like the reference and onnxruntime
    r = rois * dt(spatial_scale) - dt(0.5 if half_pixel else 0.0)
    rw, rh = r[:, 2] - r[:, 0], r[:, 3] - r[:, 1]
    if not half_pixel:  # malformed rois become 1x1
        rw, rh = m.maximum(rw, dt(1)), m.maximum(rh, dt(1))
    bh, bw = rh / dt(oh), rw / dt(ow)
    if sampling_ratio > 0:
        gh = gw = m.full(rois.shape[0], sampling_ratio, np.int32)
    else:  # samples per bin follow each roi's size
        gh, gw = m.ceil(rh / dt(oh)).astype(np.int32), m.ceil(rw / dt(ow)).astype(np.int32)
    count = jnp.maximum(jnp.asarray(gh) * jnp.asarray(gw), 1).astype(X.dtype)
    b = jnp.asarray(batch_indices).astype(jnp.int32)
    xf = jnp.moveaxis(jnp.asarray(X), 1, -1).reshape(n * h * w, c)
    r, bh, bw, gh_j, gw_j = (jnp.asarray(v) for v in (r, bh, bw, gh, gw))

    def samples(start, bin_size, grid, bins, k):
        """Positions [R, bins, K] of samples ``k`` of every bin, and which exist (k < grid)."""
        k = jnp.asarray(k)
        g = jnp.maximum(grid, 1).astype(start.dtype)[:, None, None]
        pos = (
            start[:, None, None]
            + jnp.arange(bins, dtype=start.dtype)[None, :, None] * bin_size[:, None, None]
            + (k.astype(start.dtype) + 0.5)[None, None, :] * bin_size[:, None, None] / g
        )
        return pos, k[None, None, :] < grid[:, None, None]

    def reduce(ky, kx):
        """Sum (avg) or max (max) over the samples ``ky`` x ``kx`` of every bin: [R, oh, ow, C]."""
        py, my = samples(r[:, 1], bh, gh_j, oh, ky)
        px, mx = samples(r[:, 0], bw, gw_j, ow, kx)
        iy, wy = _roi_axis(py, h)  # [R, oh, Ky, 2]
        ix, wx = _roi_axis(px, w)  # [R, ow, Kx, 2]
        flat = (
            b[:, None, None, None, None, None, None] * (h * w)
            + iy[:, :, :, :, None, None, None] * w
            + ix[:, None, None, None, :, :, :]
        )
        vals = xf[flat]  # [R, oh, Ky, 2, ow, Kx, 2, C]
        wy = jnp.where(my[..., None], wy, 0).astype(X.dtype)
        wx = jnp.where(mx[..., None], wx, 0).astype(X.dtype)
        if mode == "avg":
            return jnp.einsum("rpiaqjbc,rpia,rqjb->rpqc", vals, wy, wx)
        wv = wy[:, :, :, :, None, None, None, None] * wx[:, None, None, None, :, :, :, None]
        v = jnp.max(vals * wv, axis=(3, 6))  # the largest weighted corner of each sample
        exists = my[:, :, :, None, None, None] & mx[:, None, None, :, :, None]
        return jnp.max(jnp.where(exists, v, -jnp.inf), axis=(2, 4))

    if m is np:  # samples per bin known: all of them at once
        out = reduce(
            np.arange(max(int(gh.max(initial=1)), 1)), np.arange(max(int(gw.max(initial=1)), 1))
        )
    else:
        # Traced rois decide how many samples a bin takes: gather them in chunks of as many as
        # a roi the size of the feature map needs (one chunk for rois inside the image), in a
        # loop whose trip count is the data's.
        ch, cw = max(-(-h // oh), 1), max(-(-w // ow), 1)
        if sampling_ratio > 0:
            # A fixed number of samples: a static trip count, so fori_loop is a scan and
            # reverse-mode differentiable (jax.grad with respect to X).
            ny, nx = -(-sampling_ratio // ch), -(-sampling_ratio // cw)
        else:
            ny = (jnp.max(gh_j, initial=1) + ch - 1) // ch
            nx = (jnp.max(gw_j, initial=1) + cw - 1) // cw
        combine = jnp.add if mode == "avg" else jnp.maximum

        def body(i, acc):
            ky = (i // nx) * ch + jnp.arange(ch)
            kx = (i % nx) * cw + jnp.arange(cw)
            return combine(acc, reduce(ky, kx))

        init = jnp.full((rois.shape[0], oh, ow, c), 0 if mode == "avg" else -jnp.inf, X.dtype)
        out = jax.lax.fori_loop(0, ny * nx, body, init)
    if mode == "avg":
        out = out / count[:, None, None, None]
    else:
        out = jnp.where(jnp.isneginf(out), 0, out)  # a bin without samples is 0
    return jnp.moveaxis(out, -1, 1).astype(X.dtype)


@register("RoiAlign", since=10)
def roi_align_10(
    X,
    rois,
    batch_indices,
    *,
    mode="avg",
    output_height=1,
    output_width=1,
    sampling_ratio=0,
    spatial_scale=1.0,
):
    """https://onnx.ai/onnx/operators/onnx__RoiAlign.html#roialign-10 (no half-pixel shift)."""
    return _roi_align(
        X,
        rois,
        batch_indices,
        half_pixel=False,
        mode=mode,
        output_height=output_height,
        output_width=output_width,
        sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale,
    )


@register("RoiAlign", since=16)
def roi_align(
    X,
    rois,
    batch_indices,
    *,
    coordinate_transformation_mode="half_pixel",
    mode="avg",
    output_height=1,
    output_width=1,
    sampling_ratio=0,
    spatial_scale=1.0,
):
    """https://onnx.ai/onnx/operators/onnx__RoiAlign.html (coordinate_transformation_mode: 16)."""
    if coordinate_transformation_mode not in ("half_pixel", "output_half_pixel"):
        raise ValueError(
            f"unsupported coordinate_transformation_mode {coordinate_transformation_mode!r}"
        )
    return _roi_align(
        X,
        rois,
        batch_indices,
        half_pixel=coordinate_transformation_mode == "half_pixel",
        mode=mode,
        output_height=output_height,
        output_width=output_width,
        sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale,
    )


# -- Col2Im and MaxUnpool -----------------------------------------------------------------------


@register("Col2Im", since=18)
def col2im(input, image_shape, block_shape, *, dilations=None, pads=None, strides=None):
    """https://onnx.ai/onnx/operators/onnx__Col2Im.html: sums each column block back into the
    image (the inverse layout of im2col); one scatter-add with indices fixed at trace time."""
    image, block = ints(image_shape), ints(block_shape)
    nd = len(image)
    dil = list(dilations) if dilations else [1] * nd
    st = list(strides) if strides else [1] * nd
    pd = list(pads) if pads else [0] * (2 * nd)
    padded = [image[i] + pd[i] + pd[i + nd] for i in range(nd)]
    blocks = [(padded[i] - dil[i] * (block[i] - 1) - 1) // st[i] + 1 for i in range(nd)]
    n, ck, length = input.shape
    k = int(np.prod(block))
    if ck % k or length != int(np.prod(blocks)):
        raise ValueError(
            f"input shape {tuple(input.shape)} does not match block_shape {block} "
            f"and {blocks} blocks"
        )
    # padded-image position of (kernel offset, block) along each axis, combined row-major
    pos = np.zeros((k, length), np.int64)
    koffs = np.array(list(itertools.product(*[range(b) for b in block]))).reshape(k, nd)
    boffs = np.array(list(itertools.product(*[range(b) for b in blocks]))).reshape(length, nd)
    for i in range(nd):
        pos = pos * padded[i] + koffs[:, None, i] * dil[i] + boffs[None, :, i] * st[i]
    data = jnp.asarray(input).reshape(n, ck // k, k * length)
    out = jnp.zeros((n, ck // k, int(np.prod(padded))), input.dtype)
    out = out.at[:, :, pos.reshape(-1)].add(data).reshape(n, ck // k, *padded)
    crop = tuple(slice(pd[i], pd[i] + image[i]) for i in range(nd))
    return out[(slice(None), slice(None), *crop)]


@register("MaxUnpool", since=9)
def max_unpool(X, I, output_shape=None, *, kernel_shape, pads=None, strides=None):
    """https://onnx.ai/onnx/operators/onnx__MaxUnpool.html: each value goes to its flat index
    (over the whole tensor, as MaxPool's Indices) in the shape MaxPool's input had; an
    ``output_shape`` larger than that pads with zeros at the end, as onnx's reference does."""
    nd = len(kernel_shape)
    st = list(strides) if strides else [1] * nd
    pd = list(pads) if pads else [0] * (2 * nd)
    inferred = [X.shape[0], X.shape[1]] + [
        (X.shape[i + 2] - 1) * st[i] - (pd[i] + pd[i + nd]) + kernel_shape[i] for i in range(nd)
    ]
    shape = inferred if output_shape is None or np.size(output_shape) == 0 else ints(output_shape)
    total = int(np.prod(inferred))
    flat = jnp.zeros((total,), X.dtype)
    idx = jnp.asarray(I).reshape(-1).astype(jax.dtypes.canonicalize_dtype(np.int64))
    flat = flat.at[idx].set(jnp.asarray(X).reshape(-1), mode="drop")
    y = flat.reshape(inferred)
    extra = [(0, s - i) for s, i in zip(shape, inferred, strict=True)]
    if any(e[1] < 0 for e in extra):
        raise ValueError(f"output_shape {shape} is smaller than the unpooled shape {inferred}")
    return jnp.pad(y, extra) if any(e[1] for e in extra) else y


# -- ImageDecoder -------------------------------------------------------------------------------
# Decoding is not arithmetic XLA can do, and the output's shape depends on the bytes: the encoded
# image is a static input (STATIC_INPUTS), decoded with Pillow at trace time into a constant.


@register("ImageDecoder", since=20)
def image_decoder(encoded, *, pixel_format="RGB"):
    """https://onnx.ai/onnx/operators/onnx__ImageDecoder.html"""
    try:
        import PIL.Image
    except ImportError as e:
        raise ImportError(
            "ImageDecoder decodes images with Pillow, which is not installed: "
            "pip install pillow (or pip install 'onnx2jax[images]')"
        ) from e
    if pixel_format not in ("RGB", "BGR", "Grayscale"):
        raise ValueError(f"pixel_format must be RGB, BGR or Grayscale, got {pixel_format!r}")
    img = PIL.Image.open(io.BytesIO(np.asarray(encoded).tobytes()))
    # As onnx's reference (Pillow's own conversions, e.g. ITU-R 601-2 luma for Grayscale); it
    # returns an RGB file's pixels as they are, which convert() leaves unchanged, and converting
    # also gives palette, RGBA or grayscale files the spec's 3 channels.
    if pixel_format == "Grayscale":
        return np.asarray(img.convert("L"), np.uint8)[:, :, None]
    rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1]) if pixel_format == "BGR" else rgb
