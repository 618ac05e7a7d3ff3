"""``onnx2jax.quantize``: post-training quantization of an ONNX model into QDQ form."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import onnx.defs
import onnx_ir as ir

from .. import Onnx2JaxError
from . import _calibrate, _nbits
from ._qdq import (
    DEFAULT_OP_TYPES,
    INT4_BLOCK,
    Writer,
    activation_params,
    find_targets,
    weight_int4,
    weight_int4_blocked,
    weight_int8,
    weight_uint8,
)

# Ops whose newer versions (up to opset 21) only add types, or attributes and optional inputs
# whose defaults keep the old meaning: raising a model's opset past them changes nothing.
_SAFE_TO_RAISE = frozenset(
    "Abs Add AveragePool BatchNormalization Cast Clip Concat Constant ConstantOfShape Conv Div "
    "Dropout Equal Erf Exp Expand Flatten Gather Gemm GlobalAveragePool Greater Identity "
    "LeakyRelu Less Log LogSoftmax MatMul MaxPool Mul Neg Pad Pow Range Relu Reshape Shape "
    "Sigmoid Size Slice Softmax Sqrt Squeeze Sub Tanh Tile Transpose Unsqueeze Where".split()
)


class QuantizationError(Onnx2JaxError, ValueError):
    """``onnx2jax.quantize`` cannot do what was asked (bad argument, model it cannot edit)."""


def _read(model: Any) -> ir.Model:
    """A fresh onnx-ir model from a path, bytes or ModelProto (never edits the caller's)."""
    try:
        if isinstance(model, (str, os.PathLike)):
            return ir.load(os.fspath(model))
        if isinstance(model, (bytes, bytearray)):
            # onnx-ir reads files; a temporary one keeps protobuf parsing in its hands.
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "model.onnx")
                with open(path, "wb") as f:
                    f.write(model)
                return ir.load(path)
        if hasattr(model, "SerializeToString"):
            return ir.from_proto(model.__class__.FromString(model.SerializeToString()))
    except Exception as e:
        raise QuantizationError(f"quantize(): cannot read the model: {e}") from e
    raise QuantizationError(
        f"quantize(): model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}"
    )


def _ensure_opset(model: ir.Model, need: int, why: str) -> None:
    """Raise the default-domain opset to ``need`` when no op in the graph changes meaning."""
    have = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    if have >= need:
        return
    changed = sorted(
        {
            n.op_type
            for n in model.graph.all_nodes()
            if n.domain in ("", "ai.onnx")
            and n.op_type not in _SAFE_TO_RAISE
            and _signature(n.op_type, have) != _signature(n.op_type, need)
        }
    )
    if changed:
        raise QuantizationError(
            f"quantize(): {why} needs opset {need}, the model has {have}, and these ops changed "
            f"between them: {', '.join(changed)}. Convert the model first "
            f"(onnx.version_converter.convert_version(model, {need})) and quantize the result."
        )
    model.opset_imports[""] = need
    model.opset_imports.pop("ai.onnx", None)


def _signature(op: str, opset: int) -> tuple | None:
    """Inputs, outputs and attributes (with defaults) of the op's schema at ``opset``: equal
    signatures differ at most in their type lists (IsNaN 13 -> 20), which changes no model."""
    try:
        s = onnx.defs.get_schema(op, opset, "")
    except Exception:  # an op not in this opset at all: treat as changed
        return None
    attrs = sorted((k, str(v.default_value)) for k, v in s.attributes.items())
    return (
        attrs,
        [(i.name, i.option) for i in s.inputs],
        [(o.name, o.option) for o in s.outputs],
    )


def _check(mode, method, weight_type, calibration, int4_format="matmulnbits") -> None:
    if mode not in ("static", "dynamic"):
        raise QuantizationError(f"quantize(): mode must be 'static' or 'dynamic', got {mode!r}")
    if method not in ("minmax", "percentile", "entropy"):
        raise QuantizationError(
            f"quantize(): method must be 'minmax', 'percentile' or 'entropy', got {method!r}"
        )
    if weight_type not in ("int8", "int4"):
        raise QuantizationError(
            f"quantize(): weight_type must be 'int8' or 'int4', got {weight_type!r}"
        )
    if int4_format not in ("matmulnbits", "qdq"):
        raise QuantizationError(
            f"quantize(): int4_format must be 'matmulnbits' or 'qdq', got {int4_format!r}"
        )
    if mode == "static" and weight_type == "int8" and calibration is None:
        raise QuantizationError(
            "quantize(): mode='static' needs calibration data: an iterable of input dicts "
            "(name -> array) like the model's real inputs. Use mode='dynamic' (activations "
            "quantized at run time) or weight_type='int4' (weights only) to quantize without."
        )


def _samples(calibration: Any, input_names: list[str]):
    """A function returning a fresh iterable of input dicts, and their count if known."""
    if isinstance(calibration, Mapping) or isinstance(calibration, np.ndarray):
        calibration = [calibration]
    if not isinstance(calibration, Collection):
        calibration = list(calibration)  # a generator: keep it for the second pass
    items = calibration

    def as_dict(s):
        if isinstance(s, Mapping):
            return s
        if len(input_names) == 1:
            return {input_names[0]: s}
        raise QuantizationError(
            f"quantize(): calibration items must be dicts of {input_names} for a model with "
            f"{len(input_names)} inputs, got {type(s).__name__}"
        )

    if not items:
        raise QuantizationError("quantize(): calibration is empty: give at least one input dict")
    return (lambda: (as_dict(s) for s in items)), len(items)


def _ranges(model: ir.Model, names: list[str], calibration, method: str):
    """Ranges of the ``names`` tensors, by running a copy of the float model with them as outputs."""
    import onnx2jax

    probe = ir.from_proto(ir.to_proto(model))
    values = {v.name: v for n in probe.graph for v in n.outputs}
    values.update({v.name: v for v in probe.graph.inputs})
    outs = []
    for i, n in enumerate(names):
        node = ir.node("Identity", [values[n]], num_outputs=1)
        node.outputs[0].name = f"__onnx2jax_calibrate_{i}"
        probe.graph.append(node)
        probe.graph.outputs.append(node.outputs[0])
        outs.append(node.outputs[0].name)
    m = onnx2jax.load(ir.to_proto(probe).SerializeToString())
    real = [s.name for s in m.inputs]
    samples, total = _samples(calibration, real)
    ranges = _calibrate.collect(m, samples, outs, method, total)
    return {n: ranges[o] for n, o in zip(names, outs, strict=True)}


def _after_relu(v: ir.Value) -> ir.Value:
    """The Relu output when ``v`` feeds only a Relu: quantizing [0, max] after it (as
    onnxruntime does) spends no codes on the negative values the Relu drops."""
    uses = list(v.uses())
    if len(uses) == 1 and uses[0].node.op_type == "Relu" and uses[0].node.domain in ("", "ai.onnx"):
        return uses[0].node.outputs[0]
    return v


def quantize(
    model: Any,
    calibration: Iterable[Mapping[str, Any]] | None = None,
    *,
    mode: str = "static",
    method: str = "minmax",
    per_channel: bool = True,
    weight_type: str = "int8",
    op_types: Collection[str] = DEFAULT_OP_TYPES,
    exclude: Collection[str] = (),
    int4_format: str = "matmulnbits",
):
    """Quantize a float ONNX model into QDQ form (an ``onnx.ModelProto``).

    Args:
        model: a path, the file's bytes or an ``onnx.ModelProto`` (left unchanged).
        calibration: input dicts (name -> array, or arrays for a one-input model) like the real
            data; needed for ``mode="static"`` with int8 weights. Statistics are gathered by
            running the float model through onnx2jax under ``jax.jit``, 16 samples per call
            (``jax.vmap``), with a progress bar when tqdm is installed.
        mode: ``"static"``: activation ranges from calibration, stored in the file (int8
            QuantizeLinear/DequantizeLinear pairs); ``"dynamic"``: activations quantized at run
            time (DynamicQuantizeLinear, uint8), weights uint8.
        method: how a static range is chosen: ``"minmax"`` (the full range), ``"percentile"``
            (clip to 99.999 % of values) or ``"entropy"`` (the KL-divergence threshold).
        per_channel: one weight scale per output channel (int8) or per block of 128 along the
            reduction axis (int4), instead of one per tensor.
        weight_type: ``"int8"``, or ``"int4"`` (weight-only: block-wise int4 weights behind an
            opset-21 DequantizeLinear; activations stay float and no calibration is needed).
        op_types: which ops get quantized weights (and activations): Conv, Gemm, MatMul, and
            Gather (an embedding table: weights only, one scale per row).
        exclude: node names to leave in float.
        int4_format: how int4 MatMul weights are written. ``"matmulnbits"`` (default):
            com.microsoft ``MatMulNBits`` (packed uint8 blocks of 128 along K, as onnxruntime's
            ``MatMulNBitsQuantizer`` writes them) for each MatMul with a 2-D float32/float16
            weight: onnx2jax keeps those weights packed in memory and onnxruntime runs them
            with its 4-bit kernels. ``"qdq"``: opset-21 ``DequantizeLinear`` with
            ``block_size`` for every weight (standard ONNX, no contrib op). Conv, Gemm,
            Gather and other MatMul weights use the DequantizeLinear form either way.

    Returns:
        The quantized ``onnx.ModelProto``; onnxruntime and ``onnx2jax.load`` both run it.

    Raises:
        QuantizationError: a bad argument, or an opset the quantized ops cannot use.
    """
    _check(mode, method, weight_type, calibration, int4_format)
    bad = set(op_types) - set(DEFAULT_OP_TYPES)
    if bad:
        raise QuantizationError(
            f"quantize(): op_types {sorted(bad)} are not supported; choose from {DEFAULT_OP_TYPES}"
        )
    irm = _read(model)
    graph = irm.graph
    targets = find_targets(graph, set(op_types), set(exclude))
    nbits = []
    if weight_type == "int4" and int4_format == "matmulnbits":
        fits = [_nbits.fits(t, per_channel) for t in targets]
        nbits = [t for t, f in zip(targets, fits, strict=True) if f]
        targets = [t for t, f in zip(targets, fits, strict=True) if not f]
    if nbits:
        have = irm.opset_imports.get(_nbits.MS)
        if have is not None and have != 1:
            raise QuantizationError(
                f"quantize(): the model imports {_nbits.MS} opset {have}; MatMulNBits is in "
                "opset 1. Pass int4_format='qdq'."
            )
        irm.opset_imports[_nbits.MS] = 1
    if weight_type == "int4":
        if targets:  # MatMulNBits alone leaves the default-domain opset as it is
            _ensure_opset(irm, 21, "int4 weights (DequantizeLinear block_size)")
    elif per_channel:
        _ensure_opset(irm, 13, "per-channel scales (DequantizeLinear axis)")
    else:
        _ensure_opset(irm, 10, "QuantizeLinear/DequantizeLinear")
    w = Writer(graph)
    static = mode == "static" and weight_type == "int8"

    x_name = {id(t): t.node.inputs[0].name for t in targets}  # before any rerouting
    act_scale: dict[str, np.float32] = {}
    if static:
        graph_outs = {v.name for v in graph.outputs}
        names = []
        for t in (t for t in targets if t.weight == 1):  # Gather has no float activation
            names.append(t.node.inputs[0].name)
            out = _after_relu(t.node.outputs[0])
            if out.name not in graph_outs:
                names.append(out.name)
        names = list(dict.fromkeys(names))
        ranges = _ranges(irm, names, calibration, method)
        values = {v.name: v for n in graph for v in n.outputs}
        values.update({v.name: v for v in graph.inputs})
        for name in names:
            scale, zp = activation_params(*ranges[name])
            act_scale[name] = scale
            w.reroute(values[name], w.fake_quantized(values[name], scale, zp))

    replaced = set()
    for t in targets:
        node = t.node
        wv = node.inputs[t.weight]
        arr = wv.const_value.numpy()
        axis = t.channel_axis if per_channel else None
        attrs = {"axis": t.channel_axis} if per_channel else {}
        if weight_type == "int4" and per_channel and arr.shape[t.k_axis] >= INT4_BLOCK:
            q, s, z = weight_int4_blocked(arr, t.k_axis, INT4_BLOCK)
            attrs = {"axis": t.k_axis, "block_size": INT4_BLOCK}
        elif weight_type == "int4":
            # per tensor, or per output channel where the reduction axis is shorter than a
            # block (depthwise and narrow convs): not a scale every few values
            q, s, z = weight_int4(arr, axis)
        elif static:
            q, s, z = weight_int8(arr, axis)
        else:
            q, s, z = weight_uint8(arr, axis)
        node.replace_input_with(t.weight, w.dequantized(wv.name, q, s, z, attrs))
        replaced.add(wv.name)
        if t.bias is not None and static:
            bv = node.inputs[t.bias]
            bias_scale = (act_scale[x_name[id(t)]] * s.astype(np.float32)).astype(s.dtype)
            bq = np.round(bv.const_value.numpy() / bias_scale)
            bq = np.clip(bq, -(2**31), 2**31 - 1).astype(np.int32)
            battrs = {"axis": 0} if per_channel else {}
            node.replace_input_with(t.bias, w.dequantized(bv.name, bq, bias_scale, None, battrs))
            replaced.add(bv.name)

    if mode == "dynamic" and weight_type == "int8":
        done: dict[str, ir.Value] = {}
        for t in (t for t in targets if t.weight == 1):
            x = t.node.inputs[0]
            if x.name not in done:
                done[x.name] = w.dynamic(x)
            t.node.replace_input_with(0, done[x.name])

    for t in nbits:
        replaced.add(t.node.inputs[1].name)
        _nbits.write(w, t)

    w.drop_unused_initializers(replaced)
    graph.sort()
    return ir.to_proto(irm)
