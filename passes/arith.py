"""``Pow(x, c)`` with ``c`` a constant 2, 3 or 4 -> multiplies.

Exporters write ``x ** 3`` (the tanh GELU) and ``x ** 2`` (LayerNorm's and RMSNorm's variance,
by tf2onnx, the legacy torch exporter and Llama-style models) as ``Pow`` by a scalar
initializer. onnx2jax's params are traced arguments, so the exponent reaches XLA as a runtime
value and the op compiles to its general power (``exp(y * log|x|)`` with sign fix-ups), which
on CPU costs several times a multiply and is no more exact. As multiplies the exponent is
part of the graph, and XLA fuses them with their neighbours (benchmarks/NOTES.md, entry 12).
"""

from __future__ import annotations

import onnx_ir as ir

from ._util import CountingPass, is_op, replace, scalar


class PowToMul(CountingPass):
    """``Pow(x, 2|3|4)`` on a float ``x`` -> ``Mul`` chains."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        for node in list(model.graph):
            if not is_op(node, "Pow"):
                continue
            x, y = node.inputs
            n = _whole_exponent(y)
            if n is None or x.dtype is None or not x.dtype.is_floating_point():
                continue
            if x.shape is None or y.shape is None or len(y.shape) > len(x.shape):
                continue  # an exponent of higher rank would broadcast x to its rank
            tape = ir.tape.Tape()
            out = square = tape.op("Mul", [x, x])
            if n == 3:
                out = tape.op("Mul", [square, x])
            elif n == 4:
                out = tape.op("Mul", [square, square])
            replace(model.graph, [node], tape, node.outputs, [out])
            key = f"Pow(x, {n})"
            self.hit(key)
        return ir.passes.PassResult(model, bool(self.matches))


def _whole_exponent(y: ir.Value | None) -> int | None:
    """2, 3 or 4 when ``y`` is a one-element constant of that value, else None."""
    v = scalar(y)
    return int(v) if v in (2.0, 3.0, 4.0) else None
