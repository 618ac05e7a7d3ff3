"""Channels-last: 2-D convolutions and pools run in NHWC, with weights laid out once.

XLA's CPU convolutions want NHWC activations and HWIO weights. ONNX writes NCHW / OIHW, so a
literal lowering pays a transpose of the activations around every conv and, since weights are
traced arguments, a re-layout of every weight on every call (PERF_NOTES: ~45 ms of ResNet-18's
107 ms). This pass

1. rewrites each 2-D ``Conv`` as ``Transpose(x) -> ai.onnx2jax::NhwcConv(x, Transpose(W)) ->
   Transpose`` (and ``MaxPool``/``AveragePool``/``GlobalAveragePool`` alike); the weight
   transpose reads only initializers, so onnx2jax computes it once per params object;
2. sinks the transposes back to NCHW through elementwise ops (and their initializer operands)
   towards the outputs, so that the NCHW->NHWC transpose in front of the next conv meets it
   and both cancel. A CNN then changes layout only at the graph boundary.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from ._util import (
    DOMAIN,
    ONNX_DOMAINS,
    CountingPass,
    attr,
    constant,
    is_op,
    param_derived,
    rank,
    replace,
)

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)

# Elementwise ops whose first input is the tensor and whose other inputs (if any) are scalars
# that do not depend on the layout.
_UNARY = {
    "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Clip", "Cast", "ThresholdedRelu", "Shrink",
    "Not", "IsNaN", "IsInf", "Identity",
}  # fmt: skip
# Broadcasting elementwise ops: every input may be a tensor.
_BINARY = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "PRelu", "BitShift", "Mod",
}  # fmt: skip
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"}
_POOLS = {"MaxPool": "NhwcMaxPool", "AveragePool": "NhwcAveragePool"}
_GLOBAL_POOLS = {"GlobalAveragePool": "NhwcGlobalAveragePool", "GlobalMaxPool": "NhwcGlobalMaxPool"}


def _perm(node: ir.Node) -> tuple[int, ...] | None:
    if not is_op(node, "Transpose"):
        return None
    p = attr(node, "perm")
    if p is None:
        return None
    return tuple(int(v) for v in p)


def _transposed(value: ir.Value | None) -> tuple[ir.Value, tuple[int, ...]] | None:
    """``(a, perm)`` when ``value = Transpose(a, perm)``."""
    if value is None:
        return None
    producer = value.producer()
    if producer is None:
        return None
    perm = _perm(producer)
    return None if perm is None else (producer.inputs[0], perm)


def _compose(p: tuple[int, ...], q: tuple[int, ...]) -> tuple[int, ...]:
    """perm of Transpose(Transpose(x, p), q)."""
    return tuple(p[i] for i in q)


def _is_scalar(value: ir.Value | None) -> bool:
    if value is None:
        return True
    r = rank(value)
    return r == 0 or (value.shape is not None and all(d == 1 for d in value.shape.dims) and r <= 1)


class ChannelsLast(CountingPass):
    """2-D Conv/pools as ``ai.onnx2jax`` NHWC ops; transposes sunk and cancelled."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        graph = model.graph
        for node in list(graph):
            if is_op(node, "Conv"):
                self._conv(graph, node)
            elif any(is_op(node, op) for op in _POOLS):
                self._pool(graph, node)
            elif any(is_op(node, op) for op in _GLOBAL_POOLS):
                self._global_pool(graph, node)
        if self.matches:
            model.opset_imports.setdefault(DOMAIN, 1)
        changed = True
        while changed:  # sink until nothing moves
            changed = False
            for node in list(graph):
                if node.graph is None:
                    continue  # removed earlier in this sweep
                changed |= self._sink(graph, node)
        # Sinking leaves the transposes it moved past without readers.
        common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, bool(self.matches))

    # -- step 1: channels-last ops ---------------------------------------------------------

    def _conv(self, graph: ir.Graph, node: ir.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        if w is None or rank(w) != 4 or not param_derived(w):  # a 4-D weight: a 2-D conv
            return
        if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            return
        tape = ir.tape.Tape()
        xt = tape.op("Transpose", [x], attributes={"perm": list(TO_NHWC)})
        wt = tape.op("Transpose", [w], attributes={"perm": [2, 3, 1, 0]})  # OIHW -> HWIO
        if w.shape is not None:  # later passes (pack_convs) read the weight's shape
            wt.shape = ir.Shape([w.shape[i] for i in (2, 3, 1, 0)])
        wt.dtype = w.dtype
        inputs = [xt, wt] + ([node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else [])
        y = tape.op(
            "NhwcConv", inputs, attributes=dict(node.attributes), domain=DOMAIN, name=node.name
        )
        out = tape.op("Transpose", [y], attributes={"perm": list(TO_NCHW)})
        replace(graph, [node], tape, [node.outputs[0]], [out])
        self.hit("Conv")

    def _pool(self, graph: ir.Graph, node: ir.Node) -> None:
        if len(attr(node, "kernel_shape", ())) != 2 or len(node.outputs) != 1:
            return
        if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return
        tape = ir.tape.Tape()
        xt = tape.op("Transpose", [node.inputs[0]], attributes={"perm": list(TO_NHWC)})
        y = tape.op(
            _POOLS[node.op_type],
            [xt],
            attributes=dict(node.attributes),
            domain=DOMAIN,
            name=node.name,
        )
        out = tape.op("Transpose", [y], attributes={"perm": list(TO_NCHW)})
        replace(graph, [node], tape, [node.outputs[0]], [out])
        self.hit(node.op_type)

    def _global_pool(self, graph: ir.Graph, node: ir.Node) -> None:
        x = node.inputs[0]
        if rank(x) != 4:
            return
        tape = ir.tape.Tape()
        xt = tape.op("Transpose", [x], attributes={"perm": list(TO_NHWC)})
        y = tape.op(_GLOBAL_POOLS[node.op_type], [xt], domain=DOMAIN, name=node.name)
        out = tape.op("Transpose", [y], attributes={"perm": list(TO_NCHW)})
        replace(graph, [node], tape, [node.outputs[0]], [out])
        self.hit(node.op_type)

    # -- step 2: sink transposes -----------------------------------------------------------

    def _sink(self, graph: ir.Graph, node: ir.Node) -> bool:
        if node.domain not in ONNX_DOMAINS or len(node.outputs) != 1:
            return False
        perm = _perm(node)
        if perm is not None:
            inner = _transposed(node.inputs[0])
            if inner is None:
                return False
            a, p = inner
            full = _compose(p, perm)
            if full == tuple(range(len(full))):
                if node.outputs[0].is_graph_output():
                    return False  # the output keeps its name; leave the pair
                ir.convenience.replace_all_uses_with(node.outputs[0], a)
                graph.remove(node, safe=True)
                self.hit("cancelled transposes")
                return True
            tape = ir.tape.Tape()
            out = tape.op("Transpose", [a], attributes={"perm": list(full)})
            replace(graph, [node], tape, [node.outputs[0]], [out])
            self.hit("merged transposes")
            return True
        if node.op_type in _UNARY:
            inner = _transposed(node.inputs[0])
            if inner is None or not all(_is_scalar(v) for v in node.inputs[1:]):
                return False
            a, p = inner
            tape = ir.tape.Tape()
            y = tape.op(node.op_type, [a, *node.inputs[1:]], attributes=dict(node.attributes))
            out = tape.op("Transpose", [y], attributes={"perm": list(p)})
            replace(graph, [node], tape, [node.outputs[0]], [out])
            self.hit("sunk through elementwise")
            return True
        if node.op_type in _BINARY:
            return self._sink_binary(graph, node)
        if node.op_type in _REDUCE:
            return self._sink_reduce(graph, node)
        return False

    def _sink_reduce(self, graph: ir.Graph, node: ir.Node) -> bool:
        """``Reduce(Transpose(a, p), axes)`` -> ``Reduce(a, p[axes])``, transposed if still needed."""
        inner = _transposed(node.inputs[0])
        if inner is None:
            return False
        a, p = inner
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            tensor = ir.convenience.get_const_tensor(node.inputs[1])
            if tensor is None:
                return False
            axes = [int(v) for v in tensor.numpy().ravel()]
        else:
            axes = attr(node, "axes")
            if axes is None:
                return False  # every axis: layout-free, but rare enough to leave
            axes = [int(v) for v in axes]
        n = len(p)
        axes = sorted({ax % n for ax in axes})
        new_axes = sorted(p[ax] for ax in axes)
        tape = ir.tape.Tape()
        attrs = {k: v for k, v in node.attributes.items() if k != "axes"}
        inputs = [a]
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            inputs.append(constant(tape, new_axes))
        else:
            attrs["axes"] = ir.AttrInt64s("axes", new_axes)
        y = tape.op(node.op_type, inputs, attributes=attrs)
        if attr(node, "keepdims", 1):
            out_perm = list(p)
        else:  # the kept axes, in output order, as positions among a's kept axes
            kept_a = [d for d in range(n) if d not in new_axes]
            out_perm = [kept_a.index(p[i]) for i in range(n) if i not in axes]
        out = (
            y
            if out_perm == sorted(out_perm)
            else tape.op("Transpose", [y], attributes={"perm": out_perm})
        )
        replace(graph, [node], tape, [node.outputs[0]], [out])
        self.hit("sunk through reduction")
        return True

    def _sink_binary(self, graph: ir.Graph, node: ir.Node) -> bool:
        perm = None
        for v in node.inputs:
            t = _transposed(v)
            # Only activations lead: a transposed weight (one this rule made) must not, or the
            # rule would fire again on its own output forever.
            if t is not None and len(t[1]) == 4 and not param_derived(t[0]):
                perm = t[1]
                break
        if perm is None:
            return False
        out_rank = rank(node.outputs[0])
        if out_rank not in (None, 4):
            return False
        inv = tuple(int(i) for i in np.argsort(perm))
        tape = ir.tape.Tape()
        new_inputs = []
        for v in node.inputs:
            t = _transposed(v)
            if t is not None and t[1] == perm:
                new_inputs.append(t[0])
            elif _is_scalar(v):
                new_inputs.append(v)
            elif (
                param_derived(v)
                and rank(v) is not None
                and rank(v) <= 4
                and v.shape is not None
                and v.shape.is_static()
            ):
                dims = [1] * (4 - rank(v)) + [int(d) for d in v.shape.dims]
                v4 = tape.op("Reshape", [v, constant(tape, dims)]) if rank(v) < 4 else v
                new_inputs.append(tape.op("Transpose", [v4], attributes={"perm": list(inv)}))
            else:
                return False
        y = tape.op(node.op_type, new_inputs, attributes=dict(node.attributes))
        out = tape.op("Transpose", [y], attributes={"perm": list(perm)})
        replace(graph, [node], tape, [node.outputs[0]], [out])
        self.hit("sunk through elementwise")
        return True
