"""Shape and layout ops (ops/shape.py) against onnx's reference, old and new opsets."""

import numpy as np
import pytest
from op_check import check_node, node_model

import onnx2jax
from onnx2jax import Onnx2JaxError

rng = np.random.default_rng(0)
I64 = np.iinfo(np.int64)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def i64(*shape):
    return rng.integers(-50, 50, shape).astype(np.int64)


def run_node(op, inputs, attrs=None, *, opset, constants=(), n_outputs=1):
    """onnx2jax's outputs (jitted; eager must agree) for ops the reference lacks at this opset."""
    m = onnx2jax.load(
        node_model(op, inputs, attrs, opset=opset, constants=constants, n_outputs=n_outputs)
    )
    feeds = {k: v for k, v in inputs.items() if v is not None and k not in constants}
    jitted, eager = m(**feeds), m.apply(m.params, **feeds)
    for a, b in zip(jitted, eager, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return [np.asarray(o) for o in jitted]


# -- Shape / Size -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"start": 1},
        {"end": -1},
        {"start": -2, "end": 3},
        {"start": -10},
        {"end": 10},
        {"start": 2, "end": 1},
    ],
)
def test_shape_start_end(attrs):
    out = check_node("Shape", {"x": f32(2, 3, 4)}, attrs, opset=15, x64=True)
    assert out[0].dtype == np.int64


@pytest.mark.parametrize("opset", [1, 13])
def test_shape_and_size_old_opsets(opset):
    check_node("Shape", {"x": f32(2, 0, 5)}, opset=opset, x64=True)
    check_node("Size", {"x": f32(2, 3, 5)}, opset=opset, x64=True)
    check_node("Size", {"x": np.float32(3.0)}, opset=opset, x64=True)


# -- Reshape / Flatten ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [[0, -1], [4, 6], [-1], [2, 0, 2, 2], [], [1, 1, -1, 1]])
def test_reshape(shape):
    x = f32(2, 3, 4) if shape else f32(1, 1)
    check_node("Reshape", {"x": x, "s": np.array(shape, np.int64)}, constants=["s"])
    # int data as a constant: everything is numpy, folded at trace time
    check_node(
        "Reshape",
        {"x": i64(*x.shape), "s": np.array(shape, np.int64)},
        constants=["x", "s"],
        x64=True,
    )


def test_reshape_allowzero():
    x = np.zeros((0, 3, 4), np.float32)
    check_node(
        "Reshape",
        {"x": x, "s": np.array([3, 4, 0], np.int64)},
        {"allowzero": 1},
        opset=14,
        constants=["s"],
    )
    check_node(
        "Reshape", {"x": f32(2, 3, 4), "s": np.array([0, 12], np.int64)}, opset=5, constants=["s"]
    )


def test_reshape_opset1_shape_attribute():
    x = f32(2, 3, 4)
    (out,) = run_node("Reshape", {"x": x}, {"shape": [4, -1]}, opset=1)
    np.testing.assert_array_equal(out, x.reshape(4, 6))


@pytest.mark.parametrize("axis", [-3, -1, 0, 1, 2, 3])
@pytest.mark.parametrize("opset", [9, 13])
def test_flatten(axis, opset):
    if axis < 0 and opset < 11:
        pytest.skip("negative axis is opset 11")
    check_node("Flatten", {"x": f32(2, 3, 4)}, {"axis": axis}, opset=opset)


def test_flatten_default_axis_static():
    check_node("Flatten", {"x": i64(2, 3, 4)}, constants=["x"], opset=1, x64=True)


# -- Squeeze / Unsqueeze ----------------------------------------------------------------------


@pytest.mark.parametrize("opset", [1, 11, 13, 21])
@pytest.mark.parametrize("axes", [None, [0], [-1], [0, 2]])
def test_squeeze(opset, axes):
    if opset == 1 and axes and min(axes) < 0:
        pytest.skip("negative axes are opset 11")
    x = f32(1, 3, 1, 1) if axes != [0, 2] else f32(1, 3, 1)
    if opset < 13:
        check_node("Squeeze", {"x": x}, {} if axes is None else {"axes": axes}, opset=opset)
    else:
        a = None if axes is None else np.array(axes, np.int64)
        check_node("Squeeze", {"x": x, "a": a}, opset=opset, constants=["a"])
        check_node("Squeeze", {"x": i64(*x.shape), "a": a}, opset=opset, constants=["x", "a"])


@pytest.mark.parametrize("opset", [1, 11, 13])
@pytest.mark.parametrize("axes", [[0], [-1], [3, 0], [0, -1], [1, 4, 2]])
def test_unsqueeze(opset, axes):
    if opset == 1 and min(axes) < 0:
        pytest.skip("negative axes are opset 11")
    if opset < 13 and axes != sorted(axes):
        pytest.skip("the reference's Unsqueeze-1/11 inserts unsorted axes one by one")
    x = f32(3, 4)
    if opset < 13:
        check_node("Unsqueeze", {"x": x}, {"axes": axes}, opset=opset)
    else:
        a = np.array(axes, np.int64)
        check_node("Unsqueeze", {"x": x, "a": a}, opset=opset, constants=["a"])
        check_node("Unsqueeze", {"x": i64(3, 4), "a": a}, opset=opset, constants=["x", "a"])


def test_unsqueeze_scalar():
    check_node("Unsqueeze", {"x": np.float32(2.0), "a": np.array([0], np.int64)}, constants=["a"])


def test_unsqueeze_bad_axes_is_an_error():
    with pytest.raises(Onnx2JaxError):
        run_node(
            "Unsqueeze", {"x": f32(3), "a": np.array([0, 0], np.int64)}, opset=13, constants=["a"]
        )


# -- Transpose / Concat -----------------------------------------------------------------------


@pytest.mark.parametrize("perm", [None, [0, 2, 1], [2, 0, 1]])
def test_transpose(perm):
    attrs = {} if perm is None else {"perm": perm}
    check_node("Transpose", {"x": f32(2, 3, 4)}, attrs, opset=1)
    check_node("Transpose", {"x": i64(2, 3, 4)}, attrs, constants=["x"], x64=True)


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_concat(axis):
    check_node("Concat", {"a": f32(2, 3), "b": f32(2, 3), "c": f32(2, 3)}, {"axis": axis}, opset=4)


def test_concat_mixes_static_and_traced():
    # A shape tensor built from a constant and a runtime value (jnp wins), and all-static.
    check_node(
        "Concat",
        {"a": np.array([1, 2], np.int64), "b": i64(3)},
        {"axis": 0},
        constants=["a"],
        x64=True,
    )
    check_node(
        "Concat",
        {"a": np.array([1, 2], np.int64), "b": i64(3)},
        {"axis": 0},
        constants=["a", "b"],
        x64=True,
    )
    check_node("Concat", {"a": f32(0, 3), "b": f32(2, 3)}, {"axis": 0}, opset=13)


def test_concat_opset1_default_axis_is_1():
    a, b = f32(2, 3), f32(2, 2)
    (out,) = run_node("Concat", {"a": a, "b": b}, opset=1)
    np.testing.assert_array_equal(out, np.concatenate([a, b], axis=1))


# -- Split ------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [2, 11])
def test_split_attribute(opset):
    x = f32(6, 4)
    check_node("Split", {"x": x}, {"split": [1, 2, 3]}, opset=opset, n_outputs=3)
    check_node("Split", {"x": x}, {"axis": 1}, opset=opset, n_outputs=2)
    if opset >= 11:
        check_node("Split", {"x": x}, {"axis": -1, "split": [3, 1]}, opset=opset, n_outputs=2)


def test_split_opset1_input():
    x = f32(5, 2)
    outs = run_node(
        "Split", {"x": x, "s": np.array([2, 3], np.int64)}, opset=1, constants=["s"], n_outputs=2
    )
    np.testing.assert_array_equal(outs[0], x[:2])
    np.testing.assert_array_equal(outs[1], x[2:])


@pytest.mark.parametrize("opset", [13, 18])
def test_split_input(opset):
    x = f32(2, 7)
    check_node(
        "Split",
        {"x": x, "s": np.array([3, 0, 4], np.int64)},
        {"axis": -1},
        opset=opset,
        n_outputs=3,
        constants=["s"],
    )
    check_node(
        "Split", {"x": i64(6), "s": None}, opset=opset, n_outputs=3, constants=["x"], x64=True
    )


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_split_num_outputs_uneven(n):
    check_node("Split", {"x": f32(7, 2)}, {"num_outputs": n}, opset=18, n_outputs=n)


# -- Slice ------------------------------------------------------------------------------------

SLICES = [  # starts, ends, axes, steps
    ([1], [3], None, None),
    ([0, 1], [2, 4], [0, 1], None),
    ([-1], [I64.min], [1], [-1]),  # reverse an axis
    ([I64.max], [I64.min], [0], [-2]),  # clamped start, negative step
    ([-100], [100], [-1], [1]),  # clamped both ends
    ([1, 0], [I64.max, -1], [-1, 0], [2, 1]),
    ([5], [1], [1], [1]),  # empty result
    ([3], [0], [2], [-1]),  # end is exclusive on the way down
    ([0], [-1], [0], [1]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
@pytest.mark.parametrize("opset", [10, 13])
def test_slice(starts, ends, axes, steps, opset):
    if opset == 10 and axes and min(axes) < 0:
        pytest.skip("negative axes are opset 11")
    x = f32(4, 5, 6)
    inputs = {
        "x": x,
        "s": np.array(starts, np.int64),
        "e": np.array(ends, np.int64),
        "a": None if axes is None else np.array(axes, np.int64),
        "st": None if steps is None else np.array(steps, np.int64),
    }
    check_node("Slice", inputs, opset=opset, constants=["s", "e", "a", "st"])
    inputs["x"] = i64(4, 5, 6)
    check_node("Slice", inputs, opset=opset, constants=["x", "s", "e", "a", "st"], x64=True)


def test_slice_negative_step_start_clamps_to_zero():
    # start -10 on an axis of 5 clamps to 0 for a negative step (the spec; the Python
    # reference evaluator returns empty here, onnxruntime follows the spec).
    inputs = {
        "x": f32(5),
        "s": np.array([-10], np.int64),
        "e": np.array([-20], np.int64),
        "a": np.array([0], np.int64),
        "st": np.array([-1], np.int64),
    }
    out = check_node(
        "Slice", inputs, opset=13, constants=["s", "e", "a", "st"], reference="onnxruntime"
    )
    assert out[0].shape == (1,)


def test_slice_int32_inputs():
    inputs = {
        "x": f32(4, 6),
        "s": np.array([1], np.int32),
        "e": np.array([-1], np.int32),
        "a": np.array([1], np.int32),
    }
    check_node("Slice", inputs, opset=13, constants=["s", "e", "a"])


@pytest.mark.parametrize(
    "attrs", [{"starts": [1], "ends": [3]}, {"starts": [0, 2], "ends": [-1, 100], "axes": [1, 2]}]
)
def test_slice_opset1_attributes(attrs):
    check_node("Slice", {"x": f32(4, 5, 6)}, attrs, opset=1)


def test_slice_from_runtime_shape_values_is_specialised():
    # The starts come from a graph input: the model object makes it a static jit argument.
    inputs = {"x": f32(4, 5), "s": np.array([1], np.int64), "e": np.array([4], np.int64)}
    check_node("Slice", inputs, opset=13)


# -- Expand / Tile ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "xshape,shape",
    [((3, 1), [2, 3, 4]), ((1, 4), [3, 1]), ((2, 3), [1]), ((), [2, 2]), ((3, 1), [3, 0])],
)
def test_expand(xshape, shape):
    s = np.array(shape, np.int64)
    check_node("Expand", {"x": f32(*xshape), "s": s}, opset=8, constants=["s"])
    check_node("Expand", {"x": i64(*xshape), "s": s}, constants=["x", "s"], x64=True)


@pytest.mark.parametrize("opset", [6, 13])
def test_tile(opset):
    r = np.array([2, 1, 3], np.int64)
    check_node("Tile", {"x": f32(2, 3, 1), "r": r}, opset=opset, constants=["r"])
    check_node("Tile", {"x": i64(2, 3, 1), "r": r}, opset=opset, constants=["x", "r"], x64=True)
    check_node(
        "Tile", {"x": f32(2, 3), "r": np.array([0, 2], np.int64)}, opset=opset, constants=["r"]
    )


def test_tile_opset1_tiles_and_axis_inputs():
    x = f32(2, 3)
    (out,) = run_node(
        "Tile",
        {"x": x, "t": np.array(3, np.int64), "a": np.array(1, np.int64)},
        opset=1,
        constants=["t", "a"],
    )
    np.testing.assert_array_equal(out, np.tile(x, (1, 3)))


# -- Pad --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_opset2_attributes(mode):
    attrs = {"pads": [0, 2, 1, 1], "mode": mode}
    if mode == "constant":
        attrs["value"] = 1.5
    check_node("Pad", {"x": f32(3, 4)}, attrs, opset=2)


def test_pad_opset1_paddings():
    x = f32(2, 3)
    (out,) = run_node("Pad", {"x": x}, {"paddings": [1, 0, 0, 2], "value": 2.0}, opset=1)
    np.testing.assert_array_equal(out, np.pad(x, ((1, 0), (0, 2)), constant_values=2.0))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("opset", [11, 18, 19])
def test_pad(mode, opset):
    if mode == "wrap" and opset < 19:
        pytest.skip("wrap is opset 19")
    pads = np.array([1, 0, 2, 3, 2, 1], np.int64)
    check_node("Pad", {"x": f32(3, 4, 5), "p": pads}, {"mode": mode}, opset=opset, constants=["p"])
    check_node(
        "Pad",
        {"x": i64(3, 4, 5), "p": pads},
        {"mode": mode},
        opset=opset,
        constants=["x", "p"],
        x64=True,
    )


def test_pad_constant_value_traced_and_static():
    inputs = {"x": f32(2, 3), "p": np.array([1, 1, 0, 2], np.int64), "v": np.float32(-7.5)}
    check_node("Pad", inputs, opset=13, constants=["p"])
    inputs = {"x": i64(2, 3), "p": np.array([1, 1, 0, 2], np.int64), "v": np.int64(9)}
    check_node("Pad", inputs, opset=13, constants=["x", "p", "v"], x64=True)


@pytest.mark.parametrize("axes", [[1], [-1, 0], [2, 0]])
def test_pad_axes(axes):
    pads = np.array([1, 2] * len(axes), np.int64)
    inputs = {"x": f32(2, 3, 4), "p": pads, "v": None, "a": np.array(axes, np.int64)}
    check_node("Pad", inputs, {"mode": "reflect"}, opset=18, constants=["p", "a"])
    check_node("Pad", inputs, opset=21, constants=["p", "a"])


def test_pad_negative_pads_crop():
    # onnx's reference (np.pad) rejects negative pads; onnxruntime implements the spec.
    inputs = {"x": f32(4, 5), "p": np.array([-1, 2, 1, -2], np.int64)}
    out = check_node("Pad", inputs, opset=13, constants=["p"], reference="onnxruntime")
    assert out[0].shape == (4, 5)


# -- CenterCropPad ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,axes",
    [
        ([3, 4], None),
        ([7, 2], None),
        ([5, 9], None),
        ([4], [1]),
        ([6, 2], [-1, 0]),
        ([2, 3], [2, 1]),
    ],
)
def test_center_crop_pad(shape, axes):
    inputs = {"x": f32(5, 6, 4), "s": np.array(shape, np.int64)}
    attrs = {} if axes is None else {"axes": axes}
    if axes is None:
        inputs["x"] = f32(5, 6)
    check_node("CenterCropPad", inputs, attrs, opset=18, constants=["s"])
    inputs["x"] = i64(*inputs["x"].shape)
    check_node("CenterCropPad", inputs, attrs, opset=18, constants=["x", "s"], x64=True)


# -- Identity / Constant ----------------------------------------------------------------------


def test_identity_and_constant():
    check_node("Identity", {"x": f32(2, 3)}, opset=1)
    check_node("Constant", {}, {"value_ints": [1, 2, 3]}, opset=13, x64=True)
    check_node("Constant", {}, {"value_float": 2.5}, opset=13)
