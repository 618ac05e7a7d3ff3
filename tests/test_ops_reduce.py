"""Reductions, ArgMax/ArgMin, CumSum/CumProd against the ONNX reference, old and new opsets."""

import numpy as np
import pytest
from op_check import check_node, node_model

import onnx2jax
from onnx2jax._registry import lookup

rng = np.random.default_rng(0)
x32 = rng.standard_normal((2, 3, 4)).astype(np.float32)
pos32 = rng.uniform(0.5, 2.0, (2, 3, 4)).astype(np.float32)
x16 = rng.standard_normal((2, 3, 4)).astype(np.float16)
i32 = rng.integers(-5, 6, (2, 3, 4)).astype(np.int32)

REDUCE = [
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
]
AXES_INPUT_SINCE = {op: 13 if op == "ReduceSum" else 18 for op in REDUCE}


def data_for(op):
    return pos32 if op == "ReduceLogSum" else x32  # log of a sum needs positive sums


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, 2], 0), ([-1], 1), (None, 1), (None, 0)])
def test_reduce_axes_attribute(op, axes, keepdims):
    attrs = {"keepdims": keepdims} | ({"axes": axes} if axes is not None else {})
    check_node(op, {"x": data_for(op)}, attrs, opset=11)


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize(
    "axes,keepdims,noop",
    [([1], 1, 0), ([-1, 0], 0, 0), ([], 1, 0), ([], 0, 1), (None, 0, 0), (None, 1, 1)],
)
def test_reduce_axes_input(op, axes, keepdims, noop):
    opset = AXES_INPUT_SINCE[op]
    inputs = {"x": data_for(op), "axes": None if axes is None else np.array(axes, np.int64)}
    check_node(
        op,
        inputs,
        {"keepdims": keepdims, "noop_with_empty_axes": noop},
        opset=opset,
        constants=["axes"],
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMean"])
def test_reduce_axes_as_graph_input(op):
    # The axes input is fed at run time: the model specialises on its value.
    check_node(op, {"x": x32, "axes": np.array([0, 2], np.int64)}, {"keepdims": 0}, opset=18)


@pytest.mark.parametrize("op", REDUCE)
def test_reduce_float16(op):
    x = np.abs(x16) + np.float16(0.5) if op == "ReduceLogSum" else x16
    check_node(
        op,
        {"x": x, "axes": np.array([1], np.int64)},
        opset=18,
        constants=["axes"],
        rtol=1e-2,
        atol=1e-2,
    )


@pytest.mark.parametrize(
    "op",
    [
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceSumSquare",
    ],
)
@pytest.mark.parametrize("x64", [False, True])
def test_reduce_int(op, x64):
    # onnxruntime: the onnx reference widens some int32 results to int64 (numpy's sum).
    x = i32 if op != "ReduceProd" else np.clip(i32, -2, 3)
    check_node(
        op,
        {"x": x, "axes": np.array([2], np.int64)},
        opset=18,
        constants=["axes"],
        x64=x64,
        reference="ort",
    )
    check_node(op, {"x": x.astype(np.int64)}, {"keepdims": 0}, opset=18, x64=x64, reference="ort")


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("shape,axes", [((2, 0, 3), [1]), ((0,), None), ((2, 0), [0])])
def test_reduce_empty(op, shape, axes):
    # Reducing an empty set gives the identity (0, 1, -inf, +inf); a non-empty axis over an
    # empty tensor gives an empty result.
    inputs = {
        "x": np.zeros(shape, np.float32),
        "axes": None if axes is None else np.array(axes, np.int64),
    }
    check_node(op, inputs, {"keepdims": 1}, opset=18, constants=["axes"])


def test_reduce_max_min_empty_int_and_bool():
    for op in ("ReduceMax", "ReduceMin"):
        for x in (np.zeros((2, 0), np.int32), np.zeros((2, 0), np.bool_)):
            check_node(op, {"x": x, "axes": np.array([1], np.int64)}, opset=20, constants=["axes"])


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_bool(op):
    x = np.array([[True, False], [False, False], [True, True]])
    check_node(
        op, {"x": x, "axes": np.array([1], np.int64)}, {"keepdims": 0}, opset=20, constants=["axes"]
    )


def test_reduce_log_sum_exp_extremes():
    x = np.array(
        [[1000.0, 1000.0, -1000.0], [-np.inf, -np.inf, -np.inf], [np.inf, 1.0, 2.0]], np.float32
    )
    out = check_node(
        "ReduceLogSumExp",
        {"x": x[:1], "axes": np.array([1], np.int64)},
        opset=18,
        constants=["axes"],
    )
    np.testing.assert_allclose(out[0], [[1000.0 + np.log(2.0)]], rtol=1e-6)  # no overflow
    impl = lookup("", "ReduceLogSumExp", 18).fn
    got = np.asarray(impl(x, np.array([1], np.int64), keepdims=0))
    np.testing.assert_array_equal(got[1:], [-np.inf, np.inf])  # all -inf -> -inf, +inf wins


def test_reduce_mean_int_truncates_toward_zero():
    x = np.array([[-3, -4], [3, 4], [-1, 0]], np.int32)
    check_node(
        "ReduceMean",
        {"x": x, "axes": np.array([1], np.int64)},
        opset=18,
        constants=["axes"],
        reference="ort",
    )


def test_reduce_static_values_stay_exact_numpy():
    # On the shape path (all inputs known) reductions run in numpy: exact int64, no JAX.
    big = np.array([3_000_000_000, 5], np.int64)
    for op, want in [
        ("ReduceProd", 15_000_000_000),
        ("ReduceSum", 3_000_000_005),
        ("ReduceMax", 3_000_000_000),
    ]:
        got = lookup("", op, 18).fn(big, None, keepdims=0)
        assert isinstance(got, np.ndarray) and got.dtype == np.int64 and int(got) == want
    idx = lookup("", "ArgMax", 13).fn(big, axis=0)
    assert isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.tolist() == [0]


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis,keepdims", [(0, 1), (1, 0), (-1, 1), (-2, 0)])
@pytest.mark.parametrize("opset", [11, 13])
def test_arg(op, axis, keepdims, opset):
    check_node(op, {"x": x32}, {"axis": axis, "keepdims": keepdims}, opset=opset)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("last", [0, 1])
@pytest.mark.parametrize("x64", [False, True])
def test_arg_ties_select_last_index(op, last, x64):
    x = np.array([[2, 2, 1, 2], [1, 1, 1, 1], [0, 3, 3, 0]], np.float32)
    out = check_node(op, {"x": x}, {"axis": 1, "select_last_index": last}, opset=13, x64=x64)
    assert out[0].dtype == (np.int64 if x64 else np.int32)
    check_node(
        op,
        {"x": x.astype(np.float16)},
        {"axis": 0, "keepdims": 0, "select_last_index": last},
        opset=12,
        x64=x64,
    )
    check_node(op, {"x": i32}, {"axis": 2, "select_last_index": last}, opset=13, x64=x64)


def test_arg_rejects_select_last_index_before_opset_12():
    with pytest.raises(onnx2jax.UnsupportedOpsError, match="select_last_index"):
        onnx2jax.load(node_model("ArgMax", {"x": x32}, {"select_last_index": 1}, opset=11))


@pytest.mark.parametrize("op,opset", [("CumSum", 11), ("CumSum", 14), ("CumProd", 26)])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumulative(op, opset, exclusive, reverse, axis):
    x = rng.uniform(0.5, 1.5, (3, 4, 2)).astype(np.float32)
    attrs = {"exclusive": exclusive, "reverse": reverse}
    check_node(
        op, {"x": x, "axis": np.array(axis, np.int64)}, attrs, opset=opset, constants=["axis"]
    )


@pytest.mark.parametrize("op,opset", [("CumSum", 14), ("CumProd", 26)])
def test_cumulative_dtypes(op, opset):
    attrs = {"exclusive": 1, "reverse": 1}
    axis = np.array(1, np.int32)
    check_node(op, {"x": np.clip(i32, -2, 2), "axis": axis}, attrs, opset=opset, constants=["axis"])
    check_node(
        op,
        {"x": (x16 * np.float16(0.5) + np.float16(1)), "axis": axis},
        attrs,
        opset=opset,
        constants=["axis"],
        rtol=1e-2,
        atol=1e-2,
    )
    check_node(
        op,
        {"x": np.zeros((2, 0), np.float32), "axis": axis},
        attrs,
        opset=opset,
        constants=["axis"],
    )


def test_cumsum_axis_as_graph_input():
    check_node("CumSum", {"x": x32, "axis": np.array(2, np.int64)}, {"exclusive": 1}, opset=14)


def test_cumsum_static_values_stay_numpy():
    fn = lookup("", "CumSum", 14).fn
    got = fn(np.array([2**40, 1, 2], np.int64), np.array(0), exclusive=1, reverse=1)
    assert isinstance(got, np.ndarray) and got.tolist() == [3, 2, 0]
