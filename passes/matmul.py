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

from onnx2jax._kernels import CONV_PANEL, GEMM_MAX_ROWS, MAX_ROWS, PANEL  # no JAX here

from ._util import (
    DOMAIN,
    CountingPass,
    attr,
    is_op,
    is_param,
    new_initializer,
    param_derived,
    rank,
    replace,
)


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


class _PackProducts(CountingPass):
    """``MatMul(a, W)`` / ``Gemm(a, W)`` with a float32 weight whose rows ``takes_rows`` ->
    ``PackedMatMul(a, W, packed)``, ``packed`` the weight in panels [P, K, ``panel``] computed
    once, in prep (standard ONNX: Pad, Reshape, Transpose). The op reads the panel width to pick
    the kernel (ops/linalg.py) and keeps ``W`` for the rows no kernel takes."""

    panel: int

    def takes_rows(self, a: ir.Value) -> bool:
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        if model.opset_imports.get("", 0) < 13:
            return ir.passes.PassResult(model, False)
        graph = model.graph
        taken: set[str] | None = None  # value names in use, gathered at the first match
        for node in list(graph):
            match = _product(node)
            if match is None or not self.takes_rows(match[0]):
                continue
            if taken is None:
                taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs}
            a, w, trans_b, bias, key = match
            tape = ir.tape.Tape()
            k, n = (int(d) for d in w.shape.dims)
            source = w
            if trans_b:  # Gemm's [N, K] weight: transposed in prep, before the packing
                n, k = k, n
                source = tape.op("Transpose", [w], attributes={"perm": [1, 0]})
            panels = -(-n // self.panel)
            # Shapes and pads as initializers, not Constant nodes: prep (onnx2jax/_prepare.py)
            # runs only param-only steps, and reads initializers as constants.
            prefix = node.name or key
            if panels * self.panel != n:
                pad = [0, 0, 0, panels * self.panel - n]
                pads = new_initializer(graph, taken, f"{prefix}_pads", pad)
                source = tape.op("Pad", [source, pads])
            shape = new_initializer(graph, taken, f"{prefix}_panels", [k, panels, self.panel])
            source = tape.op("Reshape", [source, shape])
            packed = tape.op("Transpose", [source], attributes={"perm": [1, 0, 2]})
            op = "PackedMatMulTransB" if trans_b else "PackedMatMul"
            y = tape.op(op, [a, w, packed], domain=DOMAIN)
            if bias is not None:
                y = tape.op("Add", [y, bias])
            replace(graph, [node], tape, node.outputs, [y])
            self.hit(key)
        if self.matches:
            model.opset_imports.setdefault(DOMAIN, 1)
        return ir.passes.PassResult(model, bool(self.matches))


class PackFewRows(_PackProducts):
    """``MatMul(a, W)`` / ``Gemm(a, W)`` that may have few rows ->
    ``PackedMatMul(a, W, pack(W))``, the weight also packed once, in prep.

    With a handful of rows (a decode step, a classifier head) a product is bound by reading its
    weight, and XLA's CPU dots re-pack the weight on every call; onnx2jax's kernel
    (onnx2jax/_kernels) reads panels [P, K, 8] packed once and runs 1.4-1.9x faster at 8 rows
    (benchmarks/NOTES.md, entry 16). Rows are only known when the program is traced, so the op
    gets both forms: at most ``MAX_ROWS`` rows take the kernel on the packed weight, more rows
    XLA's dot on ``W`` as it was. The packing is standard ONNX (Pad, Reshape, Transpose) and
    costs the weight's size in memory, so the pass skips products whose shapes say "many
    rows" (``_few_rows``). Only float32 weights. ``load`` and ``onnx2jax optimize`` run this
    pass only where the kernel is built and JAX's backend is the CPU.
    """

    panel = PANEL

    def takes_rows(self, a: ir.Value) -> bool:
        return _few_rows(a)


class PackManyRows(_PackProducts):
    """The products ``pack_few_rows`` leaves (``batch x sequence`` rows) ->
    ``PackedMatMul(a, W, pack(W))`` on 16-column panels: up to ``GEMM_MAX_ROWS`` rows run the
    convolution kernel's GEMM as a 1x1 convolution (packed_conv.cc), more rows XLA's dot on
    ``W``. XLA's CPU dots re-pack a weight that arrives as an argument on every call; at 64-256
    rows (BERT and GPT-2 at batch 1, ViT's 197 patches) that and their blocking leave them
    1.05-1.6x slower than the kernel on a weight packed once (benchmarks/NOTES.md, entry 23).
    Products whose rows are static and above ``GEMM_MAX_ROWS`` are left alone. The packed copy
    costs the weight's size in memory."""

    panel = CONV_PANEL

    def takes_rows(self, a: ir.Value) -> bool:
        factors = _row_factors(a)
        return factors is not None and not _few_rows(a) and factors[0] <= GEMM_MAX_ROWS


def _product(node: ir.Node):
    """(a, W, W is [N, K], bias or None, pattern) for a product on a float32 2-D weight, else
    None."""
    if is_op(node, "MatMul"):
        (a, w), bias, trans_b, key = node.inputs, None, False, "MatMul"
    elif is_op(node, "Gemm") and len(node.inputs) >= 2:
        a, w = node.inputs[:2]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        trans_b, key = bool(attr(node, "transB", 0)), "Gemm"
        if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0:
            return None
        if bias is not None and attr(node, "beta", 1.0) != 1.0:
            return None
    else:
        return None
    if a is None or w is None or not param_derived(w) or w.dtype != ir.DataType.FLOAT:
        return None
    if w.shape is None or rank(w) != 2 or not w.shape.is_static():
        return None
    return a, w, trans_b, bias, key


def _few_rows(a: ir.Value) -> bool:
    """Whether ``a`` [..., K] may have few rows: its leading dims hold at most one symbolic
    factor (a batch, or a dim shape inference lost) and at most MAX_ROWS rows otherwise.
    ``batch * sequence``, two unknown dims or a static 197 x batch are many rows."""
    factors = _row_factors(a)
    return factors is not None and factors[1] <= 1 and factors[0] <= MAX_ROWS


def _row_factors(a: ir.Value) -> tuple[int, int] | None:
    """The rows of ``a`` [..., K] as (product of the static factors, count of symbolic ones);
    None for 1-D operands (numpy's vector rules) and unknown ranks."""
    if a.shape is None or len(a.shape) < 2:
        return None
    static, symbolic = 1, 0
    for d in list(a.shape.dims)[:-1]:
        if isinstance(d, int):
            static *= d
            continue
        for factor in str(d.value or "?").split("*"):  # onnx writes products as "a*b"
            if factor.strip().isdigit():
                static *= int(factor)
            else:
                symbolic += 1
    return static, symbolic
