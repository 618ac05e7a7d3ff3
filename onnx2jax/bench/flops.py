"""FLOP counts: 2 x multiply-adds of the Conv, ConvTranspose, MatMul and Gemm nodes (and their
integer forms), engine-independent, from traced shapes or ONNX shape inference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# op -> the input holding the weights (convolutions) or the left operand (matmuls).
_CONV_W = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL_A = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}
COUNTED_OPS = (*_CONV_W, *_MATMUL_A, "Gemm", "ConvTranspose")
# onnx2jax's own ops that graph passes put in place of counted ONNX ops, by domain: the traced
# count sees the graph after the passes. NhwcConv: the layout pass's Conv (x NHWC, w HWIO);
# MatMulTransB: the matmul_weights pass's MatMul (weight [N, K]); PackedMatMul(TransB): the
# pack_few_rows pass's MatMul and Gemm; PackedNhwcConv: the pack_convs pass's NhwcConv (w packed
# [P, KH * KW * C, 16]), with a residual Add folded in (PackedNhwcConvAdd).
_PASS_MATMULS = ("MatMulTransB", "PackedMatMul", "PackedMatMulTransB")
PASS_OPS = {"ai.onnx2jax": ("NhwcConv", "PackedNhwcConv", "PackedNhwcConvAdd", *_PASS_MATMULS)}


def _counted(domain: str, op: str) -> bool:
    return op in COUNTED_OPS if domain in ("", "ai.onnx") else op in PASS_OPS.get(domain, ())


def node_flops(
    op: str,
    ins: Sequence[Sequence[int] | None],
    outs: Sequence[Sequence[int]],
    trans_a: bool = False,
) -> int:
    """2 x multiply-adds of one Conv/ConvTranspose/MatMul/Gemm (or integer form, or NhwcConv)
    node."""
    if op in _CONV_W:  # out (N, M, *spatial) x reduction (C/group * kernel)
        return 2 * int(np.prod(outs[0])) * int(np.prod(ins[_CONV_W[op]][1:]))
    if op == "NhwcConv":  # out (N, *spatial, M) x reduction (kernel * C/group): w is HWIO
        return 2 * int(np.prod(outs[0])) * int(np.prod(ins[1][:-1]))
    if op in (
        "PackedNhwcConv",
        "PackedNhwcConvAdd",
    ):  # out (N, *spatial, M) x reduction (kernel * C): w [P, K, 16]
        return 2 * int(np.prod(outs[0])) * int(ins[1][1])
    if op == "ConvTranspose":  # every input pixel scatters (M/group * kernel) products
        return 2 * int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))
    if op in _MATMUL_A or op in _PASS_MATMULS:
        return 2 * int(np.prod(outs[0])) * int(ins[_MATMUL_A.get(op, 0)][-1])
    if op == "Gemm":
        a = ins[0]
        return 2 * int(np.prod(outs[0])) * int(a[0] if trans_a else a[1])
    raise KeyError(op)


def onnx_flops(path: str, shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """2 x multiply-adds of the Conv, ConvTranspose, MatMul and Gemm nodes (and their integer
    forms: ConvInteger, QLinearConv, MatMulInteger, QLinearMatMul) of the main graph at the given
    input shapes (ONNX shape inference with data propagation). ``complete`` is False when some
    such node's shapes could not be inferred (its FLOPs are then missing)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    for inp in model.graph.input:
        if inp.name in shapes:
            t = inp.type.tensor_type
            t.shape.Clear()
            for d in shapes[inp.name]:
                t.shape.dim.add().dim_value = int(d)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    known: dict[str, list[int | None]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            known[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim
            ]
    for t in g.initializer:
        known[t.name] = list(t.dims)

    def shape(name: str) -> list[int]:
        s = known.get(name)
        if s is None or any(d is None for d in s):
            raise KeyError(name)
        return s

    total, by_op, missing = 0, {}, []
    for node in g.node:
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in COUNTED_OPS:
            continue
        try:
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            f = node_flops(
                op, [shape(i) if i else None for i in node.input], [shape(node.output[0])], trans_a
            )
        except (KeyError, IndexError):
            missing.append(node.name or op)
            continue
        total += f
        by_op[op] = by_op.get(op, 0) + f
    return {"flops": total, "by_op": by_op, "complete": not missing, "missing_nodes": missing[:10]}


def traced_flops(model, dynamic: dict, static: dict) -> dict[str, Any]:
    """:func:`node_flops` over the main graph's nodes, with the shapes their inputs really have
    when onnx2jax traces the model (exact even where ONNX shape inference gives up). It counts
    the graph after onnx2jax's passes: ``PASS_OPS`` names the counted ops those put in.

    Wraps each counted step of the model's plan and traces it with ``jax.eval_shape``; this
    reads onnx2jax internals (``Program``, ``Plan``, ``Step``, ``OpImpl``), hence the caller's
    fallback.
    """
    import dataclasses

    import jax

    from onnx2jax import _tracer

    prog = model._program
    total, by_op = 0, {}

    def wrap(step):
        fn = step.impl.fn

        def counted(*args, **kwargs):
            nonlocal total
            out = fn(*args, **kwargs)
            first = out[0] if isinstance(out, tuple) else out
            f = node_flops(
                step.node.op_type,
                [getattr(a, "shape", None) for a in args],
                [first.shape],
                bool(kwargs.get("transA", 0)),
            )
            total += f
            by_op[step.node.op_type] = by_op.get(step.node.op_type, 0) + f
            return out

        return dataclasses.replace(step, impl=dataclasses.replace(step.impl, fn=counted))

    plan = dataclasses.replace(
        prog.plan,
        steps=[
            wrap(st) if _counted(st.node.domain, st.node.op_type) else st for st in prog.plan.steps
        ],
    )

    def run(params, ins):
        env = {**prog.constants, **params, **static, **ins}
        return _tracer.run(plan, env)

    with prog.context():
        jax.eval_shape(run, model.params, dynamic)
    return {"flops": total, "by_op": by_op}
