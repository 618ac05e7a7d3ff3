"""Matrix products and linear algebra: MatMul, Gemm, Einsum, Det (https://onnx.ai/onnx/operators/)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._kernels import CONV_PANEL, GEMM_MAX_ROWS
from .._kernels import conv as conv_kernels
from .._kernels import matmul as kernels
from .._registry import register
from ._common import xp
from ._conv_lowering import acc_dtype


@register("MatMul")
def matmul(a, b):
    """https://onnx.ai/onnx/operators/onnx__MatMul.html (numpy semantics, incl. 1-D operands)."""
    m = xp(a, b)
    if m is np:
        return np.matmul(a, b)
    # The result keeps the operand dtype (float16 stays float16); half-precision products
    # accumulate in float32 (as onnxruntime does, and as load(dtype=...) promises).
    dtype = jnp.result_type(a, b)
    acc = acc_dtype(dtype)
    if acc != dtype:
        return jnp.matmul(a, b, preferred_element_type=acc).astype(dtype)
    return jnp.matmul(a, b)


def _gemm(a, b, c, alpha, beta, trans_a, trans_b):
    # One dot_general contracting the right axes: no explicit transposes in the graph.
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    dtype = jnp.result_type(a, b)
    acc = acc_dtype(dtype)
    if acc != dtype:  # half-precision products accumulate in float32
        y = lax.dot_general(a, b, dims, preferred_element_type=acc).astype(dtype)
    else:
        y = lax.dot_general(a, b, dims)
    use_c = c is not None and beta != 0  # beta == 0 ignores C entirely, as the reference does
    if jnp.issubdtype(y.dtype, jnp.integer) and (alpha != 1 or (use_c and beta != 1)):
        # Float alpha/beta on integers: scale in float, truncate once (as the reference).
        acc = y.astype(jnp.float32) * alpha
        if use_c:
            acc = acc + c.astype(jnp.float32) * beta
        return acc.astype(y.dtype)
    if alpha != 1:
        y = y * jnp.asarray(alpha, y.dtype)
    if use_c:
        y = y + (c if beta == 1 else c * jnp.asarray(beta, c.dtype))
    return y


@register("MatMulTransB", domain="ai.onnx2jax")
def matmul_trans_b(a, bt):
    """``MatMul(a, Transpose(bt))`` for a 2-D weight ``bt`` in [N, K] layout (passes/matmul.py):
    one dot contracting both last axes, the layout XLA's CPU dots run fastest."""
    dims = (((a.ndim - 1,), (1,)), ((), ()))
    dtype = jnp.result_type(a, bt)
    if acc_dtype(dtype) != dtype:  # half-precision products accumulate in float32
        return lax.dot_general(a, bt, dims, preferred_element_type=acc_dtype(dtype)).astype(dtype)
    return lax.dot_general(a, bt, dims)


@register("PackedMatMul", domain="ai.onnx2jax")
def packed_matmul(a, w, packed):
    """``a @ w`` for a weight ``w`` [K, N] that passes/matmul.py also packed, once, as panels
    [P, K, 8] (``pack_few_rows``: up to MAX_ROWS rows run onnx2jax's few-row kernel) or
    [P, K, 16] (``pack_many_rows``: up to GEMM_MAX_ROWS rows run the convolution kernel's GEMM);
    more rows, or no kernel here, run XLA's dot on ``w``."""
    return _packed_product(a, w, packed, trans_b=False)


@register("PackedMatMulTransB", domain="ai.onnx2jax")
def packed_matmul_trans_b(a, wt, packed):
    """:func:`packed_matmul` for a weight in [N, K] layout (``Gemm(transB=1)``)."""
    return _packed_product(a, wt, packed, trans_b=True)


def _packed_product(a, w, packed, trans_b):
    n = w.shape[0] if trans_b else w.shape[1]
    if packed.shape[-1] == CONV_PANEL:  # pack_many_rows: the convolution kernel's GEMM
        lead = a.shape[:-1]
        if all(isinstance(d, int) for d in lead) and math.prod(lead) <= GEMM_MAX_ROWS:
            rows = a.reshape(1, 1, math.prod(lead), a.shape[-1])  # a 1x1 convolution's image
            one = conv_kernels.Geometry((1, 1), n, (1, 1), ((0, 0), (0, 0)), (1, 1))
            if conv_kernels.takes(rows, packed, one):
                return conv_kernels.packed_conv(rows, packed, None, one).reshape(*lead, n)
    elif kernels.takes(a.shape[:-1], a.dtype, packed.dtype):
        return kernels.packed_matmul(a, packed, n)
    return matmul_trans_b(a, w) if trans_b else matmul(a, w)


@register("Gemm", since=1)
def gemm_1(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):
    """https://onnx.ai/onnx/operators/onnx__Gemm.html; ``broadcast`` (opsets 1-6) only allowed
    C to broadcast, which a valid model's shapes already say."""
    return _gemm(a, b, c, alpha, beta, transA, transB)


@register("Gemm", since=7)
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return _gemm(a, b, c, alpha, beta, transA, transB)


@register("Einsum", since=12)
def einsum(*inputs, equation):
    """https://onnx.ai/onnx/operators/onnx__Einsum.html"""
    eq = equation.replace(" ", "")
    dtype = jnp.result_type(*inputs)
    if jnp.issubdtype(dtype, jnp.floating) and acc_dtype(dtype) != dtype:
        # Accumulate bfloat16/float16 in float32 (as the reference does), then round once.
        return jnp.einsum(eq, *inputs, preferred_element_type=jnp.float32).astype(dtype)
    return jnp.einsum(eq, *inputs)


@register("Det", since=11)
def det(x):
    """https://onnx.ai/onnx/operators/onnx__Det.html"""
    if x.dtype.itemsize < 4:  # no half-precision LU: compute in float32
        return jnp.linalg.det(x.astype(jnp.float32)).astype(x.dtype)
    return jnp.linalg.det(x)
