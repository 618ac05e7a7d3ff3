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

The pairs come from the exporters' naming conventions (:func:`find_pairs`) or are given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import onnx_ir as ir

from ._util import DOMAIN, attr, replace

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
    if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
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
        if node is None or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            return value
        if node.op_type not in ("Identity", "Concat"):
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
        found = []
        for past_name, present_name in pairs:
            past, present = inputs.get(past_name), outputs.get(present_name)
            if past is None or present is None:
                self.reason = f"{past_name!r} is no graph input or {present_name!r} no output"
                return ir.passes.PassResult(model, False)
            node = present.producer()
            axis = None if node is None else concat_axis(node, past)
            if axis is None:
                what = "a graph input" if node is None else f"{node.op_type} node {node.name!r}"
                self.reason = (
                    f"{present_name!r} is computed by {what}, not Concat({past_name}, new)"
                )
                return ir.passes.PassResult(model, False)
            found.append((node, past, axis))
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
        model.opset_imports.setdefault(DOMAIN, 1)
        self.matches = {f"Concat(past, new) -> {OP}": len(found)}
        return ir.passes.PassResult(model, True)
