"""Ops whose output shape depends on input values (Unique, NonMaxSuppression), run at trace time.

One XLA program cannot have a data-dependent output shape, so their inputs are in
STATIC_INPUTS: constants fold, and graph inputs feeding them are specialised on their value
(one compile per distinct value, as for a Reshape shape). These ops then run in numpy; a value
that is still traced (e.g. inside a loop body) raises StaticValueError naming the node.
"""

from __future__ import annotations

import numpy as np

from .._errors import StaticValueError
from .._registry import register
from ._common import axis as norm_axis


def _need_static(ctx, name: str, value, why: str) -> None:
    if value is not None and not isinstance(value, np.ndarray):
        raise StaticValueError(
            f"{ctx.node.describe()}: input {name!r} depends on runtime data, but {why}, so "
            "onnx2jax needs it known at trace time (data-dependent shapes cannot live in one XLA "
            "program). Make it a constant/initializer, or compute the op outside the model."
        )


@register("Unique", since=11)
def unique(x, *, axis=None, sorted=1, ctx):  # noqa: A002  (the spec's name)
    """https://onnx.ai/onnx/operators/onnx__Unique.html -> (Y, indices, inverse_indices, counts).

    ``sorted=0`` orders the unique values by first occurrence.
    """
    _need_static(ctx, "X", x, "Unique's output shape depends on its values")
    x = np.asarray(x)
    a = None if axis is None else norm_axis(axis, x.ndim)
    y, first, inverse, counts = np.unique(
        x if a is not None else x.reshape(-1),
        return_index=True,
        return_inverse=True,
        return_counts=True,
        axis=a,
    )
    if not sorted:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        y = np.take(y, order, axis=a or 0)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    i64 = np.int64
    return y, first.astype(i64), inverse.reshape(-1).astype(i64), counts.astype(i64)


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """[..., 4] boxes as (y1, x1, y2, x2) with y1 <= y2 and x1 <= x2."""
    if center_point_box:
        xc, yc, w, h = np.moveaxis(boxes, -1, 0)
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
    y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
    return np.stack(
        [np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=-1
    )


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``others``; 0 where either box or the overlap is empty."""
    ih = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    iw = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.where((ih > 0) & (iw > 0), ih * iw, 0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    ok = (inter > 0) & (area > 0) & (areas > 0) & (union > 0)
    return np.where(ok, inter / np.where(ok, union, 1), 0)


@register("NonMaxSuppression", since=10)
def non_max_suppression(
    boxes,
    scores,
    max_output_boxes_per_class=None,
    iou_threshold=None,
    score_threshold=None,
    *,
    center_point_box=0,
    ctx,
):
    """https://onnx.ai/onnx/operators/onnx__NonMaxSuppression.html -> [selected, 3] int64.

    Per batch and class: boxes scoring above score_threshold, best first (the lower index
    among equal scores), greedily kept unless their IoU with a kept box exceeds iou_threshold,
    at most max_output_boxes_per_class of them (0 or absent: none).
    """
    for name, v in (
        ("boxes", boxes),
        ("scores", scores),
        ("max_output_boxes_per_class", max_output_boxes_per_class),
        ("iou_threshold", iou_threshold),
        ("score_threshold", score_threshold),
    ):
        _need_static(ctx, name, v, "NonMaxSuppression's output shape depends on input values")
    limit = (
        0
        if max_output_boxes_per_class is None or np.size(max_output_boxes_per_class) == 0
        else max(int(np.asarray(max_output_boxes_per_class).reshape(-1)[0]), 0)
    )
    iou_t = (
        0.0
        if iou_threshold is None or np.size(iou_threshold) == 0
        else float(np.asarray(iou_threshold).reshape(-1)[0])
    )
    has_score_t = score_threshold is not None and np.size(score_threshold) > 0
    score_t = float(np.asarray(score_threshold).reshape(-1)[0]) if has_score_t else 0.0
    corners = _corners(np.asarray(boxes, np.float64), center_point_box)
    scores = np.asarray(scores)
    selected = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            candidates = np.flatnonzero(s > score_t) if has_score_t else np.arange(len(s))
            # best score first; a stable sort keeps the lower index first among ties
            candidates = candidates[np.argsort(-s[candidates].astype(np.float64), kind="stable")]
            kept: list[int] = []
            for i in candidates:
                if len(kept) >= limit:
                    break
                if kept and (_iou(corners[b, i], corners[b, kept]) > iou_t).any():
                    continue
                kept.append(int(i))
            selected += [(b, c, i) for i in kept]
    return np.array(selected, np.int64).reshape(-1, 3)
