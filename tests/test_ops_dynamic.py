"""Unique and NonMaxSuppression (ops/dynamic.py): value-specialised, against the references."""

import jax
import numpy as np
import pytest
from op_check import check_node, node_model

import onnx2jax
from onnx2jax import Onnx2JaxError

rng = np.random.default_rng(0)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("sorted_", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_unique(axis, sorted_, dtype):
    x = rng.integers(0, 3, (4, 3, 2)).astype(dtype)
    x[2] = x[0]  # repeated slices along every axis choice
    x[:, 2] = x[:, 1]
    attrs = {"sorted": sorted_} if axis is None else {"sorted": sorted_, "axis": axis}
    # onnx's reference gathers unsorted results along axis 0 whatever the axis
    reference = "onnx" if sorted_ else "onnxruntime"
    check_node("Unique", {"x": x}, attrs, n_outputs=4, opset=11, reference=reference)
    check_node(
        "Unique", {"x": x}, attrs, n_outputs=4, opset=11, constants=["x"], reference=reference
    )


def test_unique_values_only_and_spec_example():
    x = np.array([2, 1, 1, 3, 4, 3], np.int64)
    out = check_node("Unique", {"x": x}, {"sorted": 0}, n_outputs=4, opset=11, x64=True)
    np.testing.assert_array_equal(out[0], [2, 1, 3, 4])
    np.testing.assert_array_equal(out[1], [0, 1, 3, 4])
    np.testing.assert_array_equal(out[2], [0, 1, 1, 2, 3, 2])
    np.testing.assert_array_equal(out[3], [1, 2, 2, 1])
    check_node("Unique", {"x": rng.standard_normal(7).astype(np.float32)}, opset=11)


def _boxes(b, n, center=False):
    xy = rng.uniform(0, 10, (b, n, 2))
    wh = rng.uniform(1, 4, (b, n, 2))
    if center:
        return np.concatenate([xy, wh], -1).astype(np.float32)
    corners = np.concatenate([xy, xy + wh], -1)
    flip = rng.random((b, n)) < 0.3  # some boxes give their corners the other way round
    corners[flip] = corners[flip][:, [2, 3, 0, 1]]
    return corners.astype(np.float32)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("limit", [0, 2, 100])
@pytest.mark.parametrize("thresholds", [(0.3, None), (0.5, 0.4), (0.0, 0.1)])
def test_non_max_suppression(center, limit, thresholds):
    boxes = _boxes(2, 12, center)
    scores = np.round(rng.uniform(0, 1, (2, 3, 12)), 1).astype(np.float32)  # ties
    iou, score = thresholds
    inputs = {
        "boxes": boxes,
        "scores": scores,
        "limit": np.array([limit], np.int64),
        "iou": np.array([iou], np.float32),
        "score": None if score is None else np.array([score], np.float32),
    }
    check_node(
        "NonMaxSuppression", inputs, {"center_point_box": center}, opset=11, reference="onnxruntime"
    )
    check_node(
        "NonMaxSuppression", inputs, {"center_point_box": center}, opset=11, constants=list(inputs)
    )


def test_non_max_suppression_optional_inputs_absent():
    inputs = {"boxes": _boxes(1, 5), "scores": rng.uniform(0, 1, (1, 1, 5)).astype(np.float32)}
    out = check_node("NonMaxSuppression", inputs, opset=10, reference="onnxruntime")[0]
    assert out.shape == (0, 3)  # max_output_boxes_per_class absent: select nothing


def test_traced_input_is_refused():
    x = np.array([1.0, 2.0, 1.0], np.float32)
    m = onnx2jax.load(node_model("Unique", {"x": x}, opset=11))
    with pytest.raises(Onnx2JaxError):
        jax.jit(m.apply)(m.params, x)
