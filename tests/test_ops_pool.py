"""Pooling ops against onnxruntime (and onnx's reference where onnxruntime lacks a case)."""

import numpy as np
import pytest
from op_check import check_node

from onnx2jax.ops import pool

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


POOL_CASES = {
    "k3s2p1": ((2, 3, 9, 10), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "k2s2": ((1, 2, 8, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "asym_pads": ((1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [2, 0, 1, 1]}),
    "ceil": ((1, 2, 8, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "ceil_pads": (
        (1, 2, 7, 7),
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    ),
    "ceil_reduce_by_one": (
        (1, 1, 4, 4),
        {"kernel_shape": [1, 1], "strides": [2, 2], "ceil_mode": 1},
    ),
    "dilations": ((1, 2, 9, 9), {"kernel_shape": [2, 3], "dilations": [2, 2], "strides": [1, 2]}),
    "same_upper": (
        (1, 2, 7, 8),
        {"kernel_shape": [3, 2], "strides": [2, 3], "auto_pad": "SAME_UPPER"},
    ),
    "same_lower": (
        (1, 2, 7, 8),
        {"kernel_shape": [3, 2], "strides": [2, 3], "auto_pad": "SAME_LOWER"},
    ),
    "valid": ((1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 3], "auto_pad": "VALID"}),
    "big_window": ((2, 3, 12, 12), {"kernel_shape": [6, 6], "strides": [6, 6]}),
    "big_window_pads": (
        (1, 2, 11, 10),
        {"kernel_shape": [5, 6], "strides": [2, 3], "pads": [2, 1, 2, 3]},
    ),
    "pool1d": ((2, 3, 11), {"kernel_shape": [3], "strides": [2], "pads": [1, 0]}),
    "pool3d": (
        (1, 2, 5, 6, 7),
        {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "pads": [0, 1, 1, 1, 0, 0]},
    ),
}


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_max_pool(case):
    shape, attrs = POOL_CASES[case]
    check_node("MaxPool", {"x": f32(*shape)}, attrs, reference="ort")


@pytest.mark.parametrize(
    "case",
    [
        "k3s2p1",
        "asym_pads",
        "ceil_pads",
        "dilations",
        "same_upper",
        "pool1d",
        "pool3d",
        "big_window_pads",
    ],
)
@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices(case, storage_order):
    shape, attrs = POOL_CASES[case]
    check_node(
        "MaxPool",
        {"x": f32(*shape)},
        {**attrs, "storage_order": storage_order},
        n_outputs=2,
        reference="ort",
        x64=True,
    )


def test_max_pool_indices_ties_take_first():
    x = np.zeros((1, 1, 4, 4), np.float32)
    check_node(
        "MaxPool",
        {"x": x},
        {"kernel_shape": [2, 2], "strides": [1, 1]},
        n_outputs=2,
        reference="ort",
        x64=True,
    )


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.uint8])
def test_max_pool_dtypes(dtype):
    x = (rng.standard_normal((1, 2, 7, 7)) * 50).astype(dtype)
    check_node("MaxPool", {"x": x}, POOL_CASES["k3s2p1"][1], reference="ort")


def test_max_pool_opset1():
    shape, attrs = POOL_CASES["k3s2p1"]
    check_node("MaxPool", {"x": f32(*shape)}, attrs, opset=1)


@pytest.mark.parametrize("case", list(POOL_CASES))
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(case, count_include_pad):
    shape, attrs = POOL_CASES[case]
    check_node(
        "AveragePool",
        {"x": f32(*shape)},
        {**attrs, "count_include_pad": count_include_pad},
        reference="ort",
        rtol=1e-5,
        atol=1e-5,
    )


def test_average_pool_float16():
    shape, attrs = POOL_CASES["k3s2p1"]
    check_node(
        "AveragePool",
        {"x": f32(*shape).astype(np.float16)},
        attrs,
        reference="ort",
        rtol=1e-3,
        atol=1e-3,
    )


def test_average_pool_opset7():
    shape, attrs = POOL_CASES["asym_pads"]
    check_node(
        "AveragePool",
        {"x": f32(*shape)},
        {**attrs, "count_include_pad": 1},
        opset=7,
        reference="ort",
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "case",
    [
        "k3s2p1",
        "asym_pads",
        "dilations",
        "ceil_pads",
        "same_upper",
        "big_window",
        "pool1d",
        "pool3d",
    ],
)
@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool(case, p):
    shape, attrs = POOL_CASES[case]
    # onnx's reference covers ceil_mode and dilations (opset 18); onnxruntime does not
    ref = "onnx" if ("ceil_mode" in attrs or "dilations" in attrs) else "ort"
    check_node("LpPool", {"x": f32(*shape)}, {**attrs, "p": p}, reference=ref, rtol=1e-4, atol=1e-5)


def test_lp_pool_opset2():
    shape, attrs = POOL_CASES["k3s2p1"]
    check_node(
        "LpPool",
        {"x": f32(*shape)},
        {**attrs, "p": 2},
        opset=2,
        reference="ort",
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 7), (1, 2, 3, 4, 5)])
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(op, shape):
    check_node(op, {"x": f32(*shape)}, reference="ort", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools_float16(op):
    check_node(op, {"x": f32(2, 3, 9, 9).astype(np.float16)}, reference="ort", rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_global_lp_pool(p):
    # onnxruntime implements GlobalLpPool up to opset 21 (22 only widened the types)
    check_node(
        "GlobalLpPool",
        {"x": f32(2, 3, 5, 6)},
        {"p": p},
        opset=21,
        reference="ort",
        rtol=1e-4,
        atol=1e-5,
    )


def test_max_roi_pool():
    x = f32(2, 3, 12, 10)
    rois = np.array(
        [
            [0, 1, 1, 8, 9],
            [1, 0, 0, 9, 11],
            [0, 2.6, 3.4, 3.5, 5.5],
            [1, 7, 7, 6, 6],
            [0, 0.5, 1.5, 20, 20],
        ],
        np.float32,
    )
    check_node(
        "MaxRoiPool",
        {"x": x, "rois": rois},
        {"pooled_shape": [3, 2], "spatial_scale": 1.0},
        opset=21,
        reference="ort",
    )
    scaled = rois * np.array([1, 2, 2, 2, 2], np.float32)
    check_node(
        "MaxRoiPool",
        {"x": x, "rois": scaled},
        {"pooled_shape": [4, 4], "spatial_scale": 0.5},
        opset=21,
        reference="ort",
    )


def test_small_windows_use_taps_and_big_ones_reduce_window():
    assert pool._MAX_POOL_TAPS >= 9  # 3x3 windows: shifted slices (faster on CPU)
    assert 36 > pool._MAX_POOL_TAPS  # the big_window case goes through lax.reduce_window
