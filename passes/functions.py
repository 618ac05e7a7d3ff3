"""Standard-ONNX function bodies for the ``ai.onnx2jax`` ops, so optimized files run anywhere.

onnx2jax runs these ops natively (onnx2jax/ops/nhwc.py, MatMulTransB and PackedMatMul* in
ops/linalg.py, Attention in ops/attention.py, LayerNormalization in ops/normalization.py).
``onnx2jax optimize`` writes the file with one model-local function per op used, whose body is
the plain ONNX op between transposes:
onnxruntime (or any runtime) inlines it, while a reader still sees ``NhwcConv`` in the graph.
"""

from __future__ import annotations

import onnx_ir as ir

from . import attention, norm_act
from ._util import DOMAIN

_INTS, _INT, _STR = ir.AttributeType.INTS, ir.AttributeType.INT, ir.AttributeType.STRING
_FLOAT = ir.AttributeType.FLOAT
_TO_NCHW, _TO_NHWC, _HWIO_TO_OIHW = [0, 3, 1, 2], [0, 2, 3, 1], [3, 2, 0, 1]

# op -> (ONNX op, its inputs, attribute types, input perms; None: passed as is); the output
# goes back to NHWC unless the op is listed in _OUTPUT_AS_IS.
_SPECS = {
    "NhwcConv": (
        "Conv",
        ["x", "w", "b"],
        {"auto_pad": _STR, "dilations": _INTS, "group": _INT, "kernel_shape": _INTS,
         "pads": _INTS, "strides": _INTS},
        [_TO_NCHW, _HWIO_TO_OIHW, None],
    ),
    "NhwcMaxPool": (
        "MaxPool",
        ["x"],
        {"auto_pad": _STR, "ceil_mode": _INT, "dilations": _INTS, "kernel_shape": _INTS,
         "pads": _INTS, "storage_order": _INT, "strides": _INTS},
        [_TO_NCHW],
    ),
    "NhwcAveragePool": (
        "AveragePool",
        ["x"],
        {"auto_pad": _STR, "ceil_mode": _INT, "count_include_pad": _INT, "dilations": _INTS,
         "kernel_shape": _INTS, "pads": _INTS, "strides": _INTS},
        [_TO_NCHW],
    ),
    "NhwcGlobalAveragePool": ("GlobalAveragePool", ["x"], {}, [_TO_NCHW]),
    "NhwcGlobalMaxPool": ("GlobalMaxPool", ["x"], {}, [_TO_NCHW]),
    "MatMulTransB": ("MatMul", ["a", "bt"], {}, [None, [1, 0]]),
}  # fmt: skip
_OUTPUT_AS_IS = {"MatMulTransB"}
_FUSED_BLOCKS = (
    "PackedInvertedResidual",
    "PackedInvertedResidualAdd",
    "PackedDepthwiseProject",
    "PackedDepthwiseProjectAdd",
)


def function(op_type: str, opset: int) -> ir.Function:
    """The function body of ``ai.onnx2jax::op_type`` in ONNX ``opset``."""
    if op_type == "Attention":
        return attention.function(opset)
    if op_type == "LayerNormalization":
        return norm_act.layernorm_function(opset)
    if op_type in ("PackedMatMul", "PackedMatMulTransB"):
        return _packed_matmul_function(op_type, opset)
    if op_type in ("PackedNhwcConv", "PackedNhwcConvAdd"):
        return _packed_conv_function(op_type, opset)
    if op_type in _FUSED_BLOCKS:
        return _inverted_residual_function(op_type, opset)
    onnx_op, names, attr_types, perms = _SPECS[op_type]
    inputs = [ir.Value(name=n) for n in names]
    nodes, args = [], []
    for value, perm in zip(inputs, perms, strict=True):
        if perm is None:
            args.append(value)
            continue
        t = ir.Node("", "Transpose", [value], [ir.AttrInt64s("perm", perm)])
        nodes.append(t)
        args.append(t.outputs[0])
    known = _schema_attributes(onnx_op, opset)
    attr_types = {k: v for k, v in attr_types.items() if k in known}  # e.g. dilations: opset 19+
    refs = [ir.RefAttr(name, name, kind) for name, kind in attr_types.items()]
    core = ir.Node("", onnx_op, args, refs)
    nodes.append(core)
    if op_type not in _OUTPUT_AS_IS:
        nodes.append(ir.Node("", "Transpose", core.outputs, [ir.AttrInt64s("perm", _TO_NHWC)]))
    out = nodes[-1].outputs[0]
    out.name = "y"
    graph = ir.Graph(inputs, [out], nodes=nodes, opset_imports={"": opset})
    declared = [ir.Attr(name, kind, None) for name, kind in attr_types.items()]
    return ir.Function(DOMAIN, op_type, graph=graph, attributes=declared)


def _packed_matmul_function(op_type: str, opset: int) -> ir.Function:
    """``PackedMatMul(a, w, packed)``: ``MatMul(a, w)``; the packed copy only serves
    onnx2jax's kernel. ``PackedMatMulTransB``: ``w`` is [N, K]."""
    a, w, packed = ir.Value(name="a"), ir.Value(name="w"), ir.Value(name="packed")
    nodes = []
    if op_type == "PackedMatMulTransB":
        nodes.append(ir.Node("", "Transpose", [w], [ir.AttrInt64s("perm", [1, 0])]))
        w_kn = nodes[-1].outputs[0]
    else:
        w_kn = w
    nodes.append(ir.Node("", "MatMul", [a, w_kn]))
    nodes[-1].outputs[0].name = "y"
    graph = ir.Graph([a, w, packed], nodes[-1].outputs, nodes=nodes, opset_imports={"": opset})
    return ir.Function(DOMAIN, op_type, graph=graph, attributes=[])


def _packed_conv_function(op_type: str, opset: int) -> ir.Function:
    """``PackedNhwcConv(x, packed, b)``: the weight unpacked (panels [P, K, 16] -> HWIO, shapes
    from the ``kernel_shape`` and ``output_channels`` attributes), ``NhwcConv``, then ``Clip``
    to ``[activation_min, activation_max]``; ``PackedNhwcConvAdd(x, packed, b, residual)`` adds
    ``residual`` before the ``Clip``. Needs opset 13 (the pass checks)."""
    x, packed, b = ir.Value(name="x"), ir.Value(name="packed"), ir.Value(name="b")
    inputs = [x, packed, b]
    if op_type == "PackedNhwcConvAdd":
        inputs.append(ir.Value(name="residual"))
    nodes: list[ir.Node] = []

    def op(op_type, inputs, attributes=()):
        nodes.append(ir.Node("", op_type, inputs, list(attributes)))
        return nodes[-1].outputs[0]

    def const_ints(values):
        return op("Constant", [], [ir.AttrInt64s("value_ints", values)])

    out_channels = op("Constant", [], [ir.RefAttr("value_int", "output_channels", _INT)])
    out_channels = op("Reshape", [out_channels, const_ints([1])])
    rows = op("Transpose", [packed], [ir.AttrInt64s("perm", [1, 0, 2])])  # [K, P, 16]
    k = op("Slice", [op("Shape", [packed]), const_ints([1]), const_ints([2])])
    rows = op("Reshape", [rows, op("Concat", [k, const_ints([-1])], [ir.AttrInt64("axis", 0)])])
    rows = op("Slice", [rows, const_ints([0]), out_channels, const_ints([1])])  # padding off
    kernel = op("Constant", [], [ir.RefAttr("value_ints", "kernel_shape", _INTS)])
    hwio_shape = op("Concat", [kernel, const_ints([-1]), out_channels], [ir.AttrInt64("axis", 0)])
    hwio = op("Reshape", [rows, hwio_shape])
    conv_attrs = {"auto_pad": _STR, "dilations": _INTS, "group": _INT, "kernel_shape": _INTS,
                  "pads": _INTS, "strides": _INTS}  # fmt: skip
    y = op(
        "Conv",
        [
            op("Transpose", [x], [ir.AttrInt64s("perm", _TO_NCHW)]),
            op("Transpose", [hwio], [ir.AttrInt64s("perm", _HWIO_TO_OIHW)]),
            b,
        ],
        [ir.RefAttr(name, name, kind) for name, kind in conv_attrs.items()],
    )
    y = op("Transpose", [y], [ir.AttrInt64s("perm", _TO_NHWC)])
    if len(inputs) == 4:
        y = op("Add", [y, inputs[3]])
    lo = op("Constant", [], [ir.RefAttr("value_float", "activation_min", _FLOAT)])
    hi = op("Constant", [], [ir.RefAttr("value_float", "activation_max", _FLOAT)])
    y = op("Clip", [y, lo, hi])
    y.name = "y"
    graph = ir.Graph(inputs, [y], nodes=nodes, opset_imports={"": opset})
    declared = {**conv_attrs, "output_channels": _INT, "activation_min": _FLOAT,
                "activation_max": _FLOAT}  # fmt: skip
    attributes = [ir.Attr(name, kind, None) for name, kind in declared.items()]
    return ir.Function(DOMAIN, op_type, graph=graph, attributes=attributes)


def _inverted_residual_function(op_type: str, opset: int) -> ir.Function:
    """``PackedInvertedResidual[Add](x, we, be, wd, bd, wp, bp[, residual])``: the three
    ``PackedNhwcConv`` it fused (their own functions), attributes passed down by reference;
    ``PackedDepthwiseProject[Add](x, wd, bd, wp, bp[, residual])``: the last two."""
    expand = op_type.startswith("PackedInvertedResidual")
    names = ["x", "we", "be"] if expand else ["x"]
    names += ["wd", "bd", "wp", "bp"] + (["residual"] if op_type.endswith("Add") else [])
    inputs = [ir.Value(name=n) for n in names]
    value = dict(zip(names, inputs, strict=True))
    one = [ir.AttrInt64s("kernel_shape", [1, 1])]

    def ref(name, source, kind):
        return ir.RefAttr(name, source, kind)

    def clamp(prefix):
        return [ref("activation_min", f"{prefix}_min", _FLOAT),
                ref("activation_max", f"{prefix}_max", _FLOAT)]  # fmt: skip

    # the depthwise conv's channels: the expansion's, or x's (attribute ``channels``)
    width = "expanded_channels" if expand else "channels"
    declared = {"auto_pad": _STR, "dilations": _INTS, "kernel_shape": _INTS, "pads": _INTS,
                "strides": _INTS, width: _INT, "output_channels": _INT}  # fmt: skip
    for prefix in ("expand", "depthwise", "activation")[1 - expand :]:
        declared |= {f"{prefix}_min": _FLOAT, f"{prefix}_max": _FLOAT}
    nodes, h = [], value["x"]
    if expand:  # its window by reference too: a stem's is not 1x1
        declared |= {f"expand_{k}": _INTS for k in ("kernel_shape", "strides", "pads", "dilations")}
        window = [
            ref(k, f"expand_{k}", _INTS) for k in ("kernel_shape", "strides", "pads", "dilations")
        ]
        nodes.append(ir.Node(
            DOMAIN, "PackedNhwcConv", [h, value["we"], value["be"]],
            [*window, ref("output_channels", width, _INT), *clamp("expand")],
        ))  # fmt: skip
        h = nodes[-1].outputs[0]
    window = [ref(name, name, declared[name])
              for name in ("auto_pad", "dilations", "kernel_shape", "pads", "strides")]  # fmt: skip
    nodes.append(ir.Node(
        DOMAIN, "PackedNhwcConv", [h, value["wd"], value["bd"]],
        [*window, ref("group", width, _INT), ref("output_channels", width, _INT),
         *clamp("depthwise")],
    ))  # fmt: skip
    residual = [value["residual"]] if "residual" in value else []
    nodes.append(ir.Node(
        DOMAIN, "PackedNhwcConvAdd" if residual else "PackedNhwcConv",
        [nodes[-1].outputs[0], value["wp"], value["bp"], *residual],
        [*one, ref("output_channels", "output_channels", _INT), *clamp("activation")],
    ))  # fmt: skip
    nodes[-1].outputs[0].name = "y"
    graph = ir.Graph(inputs, nodes[-1].outputs, nodes=nodes, opset_imports={"": opset, DOMAIN: 1})
    attributes = [ir.Attr(name, kind, None) for name, kind in declared.items()]
    return ir.Function(DOMAIN, op_type, graph=graph, attributes=attributes)


def _schema_attributes(op_type: str, opset: int) -> set[str]:
    import onnx.defs  # the operator schemas (not protobuf)

    return set(onnx.defs.get_schema(op_type, opset).attributes)


def add_functions(model: ir.Model) -> list[str]:
    """Add a function for every ``ai.onnx2jax`` op the model uses; returns their names."""
    used = {n.op_type for n in model.graph.all_nodes() if n.domain == DOMAIN}
    if used & set(_FUSED_BLOCKS):  # their bodies call these
        used |= {"PackedNhwcConv", "PackedNhwcConvAdd"}
    used = sorted(used)
    opset = model.opset_imports.get("", 17)
    for op in used:
        fn = function(op, opset)
        model.functions[fn.identifier()] = fn
    return used
