"""Weights of MatMul in [N, K] layout: ``MatMul(a, W)`` -> ``ai.onnx2jax::MatMulTransB(a, W^T)``.

XLA's CPU dots (YNNPACK and Eigen alike) run faster when the weight's contraction axis is its
last one (torch's ``Linear`` layout, what ``Gemm(transB=1)`` says): measured 1.4-2x at the few
rows of a decode step (8 x 768 x 50257: 20.6 ms with [K, N], 13.4 ms with [N, K]) and equal or
slightly better at 128-1024 rows (benchmarks/NOTES.md, entry 8). Exporters write both layouts:
torch's legacy exporter folds the transpose into a [K, N] initializer, the dynamo exporter and
tied embeddings keep an explicit ``Transpose`` in front of the MatMul. This pass

- drops such a ``Transpose(W, [1, 0])`` of a weight and reads ``W`` directly, and
- gives a [K, N] weight a ``Transpose`` that reads only initializers, so onnx2jax computes it
  once per params object (_prepare.py) and the per-call program never re-lays it out.

A weight is anything computed from initializers alone (a dequantized or folded weight too).
"""

from __future__ import annotations

import onnx_ir as ir

from ._util import DOMAIN, attr, param_derived, rank, replace


class MatMulTransB(ir.passes.InPlacePass):
    """``MatMul(a, W)`` with a 2-D weight ``W`` -> ``MatMulTransB(a, W^T)``."""

    def __init__(self):
        super().__init__()
        self.matches: dict[str, int] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.matches = {}
        graph = model.graph
        for node in list(graph):
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
                continue
            a, w = node.inputs
            if rank(a) in (None, 1) or rank(w) != 2 or not param_derived(w):
                continue  # 1-D operands follow numpy's vector rules; keep those as they are
            tape = ir.tape.Tape()
            source = _transpose_input(w)
            if source is not None:  # MatMul(a, Transpose(V)): read V as it is
                key = "MatMul(Transpose(weight))"
            else:
                source = tape.op("Transpose", [w], attributes={"perm": [1, 0]})
                key = "MatMul(weight)"
            y = tape.op("MatMulTransB", [a, source], domain=DOMAIN)
            replace(graph, [node], tape, node.outputs, [y])
            self.matches[key] = self.matches.get(key, 0) + 1
        if self.matches:
            model.opset_imports.setdefault(DOMAIN, 1)
        # A Transpose left without readers goes with the cleanup pass's dead-node removal.
        return ir.passes.PassResult(model, bool(self.matches))


def _transpose_input(w: ir.Value) -> ir.Value | None:
    producer = w.producer()
    if (
        producer is None
        or producer.op_type != "Transpose"
        or producer.domain not in ("", "ai.onnx")
    ):
        return None
    perm = attr(producer, "perm")
    if perm is None or [int(p) for p in perm] != [1, 0]:
        return None
    return producer.inputs[0]
