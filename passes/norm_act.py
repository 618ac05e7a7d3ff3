"""LayerNorm and GELU as the exporters decompose them -> one normalization / activation op.

Below opset 17 (LayerNormalization) and 20 (Gelu) the legacy torch exporter, tf2onnx and
transformers' hand-written activations spell these layers out in elementwise ops::

    m = ReduceMean(x, [-1]); d = x - m
    v = ReduceMean(d ** 2 | d * d, [-1])
    n = d / Sqrt(v + eps)  |  d * Reciprocal(Sqrt(v + eps))
    y = n * gamma + beta                              (gamma, beta optional)
    y = d * (Reciprocal(Sqrt(v + eps)) * gamma) + beta   (TF's layer_norm rewriter's form)

    # tf2onnx's Keras LayerNormalization (TF's batch_normalization arrangement, rsqrt as
    # Reciprocal(Sqrt)); tf2onnx's own layer-norm rewriter targets another form, rank 3 only
    s = Reciprocal(Sqrt(v + eps)) | 1 / Sqrt(v + eps) | (v + eps) ** -0.5  [* gamma]
    y = x * s + (beta - m * s)                       (tf.keras 2)
    y = x * s + ((-m) * s + beta)                    (Keras 3)
    y = x * s + (-m) * s  |  x * s + -(m * s)  |  x * s - m * s    (no beta)

    y = x * 0.5 * (1 + Erf(x / sqrt(2) | x * (1 / sqrt(2))))          (any association)
    y = 0.5 * x * (1 + Tanh(sqrt(2 / pi) * (x + 0.044715 * x ** 3)))  (x ** 3: Pow or Muls)

``fuse_layernorm`` writes ``LayerNormalization(x, gamma, beta, axis=-1, epsilon=eps)`` (the
standard op from opset 17; ``ai.onnx2jax::LayerNormalization`` below it, whose function body
for ``onnx2jax optimize`` is the decomposition). ``fuse_gelu`` writes the standard ``Gelu``
from opset 20, else onnxruntime's ``com.microsoft`` ``Gelu`` / ``FastGelu``, which onnxruntime
runs natively and onnx2jax implements (onnx2jax/ops/activation.py). The point is one op per
layer for the reader, the report and the lowering (one-pass statistics, XLA's own GELU);
XLA fuses the elementwise chains as written about as well (benchmarks/NOTES.md).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ._util import (
    DOMAIN,
    CountingPass,
    attr,
    const_tensor,
    constant,
    is_op,
    is_param,
    only_user,
    replace,
    sole_producer,
)

MS = "com.microsoft"
_RTOL = 1e-4  # how near a constant must be to its exact value (exporters round differently)


class FuseLayerNorm(CountingPass):
    """``ReduceMean, Sub, square, ReduceMean, +eps, Sqrt, Div, [*gamma], [+beta]`` and TF's
    rearrangement ``x * s + (beta - mean * s)`` -> ``LayerNormalization``."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if opset < 11:  # the function body flattens at axis -1 (negative axes: opset 11)
            return ir.passes.PassResult(model, False)
        for node in list(model.graph):
            if not is_op(node, "Sub") or node.graph is None:  # None: removed by a match
                continue
            match = _match_layernorm(node, opset) or _match_rearranged(node, opset)
            if match is None:
                continue
            chain, x, gamma, beta, eps, parts = match
            tape = ir.tape.Tape()
            d = x.shape[-1]
            if gamma is None:
                gamma = constant(tape, np.ones([d], x.dtype.numpy()))
            inputs = [x, gamma]
            if beta is not None or opset < 17:  # the function body takes all three
                zeros = np.zeros([d], x.dtype.numpy())
                inputs.append(beta if beta is not None else constant(tape, zeros))
            y = tape.op(
                "LayerNormalization",
                inputs,
                attributes={"axis": -1, "epsilon": eps},
                domain="" if opset >= 17 else DOMAIN,
            )
            # Inserted where the last node was: gamma and beta may be Constant nodes in between.
            replace(model.graph, chain[-1:] + chain[:-1], tape, [chain[-1].outputs[0]], [y])
            key = "LayerNormalization" + (f" ({', '.join(parts)})" if parts else "")
            self.hit(key)
        if self.matches and opset < 17:
            model.opset_imports.setdefault(DOMAIN, 1)
        return ir.passes.PassResult(model, bool(self.matches))


def _match_layernorm(sub: ir.Node, opset: int):
    """The LayerNorm chain from its ``Sub(x, ReduceMean(x))`` as (nodes in order, x, gamma,
    beta, eps, variant notes), or None where it is not exactly that chain."""
    found = _centred(sub, opset)
    if found is None or only_user(found[1].outputs[0]) is not sub:
        return None
    x, mean = found
    size = x.shape[-1]
    d = sub.outputs[0]
    if d.is_graph_output():
        return None
    users = {id(u.node): u.node for u in d.uses()}
    square = next((u for u in users.values() if _is_square(u, d)), None)
    if square is None or len(users) != 2:
        return None
    var = only_user(square.outputs[0])
    if not is_op(var, "ReduceMean") or not _last_axis(var, x):
        return None
    chain = [mean, sub, square, var]
    add = only_user(var.outputs[0])
    eps = _other_const(add, "Add", var.outputs[0], x)
    if eps is None or not eps >= 0:
        return None
    sqrt = only_user(add.outputs[0])
    if not is_op(sqrt, "Sqrt"):
        return None
    chain += [add, sqrt]
    parts, gamma, beta = [], None, None
    div = only_user(sqrt.outputs[0])
    if is_op(div, "Div") and div.inputs[0] is d and div.inputs[1] is sqrt.outputs[0]:
        chain.append(div)
    elif is_op(div, "Reciprocal"):
        chain.append(div)
        r = div.outputs[0]
        scaled = only_user(r)  # d * (rsqrt * gamma): the form tf2onnx's own rewriter targets
        other = _other_input(scaled, "Mul", r)
        if other is not None and _is_vector(other, size):
            chain.append(scaled)
            r, gamma = scaled.outputs[0], other
        mul = only_user(r)
        if not is_op(mul, "Mul") or set(map(id, mul.inputs)) != {id(d), id(r)}:
            return None
        chain.append(mul)
        parts.append("reciprocal")
    else:
        return None
    if set(users) != {id(square), id(chain[-1])}:
        return None  # d read elsewhere
    nxt = only_user(chain[-1].outputs[0])
    other = _other_input(nxt, "Mul", chain[-1].outputs[0])
    if gamma is None and other is not None and _is_vector(other, size):
        chain.append(nxt)
        gamma = other
        nxt = only_user(nxt.outputs[0])
    other = _other_input(nxt, "Add", chain[-1].outputs[0])
    if other is not None and _is_vector(other, size):
        chain.append(nxt)
        beta = other
    parts += [f"no {name}" for name, v in (("gamma", gamma), ("beta", beta)) if v is None]
    return chain, x, gamma, beta, eps, parts


def _centred(sub: ir.Node, opset: int) -> tuple[ir.Value, ir.Node] | None:
    """(x, the ReduceMean node) where ``sub`` is ``Sub(x, ReduceMean(x))`` over the last axis
    of a float ``x`` whose last dimension is known; both matchers start here."""
    x, m = sub.inputs
    mean = m.producer() if m is not None else None
    if not is_op(mean, "ReduceMean") or mean.inputs[0] is not x or not _last_axis(mean, x):
        return None
    if x.dtype is None or not x.dtype.is_floating_point():
        return None
    if opset < 15 and x.dtype != ir.DataType.FLOAT:
        return None  # the function body below opset 15 has no CastLike for eps
    if not isinstance(x.shape[-1], int):
        return None  # gamma's size must be checked against it
    return x, mean


def _match_rearranged(sub: ir.Node, opset: int):
    """TF's ``tf.nn.batch_normalization`` arrangement of LayerNorm (what tf2onnx writes for
    Keras), from the ``Sub(x, mean)`` of its squared difference, as ``_match_layernorm``
    returns it: ``s = rsqrt(var + eps) [* gamma]; y = x * s + (beta - mean * s)``, exactly
    ``(x - mean) * s + beta``. The mean and ``s`` are each read twice, by the pattern only."""
    found = _centred(sub, opset)
    if found is None:
        return None
    x, mean = found
    size, m, d = x.shape[-1], mean.outputs[0], sub.outputs[0]
    readers = {id(u.node): u.node for u in d.uses()}  # Mul(d, d) reads d twice
    square = next(iter(readers.values())) if len(readers) == 1 else None
    if square is None or d.is_graph_output() or not _is_square(square, d):
        return None
    var = only_user(square.outputs[0])
    if not is_op(var, "ReduceMean") or not _last_axis(var, x):
        return None
    add = only_user(var.outputs[0])
    eps = _other_const(add, "Add", var.outputs[0], x)
    if eps is None or not eps >= 0:
        return None
    rsqrt = _rsqrt(add.outputs[0], x)
    if rsqrt is None:
        return None
    chain = [mean, sub, square, var, add, *rsqrt]
    s, gamma = chain[-1].outputs[0], None
    scale = only_user(s)  # s * gamma; without gamma s itself has two users
    other = _other_input(scale, "Mul", s)
    if other is not None and _is_vector(other, size):
        chain.append(scale)
        s, gamma = scale.outputs[0], other
    users = {id(u.node): u.node for u in s.uses()}
    if s.is_graph_output() or len(users) != 2 or m.is_graph_output():
        return None
    xs = next((u for u in users.values() if _other_input(u, "Mul", s) is x), None)
    ms = next((u for u in users.values() if u is not xs), None)
    if xs is None or ms is None:
        return None
    term = _mean_term(ms, m, s, x, size)
    if term is None:
        return None
    nodes, c, beta, combine = term
    if {id(u.node) for u in m.uses()} != {id(sub), id(nodes[0])} or len(list(m.uses())) != 2:
        return None  # the mean read elsewhere
    y = only_user(c)
    if y is None or only_user(xs.outputs[0]) is not y:
        return None
    if combine == "Add" and _other_input(y, "Add", c) is not xs.outputs[0]:
        return None
    if combine == "Sub" and not (is_op(y, "Sub") and list(y.inputs) == [xs.outputs[0], c]):
        return None
    chain += [xs, *nodes, y]
    parts = ["rearranged"]
    parts += [f"no {name}" for name, v in (("gamma", gamma), ("beta", beta)) if v is None]
    return chain, x, gamma, beta, eps, parts


def _rsqrt(value: ir.Value, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing ``1 / sqrt(value)``: ``Reciprocal(Sqrt)`` (tf2onnx's Rsqrt),
    ``Div(1, Sqrt)`` or ``Pow(value, -0.5)``."""
    node = only_user(value)
    if is_op(node, "Pow") and node.inputs[0] is value:
        return [node] if _near(_const(node.inputs[1], x), -0.5) else None
    if not is_op(node, "Sqrt"):
        return None
    inv = only_user(node.outputs[0])
    if is_op(inv, "Reciprocal"):
        return [node, inv]
    if is_op(inv, "Div") and inv.inputs[1] is node.outputs[0] and _const(inv.inputs[0], x) == 1:
        return [node, inv]
    return None


def _mean_term(ms: ir.Node, m: ir.Value, s: ir.Value, x: ir.Value, size: int):
    """The term of ``y`` that holds the mean, from the Mul that reads ``s``, as (its nodes in
    order, its value, beta or None, how ``y`` combines it with ``x * s``): ``beta - m * s``
    (tf.keras), ``(-m) * s [+ beta]`` (Keras 3), ``-(m * s)``, ``0 - m * s`` (Add), or
    ``m * s`` itself (Sub: ``y = x * s - m * s``)."""
    other = _other_input(ms, "Mul", s)
    if other is None:
        return None
    if other is m:
        nxt = only_user(ms.outputs[0])
        if is_op(nxt, "Neg"):
            return [ms, nxt], nxt.outputs[0], None, "Add"
        if is_op(nxt, "Sub") and nxt.inputs[1] is ms.outputs[0]:
            beta = nxt.inputs[0]
            if _is_vector(beta, size):
                return [ms, nxt], nxt.outputs[0], beta, "Add"
            if _const(beta, x) == 0:
                return [ms, nxt], nxt.outputs[0], None, "Add"
        return [ms], ms.outputs[0], None, "Sub"
    neg = sole_producer(other)
    if not is_op(neg, "Neg") or neg.inputs[0] is not m:
        return None
    nxt = only_user(ms.outputs[0])
    beta = _other_input(nxt, "Add", ms.outputs[0])
    if beta is not None and _is_vector(beta, size):
        return [neg, ms, nxt], nxt.outputs[0], beta, "Add"
    return [neg, ms], ms.outputs[0], None, "Add"


def _is_square(node: ir.Node, d: ir.Value) -> bool:
    """``Pow(d, 2)`` or ``Mul(d, d)``."""
    if is_op(node, "Mul"):
        return node.inputs[0] is d and node.inputs[1] is d
    return is_op(node, "Pow") and node.inputs[0] is d and _const(node.inputs[1], d) == 2.0


def _last_axis(reduce: ir.Node, x: ir.Value) -> bool:
    """``reduce`` is ReduceMean over the last axis of ``x`` only, keeping dims."""
    rank = None if x.shape is None else len(x.shape)
    if rank is None or rank < 1 or attr(reduce, "keepdims", 1) != 1:
        return False
    axes = attr(reduce, "axes")
    if len(reduce.inputs) > 1 and reduce.inputs[1] is not None:  # opset 18: axes as an input
        tensor = ir.convenience.get_const_tensor(reduce.inputs[1])
        axes = None if tensor is None else tensor.numpy().reshape(-1).tolist()
    return axes is not None and [int(a) % rank for a in axes] == [rank - 1]


def _is_vector(value: ir.Value, size: int) -> bool:
    """A 1-D constant (initializer or Constant node) of ``size`` elements."""
    if not (is_param(value) or is_op(value.producer(), "Constant")):
        return False
    shape = value.shape
    if shape is None:  # shape inference may have given up on the graph
        tensor = ir.convenience.get_const_tensor(value)
        shape = None if tensor is None else tensor.shape
    return shape is not None and len(shape) == 1 and shape[0] == size


# -- GELU -----------------------------------------------------------------------------------


class FuseGelu(CountingPass):
    """``x * 0.5 * (1 + Erf(x / sqrt 2))`` and its tanh approximation -> ``Gelu``."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        microsoft = False
        for node in list(model.graph):
            if not (is_op(node, "Erf") or is_op(node, "Tanh")):
                continue
            match = _match_gelu(node)
            if match is None:
                continue
            chain, x, form = match
            if opset < 20 and x.dtype != ir.DataType.FLOAT:
                continue  # onnxruntime's contrib kernels on CPU are float32 only
            tape = ir.tape.Tape()
            if opset >= 20:
                y = tape.op("Gelu", [x], attributes={"approximate": form})
            else:
                y = tape.op("Gelu" if form == "none" else "FastGelu", [x], domain=MS)
                microsoft = True
            replace(model.graph, chain[-1:] + chain[:-1], tape, [chain[-1].outputs[0]], [y])
            key = f"Gelu ({'erf' if form == 'none' else 'tanh'})"
            self.hit(key)
        if microsoft:
            model.opset_imports.setdefault(MS, 1)
        return ir.passes.PassResult(model, bool(self.matches))


def _match_gelu(core: ir.Node):
    """The GELU chain around its Erf or Tanh as (nodes in order, x, "none" | "tanh")."""
    arg = sole_producer(core.inputs[0])
    if core.op_type == "Erf":
        found = _erf_argument(arg)
        form = "none"
    else:
        found = _tanh_argument(arg)
        form = "tanh"
    if found is None:
        return None
    x, inner = found
    if x.dtype is None or not x.dtype.is_floating_point() or x.shape is None:
        return None
    plus = only_user(core.outputs[0])
    one = _other_const(plus, "Add", core.outputs[0], x)
    if one is None or not _near(one, 1.0):
        return None
    outer = _times_half_x(plus.outputs[0], x)
    if outer is None:
        return None
    return inner + [core, plus] + outer, x, form


def _erf_argument(node: ir.Node | None):
    """``x / sqrt(2)`` or ``x * (1 / sqrt(2))`` -> (x, [node])."""
    if is_op(node, "Div"):
        x = node.inputs[0]
        if _near(_const(node.inputs[1], x), math.sqrt(2.0)):
            return x, [node]
    elif is_op(node, "Mul"):
        for x, c in (node.inputs, node.inputs[::-1]):
            if _near(_const(c, x), math.sqrt(0.5)):
                return x, [node]
    return None


def _tanh_argument(node: ir.Node | None):
    """``sqrt(2 / pi) * (x + 0.044715 * x ** 3)`` (operands in either order) -> (x, nodes)."""
    if not is_op(node, "Mul"):
        return None
    for s, c in (node.inputs, node.inputs[::-1]):
        add = sole_producer(s)
        if not is_op(add, "Add") or not _near(_const(c, add.inputs[0]), math.sqrt(2.0 / math.pi)):
            continue
        for x, q in (add.inputs, add.inputs[::-1]):
            scaled = sole_producer(q)
            if not is_op(scaled, "Mul"):
                continue
            for cube_value, k in (scaled.inputs, scaled.inputs[::-1]):
                cube = _cube(cube_value, x)
                if cube is not None and _near(_const(k, x), 0.044715):
                    return x, cube + [scaled, add, node]
    return None


def _cube(value: ir.Value, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing ``x ** 3`` as ``Pow(x, 3)``, ``Mul(x * x, x)`` or ``Mul(x, x * x)``."""
    node = sole_producer(value)
    if is_op(node, "Pow"):
        return [node] if node.inputs[0] is x and _const(node.inputs[1], x) == 3.0 else None
    if not is_op(node, "Mul"):
        return None
    for lin, sq in (node.inputs, node.inputs[::-1]):
        square = sole_producer(sq)
        if lin is x and is_op(square, "Mul") and square.inputs[0] is x and square.inputs[1] is x:
            return [square, node]
    return None


def _times_half_x(a: ir.Value, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing ``x * 0.5 * a`` from ``a`` in any association, ending with the one
    whose output is the product: ``(x * a) * 0.5``, ``(x * 0.5) * a``, ``(0.5 * a) * x``."""
    mul = only_user(a)
    if not is_op(mul, "Mul"):
        return None
    other = mul.inputs[1] if mul.inputs[0] is a else mul.inputs[0]
    if other is x:  # (x * a) * 0.5
        last = only_user(mul.outputs[0])
        half = _other_const(last, "Mul", mul.outputs[0], x)
        if half is not None and _near(half, 0.5):
            return [mul, last]
        return None
    if _near(_const(other, x), 0.5):  # (0.5 * a) * x
        last = only_user(mul.outputs[0])
        if _other_input(last, "Mul", mul.outputs[0]) is x:
            return [mul, last]
        return None
    halved = sole_producer(other)  # (x * 0.5) * a
    return [halved, mul] if _near(_other_const(halved, "Mul", x, x), 0.5) else None


# -- shared helpers -------------------------------------------------------------------------


def _other_input(node: ir.Node | None, op_type: str, value: ir.Value) -> ir.Value | None:
    """The other operand of a binary ``op_type`` node that reads ``value`` (either side)."""
    if not is_op(node, op_type) or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def _other_const(node: ir.Node | None, op_type: str, value: ir.Value, x: ir.Value):
    """The scalar constant that a binary ``op_type`` node combines ``value`` with."""
    other = _other_input(node, op_type, value)
    return None if other is None else _const(other, x)


def _const(value: ir.Value | None, x: ir.Value) -> float | None:
    """The value of a one-element constant that does not raise ``x``'s rank, else None."""
    tensor = const_tensor(value)
    if tensor is None or tensor.size != 1 or x.shape is None:
        return None
    if len(tensor.shape) > len(x.shape):
        return None
    return float(tensor.numpy().reshape(-1)[0])


def _near(value: float | None, exact: float) -> bool:
    return value is not None and abs(value - exact) <= _RTOL * abs(exact)


def layernorm_function(opset: int) -> ir.Function:
    """``ai.onnx2jax::LayerNormalization`` in standard ONNX ops (for ``onnx2jax optimize``'s
    files below opset 17): the decomposition, over ``x`` flattened at ``axis`` to 2-D."""
    x, scale, b = (ir.Value(name=n) for n in ("x", "scale", "b"))
    nodes: list[ir.Node] = []

    def op(op_type, inputs, attributes=()):
        nodes.append(ir.Node("", op_type, inputs, list(attributes)))
        return nodes[-1].outputs[0]

    def mean(v):
        if opset >= 18:  # axes became an input
            axes = op("Constant", [], [ir.AttrTensor("value", ir.tensor(np.array([1])))])
            return op("ReduceMean", [v, axes])
        return op("ReduceMean", [v], [ir.AttrInt64s("axes", [1])])

    flat = op("Flatten", [x], [ir.RefAttr("axis", "axis", ir.AttributeType.INT)])
    d = op("Sub", [flat, mean(flat)])
    var = mean(op("Mul", [d, d]))
    eps = op("Constant", [], [ir.RefAttr("value_float", "epsilon", ir.AttributeType.FLOAT)])
    if opset >= 15:  # below, the pass fuses float32 models only
        eps = op("CastLike", [eps, var])
    n = op("Div", [d, op("Sqrt", [op("Add", [var, eps])])])
    n = op("Reshape", [n, op("Shape", [x])])
    y = op("Add", [op("Mul", [n, scale]), b])
    y.name = "y"
    graph = ir.Graph([x, scale, b], [y], nodes=nodes, opset_imports={"": opset})
    attributes = [
        ir.Attr("axis", ir.AttributeType.INT, None),
        ir.Attr("epsilon", ir.AttributeType.FLOAT, None),
    ]
    return ir.Function(DOMAIN, "LayerNormalization", graph=graph, attributes=attributes)
