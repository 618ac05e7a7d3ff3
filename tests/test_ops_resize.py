"""Resize and Upsample (ops/resize.py) against onnx's reference and onnxruntime."""

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator
from op_check import check_node, node_model

import onnx2jax
from onnx2jax.ops import resize as resize_mod

rng = np.random.default_rng(0)

CTMS = [
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
]


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def resize(
    x,
    *,
    scales=None,
    sizes=None,
    roi=None,
    opset=19,
    constants=("roi", "scales", "sizes"),
    reference="onnx",
    rtol=1e-5,
    atol=1e-5,
    x64=False,
    **attrs,
):
    ins = {
        "X": x,
        "roi": None if roi is None else np.asarray(roi, np.float32),
        "scales": None if scales is None else np.asarray(scales, np.float32),
        "sizes": None if sizes is None else np.asarray(sizes, np.int64),
    }
    if opset == 11 and ins["scales"] is None:
        ins["scales"] = np.zeros(0, np.float32)  # opset 11: scales is required, empty if sizes
    if opset == 11 and ins["roi"] is None:
        ins["roi"] = np.zeros(0, np.float32)
    return check_node(
        "Resize",
        ins,
        attrs,
        opset=opset,
        constants=list(constants),
        reference=reference,
        rtol=rtol,
        atol=atol,
        x64=x64,
    )


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("scales", [[1, 1, 2.0, 1.5], [1, 1, 0.6, 0.5], [1, 1, 1.7, 0.8]])
def test_modes_and_coordinate_transforms_with_scales(ctm, mode, scales):
    resize(f32(2, 3, 5, 6), scales=scales, mode=mode, coordinate_transformation_mode=ctm)


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("sizes", [[2, 3, 9, 4], [2, 3, 1, 1], [2, 3, 5, 13]])
def test_modes_and_coordinate_transforms_with_sizes(ctm, mode, sizes):
    resize(f32(2, 3, 5, 6), sizes=sizes, mode=mode, coordinate_transformation_mode=ctm)


@pytest.mark.parametrize(
    "nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
)
@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "align_corners"])
def test_nearest_modes(nearest_mode, ctm):
    x = f32(1, 2, 4, 5)
    for sizes in ([1, 2, 8, 10], [1, 2, 7, 3], [1, 2, 3, 12]):
        resize(
            x,
            sizes=sizes,
            mode="nearest",
            nearest_mode=nearest_mode,
            coordinate_transformation_mode=ctm,
        )


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("scales", [[1, 1, 0.5, 0.35], [1, 1, 0.8, 2.0]])
def test_antialias(mode, scales):
    resize(f32(1, 2, 12, 16), scales=scales, mode=mode, antialias=1)
    resize(f32(1, 2, 12, 16), sizes=[1, 2, 5, 7], mode=mode, antialias=1, opset=18)


@pytest.mark.parametrize("a", [-0.5, -0.75])
@pytest.mark.parametrize("scales", [[1, 1, 0.8, 0.8], [1, 1, 1.3, 1.3]])
def test_cubic_exclude_outside(a, scales):
    resize(f32(1, 1, 6, 6), scales=scales, mode="cubic", cubic_coeff_a=a, exclude_outside=1)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_tf_crop_and_resize(mode):
    x = f32(1, 2, 6, 7)
    roi = [0, 0, 0.2, 0.3, 1, 1, 0.7, 0.9]
    resize(
        x,
        roi=roi,
        sizes=[1, 2, 4, 5],
        mode=mode,
        coordinate_transformation_mode="tf_crop_and_resize",
    )
    # partly outside the input: extrapolation_value there
    roi = [0, 0, -0.3, 0.4, 1, 1, 0.8, 1.5]
    resize(
        x,
        roi=roi,
        sizes=[1, 2, 5, 6],
        mode=mode,
        extrapolation_value=7.5,
        coordinate_transformation_mode="tf_crop_and_resize",
    )
    resize(
        x,
        roi=[-0.3, 0.4, 0.8, 1.5],
        axes=[3, 2],
        sizes=[6, 5],
        mode=mode,
        coordinate_transformation_mode="tf_crop_and_resize",
    )


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
@pytest.mark.parametrize("axes", [None, [2, 3], [3, 2]])
def test_axes_and_keep_aspect_ratio(policy, axes):
    x = f32(1, 2, 5, 8)
    sizes = [3, 11] if axes else [1, 2, 3, 11]
    kw = {"axes": axes} if axes else {}
    got = resize(x, sizes=sizes, mode="linear", keep_aspect_ratio_policy=policy, **kw)
    if axes:
        # negative axes: onnx's reference cannot take them (and onnxruntime mishandles them
        # with keep_aspect_ratio_policy), so they must give what the positive ones do
        neg = [a - 4 for a in axes]
        model = node_model(
            "Resize",
            {"X": x, "roi": None, "scales": None, "sizes": np.array(sizes, np.int64)},
            {"mode": "linear", "keep_aspect_ratio_policy": policy, "axes": neg},
            constants=["sizes"],
        )
        np.testing.assert_array_equal(np.asarray(onnx2jax.load(model)(X=x)[0]), got[0])
    if policy == "stretch":
        resize(x, scales=[1.5, 0.5] if axes else [1, 1, 1.5, 0.5], mode="cubic", **kw)


def test_3d_5d_and_all_axes():
    resize(f32(7), scales=[2.3], mode="linear")
    resize(f32(2, 3, 4, 5, 6), sizes=[2, 3, 6, 3, 9], mode="linear")
    resize(f32(2, 3, 4, 5, 6), scales=[1, 1, 2, 2, 2], mode="nearest")
    # resizing batch and channel axes too
    resize(f32(2, 3, 4, 5), scales=[2, 0.5, 1.5, 1], mode="linear")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_integer_inputs_round_and_saturate(dtype, mode):
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -1000), min(info.max, 1000)
    x = rng.integers(lo, hi, (1, 2, 5, 6), endpoint=True).astype(dtype)
    # The reference interpolates in float64, then rounds. A value within float64 rounding of a
    # tie rounds either way depending on summation order (it did on CI's CPU), so the exact
    # check below needs data whose in-range values keep clear of ties.
    x64_model = node_model(
        "Resize",
        {"X": x.astype(np.float64), "roi": None, "scales": np.array([1, 1, 1.6, 0.7], np.float32)},
        {"mode": mode},
        constants=["scales"],
    )
    unrounded = ReferenceEvaluator(x64_model).run(None, {"X": x.astype(np.float64)})[0]
    in_range = unrounded[(unrounded > lo) & (unrounded < hi)]
    assert np.abs(in_range - np.floor(in_range) - 0.5).min() > 1e-6, "redraw: a value is at a tie"
    resize(x, scales=[1, 1, 1.6, 0.7], mode=mode, x64=True)
    # without x64 the sums are float32: a half-way value may round the other way
    model = node_model(
        "Resize",
        {"X": x, "roi": None, "scales": np.array([1, 1, 1.6, 0.7], np.float32)},
        {"mode": mode},
        constants=["scales"],
    )
    want = resize(x, scales=[1, 1, 1.6, 0.7], mode=mode, x64=True)[0].astype(np.int64)
    got = np.asarray(onnx2jax.load(model)(X=x)[0])
    assert got.dtype == dtype and np.abs(got.astype(np.int64) - want).max() <= 1


def test_half_precision_inputs():
    x = f32(1, 2, 6, 6)
    resize(x.astype(np.float16), scales=[1, 1, 1.5, 0.5], mode="linear", rtol=2e-3, atol=2e-3)
    resize(
        x.astype(np.float64), sizes=[1, 2, 9, 4], mode="linear", rtol=1e-12, atol=1e-12, x64=True
    )
    # the reference's cubic weights go through float32 (cubic_coeff_a is a float32 scalar)
    resize(x.astype(np.float64), sizes=[1, 2, 9, 4], mode="cubic", rtol=1e-5, atol=1e-6, x64=True)


def test_opset_11_and_13_forms():
    x = f32(1, 2, 4, 5)
    resize(x, scales=[1, 1, 2, 2], mode="linear", opset=11)
    resize(x, sizes=[1, 2, 7, 3], mode="nearest", opset=11)
    resize(x, sizes=[1, 2, 7, 3], mode="cubic", opset=13)
    resize(x, scales=[1, 1, 0.5, 1.5], mode="cubic", opset=13)


def test_scales_and_sizes_as_graph_inputs_are_value_specialised():
    x = f32(1, 2, 4, 5)
    resize(x, scales=[1, 1, 2, 3], mode="linear", constants=())
    resize(x, sizes=[1, 2, 3, 7], mode="nearest", constants=())


def test_wide_axes_use_tap_gathers(monkeypatch):
    """Above the dense-matrix limit the same numbers come from k gathered taps."""
    monkeypatch.setattr(resize_mod, "_DENSE_LIMIT", 0)
    x = f32(1, 2, 6, 7)
    for mode in ("linear", "cubic"):
        resize(x, scales=[1, 1, 1.7, 0.6], mode=mode)
        resize(x, scales=[1, 1, 0.4, 0.6], mode=mode, antialias=1)
    resize(x.astype(np.float16), scales=[1, 1, 1.5, 0.5], mode="linear", rtol=2e-3, atol=2e-3)
    resize((x * 50).astype(np.int8), scales=[1, 1, 1.6, 0.7], mode="linear", x64=True)


def _primitives(jaxpr):
    names = set()
    for e in jaxpr.eqns:
        names.add(e.primitive.name)
        for p in e.params.values():
            inner = getattr(p, "jaxpr", None)
            if inner is not None:
                names |= _primitives(getattr(inner, "jaxpr", inner))
    return names


def test_plan_is_a_gather_for_nearest_and_a_dot_for_linear():
    import jax

    def ops(mode):
        m = node_model(
            "Resize",
            {"X": f32(1, 1, 4, 4), "roi": None, "scales": np.array([1, 1, 2, 2], np.float32)},
            {"mode": mode},
            constants=["scales"],
        )
        model = onnx2jax.load(m)
        jaxpr = jax.make_jaxpr(lambda x: model.apply(model.params, X=x))(f32(1, 1, 4, 4))
        return _primitives(jaxpr.jaxpr)

    assert "gather" in ops("nearest") and "dot_general" not in ops("nearest")
    assert "dot_general" in ops("linear")


# -- Resize-10 and Upsample: asymmetric, nearest floors up and ceils down (onnxruntime) --------


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 3], [1, 1, 1.7, 2.5], [1, 1, 0.6, 0.4]])
def test_resize_10(mode, scales):
    x = f32(1, 2, 5, 7)
    check_node(
        "Resize",
        {"X": x, "scales": np.array(scales, np.float32)},
        {"mode": mode},
        opset=10,
        constants=["scales"],
        reference="ort",
    )


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 3], [1, 1, 1.7, 2.5], [1, 1.5, 1, 1]])
def test_upsample(mode, scales):
    x = f32(1, 2, 5, 7)
    s = np.array(scales, np.float32)
    check_node(
        "Upsample",
        {"X": x, "scales": s},
        {"mode": mode},
        opset=9,
        constants=["scales"],
        reference="ort",
    )
    check_node(
        "Upsample",
        {"X": x},
        {"mode": mode, "scales": [float(v) for v in scales]},
        opset=7,
        reference="ort",
    )


def test_upsample_integer_nearest_matches_reference():
    x = rng.integers(0, 9, (1, 2, 3, 4)).astype(np.int64)
    check_node(
        "Upsample",
        {"X": x, "scales": np.array([1, 1, 2, 3], np.float32)},
        {"mode": "nearest"},
        opset=9,
        constants=["scales"],
        x64=True,
    )


def test_upsample_1_attributes():
    x = f32(1, 2, 3, 4)
    m = node_model(
        "Upsample", {"X": x}, {"height_scale": 2.0, "width_scale": 3.0, "mode": "nearest"}, opset=1
    )
    got = np.asarray(onnx2jax.load(m)(X=x)[0])
    np.testing.assert_array_equal(got, x.repeat(2, axis=2).repeat(3, axis=3))
    m = node_model(
        "Upsample", {"X": x}, {"height_scale": 2.0, "width_scale": 2.0, "mode": "bilinear"}, opset=1
    )
    got = np.asarray(onnx2jax.load(m)(X=x)[0])
    # asymmetric bilinear: even outputs are the inputs, odd ones the mean of two neighbours
    np.testing.assert_allclose(got[..., ::2, ::2], x, rtol=1e-6)
    np.testing.assert_allclose(got[..., 1, 1], x[..., :2, :2].mean(axis=(-1, -2)), rtol=1e-5)
