"""Channels-last convolutions on weights packed once for onnx2jax's CPU kernel.

``NhwcConv(x, W, b)`` (the layout pass's conv, W HWIO) -> ``ai.onnx2jax::PackedNhwcConv(x,
pack(W), b)``, and a ``Relu`` or constant ``Clip`` that alone reads its output folded into it.
Dense convs run on onnx2jax/_kernels/packed_conv.cc (1.0-2x XLA's CPU convolutions, bias and
clamp included; benchmarks/NOTES.md, entry 18), depthwise ones on depthwise_conv.cc, which
skips the padding XLA's lowering copies the activation for (entry 19). The packing (Reshape, Pad, Transpose) is
param-only, so prep runs it once per params object, and it replaces the HWIO copy the layout
pass had prep hold: no extra memory. Only float32, group 1 or depthwise (a channel multiplier
of 1), weights computed from params.
``load`` and ``onnx2jax optimize`` run this pass only where the kernel is built and JAX's
backend is the CPU.
"""

from __future__ import annotations

import functools
import math

import onnx_ir as ir

from onnx2jax._kernels import CONV_PANEL  # constants only: no JAX here

from ._util import (
    DOMAIN,
    CountingPass,
    attr,
    const_tensor,
    new_initializer,
    only_user,
    param_derived,
    replace,
    sole_producer,
)


class PackConvs(CountingPass):
    """``NhwcConv`` -> ``PackedNhwcConv`` on a packed weight; a residual ``Add`` (dense convs:
    ``PackedNhwcConvAdd``), then a ReLU / Clip, folded into it."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        if model.opset_imports.get("", 0) < 13:  # the function bodies need opset 13
            return ir.passes.PassResult(model, False)
        graph = model.graph
        taken: set[str] | None = None  # value names in use, gathered at the first match
        for node in list(graph):
            if node.graph is None:
                continue  # removed earlier in this sweep (a folded activation)
            if _is(node, "NhwcConv") and _packable(node):
                if taken is None:
                    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs}
                self._pack(graph, node, functools.partial(new_initializer, graph, taken))
            elif _is(node, "PackedNhwcConv") and not self._fold_residual(graph, node):
                self._fold_activation(graph, node)
            elif _is(node, "PackedNhwcConvAdd"):
                self._fold_activation(graph, node)
        if self.matches:
            model.opset_imports.setdefault(DOMAIN, 1)
        return ir.passes.PassResult(model, bool(self.matches))

    def _pack(self, graph: ir.Graph, node: ir.Node, initializer) -> None:
        x, w = node.inputs[:2]
        kh, kw, c, o = (int(d) for d in w.shape.dims)
        panels = -(-o // CONV_PANEL)
        prefix = node.name or "conv"
        tape = ir.tape.Tape()
        source = tape.op("Reshape", [w, initializer(f"{prefix}_rows", [kh * kw * c, o])])
        if panels * CONV_PANEL != o:
            pads = initializer(f"{prefix}_pads", [0, 0, 0, panels * CONV_PANEL - o])
            source = tape.op("Pad", [source, pads])
        shape = initializer(f"{prefix}_panels", [kh * kw * c, panels, CONV_PANEL])
        source = tape.op("Reshape", [source, shape])
        packed = tape.op("Transpose", [source], attributes={"perm": [1, 0, 2]})
        b = node.inputs[2] if len(node.inputs) > 2 else None
        attributes = {k: v for k, v in node.attributes.items() if k != "kernel_shape"}
        attributes.update(
            kernel_shape=ir.AttrInt64s("kernel_shape", [kh, kw]),
            output_channels=ir.AttrInt64("output_channels", o),
            activation_min=ir.AttrFloat32("activation_min", -math.inf),
            activation_max=ir.AttrFloat32("activation_max", math.inf),
        )
        y = tape.op(
            "PackedNhwcConv",
            [x, packed, b] if b is not None else [x, packed],
            attributes=attributes,
            domain=DOMAIN,
            name=node.name,
        )
        replace(graph, [node], tape, node.outputs, [y])
        self.hit("NhwcConv")

    def _fold_residual(self, graph: ir.Graph, node: ir.Node) -> bool:
        """``Add(PackedNhwcConv(x, W, b), s)`` -> ``PackedNhwcConvAdd(x, W, b, s)`` for a dense
        conv with no activation folded yet (the clamp comes after the sum). ``s`` may
        broadcast: the op then adds it in XLA, after the kernel."""
        residual = _residual(node)
        if residual is None:
            return False
        user = only_user(node.outputs[0])
        tape = ir.tape.Tape()
        inputs = list(node.inputs) + [None] * (3 - len(node.inputs)) + [residual]
        y = tape.op(
            "PackedNhwcConvAdd",
            inputs,
            attributes=dict(node.attributes),
            domain=DOMAIN,
            name=node.name,
        )
        # After the Add: the residual may be computed after the conv.
        replace(graph, [user, node], tape, user.outputs, [y])
        self.hit("PackedNhwcConv + Add")
        return True

    def _fold_activation(self, graph: ir.Graph, node: ir.Node) -> None:
        if _has_activation(node):
            return  # one activation already folded
        user = only_user(node.outputs[0])
        bounds = _clamp_bounds(user)
        if bounds is None:
            return
        node.attributes["activation_min"] = ir.AttrFloat32("activation_min", bounds[0])
        node.attributes["activation_max"] = ir.AttrFloat32("activation_max", bounds[1])
        out = user.outputs[0]
        ir.convenience.replace_all_uses_with(out, node.outputs[0])
        node.outputs[0].name, out.name = out.name, node.outputs[0].name
        if out.is_graph_output():
            outputs = graph.outputs
            outputs[outputs.index(out)] = node.outputs[0]
        graph.remove(user, safe=True)
        self.hit(f"{node.op_type} + {user.op_type}")


class FuseInvertedResiduals(CountingPass):
    """A dense ``PackedNhwcConv`` (the expansion: 1x1, or a stem with any window), the depthwise
    one it alone feeds and the 1x1 ``PackedNhwcConv[Add]`` that alone reads that (the
    projection) -> one ``PackedInvertedResidual[Add]``; a depthwise conv and its projection
    without an expansion -> ``PackedDepthwiseProject[Add]``. The kernel runs them in bands of
    rows so the wide tensor between them stays in cache (NOTES entries 29, 32). Waits (the
    pipeline's fixed point) until ``pack_convs`` has folded every activation and residual."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        graph = model.graph
        packed = [n for n in graph if _is(n, "PackedNhwcConv") or _is(n, "PackedNhwcConvAdd")]
        if not all(_settled(n) for n in packed):
            return ir.passes.PassResult(model, False)
        for node in packed:
            if node.graph is None:
                continue  # fused into a block already
            chain = _block(node)
            if chain is not None:
                self._fuse(graph, *chain)
        if self.matches:
            model.opset_imports.setdefault(DOMAIN, 1)
        return ir.passes.PassResult(model, bool(self.matches))

    def _fuse(self, graph: ir.Graph, expand: ir.Node | None, dw: ir.Node, project: ir.Node):
        attributes = {
            k: v
            for k, v in dw.attributes.items()
            if k in ("auto_pad", "dilations", "kernel_shape", "pads", "strides")
        }
        values = {
            "output_channels": int(attr(project, "output_channels")),
            "depthwise_min": attr(dw, "activation_min", -math.inf),
            "depthwise_max": attr(dw, "activation_max", math.inf),
            "activation_min": attr(project, "activation_min", -math.inf),
            "activation_max": attr(project, "activation_max", math.inf),
        }
        if expand is not None:
            values |= {
                "expanded_channels": int(attr(expand, "output_channels")),
                "expand_min": attr(expand, "activation_min", -math.inf),
                "expand_max": attr(expand, "activation_max", math.inf),
            }
            for k in ("kernel_shape", "strides", "pads", "dilations"):
                if k in expand.attributes:  # the expansion's window (a stem's is not 1x1)
                    attributes[f"expand_{k}"] = ir.AttrInt64s(f"expand_{k}", attr(expand, k))
            inputs = [expand.inputs[0], *expand.inputs[1:3]]
            op = "PackedInvertedResidual"
        else:
            values["channels"] = int(attr(dw, "output_channels"))
            inputs = [dw.inputs[0]]
            op = "PackedDepthwiseProject"
        inputs += [*dw.inputs[1:3], *project.inputs[1:]]
        if len(project.inputs) == 4:
            op += "Add"
        for k, v in values.items():
            attributes[k] = (ir.AttrInt64 if isinstance(v, int) else ir.AttrFloat32)(k, v)
        tape = ir.tape.Tape()
        y = tape.op(op, inputs, attributes=attributes, domain=DOMAIN, name=project.name)
        old = [project, dw] + ([expand] if expand is not None else [])
        replace(graph, old, tape, project.outputs, [y])
        self.hit(op)


def _block(project: ir.Node) -> tuple[ir.Node | None, ir.Node, ir.Node] | None:
    """(expansion or None, depthwise, projection) ending at ``project``, all with biases."""
    dw = sole_producer(project.inputs[0])
    if dw is None or not _is(dw, "PackedNhwcConv") or not _pointwise(project):
        return None
    channels = attr(dw, "output_channels")
    if attr(dw, "group", 1) != channels:
        return None
    expand = sole_producer(dw.inputs[0])
    if not (
        expand is not None
        and _is(expand, "PackedNhwcConv")
        and attr(expand, "group", 1) == 1  # a 1x1 expansion, or any dense conv (a stem)
        and attr(expand, "auto_pad", "NOTSET") in ("NOTSET", "VALID")
        and attr(expand, "output_channels") == channels
    ):
        expand = None
    if any(len(n.inputs) < 3 or n.inputs[2] is None for n in (expand, dw, project) if n):
        return None
    return expand, dw, project


def _pointwise(node: ir.Node) -> bool:
    """A dense 1x1 convolution, stride 1, no padding."""
    return (
        attr(node, "group", 1) == 1
        and list(attr(node, "kernel_shape", [])) == [1, 1]
        and all(v == 1 for v in attr(node, "strides", [1, 1]))
        and all(v == 1 for v in attr(node, "dilations", [1, 1]))
        and not any(attr(node, "pads", [0, 0, 0, 0]))
        and attr(node, "auto_pad", "NOTSET") in ("NOTSET", "VALID")
    )


def _settled(node: ir.Node) -> bool:
    """Whether ``pack_convs`` is done with ``node``: it folds a lone Relu/Clip user into a conv
    with no activation yet, and a residual ``Add`` into a dense one."""
    if _has_activation(node):
        return True
    return _clamp_bounds(only_user(node.outputs[0])) is None and _residual(node) is None


def _residual(node: ir.Node) -> ir.Value | None:
    """What ``_fold_residual`` would add into ``node``: the other input of the ``Add`` that
    alone reads a dense ``PackedNhwcConv`` with no activation, if float32; else None."""
    if not _is(node, "PackedNhwcConv") or int(attr(node, "group", 1)) != 1:
        return None
    if _has_activation(node):
        return None
    user = only_user(node.outputs[0])
    if user is None or user.op_type != "Add" or user.domain not in ("", "ai.onnx"):
        return None
    a, b = user.inputs
    residual = b if a is node.outputs[0] else a
    if residual is node.outputs[0] or residual.dtype not in (None, ir.DataType.FLOAT):
        return None  # Add(y, y), or another dtype
    return residual


def _is(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain == DOMAIN


def _has_activation(node: ir.Node) -> bool:
    return attr(node, "activation_min", -math.inf) != -math.inf or (
        attr(node, "activation_max", math.inf) != math.inf
    )


def _packable(node: ir.Node) -> bool:
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if w is None or w.dtype != ir.DataType.FLOAT or not param_derived(w):
        return False
    if w.shape is None or len(w.shape) != 4 or not w.shape.is_static():
        return False
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None and b.dtype != ir.DataType.FLOAT:
        return False
    group, (_, _, c_per_group, o) = int(attr(node, "group", 1)), w.shape.dims
    depthwise = c_per_group == 1 and group == o  # one filter per input channel
    return (group == 1 or depthwise) and len(node.outputs) == 1


def _clamp_bounds(node: ir.Node | None) -> tuple[float, float] | None:
    """(lo, hi) of a ``Relu`` or a ``Clip`` with constant bounds; None for anything else."""
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type != "Clip":
        return None
    bounds = []
    for i, default in ((1, -math.inf), (2, math.inf)):
        value = node.inputs[i] if len(node.inputs) > i else None
        if value is None:
            bounds.append(default)
            continue
        tensor = const_tensor(value)
        if tensor is None or tensor.size != 1:
            return None
        bounds.append(float(tensor.numpy().reshape(-1)[0]))
    return bounds[0], bounds[1]
