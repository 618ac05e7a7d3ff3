"""Conv, ConvTranspose (each lowering), DeformConv, DepthToSpace, SpaceToDepth vs references."""

import itertools
import math

import jax
import numpy as np
import pytest
from op_check import check_node, node_model

import onnx2jax
from onnx2jax._errors import NodeError
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


# -- DeformConv -------------------------------------------------------------------------------


def deform_inputs(x_shape, w_shape, attrs, *, bias=False, mask=False, spread=2.0):
    """Inputs of a DeformConv node; offsets of about ``spread`` pixels, partly outside the input."""
    nd = len(x_shape) - 2
    kernel = w_shape[2:]
    pads = attrs.get("pads", [0] * 2 * nd)
    strides = attrs.get("strides", [1] * nd)
    dil = attrs.get("dilations", [1] * nd)
    out = [
        lowering.out_size(x_shape[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[i + nd])
        for i in range(nd)
    ]
    taps = attrs.get("offset_group", 1) * math.prod(kernel)
    return {
        "x": f32(*x_shape),
        "w": f32(*w_shape),
        "offset": f32(x_shape[0], taps * nd, *out) * spread,
        "b": f32(w_shape[0]) if bias else None,
        "mask": rng.uniform(0, 1, (x_shape[0], taps, *out)).astype(np.float32) if mask else None,
    }


def deform_conv_loops(x, w, offset, b, mask, attrs):
    """DeformConv by its definition, one output value at a time, for any number of dims."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    pads = attrs.get("pads", [0] * 2 * nd)
    strides = attrs.get("strides", [1] * nd)
    dil = attrs.get("dilations", [1] * nd)
    g, og = attrs.get("group", 1), attrs.get("offset_group", 1)
    n, c = x.shape[:2]
    oc, cpg = w.shape[:2]
    out_shape = offset.shape[2:]
    taps = list(itertools.product(*(range(k) for k in kernel)))

    def sample(img, pos):
        total = 0.0
        for corner in itertools.product((0, 1), repeat=nd):
            idx = [int(np.floor(p)) + bit for p, bit in zip(pos, corner, strict=True)]
            if all(0 <= i < s for i, s in zip(idx, img.shape, strict=True)):
                wgt = np.prod([1 - abs(p - i) for p, i in zip(pos, idx, strict=True)])
                total += wgt * img[tuple(idx)]
        return total

    y = np.zeros((n, oc, *out_shape))
    for bi, o, pos_out in itertools.product(range(n), range(oc), np.ndindex(*out_shape)):
        grp = o // (oc // g)
        acc = 0.0 if b is None else float(b[o])
        for ci in range(grp * cpg, (grp + 1) * cpg):
            ogi = ci // (c // og)
            for ti, tap in enumerate(taps):
                ch = (ogi * len(taps) + ti) * nd
                pos = [
                    pos_out[d] * strides[d]
                    - pads[d]
                    + tap[d] * dil[d]
                    + offset[(bi, ch + d, *pos_out)]
                    for d in range(nd)
                ]
                m = 1.0 if mask is None else mask[(bi, ogi * len(taps) + ti, *pos_out)]
                acc += w[(o, ci - grp * cpg, *tap)] * m * sample(x[bi, ci], pos)
        y[(bi, o, *pos_out)] = acc
    return y


DEFORM_CASES = {
    "basic": ((1, 1, 4, 4), (1, 1, 2, 2), {}),
    "pads_strides_dilations": (
        (2, 3, 7, 6),
        (4, 3, 3, 2),
        {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]},
    ),
    "groups_offset_groups": ((1, 4, 5, 5), (6, 2, 3, 3), {"group": 2, "offset_group": 4}),
    "offset_groups_across_groups": ((1, 6, 5, 4), (3, 2, 2, 2), {"group": 3, "offset_group": 2}),
}


@pytest.mark.parametrize("case", sorted(DEFORM_CASES))
@pytest.mark.parametrize("bias,mask", [(False, False), (True, True)])
def test_deform_conv(case, bias, mask):
    xs, ws, attrs = DEFORM_CASES[case]
    ins = deform_inputs(xs, ws, attrs, bias=bias, mask=mask)
    check_node("DeformConv", ins, attrs | {"kernel_shape": list(ws[2:])}, rtol=1e-4, atol=1e-5)


def test_deform_conv_zero_offsets_is_conv():
    xs, ws, attrs = DEFORM_CASES["pads_strides_dilations"]
    ins = deform_inputs(xs, ws, attrs, bias=True, spread=0.0)
    (deformed,) = check_node("DeformConv", ins, attrs, rtol=1e-4, atol=1e-5)
    (plain,) = check_node("Conv", {k: ins[k] for k in ("x", "w", "b")}, attrs, reference="ort")
    np.testing.assert_allclose(deformed, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "xs,ws,attrs",
    [
        ((2, 2, 7), (3, 2, 3), {"pads": [1, 2], "strides": [2], "offset_group": 2}),
        ((1, 2, 4, 3, 4), (2, 1, 2, 2, 2), {"group": 2, "pads": [0, 1, 0, 1, 0, 1]}),
    ],
)
def test_deform_conv_1d_3d(xs, ws, attrs):
    # onnx's reference handles 2-D only: check against the definition, run one value at a time
    ins = deform_inputs(xs, ws, attrs, bias=True, mask=True)
    model = node_model("DeformConv", ins, attrs)
    (got,) = onnx2jax.load(model)(**{k: v for k, v in ins.items() if v is not None})
    expected = deform_conv_loops(*ins.values(), attrs)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)


def test_deform_conv_float16():
    xs, ws, attrs = DEFORM_CASES["groups_offset_groups"]
    ins = {
        k: v.astype(np.float16) for k, v in deform_inputs(xs, ws, attrs).items() if v is not None
    }
    (got,) = check_node("DeformConv", ins, attrs, rtol=1e-2, atol=1e-2)
    assert got.dtype == np.float16


def test_deform_conv_bad_offset_shape():
    ins = deform_inputs((1, 1, 4, 4), (1, 1, 2, 2), {})
    ins["offset"] = ins["offset"][:, :4]
    model = node_model("DeformConv", ins, {})
    with pytest.raises(NodeError, match="offset has shape"):
        onnx2jax.load(model)(**{k: v for k, v in ins.items() if v is not None})


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
