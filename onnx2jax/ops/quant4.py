"""Block-wise 2/4/8-bit weight ops of onnxruntime's weight-only quantizer: com.microsoft
MatMulNBits and GatherBlockQuantized.

Reference: onnxruntime's ContribOperators.md and its CPU kernels (``matmul_nbits.cc``,
``gather_block_quantized.cc``). The packed weights stay packed: the uint8 blobs reach the
compiled program as they are stored (two 4-bit values per byte, low nibble first) and are
unpacked with shifts and masks inside it, so a 4-bit weight costs half a byte per value in
memory. An ``optimization_barrier`` on a packed constant keeps XLA's constant folding from
unpacking it at compile time into a float constant 8x its size.

DequantizeLinear with ``block_size`` on int4/uint4 (opset 21) is ``ops/quant.py``'s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._registry import register
from ._common import axis as norm_axis

MS = "com.microsoft"


def _device(v):
    """A packed constant as a JAX value the compiler will not fold (see the module docstring)."""
    if isinstance(v, (np.ndarray, np.generic)):
        return jax.lax.optimization_barrier(jnp.asarray(v))
    return jnp.asarray(v)


def unpack(packed, bits: int):
    """uint8 bytes [..., B] -> their ``8 // bits`` fields each, low bits first: [..., B * 8 // bits]."""
    if bits not in (2, 4, 8):
        raise ValueError(f"bits must be 2, 4 or 8, got {bits}")
    p = _device(packed).astype(jnp.uint8)
    if bits == 8:
        return p
    per = 8 // bits
    mask = jnp.uint8((1 << bits) - 1)
    fields = [(p >> jnp.uint8(bits * i)) & mask for i in range(per)]
    return jnp.stack(fields, axis=-1).reshape(*p.shape[:-1], p.shape[-1] * per)


def _blocks(v, n: int, k_blocks: int, what: str):
    """A per-block parameter given flat [N * k_blocks] or as [N, k_blocks]."""
    if int(np.prod(v.shape)) != n * k_blocks:
        raise ValueError(
            f"{what} must hold N * ceil(K / block_size) = {n} * {k_blocks} values, "
            f"got shape {list(v.shape)}"
        )
    return v.reshape(n, k_blocks)


@register("MatMulNBits", domain=MS)
def matmul_nbits(
    a,
    b,
    scales,
    zero_points=None,
    g_idx=None,
    bias=None,
    *,
    K,
    N,
    bits=4,
    block_size,
    accuracy_level=0,
):
    """https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.MatMulNBits

    Y = A @ dequant(B)^T (+ bias), B packed as uint8 [N, ceil(K / block_size), blob]. Each
    block of ``block_size`` values along K has its own scale and zero point (uint8 packed like
    B, default 2^(bits-1); or a float zero point of A's type, subtracted after the scale's
    block is found). ``g_idx`` [K] maps each k to its block (act-order GPTQ). The product is
    float32; ``accuracy_level`` (onnxruntime may quantize A to int8 at level 4) is not copied:
    this is the spec's float result.
    """
    k_blocks = -(-K // block_size)
    n = N
    q = unpack(b, bits).reshape(n, -1)[:, : k_blocks * block_size]  # [N, kb * bs]
    if q.shape[1] < k_blocks * block_size:
        raise ValueError(
            f"B of shape {list(b.shape)} holds fewer than N x ceil(K / block_size) x "
            f"block_size = {n} x {k_blocks} x {block_size} {bits}-bit values"
        )
    s = _blocks(jnp.asarray(scales).astype(jnp.float32), n, k_blocks, "scales")
    if zero_points is None:
        zp = jnp.full((n, k_blocks), float(1 << (bits - 1)), jnp.float32)
    elif np.dtype(zero_points.dtype) == np.uint8:
        zp = unpack(zero_points, bits).reshape(n, -1)[:, :k_blocks].astype(jnp.float32)
    else:
        zp = _blocks(jnp.asarray(zero_points).astype(jnp.float32), n, k_blocks, "zero_points")
    qf = q.astype(jnp.float32)
    if g_idx is None:
        w = (qf.reshape(n, k_blocks, block_size) - zp[..., None]) * s[..., None]
        w = w.reshape(n, k_blocks * block_size)[:, :K]
    else:
        g = jnp.asarray(g_idx).astype(jnp.int32).reshape(-1)
        if g.shape[0] != K:
            raise ValueError(f"g_idx must have K = {K} entries, got {g.shape[0]}")
        w = (qf[:, :K] - zp[:, g]) * s[:, g]
    x = jnp.asarray(a)
    y = jax.lax.dot_general(
        x.astype(jnp.float32), w, (((x.ndim - 1,), (1,)), ((), ())), precision="highest"
    )
    if bias is not None:
        y = y + jnp.asarray(bias).astype(jnp.float32)
    return y.astype(x.dtype)


def _nibble_type(dtype) -> tuple[bool, int]:
    """(is the data packed uint8, its default zero point) for GatherBlockQuantized's T1."""
    name = np.dtype(dtype).name
    if name == "uint8":
        return True, 0  # the default zero point depends on bits: set by the caller
    if name in ("int4", "uint4", "int8"):
        return False, 0
    raise ValueError(f"data must be int4, uint4 or uint8, got {name}")


@register("GatherBlockQuantized", domain=MS)
def gather_block_quantized(
    data,
    indices,
    scales,
    zero_points=None,
    *,
    bits=4,
    block_size=128,
    gather_axis=0,
    quantize_axis=1,
):
    """https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.GatherBlockQuantized

    Gather(data, indices, axis=gather_axis), dequantized block-wise along ``quantize_axis``
    with ``scales`` (one per ``block_size`` values) and ``zero_points`` (data's type; default
    0, or 2^(bits-1) for packed uint8). uint8 data holds ``8 // bits`` values per byte along
    its last axis, which must then be ``quantize_axis``; only the gathered rows are unpacked.
    """
    packed, _ = _nibble_type(data.dtype)
    rank = len(data.shape)
    qa = norm_axis(quantize_axis, rank)
    ga = norm_axis(gather_axis, rank)
    if packed and qa != rank - 1:
        raise ValueError(f"packed uint8 data needs quantize_axis = last axis, got {quantize_axis}")
    idx = jnp.asarray(indices).astype(jnp.int32)
    idx = jnp.where(idx < 0, idx + data.shape[ga], idx)
    d = _device(data) if not packed else jnp.asarray(data)
    rows = jnp.take(d, idx, axis=ga)  # gather first: unpack only what is read
    sc = jnp.take(jnp.asarray(scales).astype(jnp.float32), idx, axis=ga)
    zp = None if zero_points is None else jnp.take(jnp.asarray(zero_points), idx, axis=ga)
    out_axis = qa + (idx.ndim - 1 if qa > ga else 0)  # where the quantized axis lands
    if packed:
        q = unpack(rows, bits)
        if zp is not None:
            zp = unpack(zp, bits)[..., : sc.shape[-1]]
        default_zp = float(1 << (bits - 1))
    else:
        q = rows
        default_zp = 0.0
    k = q.shape[out_axis]
    zpf = jnp.float32(default_zp) if zp is None else zp.astype(jnp.float32)
    s_full = jnp.repeat(
        sc, block_size, axis=out_axis, total_repeat_length=sc.shape[out_axis] * block_size
    )
    s_full = jax.lax.slice_in_dim(s_full, 0, k, axis=out_axis)
    if zp is not None:
        zpf = jnp.repeat(
            zpf, block_size, axis=out_axis, total_repeat_length=zpf.shape[out_axis] * block_size
        )
        zpf = jax.lax.slice_in_dim(zpf, 0, k, axis=out_axis)
    y = (q.astype(jnp.float32) - zpf) * s_full
    return y.astype(np.dtype(scales.dtype))
