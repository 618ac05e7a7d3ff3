"""Fixed-size KV cache: ``present = Concat(past, new)`` becomes an in-place write into ``past``.

An exported decoder step takes the cached keys/values as ``past`` inputs and returns the grown
``present = Concat(past, new, axis=seq)``: every step copies the whole cache into a buffer one
position longer (one shape per length). This pass rewrites each such pair into

    present = ai.onnx2jax::KvCacheUpdate(past.onnx2jax_buffer, new, onnx2jax.kv_write_position)

where ``past.onnx2jax_buffer`` is a new graph input, the buffer of fixed capacity C;
``present`` has its shape, and the new entries land at positions ``write_position[b] + j`` of
row ``b`` (a scatter that XLA does in place when the buffer is donated). The attention nodes
that read the Concat read the updated buffer instead. ``past`` itself stays an input for what
else reads it, typically only its shape: fed with C - t positions (a slice of the buffer that
XLA drops as dead), the graph's own "past length + t" arithmetic (mask sizes, causal offsets)
comes out as C, the buffer's length. The attention mask then covers the whole buffer (slots
past a row's length masked). ``onnx2jax.Generator`` applies the pass to its decode step; it is not in
the default pipeline because it changes what the graph's outputs mean.

An opset-23 ``Attention(Q, K, V, mask, past_key, past_value)`` whose presents are the pairs'
outputs becomes ``Attention(Q, KvCacheUpdate(buffer_k, K, pos), KvCacheUpdate(buffer_v, V,
pos), mask & slots <= pos)`` (not causal: the decode step has one query per row).

The pairs come from the exporters' naming conventions (:func:`find_pairs`) or are given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import onnx_ir as ir

from ._util import DOMAIN, attr, constant, is_op, replace

WRITE_POSITION = "onnx2jax.kv_write_position"
BUFFER_SUFFIX = ".onnx2jax_buffer"
OP = "KvCacheUpdate"

# (past input pattern, present output template): torch exporters, Optimum and onnxruntime-genai
# (past_key_values.N.key -> present.N.key), transformers' own exporter
# (input.cache.layers.N.keys -> output.cache.layers.N.keys), and older past_N/present_N styles.
CONVENTIONS: tuple[tuple[str, str], ...] = (
    (r"^past_key_values\.(\d+)\.(key|value)$", r"present.\1.\2"),
    (r"^past_key_values\.(\d+)\.(decoder\.key|decoder\.value)$", r"present.\1.\2"),
    (r"^input\.cache\.layers\.(\d+)\.(keys|values)$", r"output.cache.layers.\1.\2"),
    (r"^past_key_(\d+)$", r"present_key_\1"),
    (r"^past_value_(\d+)$", r"present_value_\1"),
    (r"^past_(\d+)$", r"present_\1"),
)
LOOKED_FOR = (
    "inputs named past_key_values.N.key/value (torch exporters, Optimum, onnxruntime-genai) "
    "with outputs present.N.key/value, or input.cache.layers.N.keys/values (transformers' "
    "exporter) with outputs output.cache.layers.N.keys/values"
)


def find_pairs(inputs: Iterable[str], outputs: Iterable[str]) -> list[tuple[str, str]]:
    """``(past input, present output)`` pairs by the exporters' naming conventions, in input order."""
    outs = set(outputs)
    pairs = []
    for name in inputs:
        for pattern, template in CONVENTIONS:
            if re.match(pattern, name):
                present = re.sub(pattern, template, name)
                if present in outs:
                    pairs.append((name, present))
                break
    return pairs


def concat_axis(node: ir.Node, past: ir.Value) -> int | None:
    """The axis of ``node = Concat(past, new)``, or None when ``node`` is not that."""
    if not is_op(node, "Concat") or len(node.inputs) != 2:
        return None
    if _through_copies(node.inputs[0]) is not past:
        return None
    axis = attr(node, "axis")
    rank = len(past.shape) if past.shape is not None else None
    if axis is None or (axis < 0 and rank is None):
        return None
    return axis + rank if axis < 0 else axis


def _through_copies(value: ir.Value | None) -> ir.Value | None:
    """``value`` with Identity and one-input Concat nodes (torch exporter artefacts) skipped."""
    while value is not None:
        node = value.producer()
        if not (is_op(node, "Identity") or is_op(node, "Concat")) or len(node.inputs) != 1:
            return value
        value = node.inputs[0]
    return value


class FixedKvCache(ir.passes.InPlacePass):
    """``present = Concat(past, new, axis)`` -> ``present = KvCacheUpdate(past, new, pos)``.

    All pairs or none: when one pair's present is not such a Concat, nothing changes and
    :attr:`reason` says why (a graph half rewritten would need two kinds of feeds).
    """

    def __init__(self, pairs: Sequence[tuple[str, str]] | None = None):
        super().__init__()
        self.pairs = None if pairs is None else [tuple(p) for p in pairs]
        self.matches: dict[str, int] = {}
        self.reason: str | None = None
        self.axes: dict[str, int] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.matches, self.reason, self.axes = {}, None, {}
        graph = model.graph
        inputs = {v.name: v for v in graph.inputs}
        outputs = {v.name: v for v in graph.outputs}
        pairs = self.pairs if self.pairs is not None else find_pairs(inputs, outputs)
        if not pairs:
            self.reason = f"no past/present pairs: looked for {LOOKED_FOR}"
            return ir.passes.PassResult(model, False)
        if WRITE_POSITION in inputs:
            self.reason = "already rewritten"
            return ir.passes.PassResult(model, False)
        found, moved = [], 0
        attention: dict[ir.Node, dict[int, ir.Value]] = {}  # Attention node -> {1: past k, 2: v}
        for past_name, present_name in pairs:
            past, present = inputs.get(past_name), outputs.get(present_name)
            if past is None or present is None:
                self.reason = f"{past_name!r} is no graph input or {present_name!r} no output"
                return ir.passes.PassResult(model, False)
            node = present.producer()
            slot = None if node is None else _attention_slot(node, present, past)
            if slot is not None:
                attention.setdefault(node, {})[slot] = past
                continue
            axis = None if node is None else concat_axis(node, past)
            if axis is None:
                what = "a graph input" if node is None else f"{node.op_type} node {node.name!r}"
                self.reason = (
                    f"{present_name!r} is computed by {what}, not Concat({past_name}, new)"
                )
                return ir.passes.PassResult(model, False)
            found.append((node, past, axis))
        for node, slots in attention.items():
            why = _attention_unfit(node, slots)
            if why:
                self.reason = why
                return ir.passes.PassResult(model, False)
        position = ir.Value(
            name=WRITE_POSITION,
            type=ir.TensorType(ir.DataType.INT64),
            shape=ir.Shape([past.shape[0] if past.shape is not None else "batch"]),
        )
        graph.inputs.append(position)
        for node, past, axis in found:
            shape = None
            if past.shape is not None:  # its own sequence dim: the capacity, not the past length
                dims = list(past.shape.dims)
                dims[axis] = "kv_capacity"
                shape = ir.Shape(dims)
            buffer = ir.Value(name=past.name + BUFFER_SUFFIX, type=past.type, shape=shape)
            graph.inputs.append(buffer)
            tape = ir.tape.Tape()
            out = tape.op(
                OP,
                [buffer, node.inputs[1], position],
                attributes={"axis": axis},
                domain=DOMAIN,
                name=f"{node.name or past.name}/kv_update",
            )
            out.type, out.shape = past.type, past.shape
            replace(graph, [node], tape, [node.outputs[0]], [out])
            self.axes[past.name] = axis
            moved += _scale_off_buffer(graph, out)
        for node, slots in attention.items():
            _rewrite_attention(graph, node, slots, position)
            for past in slots.values():
                self.axes[past.name] = 2
        model.opset_imports.setdefault(DOMAIN, 1)
        self.matches = {f"Concat(past, new) -> {OP}": len(found)}
        if attention:
            self.matches[f"Attention(past) -> {OP} + Attention"] = len(attention)
        if moved:
            self.matches["A @ (c * T(buffer)) -> (c * A) @ T(buffer)"] = moved
        return ir.passes.PassResult(model, True)


def _scalar(value: ir.Value | None) -> bool:
    """A one-element constant (an initializer or a Constant node's value)."""
    if value is None:
        return False
    tensor = value.const_value
    if tensor is None and value.producer() is not None and value.producer().op_type == "Constant":
        tensor = attr(value.producer(), "value")
    return tensor is not None and int(np.prod(tensor.shape)) == 1


def _scale_off_buffer(graph: ir.Graph, buffer: ir.Value) -> int:
    """``MatMul(A, Mul(Transpose(buffer), c))`` -> ``MatMul(Mul(A, c), Transpose(buffer))``.

    torch's scaled-dot-product export scales both Q and K^T by sqrt(scale); on the buffer that
    is a pass over the whole cache every step (2-3 MB per layer at batch 4 and 768 slots), on
    A (one query per row) a few hundred numbers. Returns how many were moved.
    """
    moved = 0
    for use in list(buffer.uses()):
        t = use.node
        if not is_op(t, "Transpose"):
            continue
        users = list(t.outputs[0].uses())
        if len(users) != 1 or users[0].node.op_type != "Mul" or t.outputs[0].is_graph_output():
            continue
        mul = users[0].node
        c = mul.inputs[1] if mul.inputs[0] is t.outputs[0] else mul.inputs[0]
        scaled = mul.outputs[0]
        mm = [u for u in scaled.uses()]
        if not _scalar(c) or len(mm) != 1 or scaled.is_graph_output():
            continue
        matmul = mm[0].node
        if matmul.op_type != "MatMul" or mm[0].idx != 1:
            continue
        tape = ir.tape.Tape()
        a = tape.op("Mul", [matmul.inputs[0], c])
        out = tape.op("MatMul", [a, t.outputs[0]], name=f"{matmul.name}/scale_moved")
        out.type, out.shape = matmul.outputs[0].type, matmul.outputs[0].shape
        replace(graph, [matmul], tape, [matmul.outputs[0]], [out])
        graph.remove(mul, safe=True)
        moved += 1
    return moved


def _attention_slot(node: ir.Node, present: ir.Value, past: ir.Value) -> int | None:
    """1 or 2 when ``present`` is the present key/value of an opset-23+ ``Attention`` whose
    past key/value input is ``past``; else None."""
    if not is_op(node, "Attention"):
        return None
    for slot, past_slot in ((1, 4), (2, 5)):
        if (
            len(node.outputs) > slot
            and node.outputs[slot] is present
            and len(node.inputs) > past_slot
            and _through_copies(node.inputs[past_slot]) is past
        ):
            return slot
    return None


def _attention_unfit(node: ir.Node, slots: dict[int, ir.Value]) -> str | None:
    """Why an Attention with past cannot read a buffer instead (None: it can)."""
    name = f"Attention node {node.name!r}"
    if set(slots) != {1, 2}:
        return f"{name}: only one of its present key/value is a graph output pair"
    # 3-D Q/K/V come with q_num_heads/kv_num_heads (the spec asks for them only then).
    ranks = {None if k is None or k.shape is None else len(k.shape) for k in node.inputs[1:3]}
    if ranks - {4, None} or (None in ranks and attr(node, "kv_num_heads") is not None):
        return f"{name}: K and V are not 4-D [batch, heads, seq, size]"
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is not None and mask.dtype is None:
        return f"{name}: the attn_mask's type is unknown (infer shapes first)"
    if len(node.inputs) > 6 and node.inputs[6] is not None:
        return f"{name}: has nonpad_kv_seqlen"
    if len(node.outputs) > 3 and node.outputs[3].uses():
        return f"{name}: its qk_matmul_output is used"
    return None


def _rewrite_attention(graph: ir.Graph, node: ir.Node, slots, position: ir.Value) -> None:
    """``Attention(Q, K, V, mask, past_k, past_v)`` -> ``Attention(Q, KvCacheUpdate(buffer_k,
    K, pos), KvCacheUpdate(buffer_v, V, pos), mask & slots <= pos)``, not causal: one query
    per row (the decode step) sees the slots up to its own position, which the mask says."""
    tape = ir.tape.Tape()
    buffers = {}
    for slot, past in slots.items():
        dims = list(past.shape.dims) if past.shape is not None else None
        if dims is not None:
            dims[2] = "kv_capacity"
        buffers[slot] = ir.Value(
            name=past.name + BUFFER_SUFFIX,
            type=past.type,
            shape=None if dims is None else ir.Shape(dims),
        )
        graph.inputs.append(buffers[slot])
    k = tape.op(OP, [buffers[1], node.inputs[1], position], attributes={"axis": 2}, domain=DOMAIN)
    v = tape.op(OP, [buffers[2], node.inputs[2], position], attributes={"axis": 2}, domain=DOMAIN)
    # slots <= position, as [batch, 1, 1, capacity]
    length = tape.op("Shape", [buffers[1]], attributes={"start": 2, "end": 3})
    zero, one = constant(tape, np.array(0)), constant(tape, np.array(1))
    slots_range = tape.op("Range", [zero, tape.op("Squeeze", [length]), one])
    pos = tape.op("Unsqueeze", [position, constant(tape, [1])])
    allowed = tape.op("LessOrEqual", [slots_range, pos])
    allowed = tape.op("Unsqueeze", [allowed, constant(tape, [1, 2])])
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is None:
        mask = allowed
    elif mask.dtype == ir.DataType.BOOL:
        mask = tape.op("And", [mask, allowed])
    else:
        inf = tape.op("CastLike", [constant(tape, np.array(-np.inf, np.float32)), mask])
        mask = tape.op("Where", [allowed, mask, inf])
    attrs = {a.name: a for a in node.attributes.values() if a.name != "is_causal"}
    y = tape.op(
        "Attention",
        [node.inputs[0], k, v, mask],
        attributes=attrs,
        name=f"{node.name}/over_buffer",
    )
    for out, like in ((k, node.outputs[1]), (v, node.outputs[2])):
        out.type, out.shape = like.type, like.shape
    replace(graph, [node], tape, list(node.outputs[:3]), [y, k, v])
