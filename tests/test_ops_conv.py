"""Conv, ConvTranspose, DepthToSpace and SpaceToDepth against onnxruntime, for every lowering strategy."""

import jax
import numpy as np
import pytest
from op_check import check_node

from onnx2jax.ops import _conv_lowering as lowering

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def conv_inputs(x_shape, w_shape, bias=True):
    ins = {"x": f32(*x_shape), "w": f32(*w_shape)}
    if bias:
        ins["b"] = f32(w_shape[0])
    return ins


# (x shape, w shape, attrs, the strategy `choose` must pick)
CONV_CASES = {
    "pointwise": ((2, 8, 6, 7), (12, 8, 1, 1), {}, "matmul"),
    "pointwise_stride_pad": (
        (2, 8, 7, 7),
        (12, 8, 1, 1),
        {"strides": [2, 2], "pads": [1, 0, 0, 1]},
        "matmul",
    ),
    "pointwise_grouped": ((2, 8, 5, 5), (12, 2, 1, 1), {"group": 4}, "matmul"),
    "depthwise": ((2, 6, 9, 8), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}, "taps"),
    "depthwise_s2_dil": (
        (1, 6, 11, 10),
        (6, 1, 3, 3),
        {"group": 6, "strides": [2, 2], "dilations": [2, 1], "pads": [2, 1, 1, 0]},
        "taps",
    ),
    "depthwise_mult2": ((2, 4, 7, 7), (8, 1, 5, 5), {"group": 4, "pads": [2, 2, 2, 2]}, "taps"),
    "grouped_few": ((2, 8, 7, 7), (8, 4, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, "taps"),
    "grouped_many": ((2, 32, 6, 6), (16, 16, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, "im2col"),
    "stem_small_k": (
        (2, 3, 12, 12),
        (8, 3, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]},
        "im2col",
    ),
    "dense": ((2, 8, 9, 9), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}, "xla_nhwc"),
    "dense_asym_dil": (
        (1, 6, 10, 9),
        (7, 6, 3, 2),
        {"strides": [2, 1], "dilations": [1, 2], "pads": [0, 1, 2, 0]},
        "xla_nhwc",
    ),
    "single_channel": ((2, 1, 8, 8), (4, 1, 3, 3), {}, "im2col"),
    "conv1d": ((2, 12, 15), (10, 12, 3), {"strides": [2], "pads": [1, 2]}, "xla_nhwc"),
    "conv1d_depthwise": ((2, 6, 15), (6, 1, 5), {"group": 6, "pads": [2, 2]}, "taps"),
    "conv3d": ((1, 4, 5, 6, 7), (6, 4, 3, 3, 3), {"pads": [1, 0, 1, 1, 0, 1]}, "xla_nhwc"),
    "conv3d_grouped": (
        (1, 4, 5, 6, 7),
        (6, 2, 2, 3, 2),
        {"group": 2, "strides": [1, 2, 1]},
        "taps",
    ),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_default_strategy(case):
    xs, ws, attrs, expected = CONV_CASES[case]
    if jax.default_backend() == "cpu":  # the choice is tuned per backend
        assert lowering.choose(xs, ws, None, None, attrs.get("group", 1)) == expected
    check_node("Conv", conv_inputs(xs, ws), attrs, reference="ort", rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strategy", lowering.STRATEGIES)
@pytest.mark.parametrize(
    "case",
    [
        "pointwise_stride_pad",
        "depthwise_s2_dil",
        "depthwise_mult2",
        "grouped_few",
        "dense_asym_dil",
        "conv1d",
        "conv3d_grouped",
    ],
)
def test_conv_every_strategy(case, strategy, monkeypatch):
    xs, ws, attrs, _ = CONV_CASES[case]
    if strategy == "matmul" and np.prod(ws[2:]) != 1:
        pytest.skip("matmul only lowers 1x1 kernels")
    monkeypatch.setattr(lowering, "choose", lambda *a: strategy)
    check_node("Conv", conv_inputs(xs, ws), attrs, reference="ort", rtol=1e-4, atol=1e-4)


def test_conv_im2col_per_sample(monkeypatch):
    # big patch buffers are built one sample at a time (lax.map): same numbers
    monkeypatch.setattr(lowering, "_PATCH_BYTES", 0)
    xs, ws, attrs, _ = CONV_CASES["grouped_many"]
    check_node("Conv", conv_inputs((3,) + xs[1:], ws), attrs, reference="ort", rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("ws", [(4, 3, 3, 3), (4, 3, 2, 4), (3, 1, 4, 4)])
def test_conv_auto_pad(auto_pad, ws):
    attrs = {"auto_pad": auto_pad, "strides": [2, 3]}
    if ws[1] == 1:
        attrs["group"] = 3
    check_node(
        "Conv",
        conv_inputs((1, 3, 9, 10), ws, bias=False),
        attrs,
        reference="ort",
        rtol=1e-4,
        atol=1e-4,
    )


def test_conv_kernel_shape_attribute_and_no_bias():
    check_node(
        "Conv",
        conv_inputs((1, 3, 6, 6), (5, 3, 2, 3), bias=False),
        {"kernel_shape": [2, 3]},
        reference="ort",
        rtol=1e-4,
        atol=1e-4,
    )


def test_conv_old_opset():
    check_node(
        "Conv",
        conv_inputs((1, 3, 6, 6), (5, 3, 3, 3)),
        {"pads": [1, 1, 1, 1]},
        opset=1,
        reference="onnx",
        rtol=1e-4,
        atol=1e-4,
    )


def test_conv_weights_as_constants():
    # weights folded at trace time (numpy) still lower through the same code
    check_node(
        "Conv",
        conv_inputs((1, 4, 6, 6), (4, 1, 3, 3)),
        {"group": 4},
        constants=["w", "b"],
        reference="ort",
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "case", ["pointwise", "depthwise", "grouped_many", "stem_small_k", "dense"]
)
def test_conv_float16(case):
    xs, ws, attrs, _ = CONV_CASES[case]
    ins = {k: v.astype(np.float16) for k, v in conv_inputs(xs, ws).items()}
    check_node("Conv", ins, attrs, reference="ort", rtol=1e-2, atol=1e-2)


# -- ConvTranspose --------------------------------------------------------------------------

CT_CASES = {
    "stride2_pad": ((2, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "output_padding": (
        (1, 4, 5, 6),
        (4, 3, 3, 3),
        {"strides": [2, 3], "pads": [1, 0, 1, 2], "output_padding": [1, 2]},
    ),
    "kernel_eq_stride": ((2, 6, 4, 5), (6, 4, 2, 2), {"strides": [2, 2]}),
    "pointwise": ((2, 6, 4, 5), (6, 4, 1, 1), {}),
    "dcgan_4x4": ((1, 6, 4, 4), (6, 3, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "grouped": ((2, 4, 5, 5), (4, 3, 3, 3), {"group": 2, "strides": [2, 2]}),
    "depthwise": (
        (1, 4, 5, 5),
        (4, 1, 4, 4),
        {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]},
    ),
    "dilated": ((1, 3, 5, 4), (3, 2, 3, 2), {"dilations": [2, 3], "strides": [2, 1]}),
    "output_shape": ((1, 2, 3, 3), (2, 3, 3, 3), {"strides": [3, 2], "output_shape": [10, 8]}),
    "output_shape_smaller": (
        (1, 2, 4, 4),
        (2, 3, 3, 3),
        {"strides": [2, 2], "output_shape": [7, 8]},
    ),
    "same_upper": ((1, 2, 4, 5), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "same_lower": ((1, 2, 4, 5), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "conv1d": ((2, 3, 7), (3, 4, 5), {"strides": [3], "pads": [2, 1], "output_padding": [1]}),
    "conv3d": (
        (1, 2, 3, 4, 3),
        (2, 3, 3, 2, 3),
        {"strides": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 0]},
    ),
}


@pytest.mark.parametrize("case", list(CT_CASES))
@pytest.mark.parametrize("strategy", [None, "xla_dilated"])
def test_conv_transpose(case, strategy, monkeypatch):
    xs, ws, attrs = CT_CASES[case]
    if strategy:
        real = lowering.conv_transpose
        monkeypatch.setattr(
            lowering, "conv_transpose", lambda *a, **k: real(*a, **{**k, "strategy": strategy})
        )
    ins = {"x": f32(*xs), "w": f32(*ws), "b": f32(ws[1] * attrs.get("group", 1))}
    check_node("ConvTranspose", ins, attrs, reference="ort", rtol=1e-4, atol=1e-4)


def test_conv_transpose_float16():
    xs, ws, attrs = CT_CASES["stride2_pad"]
    ins = {"x": f32(*xs).astype(np.float16), "w": f32(*ws).astype(np.float16)}
    check_node("ConvTranspose", ins, attrs, reference="onnx", rtol=1e-2, atol=1e-2)


# -- DepthToSpace / SpaceToDepth -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    check_node(
        "DepthToSpace", {"x": f32(2, 12, 3, 4)}, {"blocksize": 2, "mode": mode}, reference="ort"
    )


def test_depth_to_space_opset1_is_dcr():
    check_node("DepthToSpace", {"x": f32(1, 18, 2, 3)}, {"blocksize": 3}, opset=1)


@pytest.mark.parametrize("opset,mode", [(13, None), (28, "DCR"), (28, "CRD")])
def test_space_to_depth(opset, mode):
    attrs = {"blocksize": 2} | ({"mode": mode} if mode else {})
    check_node("SpaceToDepth", {"x": f32(2, 3, 4, 6)}, attrs, opset=opset, reference="onnx")


def test_space_to_depth_round_trip_int():
    x = rng.integers(0, 100, (1, 2, 4, 4)).astype(np.int32)
    check_node("SpaceToDepth", {"x": x}, {"blocksize": 2}, opset=13)
