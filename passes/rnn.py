"""Bidirectional RNN / GRU / LSTM as one node per direction, on weights split once.

The exporters write a bidirectional recurrence as one node whose W, R and B hold both
directions (``[2, ...]``). onnx2jax runs each direction as its own scan, so its lowering
sliced each direction's weights out of them on every call: copies XLA cannot fold, since
params are traced arguments (the zoo's 2-layer LSTM: 35 MB per call). Here the node becomes a
``forward`` and a ``reverse`` node on ``Split`` halves of the weights (param-only, so prep
splits them once per params object, onnx2jax/_prepare.py), with ``Concat`` joining their
outputs: Y on its direction axis, Y_h and Y_c on theirs. Standard ONNX throughout, so the
optimized file runs in onnxruntime. Measured in benchmarks/NOTES.md, entry 28.

Only nodes whose W and R are computed from params (else the split would run every call, as
the slicing did), and whose activations split cleanly: alphas and betas are consumed across
both directions in order (ops/rnn.py), so nodes that set them are left alone.
"""

from __future__ import annotations

import onnx_ir as ir

from ._util import CountingPass, attr, is_op, param_derived, replace

# op -> (activation functions per direction, names of the optional inputs after X, W, R)
_RECURRENT = {
    "RNN": (1, ("B", "sequence_lens", "initial_h")),
    "GRU": (2, ("B", "sequence_lens", "initial_h")),
    "LSTM": (3, ("B", "sequence_lens", "initial_h", "initial_c", "P")),
}
# Inputs that hold both directions on axis 0 (or on axis 1 with layout=1: the initial states).
_PER_DIRECTION = {"W", "R", "B", "P", "initial_h", "initial_c"}
_STATES = {"initial_h", "initial_c"}


class SplitDirections(CountingPass):
    """Bidirectional RNN / GRU / LSTM -> a forward and a reverse node and Concats."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        for node in list(model.graph):
            if node.op_type in _RECURRENT and is_op(node, node.op_type) and _splittable(node):
                self._split(model.graph, node, opset)
        return ir.passes.PassResult(model, bool(self.matches))

    def _split(self, graph: ir.Graph, node: ir.Node, opset: int) -> None:
        n_acts, optional = _RECURRENT[node.op_type]
        layout = int(attr(node, "layout", 0))
        names = ("X", "W", "R", *optional)
        tape = ir.tape.Tape()
        halves: list[list[ir.Value | None]] = [[], []]
        for i, name in enumerate(names):
            v = node.inputs[i] if i < len(node.inputs) else None
            if v is None or name not in _PER_DIRECTION:
                parts = (v, v)
            else:
                axis = 1 if layout and name in _STATES else 0
                split = {"axis": axis} | ({"num_outputs": 2} if opset >= 18 else {})
                parts = tape.op_multi_out("Split", [v], attributes=split, num_outputs=2)
            for d in (0, 1):
                halves[d].append(parts[d])
        acts = attr(node, "activations")
        wanted = [i for i, v in enumerate(node.outputs) if v is not None and v.name]
        count = max(wanted) + 1 if wanted else 1
        results = []
        for d, direction in enumerate(("forward", "reverse")):
            attributes = {k: v for k, v in node.attributes.items() if k != "activations"}
            attributes["direction"] = ir.AttrString("direction", direction)
            if acts:
                mine = acts if len(acts) == n_acts else acts[d * n_acts : (d + 1) * n_acts]
                attributes["activations"] = ir.AttrStrings("activations", list(mine))
            ins = halves[d]
            while ins and ins[-1] is None:
                ins.pop()
            results.append(
                tape.op_multi_out(
                    node.op_type,
                    ins,
                    attributes=attributes,
                    num_outputs=count,
                    name=f"{node.name}_{direction}" if node.name else None,
                )
            )
        # Y is [T, 2, B, H] ([B, T, 2, H] with layout=1); Y_h, Y_c [2, B, H] ([B, 2, H]).
        axes = (2, 1, 1) if layout else (1, 0, 0)
        old, new = [], []
        for j in wanted:
            old.append(node.outputs[j])
            new.append(
                tape.op("Concat", [results[0][j], results[1][j]], attributes={"axis": axes[j]})
            )
        replace(graph, [node], tape, old, new)
        self.hit(node.op_type)


def _splittable(node: ir.Node) -> bool:
    if attr(node, "direction", "forward") != "bidirectional":
        return False
    if node.attributes.get("activation_alpha") or node.attributes.get("activation_beta"):
        return False  # consumed across both directions in order: not split here
    n_acts, _ = _RECURRENT[node.op_type]
    acts = attr(node, "activations")
    if acts and len(acts) not in (n_acts, 2 * n_acts):
        return False  # malformed: leave the error to the op, which names it
    weights = node.inputs[1:3]
    return len(weights) == 2 and all(w is not None and param_derived(w) for w in weights)
