"""Signal processing ops: DFT, STFT, the Hann/Hamming/Blackman windows and MelWeightMatrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._registry import register
from ._common import dtype_of, ints

# Signals are real ([..., 1]) or complex as interleaved (real, imag) pairs ([..., 2]) in the last
# axis; outputs use the same layout. FFTs run in complex64 (complex128 for float64 with x64 on);
# float16/bfloat16 signals are transformed in float32 and cast back.


def _to_complex(x):
    x = jnp.asarray(x)
    if x.dtype.itemsize < 4:
        x = x.astype(jnp.float32)
    if x.shape[-1] == 1:
        return x[..., 0]
    if x.shape[-1] == 2:
        return jax.lax.complex(x[..., 0], x[..., 1])
    raise ValueError(f"the last axis must have size 1 (real) or 2 (complex), got {x.shape[-1]}")


def _to_pairs(z, dtype):
    return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1).astype(dtype)


def _dft(x, dft_length, axis, inverse, onesided):
    rank = x.ndim
    a = axis % rank
    if a == rank - 1:
        raise ValueError("axis must not be the last axis (it holds the real/imaginary parts)")
    if dft_length is None:
        # An inverse one-sided transform rebuilds an even-length signal by default.
        n = 2 * (x.shape[a] - 1) if inverse and onesided else x.shape[a]
    else:
        n = ints(dft_length)[0]
    z = _to_complex(x)
    if not inverse:
        if x.shape[-1] == 1:
            # A real signal: RFFT, and the other half from conjugate symmetry X[n-k] = X[k]*.
            # Cheaper, and the DC/Nyquist imaginary parts come out exactly 0, as they should.
            y = jnp.fft.rfft(z, n=n, axis=a)
            if not onesided:
                mirror = jnp.flip(jnp.take(y, jnp.arange(1, n - n // 2), axis=a), axis=a)
                y = jnp.concatenate([y, jnp.conj(mirror)], axis=a)
            return _to_pairs(y, x.dtype)
        y = jnp.fft.fft(z, n=n, axis=a)
        if onesided:
            y = jnp.take(y, jnp.arange(n // 2 + 1), axis=a)
        return _to_pairs(y, x.dtype)
    if onesided:
        # IRFFT: one-sided complex spectrum -> real signal of length n, last axis of size 1.
        return jnp.fft.irfft(z, n=n, axis=a)[..., None].astype(x.dtype)
    return _to_pairs(jnp.fft.ifft(z, n=n, axis=a), x.dtype)


@register("DFT", since=17)
def dft_17(x, dft_length=None, *, axis=1, inverse=0, onesided=0):
    """https://onnx.ai/onnx/operators/onnx__DFT.html (opset 17: axis is an attribute)."""
    return _dft(x, dft_length, axis, inverse, onesided)


@register("DFT", since=20)
def dft(x, dft_length=None, axis=None, *, inverse=0, onesided=0):
    """https://onnx.ai/onnx/operators/onnx__DFT.html (opset 20: axis is an input, default -2)."""
    return _dft(x, dft_length, -2 if axis is None else ints(axis)[0], inverse, onesided)


@register("STFT", since=17)
def stft(signal, frame_step, window=None, frame_length=None, *, onesided=1):
    """https://onnx.ai/onnx/operators/onnx__STFT.html

    ``signal`` is [batch, length, 1|2]; the output is [batch, frames, bins, 2].
    """
    step = ints(frame_step)[0]
    length = signal.shape[1]
    if frame_length is not None:
        n = ints(frame_length)[0]
    elif window is not None:
        n = window.shape[0]
    else:
        n = length
    if window is not None and window.shape[0] != n:
        raise ValueError(f"window has length {window.shape[0]}, but frame_length is {n}")
    frames = 1 + (length - n) // step
    # One gather builds every frame: [batch, frames, n, 1|2].
    idx = np.arange(frames)[:, None] * step + np.arange(n)[None, :]
    framed = jnp.asarray(signal)[:, idx]
    if window is not None:
        framed = framed * jnp.asarray(window).astype(framed.dtype)[:, None]
    return _dft(framed, None, 2, 0, onesided)


def _window(size, periodic, output_datatype, coeffs):
    """sum_k c_k cos(2 pi k n / N), N = size (periodic) or size - 1 (symmetric), in float64."""
    size = ints(size)[0]
    n_den = size if periodic else size - 1
    ni = np.arange(size, dtype=np.float64)
    y = sum(c * np.cos(2 * np.pi * k * ni / n_den) for k, c in enumerate(coeffs))
    return y.astype(dtype_of(output_datatype))


@register("HannWindow", since=17)
def hann_window(size, *, output_datatype=1, periodic=1):
    """https://onnx.ai/onnx/operators/onnx__HannWindow.html"""
    return _window(size, periodic, output_datatype, (0.5, -0.5))


@register("HammingWindow", since=17)
def hamming_window(size, *, output_datatype=1, periodic=1):
    """https://onnx.ai/onnx/operators/onnx__HammingWindow.html (alpha = 25/46)."""
    alpha = 25.0 / 46.0
    return _window(size, periodic, output_datatype, (alpha, -(1.0 - alpha)))


@register("BlackmanWindow", since=17)
def blackman_window(size, *, output_datatype=1, periodic=1):
    """https://onnx.ai/onnx/operators/onnx__BlackmanWindow.html"""
    return _window(size, periodic, output_datatype, (0.42, -0.5, 0.08))


@register("MelWeightMatrix", since=17)
def mel_weight_matrix(
    num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *, output_datatype=1
):
    """https://onnx.ai/onnx/operators/onnx__MelWeightMatrix.html; static, [dft_length//2+1, bins].

    Follows onnx's reference: bin edges are equally spaced on the mel scale (num_mel_bins + 2
    points) and floored to FFT bins as ((dft_length + 1) * f) // sample_rate.
    """
    bins = ints(num_mel_bins)[0]
    n_fft = ints(dft_length)[0]
    rate = ints(sample_rate)[0]
    lo = float(np.asarray(lower_edge_hertz).reshape(-1)[0])
    hi = float(np.asarray(upper_edge_hertz).reshape(-1)[0])
    lo_mel = 2595 * np.log1p(lo / 700) / np.log(10)
    hi_mel = 2595 * np.log1p(hi / 700) / np.log(10)
    points = np.arange(bins + 2)
    mels = points * ((hi_mel - lo_mel) / (bins + 2)) + lo_mel
    hz = 700 * np.expm1(mels / 2595 * np.log(10))
    edges = (((n_fft + 1) * hz) // rate).astype(np.int64)
    out = np.zeros((n_fft // 2 + 1, bins), np.float64)
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1.0
        else:
            j = np.arange(left, center + 1)
            out[j, i] = (j - left) / (center - left)
        if right > center:
            j = np.arange(center, right)
            out[j, i] = (right - j) / (right - center)
    return out.astype(dtype_of(output_datatype))
