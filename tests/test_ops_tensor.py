"""Indexing, scatter and construction ops (ops/tensor.py) against onnx's reference."""

import jax
import numpy as np
import pytest
from op_check import check_node, node_model

import onnx2jax
from onnx2jax import Onnx2JaxError
from onnx2jax._errors import StaticValueError

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def i64(*shape, low=-50, high=50):
    return rng.integers(low, high, shape).astype(np.int64)


# -- Gather family ----------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("opset", [1, 11, 13])
def test_gather(axis, opset):
    if axis < 0 and opset < 11:
        pytest.skip("negative axis is opset 11")
    x = f32(3, 4, 5)
    n = x.shape[axis]
    idx = rng.integers(-n if opset >= 11 else 0, n, (2, 3)).astype(np.int64)
    check_node("Gather", {"x": x, "i": idx}, {"axis": axis}, opset=opset)
    check_node("Gather", {"x": x, "i": idx}, {"axis": axis}, opset=opset, constants=["i"])
    check_node(
        "Gather",
        {"x": i64(3, 4, 5), "i": idx},
        {"axis": axis},
        opset=opset,
        constants=["x", "i"],
        x64=True,
    )


def test_gather_scalar_index_and_shape_path():
    check_node("Gather", {"x": f32(4, 3), "i": np.array(-1, np.int64)}, constants=["i"])
    # Gather(Shape(x), 1): a static int64 shape tensor, folded exactly
    check_node(
        "Gather",
        {"x": np.array([7, 9, 11], np.int64), "i": np.array([2, 0], np.int32)},
        constants=["x", "i"],
        x64=True,
    )


def test_gather_static_out_of_range_is_an_error():
    with pytest.raises(Onnx2JaxError):
        onnx2jax.load(
            node_model("Gather", {"x": np.arange(3), "i": np.array([3])}, constants=["x", "i"])
        )()


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    x = f32(3, 4)
    n = x.shape[axis]
    shape = (2, 4) if axis == 0 else (3, 6)
    idx = rng.integers(-n, n, shape).astype(np.int64)
    # onnx's reference mishandles a negative axis; onnxruntime does not
    reference = "onnx" if axis >= 0 else "onnxruntime"
    check_node("GatherElements", {"x": x, "i": idx}, {"axis": axis}, opset=13, reference=reference)
    check_node(
        "GatherElements",
        {"x": i64(3, 4), "i": idx.astype(np.int32)},
        {"axis": axis},
        opset=11,
        constants=["x", "i"],
        x64=True,
        reference=reference,
    )


@pytest.mark.parametrize(
    "batch_dims,xshape,ishape",
    [
        (0, (4, 5, 6), (3, 1)),
        (0, (4, 5, 6), (2, 3, 2)),
        (0, (4, 5), (2, 2)),
        (1, (2, 5, 6), (2, 3, 1)),
        (1, (2, 5, 6), (2, 2)),
        (2, (2, 3, 4, 5), (2, 3, 7, 2)),
        (0, (4, 5), (0, 2)),
    ],
)
def test_gather_nd(batch_dims, xshape, ishape):
    k = ishape[-1]
    dims = xshape[batch_dims : batch_dims + k]
    idx = np.stack([rng.integers(-d, d, ishape[:-1]) for d in dims], -1).astype(np.int64)
    idx = idx.reshape(ishape)
    opset = 11 if batch_dims == 0 else 12
    attrs = {"batch_dims": batch_dims} if batch_dims else {}
    check_node("GatherND", {"x": f32(*xshape), "i": idx}, attrs, opset=opset)
    check_node(
        "GatherND", {"x": i64(*xshape), "i": idx}, attrs, opset=13, constants=["x", "i"], x64=True
    )


# -- Scatter family ---------------------------------------------------------------------------


def _unique_indices(n, shape, axis):
    """Indices without duplicates along ``axis`` (reduction 'none' leaves duplicates undefined)."""
    picks = np.argsort(rng.random((*shape[:axis], n, *shape[axis + 1 :])), axis=axis)
    return np.take(picks, np.arange(shape[axis]), axis=axis)


@pytest.mark.parametrize(
    "reduction,opset",
    [("none", 11), ("none", 18), ("add", 16), ("mul", 16), ("max", 18), ("min", 18)],
)
@pytest.mark.parametrize("axis", [0, -1])
def test_scatter_elements(reduction, opset, axis):
    data = f32(4, 5)
    shape = (3, 5) if axis == 0 else (4, 3)
    n = data.shape[axis]
    if reduction == "none":
        idx = _unique_indices(n, shape, axis % 2) - n  # negative indices count from the end
    else:
        idx = rng.integers(-n, n, shape)  # duplicates reduce
    idx = idx.astype(np.int64)
    attrs = {"axis": axis} if reduction == "none" else {"axis": axis, "reduction": reduction}
    inputs = {"d": data, "i": idx, "u": f32(*shape)}
    check_node("ScatterElements", inputs, attrs, opset=opset)
    check_node("ScatterElements", inputs, attrs, opset=opset, constants=["i"])
    static = {"d": i64(4, 5), "i": idx, "u": i64(*shape, low=-3, high=4)}
    check_node("ScatterElements", static, attrs, opset=opset, constants=["d", "i", "u"], x64=True)


@pytest.mark.parametrize("opset", [9, 10])
def test_scatter_deprecated(opset):
    data, idx, upd = f32(3, 4), _unique_indices(4, (3, 2), 1).astype(np.int64), f32(3, 2)
    inputs = {"d": data, "i": idx, "u": upd}
    check_node("Scatter", inputs, {"axis": 1}, opset=opset, reference="onnxruntime")


@pytest.mark.parametrize(
    "reduction,opset", [("none", 11), ("add", 16), ("mul", 16), ("max", 18), ("min", 18)]
)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_scatter_nd(reduction, opset, k):
    data = f32(4, 5, 3)
    n_upd = 3
    if reduction == "none":  # distinct index tuples
        flat = rng.choice(int(np.prod(data.shape[:k])), n_upd, replace=False)
        idx = np.stack(np.unravel_index(flat, data.shape[:k]), -1)
        idx = idx - np.array(data.shape[:k]) * rng.integers(0, 2, idx.shape)  # some negative
    else:
        idx = np.stack([rng.integers(-d, d, n_upd) for d in data.shape[:k]], -1)
    idx = idx.astype(np.int64)
    upd = f32(n_upd, *data.shape[k:])
    attrs = {} if reduction == "none" else {"reduction": reduction}
    check_node("ScatterND", {"d": data, "i": idx, "u": upd}, attrs, opset=opset)
    static = {"d": i64(4, 5, 3), "i": idx, "u": i64(*upd.shape, low=-3, high=4)}
    check_node("ScatterND", static, attrs, opset=opset, constants=["d", "i", "u"], x64=True)


# -- Construction -----------------------------------------------------------------------------


@pytest.mark.parametrize("start,limit,delta", [(0, 10, 3), (10, 4, -2), (5, 5, 1), (3, -7, 2)])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.float64])
def test_range(start, limit, delta, dtype):
    inputs = {"s": np.array(start, dtype), "l": np.array(limit, dtype), "d": np.array(delta, dtype)}
    check_node("Range", inputs, opset=11, constants=["s", "l", "d"], x64=True)
    # From graph inputs: specialised on their values
    check_node("Range", inputs, opset=11, x64=True)


def test_range_fractional_and_float16():
    inputs = {"s": np.float32(0.1), "l": np.float32(1.0), "d": np.float32(0.3)}
    check_node("Range", inputs, opset=11, constants=["s", "l", "d"])
    inputs = {"s": np.float16(1000), "l": np.float16(1100), "d": np.float16(3)}
    check_node("Range", inputs, opset=27, constants=["s", "l", "d"])


@pytest.mark.parametrize(
    "value", [None, np.array([2.5], np.float32), np.array([7], np.int64), np.array([True])]
)
def test_constant_of_shape(value):
    import onnx.numpy_helper as nh

    attrs = {} if value is None else {"value": nh.from_array(value)}
    for shape in ([2, 3], [0, 4], []):
        s = np.array(shape, np.int64)
        check_node("ConstantOfShape", {"s": s}, attrs, opset=9, constants=["s"], x64=True)
    check_node("ConstantOfShape", {"s": np.array([3, 1], np.int64)}, attrs, opset=20, x64=True)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, 1, -2, 9, -9])
def test_trilu(upper, k):
    kk = None if k is None else np.array(k, np.int64)
    check_node("Trilu", {"x": f32(2, 4, 5), "k": kk}, {"upper": upper}, opset=14, constants=["k"])
    check_node(
        "Trilu",
        {"x": i64(5, 3), "k": kk},
        {"upper": upper},
        opset=14,
        constants=["x", "k"],
        x64=True,
    )


@pytest.mark.parametrize("axis", [-1, 0, 1, -3])
@pytest.mark.parametrize("opset", [9, 11])
def test_one_hot(axis, opset):
    depth = 5
    low = -depth if opset >= 11 else 0
    idx = rng.integers(low - 2, depth + 2, (2, 3)).astype(np.int64)  # some out of range
    values = np.array([-1.0, 3.0], np.float32)
    inputs = {"i": idx, "d": np.array(depth, np.int64), "v": values}
    check_node("OneHot", inputs, {"axis": axis}, opset=opset, constants=["d"])
    check_node("OneHot", inputs, {"axis": axis}, opset=opset, constants=["i", "d", "v"])
    ints = {
        "i": idx.astype(np.int32),
        "d": np.array(depth, np.float32),
        "v": np.array([0, 1], np.int64),
    }
    check_node("OneHot", ints, {"axis": axis}, opset=opset, constants=["d"], x64=True)


@pytest.mark.parametrize("attrs", [{}, {"k": 1}, {"k": -2}, {"dtype": 7}, {"dtype": 9, "k": 3}])
def test_eye_like(attrs):
    check_node("EyeLike", {"x": f32(3, 4)}, attrs, opset=9, x64=True)
    check_node("EyeLike", {"x": i64(4, 2)}, attrs, opset=22, constants=["x"], x64=True)


# -- TopK -------------------------------------------------------------------------------------


def _ties(*shape):
    return rng.integers(0, 4, shape).astype(np.float32)  # many equal values


@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_topk(largest, axis):
    x = _ties(4, 6, 3)
    k = np.array([3], np.int64)
    attrs = {"axis": axis, "largest": largest}
    check_node("TopK", {"x": x, "k": k}, attrs, opset=11, constants=["k"], n_outputs=2)
    check_node(
        "TopK",
        {"x": x.astype(np.int64), "k": k},
        attrs,
        opset=11,
        constants=["x", "k"],
        n_outputs=2,
        x64=True,
    )


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.float64])
@pytest.mark.parametrize("largest", [0, 1])
def test_topk_dtypes_and_extremes(dtype, largest):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    x = np.array([[3, info.min, info.max, 0, info.min, 3, info.max]], dtype)
    k = np.array([4], np.int64)
    check_node(
        "TopK",
        {"x": x, "k": k},
        {"largest": largest},
        opset=11,
        constants=["k"],
        n_outputs=2,
        x64=True,
    )


def test_topk_old_opsets():
    x = f32(3, 5)
    check_node("TopK", {"x": x}, {"k": 2}, opset=1, n_outputs=2)
    check_node(
        "TopK",
        {"x": x, "k": np.array([3], np.int64)},
        {"axis": 0},
        opset=10,
        constants=["k"],
        n_outputs=2,
    )
    check_node(
        "TopK", {"x": x, "k": np.array([0], np.int64)}, opset=10, constants=["k"], n_outputs=2
    )


# -- ReverseSequence / Compress / NonZero -----------------------------------------------------


@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence(batch_axis, time_axis):
    x = f32(4, 5, 2) if batch_axis == 1 else f32(5, 4, 2)
    lens = rng.integers(1, 5, 5).astype(np.int64)
    attrs = {"batch_axis": batch_axis, "time_axis": time_axis}
    check_node("ReverseSequence", {"x": x, "l": lens}, attrs, opset=10)
    check_node(
        "ReverseSequence",
        {"x": x.astype(np.int64), "l": lens},
        attrs,
        opset=10,
        constants=["x", "l"],
        x64=True,
    )


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_compress_static_condition(axis):
    x = f32(3, 4)
    n = x.size if axis is None else x.shape[axis]
    cond = rng.random(n - 1) < 0.5  # may be shorter than the axis
    attrs = {} if axis is None else {"axis": axis}
    check_node("Compress", {"x": x, "c": cond}, attrs, opset=11, constants=["c"])
    check_node(
        "Compress", {"x": i64(3, 4), "c": cond}, attrs, opset=9, constants=["x", "c"], x64=True
    )


def test_compress_condition_input_is_a_graph_break():
    c = np.array([True, False, True])
    check_node("Compress", {"x": f32(3), "c": c}, opset=11)
    m = onnx2jax.load(node_model("Compress", {"x": f32(3), "c": c}))
    # Runs on the host between jitted segments instead of specialising on c's value.
    assert m.value_inputs == frozenset() and [b.op_type for b in m.graph_breaks] == ["Compress"]
    # Traced (under the user's own jit) it cannot decide a shape: a clear error.
    with pytest.raises(StaticValueError, match="'c' decides output shapes"):
        jax.jit(m.apply)(m.params, f32(3), c)


def test_nonzero():
    x = np.array([[0, 3, 0], [1, 0, 2]], np.int64)
    out = check_node("NonZero", {"x": x}, opset=13, constants=["x"], x64=True)
    assert out[0].dtype == np.int64
    check_node("NonZero", {"x": np.zeros((2, 0), np.int64)}, opset=9, constants=["x"], x64=True)
    m = onnx2jax.load(node_model("NonZero", {"x": f32(3)}))  # a graph break, no specialisation
    assert m.value_inputs == frozenset() and [b.op_type for b in m.graph_breaks] == ["NonZero"]
    np.testing.assert_array_equal(np.asarray(m(np.array([0, 2, 0], np.float32))[0]), [[1]])
    with pytest.raises(StaticValueError, match="'x' decides output shapes"):
        jax.jit(m.apply)(m.params, f32(3))
