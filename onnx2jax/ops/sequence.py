"""Sequence and optional ops: Sequence*, SplitToSequence, ConcatFromSequence, SequenceMap, Optional*.

Representation at trace time (what ops receive, what the model returns):

- A **sequence** is a Python ``list`` of tensors (numpy or JAX). Its length is always known at
  trace time, so ``SequenceLength`` is a static value even when the elements are traced, and
  positions (``SequenceAt``/``SequenceInsert``/``SequenceErase``) must be static too (they are
  in ``STATIC_INPUTS``). A list is a pytree, so sequences pass through ``jax.jit``, ``lax.cond``
  and ``lax.scan`` carries (as long as the length does not change).
- An **optional** is the contained value itself (a tensor or a list) when it holds one, and
  ``None`` when empty. This is what onnx's backend test runner and ``ReferenceEvaluator`` use
  (``numpy_helper.to_optional`` gives ``None`` for an empty optional), ``None`` is also what the
  tracer passes for an absent optional input, and it is an empty pytree, so it needs no special
  case in jit. An optional that holds an empty sequence is ``[]``, distinct from ``None``.
"""

from __future__ import annotations

import numpy as np

from .._registry import register
from ._common import axis as norm_axis
from ._common import ints, xp


def _position(position, n: int, *, inserting: bool) -> int:
    """A static sequence position, checked against the spec's range and made non-negative."""
    p = ints(position)[0]
    hi = n if inserting else n - 1
    if not -n <= p <= hi:
        raise IndexError(f"sequence position {p} is out of range for a sequence of length {n}")
    return p + n if p < 0 else p


@register("SequenceEmpty", since=11)
def sequence_empty(*, dtype=1):
    """https://onnx.ai/onnx/operators/onnx__SequenceEmpty.html (the element type is not kept)."""
    return []


@register("SequenceConstruct", since=11)
def sequence_construct(*inputs):
    """https://onnx.ai/onnx/operators/onnx__SequenceConstruct.html"""
    return list(inputs)


@register("SequenceAt", since=11)
def sequence_at(seq, position):
    """https://onnx.ai/onnx/operators/onnx__SequenceAt.html"""
    return seq[_position(position, len(seq), inserting=False)]


@register("SequenceInsert", since=11)
def sequence_insert(seq, tensor, position=None):
    """https://onnx.ai/onnx/operators/onnx__SequenceInsert.html (default: append)."""
    p = len(seq) if position is None else _position(position, len(seq), inserting=True)
    return [*seq[:p], tensor, *seq[p:]]


@register("SequenceErase", since=11)
def sequence_erase(seq, position=None):
    """https://onnx.ai/onnx/operators/onnx__SequenceErase.html (default: the last element)."""
    p = len(seq) - 1 if position is None else _position(position, len(seq), inserting=False)
    if not seq:
        raise IndexError("SequenceErase on an empty sequence")
    return [*seq[:p], *seq[p + 1 :]]


@register("SequenceLength", since=11)
def sequence_length(seq):
    """https://onnx.ai/onnx/operators/onnx__SequenceLength.html (always static)."""
    return np.asarray(len(seq), np.int64)


@register("SplitToSequence", since=11)
def split_to_sequence(x, split=None, *, axis=0, keepdims=1):
    """https://onnx.ai/onnx/operators/onnx__SplitToSequence.html

    ``split`` is static: a scalar is a chunk length (the last chunk may be shorter), a 1-D
    tensor lists the lengths. Without it every element is one slice, squeezed unless keepdims.
    """
    a = norm_axis(axis, x.ndim)
    dim = x.shape[a]
    s = None if split is None else np.asarray(split)
    if s is None:
        sizes = [1] * dim
    elif s.ndim == 0:
        chunk = int(s)
        if chunk <= 0:
            raise ValueError(f"split must be positive, got {chunk}")
        sizes = [min(chunk, dim - i) for i in range(0, dim, chunk)]
    else:
        sizes = ints(s)
    if sum(sizes) != dim or any(n < 0 for n in sizes):
        raise ValueError(f"split sizes {sizes} do not add up to dimension {dim} (axis {axis})")
    bounds = np.cumsum([0, *sizes])
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        index = [slice(None)] * x.ndim
        index[a] = slice(int(lo), int(hi))
        out.append(x[tuple(index)])
    if split is None and not keepdims:
        out = [xp(p).squeeze(p, axis=a) for p in out]
    return out


@register("ConcatFromSequence", since=11)
def concat_from_sequence(seq, *, axis, new_axis=0):
    """https://onnx.ai/onnx/operators/onnx__ConcatFromSequence.html"""
    if not seq:
        raise ValueError("ConcatFromSequence of an empty sequence")
    m = xp(*seq)
    if new_axis:
        return m.stack(seq, axis=norm_axis(axis, seq[0].ndim + 1))
    return m.concatenate(seq, axis=norm_axis(axis, seq[0].ndim))


@register("SequenceMap", since=17)
def sequence_map(seq, *additional, body, ctx):
    """https://onnx.ai/onnx/operators/onnx__SequenceMap.html

    The body runs once per element at trace time (the length is static); its outputs may
    change shape from one element to the next.
    """
    n = len(seq)
    for extra in additional:
        if isinstance(extra, list) and len(extra) != n:
            raise ValueError(f"SequenceMap input sequences have lengths {n} and {len(extra)}")
    outs: list[list] = [[] for _ in body.outputs]
    for i in range(n):
        args = [seq[i], *(e[i] if isinstance(e, list) else e for e in additional)]
        for acc, value in zip(outs, ctx.run_subgraph(body, *args), strict=True):
            acc.append(value)
    return tuple(outs)


@register("Optional", since=15)
def optional(x=None, *, type=None):  # noqa: A002 (the spec's attribute name)
    """https://onnx.ai/onnx/operators/onnx__Optional.html: the value itself, or None when empty."""
    return x


@register("OptionalHasElement", since=15)
def optional_has_element(x=None):
    """https://onnx.ai/onnx/operators/onnx__OptionalHasElement.html (static: emptiness is
    decided at trace time). Since opset 18 a plain tensor or sequence input is accepted too."""
    return np.asarray(x is not None)


@register("OptionalGetElement", since=15)
def optional_get_element(x):
    """https://onnx.ai/onnx/operators/onnx__OptionalGetElement.html"""
    if x is None:
        raise ValueError("OptionalGetElement on an empty optional")
    return x
