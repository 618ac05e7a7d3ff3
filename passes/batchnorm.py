"""BatchNormalization after Conv / ConvTranspose / Gemm folded into that op's weight and bias.

``y = BN(Conv(x, W, B))`` becomes ``y = Conv(x, W * s, (B - mean) * s + beta)`` with
``s = gamma / sqrt(var + eps)``. The folded weights are *nodes* computed from the original
initializers, not new numbers: params keep their ONNX names, ``jax.grad`` with respect to
gamma, beta and W keeps working, and onnx2jax computes these param-only nodes once per params
object (the same arithmetic onnxruntime does once at session creation).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._util import CountingPass, attr, constant, is_op, is_param, only_user, rank, replace

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


class FoldBatchNorm(CountingPass):
    """``BN(Conv|ConvTranspose|Gemm(x, W, B))`` -> ``Conv|ConvTranspose|Gemm(x, W', B')``."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        graph = model.graph
        for bn in list(graph):
            producer = self._check(bn)
            if producer is not None:
                self._fold(graph, producer, bn)
                key = f"{producer.op_type}+BatchNormalization"
                self.hit(key)
        return ir.passes.PassResult(model, bool(self.matches))

    @staticmethod
    def _check(bn: ir.Node) -> ir.Node | None:
        """The node to fold ``bn`` into, or None when the rewrite does not apply."""
        if not is_op(bn, "BatchNormalization"):
            return None
        if attr(bn, "training_mode", 0) or any(o.uses() for o in bn.outputs[1:]):
            return None
        if len(bn.inputs) != 5 or not all(is_param(v) for v in bn.inputs[1:]):
            return None
        producer = bn.inputs[0].producer()
        if not any(is_op(producer, op) for op in _FOLDABLE):
            return None
        if only_user(producer.outputs[0]) is not bn or len(producer.inputs) < 2:
            return None
        w = producer.inputs[1]
        if not is_param(w) or rank(w) is None:
            return None
        if producer.op_type == "ConvTranspose" and attr(producer, "group", 1) != 1:
            return None
        if producer.op_type == "Gemm" and attr(producer, "transA", 0) not in (0,):
            return None
        return producer

    @staticmethod
    def _fold(graph: ir.Graph, op: ir.Node, bn: ir.Node) -> None:
        x, w = op.inputs[0], op.inputs[1]
        b = op.inputs[2] if len(op.inputs) > 2 else None
        gamma, beta, mean, var = bn.inputs[1:5]
        dtype = (var.dtype or ir.DataType.FLOAT).numpy()
        eps = float(attr(bn, "epsilon", 1e-5))
        tape = ir.tape.Tape()
        s = tape.op(
            "Div",
            [
                gamma,
                tape.op("Sqrt", [tape.op("Add", [var, constant(tape, np.asarray(eps, dtype))])]),
            ],
        )
        wr = rank(w)
        if op.op_type == "Conv":
            shape = [-1] + [1] * (wr - 1)  # output channels lead the weight
        elif op.op_type == "ConvTranspose":
            shape = [1, -1] + [1] * (wr - 2)  # (C_in, C_out, k...) with group 1
        else:  # Gemm: output features are B's columns (rows when transB)
            shape = [-1, 1] if attr(op, "transB", 0) else [1, -1]
        w2 = tape.op("Mul", [w, tape.op("Reshape", [s, constant(tape, shape)])])
        w2.shape, w2.dtype = w.shape, w.dtype  # later passes read the weight's shape
        attrs = dict(op.attributes)
        if b is not None:
            gemm_beta = float(attr(op, "beta", 1.0)) if op.op_type == "Gemm" else 1.0
            if gemm_beta != 1.0:
                b = tape.op("Mul", [b, constant(tape, np.asarray(gemm_beta, dtype))])
            centred = tape.op("Sub", [b, mean])
        else:
            centred = tape.op("Neg", [mean])
        attrs.pop("beta", None)
        b2 = tape.op("Add", [tape.op("Mul", [centred, s]), beta])
        out = tape.op(op.op_type, [x, w2, b2], attributes=attrs, name=op.name)
        replace(graph, [op, bn], tape, [bn.outputs[0]], [out])
