"""Quantization-aware training: a QDQ model rewritten with straight-through fake quantization,
and the trained result written back as a QDQ model.

``prepare_qat`` turns each QuantizeLinear -> DequantizeLinear pair into one
``ai.onnx2jax::FakeQuantizeLinear`` (same forward values, gradients straight through), each
quantized weight into a float initializer (a trainable param) behind FakeQuantizeLinear, each
int32 bias into a float one, and Round into ``ai.onnx2jax::RoundSTE``. ``finish_qat`` undoes
it with the trained params: weights are quantized again with the (trained) scales.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from ._qdq import Writer

DOMAIN = "ai.onnx2jax"


def _attrs(node: ir.Node) -> dict:
    return {k: a.value for k, a in node.attributes.items() if k in ("axis", "block_size")}


def _full(p: np.ndarray, shape: tuple, attrs: dict) -> np.ndarray:
    """A scale or zero point broadcast to ``shape`` as DequantizeLinear reads it."""
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    if p.size == 1 and not block:
        return np.broadcast_to(p.reshape(()), shape)
    axis %= len(shape)
    if block:
        return np.repeat(p, block, axis=axis).take(range(shape[axis]), axis=axis)
    return p.reshape([-1 if i == axis else 1 for i in range(len(shape))])


def _dequantize(q: np.ndarray, s: np.ndarray, z: np.ndarray | None, attrs: dict) -> np.ndarray:
    """DequantizeLinear of constants, in numpy (per tensor, per axis or blocked)."""
    zf = 0.0 if z is None else _full(z, q.shape, attrs).astype(np.float32)
    sf = _full(s, q.shape, attrs).astype(np.float32)
    return ((q.astype(np.float32) - zf) * sf).astype(s.dtype)


def prepare_qat(model: Any):
    """A QDQ model (path, bytes or ModelProto) rewritten for training in onnx2jax.

    Load the result with ``onnx2jax.load``; its params are the float weights, biases and
    scales, and ``jax.grad`` of a loss through ``model.apply`` is the straight-through
    estimator's. The forward results equal the QDQ model's. Write the trained model back as
    QDQ with :func:`finish_qat`.
    """
    from ._quantize import _read

    irm = _read(model)
    g = irm.graph
    w = Writer(g)
    for node in list(g):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Round":
            new = ir.node("RoundSTE", [node.inputs[0]], domain=DOMAIN, num_outputs=1)
            _replace(g, node, new)
        elif node.op_type == "DequantizeLinear":
            _prepare_dq(g, w, node)
    irm.opset_imports.setdefault(DOMAIN, 1)
    g.sort()
    return ir.to_proto(irm)


def _replace(g: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    g.insert_before(old, new)
    for o_old, o_new in zip(old.outputs, new.outputs, strict=True):
        name = o_old.name
        o_old.replace_all_uses_with(o_new, replace_graph_outputs=True)
        o_old.name = None
        o_new.name = name
    g.remove(old, safe=True)


def _prepare_dq(g: ir.Graph, w: Writer, dq: ir.Node) -> None:
    x, s, z = (list(dq.inputs) + [None, None])[:3]
    attrs = _attrs(dq)
    q = x.producer()
    if q is not None and q.op_type == "QuantizeLinear" and q.domain in ("", "ai.onnx"):
        # A Q -> DQ pair: one fake quantizer on Q's float input, with DQ's scale/zero point.
        new = ir.node("FakeQuantizeLinear", [q.inputs[0], s, z], attrs, domain=DOMAIN)
        _replace(g, dq, new)
        if not q.outputs[0].uses():
            g.remove(q, safe=True)
        return
    if x.const_value is None or s is None or s.const_value is None:
        return
    qa = x.const_value.numpy()
    za = None if z is None or z.const_value is None else z.const_value.numpy()
    real = _dequantize(qa, s.const_value.numpy(), za, attrs)
    fv = w.const(x.name.removesuffix("_quantized") if x.name else "weight", real)
    if np.dtype(qa.dtype) == np.int32:  # a bias: trained in float (its rounding is negligible)
        dq.outputs[0].replace_all_uses_with(fv, replace_graph_outputs=False)
        g.remove(dq, safe=True)
    else:
        if za is None:  # the fake quantizer reads the integer range off the zero point's type
            z = w.const(f"{fv.name}_zero_point", np.zeros(s.const_value.numpy().shape, qa.dtype))
        new = ir.node("FakeQuantizeLinear", [fv, s, z], attrs, domain=DOMAIN)
        _replace(g, dq, new)
    for v in (x, s, z):
        if v is not None and not v.uses() and v.name in g.initializers:
            del g.initializers[v.name]


def finish_qat(model: Any, params: Mapping[str, Any]):
    """The QDQ ``onnx.ModelProto`` of a model from :func:`prepare_qat` with trained ``params``
    (``model.params`` of the onnx2jax model after training): weights quantized again with
    their trained scales, fake quantizers back to QuantizeLinear -> DequantizeLinear."""
    from ._quantize import _read

    irm = _read(model)
    g = irm.graph
    for name, value in params.items():
        if name in g.initializers:
            old = g.initializers[name].const_value.numpy()
            g.initializers[name].const_value = ir.tensor(np.asarray(value).astype(old.dtype))
    w = Writer(g)
    for node in list(g):
        if node.domain != DOMAIN:
            continue
        if node.op_type == "RoundSTE":
            _replace(g, node, ir.node("Round", [node.inputs[0]]))
        elif node.op_type == "FakeQuantizeLinear":
            _finish_fq(g, w, node)
    irm.opset_imports.pop(DOMAIN, None)
    g.sort()
    return ir.to_proto(irm)


def _finish_fq(g: ir.Graph, w: Writer, fq: ir.Node) -> None:
    x, s, z = fq.inputs
    attrs = _attrs(fq)
    if x.const_value is not None and x.name in g.initializers:
        real = x.const_value.numpy()
        za = z.const_value.numpy()
        info = ml_dtypes.iinfo(za.dtype)  # knows int4 as well as the numpy integers
        sf = _full(s.const_value.numpy(), real.shape, attrs).astype(np.float32)
        zf = _full(za, real.shape, attrs).astype(np.float32)
        q = np.clip(np.round(real / sf) + zf, int(info.min), int(info.max)).astype(za.dtype)
        (new,) = w.node("DequantizeLinear", [w.const(f"{x.name}_quantized", q), s, z], "dq", attrs)
        fq.outputs[0].replace_all_uses_with(new, replace_graph_outputs=True)
        g.remove(fq, safe=True)
        if not x.uses():
            del g.initializers[x.name]
        return
    (qv,) = w.node("QuantizeLinear", [x, s, z], f"{x.name}_quantized", attrs)
    new = ir.node("DequantizeLinear", [qv, s, z], attrs)
    _replace(g, fq, new)
