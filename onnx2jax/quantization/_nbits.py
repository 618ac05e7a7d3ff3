"""int4 MatMul weights as com.microsoft MatMulNBits: packed uint8 blocks, as onnxruntime's
``MatMulNBitsQuantizer`` writes them.

Why this form for MatMul (and not DequantizeLinear with ``block_size``): onnx2jax keeps
MatMulNBits's uint8 blob packed in memory and unpacks it inside the compiled program, while an
int4 initializer behind DequantizeLinear is widened at load; and onnxruntime runs MatMulNBits
with its 4-bit kernels instead of dequantizing the whole weight per call.

Layout (onnxruntime's ContribOperators.md, ``MatMulNBits``): B ``[K, N]`` becomes uint8
``[N, n_blocks, block_size / 2]``, each column's K values in blocks of ``block_size`` (K
padded with zeros to whole blocks), two 4-bit values per byte, low nibble first; scales
``[N * n_blocks]`` of B's float type; no zero points: the values are symmetric int4 stored as
``q + 8``, and 8 is the op's default zero point for 4 bits.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._qdq import INT4_BLOCK, Target, Writer, weight_int4_blocked

MS = "com.microsoft"
_MIN_BLOCK = 16  # onnxruntime's kernels take power-of-two blocks of at least 16


def block_size_for(k: int) -> int:
    """``INT4_BLOCK`` (128), or for a shorter K the least power of two >= K (at least 16):
    one block per column, the per-output-channel scale the DequantizeLinear form uses there."""
    if k >= INT4_BLOCK:
        return INT4_BLOCK
    return max(_MIN_BLOCK, 1 << (k - 1).bit_length())


def pack_int4(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A float ``[K, N]`` weight as MatMulNBits's packed B ``[N, n_blocks, block / 2]`` and
    flat scales ``[N * n_blocks]`` (symmetric int4, the scales of ``weight_int4_blocked``)."""
    k, n = w.shape
    nb = -(-k // block)
    q, scale, _ = weight_int4_blocked(w, 0, block)  # q [K, N] int4, scale [nb, N]
    u = q.astype(np.int8).astype(np.int16) + 8  # 0..15; 8 is the default zero point
    u = np.pad(u, ((0, nb * block - k), (0, 0)), constant_values=8)  # padding dequantizes to 0
    u = u.T.reshape(n, nb, block // 2, 2).astype(np.uint8)
    packed = u[..., 0] | (u[..., 1] << 4)
    return np.ascontiguousarray(packed), np.ascontiguousarray(scale.T).reshape(-1)


def fits(t: Target, per_channel: bool) -> bool:
    """Whether a target can become MatMulNBits: a MatMul with a 2-D float32/float16 weight
    (MatMulNBits's types), blocks along K (``per_channel``), and an A that is not 1-D."""
    node = t.node
    if node.op_type != "MatMul" or not per_channel:
        return False
    wv = node.inputs[1]
    dtype = wv.const_value.dtype
    if len(wv.const_value.shape) != 2 or dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return False
    shape = node.inputs[0].shape
    return shape is None or len(shape) >= 2


def write(w: Writer, t: Target) -> None:
    """Replace the MatMul ``t.node`` by a MatMulNBits reading its packed weight."""
    node = t.node
    wv = node.inputs[1]
    arr = wv.const_value.numpy()
    k, n = arr.shape
    block = block_size_for(k)
    packed, scales = pack_int4(arr, block)
    b = w.const(f"{wv.name}_Q4", packed)
    s = w.const(f"{wv.name}_scales", scales.astype(arr.dtype))
    attrs = {"K": k, "N": n, "bits": 4, "block_size": block}
    new = ir.node("MatMulNBits", [node.inputs[0], b, s], attributes=attrs, domain=MS)
    new.name = f"{node.name}_Q4" if node.name else None
    ir.convenience.replace_nodes_and_values(
        w.graph, node, [node], [new], list(node.outputs), list(new.outputs)
    )
