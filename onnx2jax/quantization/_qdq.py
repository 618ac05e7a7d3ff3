"""The QDQ writer: quantized weights as integer initializers behind DequantizeLinear, and
QuantizeLinear -> DequantizeLinear pairs on activations, edited with onnx-ir.

Choices, and why:

- Static activations are **int8** with a zero point (asymmetric), weights int8 symmetric
  (zero point 0), per output channel by default. onnxruntime's quantizer defaults to uint8
  activations, but on x86 CPUs without VNNI its uint8 x int8 kernels saturate (docs/int8.md);
  int8 x int8 is exact there, so the file runs the same in onnxruntime and onnx2jax.
- Dynamic mode quantizes activations per call with DynamicQuantizeLinear (uint8, which is all
  that op makes) and stores weights as **uint8** with per-channel zero points: uint8 x uint8
  is again exact in onnxruntime's kernels on every CPU.
- Biases of Conv/Gemm (static int8) are int32 with scale ``x_scale * w_scale`` and zero point
  0, the form integer kernels consume.
- int4 is weight-only, like onnxruntime's MatMulNBits: block-wise symmetric int4 along the
  reduction axis (``INT4_BLOCK`` values per scale, no zero point) behind an opset-21
  DequantizeLinear with ``block_size``; activations stay float. MatMul weights are written as
  MatMulNBits itself by default (``_nbits.py``), with the same values.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_ir as ir

INT4_BLOCK = 128  # as onnxruntime's MatMulNBits default: 4.25 bits per weight, 87 % smaller
_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # int4 clip ratios tried per scale
DEFAULT_OP_TYPES = ("Conv", "Gemm", "MatMul", "Gather")


@dataclass
class Target:
    """A node whose weight is quantized: which input, which axes, where its bias is."""

    node: ir.Node
    weight: int  # input index of the constant weight (0: a Gather table, no activations)
    channel_axis: int  # per-channel axis of the weight (output features)
    k_axis: int  # reduction axis (int4 blocks run along it)
    bias: int | None  # input index of a constant 1-D bias, if it can be int32


def _const(v: ir.Value | None) -> np.ndarray | None:
    if v is None or v.const_value is None:
        return None
    a = v.const_value.numpy()
    return a if np.dtype(a.dtype).kind == "f" else None


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def find_targets(graph: ir.Graph, op_types: Collection[str], exclude: Collection[str]):
    """The nodes to quantize: listed op types, not excluded by name, with a constant float weight."""
    out = []
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in op_types:
            continue
        if node.name in exclude or len(node.inputs) < 2:
            continue
        if node.op_type == "Gather":
            # an embedding table: weight only (the other input is indices), one scale per row
            table = _const(node.inputs[0])
            if table is not None and table.ndim == 2 and _attr(node, "axis", 0) == 0:
                out.append(Target(node, 0, 0, 1, None))
            continue
        w = _const(node.inputs[1])
        if w is None or w.ndim < 2 or _const(node.inputs[0]) is not None:
            continue
        bias = None
        if node.op_type == "Conv":
            ch, k = 0, 1
            bias = 2 if len(node.inputs) > 2 and _const(node.inputs[2]) is not None else None
        elif node.op_type == "Gemm":
            trans = _attr(node, "transB", 0)
            ch, k = (0, 1) if trans else (1, 0)
            c = _const(node.inputs[2]) if len(node.inputs) > 2 else None
            unit = _attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0
            if c is not None and unit and c.shape == (w.shape[ch],):
                bias = 2
        elif node.op_type == "MatMul":
            ch, k = w.ndim - 1, w.ndim - 2
        else:
            raise ValueError(
                f"op_types: cannot quantize {node.op_type!r} (only {DEFAULT_OP_TYPES})"
            )
        out.append(Target(node, 1, ch, k, bias))
    return out


# -- quantization parameters -------------------------------------------------------------------


def activation_params(lo: float, hi: float) -> tuple[np.float32, np.int8]:
    """Asymmetric int8 scale and zero point for a range (always including 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zp = np.clip(np.round(-128.0 - lo / float(scale)), -128, 127)
    return scale, np.int8(zp)


def _reduce_axes(ndim: int, keep: int | None) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i != keep)


def weight_int8(w: np.ndarray, axis: int | None):
    """Symmetric int8 (zero point 0): per channel along ``axis``, or per tensor (None)."""
    amax = np.max(np.abs(w), axis=_reduce_axes(w.ndim, axis)).astype(np.float32)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(w.dtype)
    bshape = [-1 if i == axis else 1 for i in range(w.ndim)] if axis is not None else []
    q = np.clip(np.round(w / scale.reshape(bshape)), -127, 127).astype(np.int8)
    return q, scale, np.zeros_like(scale, dtype=np.int8)


def weight_uint8(w: np.ndarray, axis: int | None):
    """Asymmetric uint8 (range including 0): per channel along ``axis``, or per tensor."""
    red = _reduce_axes(w.ndim, axis)
    lo = np.minimum(np.min(w, axis=red), 0).astype(np.float32)
    hi = np.maximum(np.max(w, axis=red), 0).astype(np.float32)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(w.dtype)
    zp = np.clip(np.round(-lo / scale), 0, 255).astype(np.uint8)
    bshape = [-1 if i == axis else 1 for i in range(w.ndim)] if axis is not None else []
    q = np.round(w / scale.reshape(bshape)) + zp.reshape(bshape)
    return np.clip(q, 0, 255).astype(np.uint8), scale, zp


def _int4_scale(w: np.ndarray, red: tuple[int, ...]) -> np.ndarray:
    """The int4 scale (reduced over ``red``, kept as size-1 axes) with the least squared error.

    With 16 levels, clipping the few largest values buys a finer step for all others; each
    scale tries the clip ratios ``_SHRINK`` of its absolute maximum and keeps the best.
    """
    amax = np.max(np.abs(w), axis=red, keepdims=True).astype(np.float32)
    best, best_err = None, None
    for f in _SHRINK:
        s = np.where(amax > 0, amax * f / 7.0, 1.0)
        err = np.sum((np.clip(np.round(w / s), -8, 7) * s - w) ** 2, axis=red, keepdims=True)
        if best is None:
            best, best_err = s, err
        else:
            better = err < best_err
            best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    return best.astype(w.dtype)


def weight_int4(w: np.ndarray, axis: int | None):
    """Symmetric int4: per channel along ``axis``, or per tensor (None)."""
    scale = _int4_scale(w, _reduce_axes(w.ndim, axis))
    q = np.clip(np.round(w / scale), -8, 7)
    return (
        q.astype(ml_dtypes.int4),
        scale.reshape(-1) if axis is not None else scale.reshape(()),
        None,
    )


def weight_int4_blocked(w: np.ndarray, k_axis: int, block: int):
    """Symmetric int4 in blocks of ``block`` values along ``k_axis``."""
    k = w.shape[k_axis]
    nb = -(-k // block)
    pad = [(0, 0)] * w.ndim
    pad[k_axis] = (0, nb * block - k)
    wp = np.moveaxis(np.pad(w, pad), k_axis, -1)
    blocks = wp.reshape(*wp.shape[:-1], nb, block)
    scale = _int4_scale(blocks, (blocks.ndim - 1,))
    q = np.clip(np.round(blocks / scale), -8, 7).reshape(wp.shape)[..., :k]
    scale = scale[..., 0]
    q = np.moveaxis(q, -1, k_axis).astype(ml_dtypes.int4)
    # no zero point: int4's default is 0 (symmetric), and a stored one would cost 1/2 bit/weight
    return q, np.moveaxis(scale, -1, k_axis), None


# -- graph editing -----------------------------------------------------------------------------


class Writer:
    """Adds quantization nodes and initializers to one graph, with unique names."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.names = {v.name for n in graph for v in (*n.inputs, *n.outputs) if v is not None}
        self.names |= set(graph.initializers) | {v.name for v in graph.inputs}

    def _name(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        v = ir.Value(name=self._name(base), const_value=ir.tensor(np.asarray(array)))
        v.shape = ir.Shape(np.shape(array))
        v.type = ir.TensorType(v.const_value.dtype)
        self.graph.register_initializer(v)
        return v

    def node(self, op: str, inputs: list, out: str, attrs: Mapping | None = None, n_out=1):
        node = ir.node(op, inputs, attributes=dict(attrs or {}), num_outputs=n_out)
        for i, o in enumerate(node.outputs):
            o.name = self._name(out if n_out == 1 else f"{out}_{i}")
        self.graph.append(node)
        return node.outputs

    def dequantized(self, base: str, q, scale, zp, attrs: Mapping | None = None) -> ir.Value:
        """An integer initializer and the DequantizeLinear that reads it."""
        ins = [self.const(f"{base}_quantized", q), self.const(f"{base}_scale", scale)]
        if zp is not None:
            ins.append(self.const(f"{base}_zero_point", zp))
        return self.node("DequantizeLinear", ins, f"{base}_dequantized", attrs)[0]

    def fake_quantized(self, x: ir.Value, scale, zp) -> ir.Value:
        """x -> QuantizeLinear -> DequantizeLinear with shared scale and zero point."""
        s = self.const(f"{x.name}_scale", scale)
        z = self.const(f"{x.name}_zero_point", zp)
        (q,) = self.node("QuantizeLinear", [x, s, z], f"{x.name}_quantized")
        return self.node("DequantizeLinear", [q, s, z], f"{x.name}_dequantized")[0]

    def dynamic(self, x: ir.Value) -> ir.Value:
        """x -> DynamicQuantizeLinear -> DequantizeLinear (uint8, range computed per call)."""
        y, s, z = self.node("DynamicQuantizeLinear", [x], f"{x.name}_dynamic", n_out=3)
        return self.node("DequantizeLinear", [y, s, z], f"{x.name}_dequantized")[0]

    def reroute(self, old: ir.Value, new: ir.Value, only: Collection[ir.Node] | None = None):
        """Point consumers of ``old`` (all but the quantizer itself, or ``only``) at ``new``."""
        producer = new.producer()
        skip = {producer} | ({producer.inputs[0].producer()} if producer else set())
        for use in list(old.uses()):
            if use.node in skip or (only is not None and use.node not in only):
                continue
            use.node.replace_input_with(use.idx, new)

    def drop_unused_initializers(self, names: Collection[str]) -> None:
        outputs = set(self.graph.outputs)
        for name in names:
            v = self.graph.initializers.get(name)
            if v is not None and not v.uses() and v not in outputs:
                del self.graph.initializers[name]
                if v in self.graph.inputs:
                    self.graph.inputs.remove(v)
