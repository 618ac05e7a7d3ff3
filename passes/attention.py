"""Attention as the exporters write it -> one ``ai.onnx2jax::Attention`` node.

The torch exporters (legacy and dynamo) and transformers' SDPA path all write scaled dot-product
attention as a chain of plain ops::

    scores = MatMul(q, k_t)            # k_t: the keys already transposed, [..., D, Sk]
    scores = Mul(scores, c) | Div(scores, c)          (optional, c a scalar constant)
    scores = Add(scores, mask)                        (optional)
    p = Softmax(scores, axis=-1)
    p = Where(IsNaN(p), 0, p)                         (optional: torch's SDPA NaN guard)
    y = MatMul(p, v)

This pass finds that chain by its Softmax and replaces it with
``Attention(q, k_t, v, mask; scale, nan_to_zero)``: the same arithmetic, in one op whose
lowering (onnx2jax/ops/attention.py) can choose its form. On CPU, for long sequences, it
processes the queries in blocks so the scores stay in cache, and normalizes after the second
product (benchmarks/NOTES.md, entry 12); a GPU may take a fused kernel. Whatever surrounds
the chain (head split/merge reshapes, transposes, scaling of q and k) stays as written: XLA
folds those into the products.

An absent mask is written as a scalar 0 so the op has one signature (and one function body for
``onnx2jax optimize``); the lowering skips adding a constant zero.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._util import (
    DOMAIN,
    CountingPass,
    attr,
    constant,
    is_op,
    only_user,
    rank,
    replace,
    scalar,
    sole_producer,
)


class FuseAttention(CountingPass):
    """``MatMul -> [scale] -> [+mask] -> Softmax -> [NaN guard] -> MatMul`` -> ``Attention``."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        graph = model.graph
        if model.opset_imports.get("", 0) < 15:  # the function body for optimize uses CastLike
            return ir.passes.PassResult(model, False)
        for node in list(graph):
            if not is_op(node, "Softmax"):
                continue
            match = _match(node)
            if match is None:
                continue
            chain, q, kt, v, mask, scale, guard = match
            tape = ir.tape.Tape()
            parts = [
                what
                for what, on in (
                    ("scaled", scale != 1.0),
                    ("masked", mask is not None),
                    ("NaN guard", guard),
                )
                if on
            ]
            key = "Attention" + (f" ({', '.join(parts)})" if parts else "")
            if mask is None:
                mask = constant(tape, np.zeros((), _np_dtype(q)))
            y = tape.op(
                "Attention",
                [q, kt, v, mask],
                attributes={"scale": float(scale), "nan_to_zero": int(guard)},
                domain=DOMAIN,
            )
            # Inserted where the last product was: every input (v, the mask) exists by then.
            replace(graph, chain[-1:] + chain[:-1], tape, [chain[-1].outputs[0]], [y])
            self.hit(key)
        if self.matches:
            model.opset_imports.setdefault(DOMAIN, 1)
        return ir.passes.PassResult(model, bool(self.matches))


def _match(softmax: ir.Node):
    """The chain around ``softmax`` as (its nodes in order, q, k_t, v, mask, scale, guard), or
    None where it is not exactly the attention chain (e.g. an intermediate is read elsewhere)."""
    ndim = rank(softmax.inputs[0])
    # Softmax over the last axis; before opset 13 "axis" flattened from there, which for the
    # last axis is the same thing.
    if ndim is None or ndim < 2 or attr(softmax, "axis", -1) not in (-1, ndim - 1):
        return None
    chain, mask, scale = [softmax], None, 1.0
    node = sole_producer(softmax.inputs[0])
    if _noop_cast(node):  # e.g. HF's softmax(..., dtype=float32) on a float32 model
        chain.insert(0, node)
        node = sole_producer(node.inputs[0])
    if is_op(node, "Add"):
        for scores, other in (node.inputs, node.inputs[::-1]):
            up = sole_producer(scores)
            if is_op(up, "MatMul") or is_op(up, "Mul") or is_op(up, "Div"):
                chain.insert(0, node)
                mask, node = other, up
                break
        else:
            return None
    if is_op(node, "Mul") or is_op(node, "Div"):
        scaling = _scaling(node)
        if scaling is None:
            return None
        chain.insert(0, node)
        scale, node = scaling
    if not is_op(node, "MatMul"):
        return None
    q, kt = node.inputs
    if rank(q) is None or rank(q) < 2 or rank(kt) != rank(q):
        return None  # 1-D operands follow numpy's vector rules
    chain.insert(0, node)
    # After the Softmax: an optional NaN guard, then the product with the values.
    p, guard = softmax.outputs[0], False
    guard_nodes = _nan_guard(p)
    if guard_nodes is not None:
        chain += guard_nodes
        p, guard = guard_nodes[-1].outputs[0], True
    pv = only_user(p)
    if _noop_cast(pv):  # torch's legacy exporter: `.type(value.dtype)` after the softmax
        chain.append(pv)
        p = pv.outputs[0]
        pv = only_user(p)
    if not is_op(pv, "MatMul") or pv.inputs[0] is not p or rank(pv.inputs[1]) != rank(q):
        return None
    chain.append(pv)
    return chain, q, kt, pv.inputs[1], mask, scale, guard


def _scaling(node: ir.Node) -> tuple[float, ir.Node] | None:
    """``Mul(MatMul(..), c)``, ``Mul(c, MatMul(..))`` or ``Div(MatMul(..), c)`` with ``c`` a
    non-zero scalar constant -> (the factor, the MatMul)."""
    pairs = [node.inputs] if node.op_type == "Div" else [node.inputs, node.inputs[::-1]]
    for scores, other in pairs:
        up, c = sole_producer(scores), scalar(other)
        if is_op(up, "MatMul") and c is not None and c != 0 and np.isfinite(c):
            return (c if node.op_type == "Mul" else 1.0 / c), up
    return None


def _nan_guard(p: ir.Value) -> list[ir.Node] | None:
    """``Where(IsNaN(p), 0, p)`` (torch's SDPA export) -> [IsNaN, Where], else None."""
    users = [u.node for u in p.uses()]
    if p.is_graph_output() or len(users) != 2:
        return None
    isnan = next((u for u in users if is_op(u, "IsNaN")), None)
    where = next((u for u in users if is_op(u, "Where")), None)
    if isnan is None or where is None or only_user(isnan.outputs[0]) is not where:
        return None
    cond, zero, x = where.inputs
    if cond is not isnan.outputs[0] or x is not p or scalar(zero) != 0.0:
        return None
    return [isnan, where]


def _noop_cast(node: ir.Node | None) -> bool:
    """A Cast to the type its input already has."""
    if not is_op(node, "Cast") or node.inputs[0].dtype is None:
        return False
    return attr(node, "to") == node.inputs[0].dtype.value


def _np_dtype(value: ir.Value):
    return value.dtype.numpy() if value.dtype is not None else np.float32


def function(opset: int) -> ir.Function:
    """``ai.onnx2jax::Attention`` in standard ONNX ops (for ``onnx2jax optimize``'s files):
    the chain the pass replaced, with the NaN guard switched by its attribute."""
    q, kt, v, mask = (ir.Value(name=n) for n in ("q", "kt", "v", "mask"))
    nodes: list[ir.Node] = []

    def op(op_type, inputs, attributes=()):
        nodes.append(ir.Node("", op_type, inputs, list(attributes)))
        return nodes[-1].outputs[0]

    scores = op("MatMul", [q, kt])
    c = op("Constant", [], [ir.RefAttr("value_float", "scale", ir.AttributeType.FLOAT)])
    scores = op("Mul", [scores, op("CastLike", [c, scores])])
    p = op("Softmax", [op("Add", [scores, mask])], [ir.AttrInt64("axis", -1)])
    flag = op("Constant", [], [ir.RefAttr("value_int", "nan_to_zero", ir.AttributeType.INT)])
    guard = op("And", [op("IsNaN", [p]), op("Cast", [flag], [ir.AttrInt64("to", 9)])])
    zero = op("CastLike", [op("Constant", [], [ir.AttrFloat32("value_float", 0.0)]), p])
    y = op("MatMul", [op("Where", [guard, zero, p]), v])
    y.name = "y"
    graph = ir.Graph([q, kt, v, mask], [y], nodes=nodes, opset_imports={"": opset})
    attributes = [
        ir.Attr("scale", ir.AttributeType.FLOAT, None),
        ir.Attr("nan_to_zero", ir.AttributeType.INT, None),
    ]
    return ir.Function(DOMAIN, "Attention", graph=graph, attributes=attributes)
