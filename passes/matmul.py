"""Weights of MatMul in [N, K] layout: ``MatMul(a, W)`` -> ``ai.onnx2jax::MatMulTransB(a, W^T)``.

XLA's CPU dots (YNNPACK and Eigen alike) often run faster when the weight's contraction axis
is its last one (torch's ``Linear`` layout, what ``Gemm(transB=1)`` says): 8 x 768 x 50257
13.4 ms with [N, K] against 21 ms with [K, N]; but which layout wins depends on the shape
(benchmarks/NOTES.md, entries 8 and 11), and on the zoo's models the pass measured within
noise. So it rewrites only where it costs no memory:

- ``MatMul(a, Transpose(V))`` with ``V`` a weight (the dynamo exporter, tied embeddings): the
  transpose is dropped and ``V`` read as it is, so prep no longer materializes ``V^T``;
- ``MatMul(a, f(params))`` with a weight computed in prep anyway (e.g. a dequantized QDQ
  weight): the transpose joins that computation, which keeps only its [N, K] result.

A [K, N] initializer read directly (torch's legacy exporter) is left alone: its transposed copy
would hold the weight twice for the model's life (BERT-base: +324 MB of peak RSS, for speed
within noise).
"""

from __future__ import annotations

import onnx_ir as ir

from ._util import DOMAIN, CountingPass, attr, is_op, is_param, param_derived, rank, replace


class MatMulTransB(CountingPass):
    """``MatMul(a, W)`` with a 2-D weight ``W`` -> ``MatMulTransB(a, W^T)``, where that holds
    no weight twice (see the module docstring)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        graph = model.graph
        for node in list(graph):
            if not is_op(node, "MatMul"):
                continue
            a, w = node.inputs
            if rank(a) in (None, 1) or rank(w) != 2 or not param_derived(w):
                continue  # 1-D operands follow numpy's vector rules; keep those as they are
            tape = ir.tape.Tape()
            source = _transpose_input(w)
            if source is not None:  # MatMul(a, Transpose(V)): read V as it is
                key = "MatMul(Transpose(weight))"
            elif is_param(w):
                continue  # a second, transposed copy of an initializer: not worth its memory
            else:  # computed in prep anyway: transpose it there
                source = tape.op("Transpose", [w], attributes={"perm": [1, 0]})
                key = "MatMul(computed weight)"
            y = tape.op("MatMulTransB", [a, source], domain=DOMAIN)
            replace(graph, [node], tape, node.outputs, [y])
            self.hit(key)
        if self.matches:
            model.opset_imports.setdefault(DOMAIN, 1)
        # A Transpose left without readers goes with the cleanup pass's dead-node removal.
        return ir.passes.PassResult(model, bool(self.matches))


def _transpose_input(w: ir.Value) -> ir.Value | None:
    producer = w.producer()
    if not is_op(producer, "Transpose"):
        return None
    perm = attr(producer, "perm")
    if perm is None or [int(p) for p in perm] != [1, 0]:
        return None
    return producer.inputs[0]
