"""Normalization layers, LRN and Dropout against onnxruntime and onnx's reference."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from op_check import check_node, node_model

import onnx2jax

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def bn_inputs(shape, dtype=np.float32):
    c = shape[1]
    return {
        "x": f32(*shape).astype(dtype),
        "scale": f32(c).astype(dtype),
        "b": f32(c).astype(dtype),
        "mean": f32(c).astype(dtype),
        "var": (rng.random(c) + 0.5).astype(dtype),
    }


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3), (2, 3, 7), (1, 2, 3, 4, 2)])
@pytest.mark.parametrize("opset", [7, 9, 15])
def test_batch_norm_inference(shape, opset):
    check_node(
        "BatchNormalization",
        bn_inputs(shape),
        {"epsilon": 1e-3},
        opset=opset,
        reference="ort",
        rtol=1e-5,
        atol=1e-5,
    )


def test_batch_norm_opset6_is_test():
    check_node(
        "BatchNormalization", bn_inputs((2, 3, 4, 4)), {"is_test": 1}, opset=6, rtol=1e-5, atol=1e-5
    )


def test_batch_norm_float16():
    check_node(
        "BatchNormalization",
        bn_inputs((2, 3, 4, 5), np.float16),
        reference="ort",
        rtol=1e-3,
        atol=1e-3,
    )


def test_batch_norm_params_as_constants():
    check_node(
        "BatchNormalization",
        bn_inputs((2, 3, 4, 5)),
        constants=["scale", "b", "mean", "var"],
        reference="ort",
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("opset", [14, 15])
def test_batch_norm_training_mode(opset):
    check_node(
        "BatchNormalization",
        bn_inputs((4, 3, 5, 2)),
        {"training_mode": 1, "momentum": 0.7},
        n_outputs=3,
        opset=opset,
        reference="onnx",
        rtol=1e-5,
        atol=1e-5,
    )


def test_batch_norm_training_mode_matches_ort():
    check_node(
        "BatchNormalization",
        bn_inputs((4, 3, 5, 2)),
        {"training_mode": 1},
        n_outputs=3,
        opset=15,
        reference="ort",
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 7), (1, 2, 3, 4, 2)])
def test_instance_norm(shape):
    ins = {"x": f32(*shape) * 3 + 2, "scale": f32(shape[1]), "b": f32(shape[1])}
    check_node(
        "InstanceNormalization", ins, {"epsilon": 1e-4}, reference="ort", rtol=1e-4, atol=1e-4
    )


def test_instance_norm_float16():
    ins = {"x": f32(2, 3, 4, 5), "scale": f32(3), "b": f32(3)}
    check_node(
        "InstanceNormalization",
        {k: v.astype(np.float16) for k, v in ins.items()},
        reference="ort",
        rtol=1e-2,
        atol=1e-2,
    )


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm(axis, bias):
    shape = (2, 3, 4)
    norm_shape = shape[axis:]
    ins = {
        "x": f32(*shape) * 2 + 1,
        "scale": f32(*norm_shape),
        "b": f32(*norm_shape) if bias else None,
    }
    # onnxruntime 1.32 crashes building a session for LayerNormalization without B and with
    # all three outputs: check that case against onnx's reference
    check_node(
        "LayerNormalization",
        ins,
        {"axis": axis, "epsilon": 1e-3},
        n_outputs=3,
        reference="ort" if bias else "onnx",
        rtol=1e-4,
        atol=1e-4,
    )


def test_layer_norm_float16_stash_float():
    ins = {"x": f32(2, 5, 8), "scale": f32(8), "b": f32(8)}
    out = check_node(
        "LayerNormalization",
        {k: v.astype(np.float16) for k, v in ins.items()},
        n_outputs=3,
        reference="ort",
        rtol=1e-2,
        atol=1e-2,
    )
    assert out[1].dtype == np.float32  # Mean and InvStdDev have the stash type


def test_layer_norm_y_only():
    ins = {"x": f32(2, 5, 8), "scale": f32(8), "b": f32(8)}
    check_node("LayerNormalization", ins, reference="ort", rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_21(groups):
    ins = {"x": f32(2, 4, 3, 5) * 2 + 1, "scale": f32(4), "bias": f32(4)}
    check_node(
        "GroupNormalization",
        ins,
        {"num_groups": groups, "epsilon": 1e-4},
        opset=21,
        reference="ort",
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_18_per_group_affine(groups):
    ins = {"x": f32(2, 4, 3, 5) * 2 + 1, "scale": f32(groups), "bias": f32(groups)}
    check_node(
        "GroupNormalization",
        ins,
        {"num_groups": groups, "epsilon": 1e-4},
        opset=18,
        reference="onnx",
        rtol=1e-4,
        atol=1e-4,
    )


def test_group_norm_float16():
    ins = {"x": f32(2, 4, 3, 5), "scale": f32(4), "bias": f32(4)}
    check_node(
        "GroupNormalization",
        {k: v.astype(np.float16) for k, v in ins.items()},
        {"num_groups": 2},
        opset=21,
        reference="ort",
        rtol=1e-2,
        atol=1e-2,
    )


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_rms_norm(axis):
    shape = (2, 3, 4)
    ins = {"x": f32(*shape), "scale": f32(*shape[axis:])}
    check_node(
        "RMSNormalization",
        ins,
        {"axis": axis, "epsilon": 1e-3},
        opset=23,
        reference="ort",
        rtol=1e-4,
        atol=1e-4,
    )


def test_rms_norm_float16():
    ins = {"x": f32(2, 3, 8), "scale": f32(8)}
    check_node(
        "RMSNormalization",
        {k: v.astype(np.float16) for k, v in ins.items()},
        opset=23,
        reference="ort",
        rtol=1e-2,
        atol=1e-2,
    )


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization(axis, p):
    x = f32(3, 4, 5)
    x[0] = 0  # a zero norm
    check_node(
        "LpNormalization", {"x": x}, {"axis": axis, "p": p}, reference="ort", rtol=1e-5, atol=1e-6
    )


def test_lp_normalization_ort():
    check_node(
        "LpNormalization",
        {"x": f32(3, 4, 5)},
        {"axis": 1, "p": 2},
        reference="ort",
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("axes", [None, [0, 2, 3], [1], [2, 3]])
def test_mean_variance_normalization(axes):
    attrs = {"axes": axes} if axes else {}
    check_node(
        "MeanVarianceNormalization",
        {"x": f32(2, 3, 4, 5) * 3 + 1},
        attrs,
        reference="ort",
        rtol=1e-4,
        atol=1e-4,
    )


def lrn_spec(x, size, alpha, beta, bias):
    """The spec's formula, written out: channels [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = np.zeros_like(x, dtype=np.float64)
    for c in range(x.shape[1]):
        sq[:, c] = (x[:, max(0, c - lo) : c + hi + 1].astype(np.float64) ** 2).sum(1)
    return x / (bias + alpha / size * sq) ** beta


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_lrn(size):
    x = f32(2, 6, 4, 5)
    attrs = {"size": size, "alpha": 1e-2, "beta": 0.6, "bias": 2.0}
    if size % 2:
        check_node("LRN", {"x": x}, attrs, reference="ort", rtol=1e-5, atol=1e-5)
    # onnxruntime refuses even sizes and onnx's reference sums the wrong axis: use the formula
    got = onnx2jax.load(node_model("LRN", {"x": x}, attrs))(x)[0]
    np.testing.assert_allclose(np.asarray(got), lrn_spec(x, **attrs), rtol=1e-5, atol=1e-6)


def test_lrn_defaults_and_float16():
    check_node("LRN", {"x": f32(1, 7, 3, 3)}, {"size": 3}, reference="ort", rtol=1e-5, atol=1e-5)
    check_node(
        "LRN",
        {"x": f32(1, 7, 3, 3).astype(np.float16)},
        {"size": 3},
        reference="ort",
        rtol=1e-3,
        atol=1e-3,
    )


# -- Dropout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [7, 10, 13, 22])
def test_dropout_inference(opset):
    check_node("Dropout", {"x": f32(3, 4)}, opset=opset, reference="ort")


@pytest.mark.parametrize("opset", [6, 7, 10, 13, 22])
def test_dropout_mask_all_true(opset):
    # output = data * mask, so inference's mask is all ones: the input's type before opset 10,
    # bool since. (onnxruntime returns an all-false mask; onnx's reference is bool throughout.)
    x = f32(3, 4)
    y, mask = onnx2jax.load(node_model("Dropout", {"x": x}, n_outputs=2, opset=opset))(x)
    np.testing.assert_array_equal(np.asarray(y), x)
    assert mask.dtype == (np.float32 if opset < 10 else np.bool_) and np.asarray(mask).all()


def test_dropout_training_mode_false_input():
    ins = {"x": f32(3, 4), "ratio": np.array(0.3, np.float32), "t": np.array(False)}
    check_node("Dropout", ins, reference="ort")
    check_node("Dropout", ins, n_outputs=2, constants=["ratio", "t"])


def dropout_model(ratio, training, *, seed=None, shape=(3, 4), dtype=np.float32):
    consts = [
        oh.make_node(
            "Constant", [], ["r"], value=onnx.numpy_helper.from_array(np.array(ratio, np.float32))
        ),
        oh.make_node("Constant", [], ["t"], value=onnx.numpy_helper.from_array(np.array(training))),
    ]
    attrs = {} if seed is None else {"seed": seed}
    node = oh.make_node("Dropout", ["x", "r", "t"], ["y", "mask"], **attrs)
    elem = oh.np_dtype_to_tensor_dtype(np.dtype(dtype))
    g = oh.make_graph(
        consts + [node],
        "g",
        [oh.make_tensor_value_info("x", elem, list(shape))],
        [
            oh.make_tensor_value_info("y", elem, None),
            oh.make_tensor_value_info("mask", onnx.TensorProto.BOOL, None),
        ],
    )
    return onnx2jax.load(oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)]))


def test_dropout_training_zero_ratio_is_identity():
    x = f32(3, 4)
    y, mask = dropout_model(0.0, True)(x)
    np.testing.assert_array_equal(np.asarray(y), x)
    assert np.asarray(mask).all()


def check_dropped(x, y, mask, ratio):
    """y is x / (1 - ratio) where the mask keeps, 0 elsewhere; about ``ratio`` is dropped."""
    x, y, mask = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(mask)
    assert mask.dtype == np.bool_ and mask.shape == x.shape
    np.testing.assert_allclose(y, np.where(mask, x / (1 - ratio), 0), rtol=1e-3)
    assert abs((1 - mask.mean()) - ratio) < 0.05


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_dropout_training(ratio):
    x = f32(64, 64)
    y, mask = dropout_model(ratio, True, seed=3, shape=x.shape)(x)
    check_dropped(x, y, mask, ratio)


def test_dropout_training_deterministic_seeded():
    x = f32(32, 32)
    _, m1 = dropout_model(0.5, True, seed=1, shape=x.shape)(x)
    _, m1_again = dropout_model(0.5, True, seed=1, shape=x.shape)(x)
    _, m2 = dropout_model(0.5, True, seed=2, shape=x.shape)(x)
    _, default = dropout_model(0.5, True, shape=x.shape)(x)  # no seed: a fixed default key
    _, default_again = dropout_model(0.5, True, shape=x.shape)(x)
    np.testing.assert_array_equal(np.asarray(m1), np.asarray(m1_again))
    np.testing.assert_array_equal(np.asarray(default), np.asarray(default_again))
    assert (np.asarray(m1) != np.asarray(m2)).any()


def test_dropout_training_float16():
    x = f32(64, 64).astype(np.float16)
    y, mask = dropout_model(0.5, True, seed=0, shape=x.shape, dtype=np.float16)(x)
    assert np.asarray(y).dtype == np.float16
    check_dropped(x, y, mask, 0.5)


def test_dropout_training_runtime_ratio():
    # the ratio as a graph input (traced): 0 keeps everything exactly, others drop
    x = f32(64, 64)
    t = np.array(True)
    ins = {"x": x, "ratio": np.array(0.0, np.float32), "t": t}
    model = onnx2jax.load(node_model("Dropout", ins, {"seed": 0}, n_outputs=2, constants=["t"]))
    y, mask = model(x, np.array(0.0, np.float32))
    np.testing.assert_array_equal(np.asarray(y), x)
    assert np.asarray(mask).all()
    y, mask = model(x, np.array(0.3, np.float32))
    check_dropped(x, y, mask, 0.3)


def test_dropout_training_default_ratio():
    x = f32(64, 64)
    ins = {"x": x, "ratio": None, "t": np.array(True)}
    model = onnx2jax.load(node_model("Dropout", ins, n_outputs=2, constants=["t"]))
    y, mask = model(x)
    check_dropped(x, y, mask, 0.5)
