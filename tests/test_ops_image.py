"""GridSample, AffineGrid, RoiAlign, Col2Im, MaxUnpool, ImageDecoder (ops/image.py) vs references."""

import io
import itertools
import sys

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator
from op_check import check_node, node_model

import onnx2jax
from onnx2jax._errors import NodeError
from onnx2jax.ops.image import roi_align

rng = np.random.default_rng(0)


def f32(*shape, low=-1.0, high=1.0):
    return rng.uniform(low, high, shape).astype(np.float32)


# -- GridSample ---------------------------------------------------------------------------------

MODES = ["nearest", "linear", "cubic"]
PADDINGS = ["zeros", "border", "reflection"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("align_corners", [0, 1])
def test_grid_sample_2d(mode, padding_mode, align_corners):
    x = f32(2, 3, 5, 6)
    grid = f32(2, 4, 7, 2, low=-1.7, high=1.7)  # partly outside: exercises the padding
    attrs = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
    check_node("GridSample", {"X": x, "grid": grid}, attrs, opset=22, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("align_corners", [0, 1])
def test_grid_sample_reflects_repeatedly(mode, align_corners):
    # far outside the input: reflected off both borders, several times
    x, grid = f32(1, 2, 3, 4), f32(1, 5, 6, 2, low=-5, high=5)
    attrs = {"mode": mode, "padding_mode": "reflection", "align_corners": align_corners}
    check_node("GridSample", {"X": x, "grid": grid}, attrs, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("align_corners", [0, 1])
def test_grid_sample_3d(mode, padding_mode, align_corners):
    x = f32(1, 2, 3, 4, 5)
    grid = f32(1, 2, 3, 4, 3, low=-1.5, high=1.5)
    attrs = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
    check_node("GridSample", {"X": x, "grid": grid}, attrs, opset=20, atol=1e-5)


@pytest.mark.slow  # over 5 s of CPU (many small compiles); `-m slow` runs it
def test_grid_sample_3d_cubic_and_1d():
    attrs = {"mode": "cubic", "padding_mode": "reflection"}
    check_node(
        "GridSample",
        {"X": f32(1, 1, 3, 4, 4), "grid": f32(1, 2, 2, 3, 3, low=-1.3, high=1.3)},
        attrs,
        atol=1e-5,
    )
    attrs = {"mode": "linear", "padding_mode": "border", "align_corners": 1}
    check_node(
        "GridSample",
        {"X": f32(2, 3, 6), "grid": f32(2, 5, 1, low=-1.3, high=1.3)},
        attrs,
        atol=1e-5,
    )


def test_grid_sample_exact_half_way_rounds_to_even():
    # x = 0.5 and 1.5 (align_corners=1, width 3): nearest rounds half to even (PyTorch)
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    grid = np.array([[[[-0.5, -1.0], [0.5, -1.0], [0.0, 1.0]]]], np.float32)
    out = check_node("GridSample", {"X": x, "grid": grid}, {"mode": "nearest", "align_corners": 1})
    np.testing.assert_array_equal(out[0].ravel(), [0, 2, 4])


# bilinear/bicubic (3-5 s each) under -m slow: the opset-20 names of those modes are covered
# by test_grid_sample_2d, the opset-16 names by "nearest" here and the node suite's cases.
@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("bilinear", marks=pytest.mark.slow),
        pytest.param("bicubic", marks=pytest.mark.slow),
        "nearest",
    ],
)
def test_grid_sample_16_names(mode):
    x, grid = f32(1, 2, 4, 5), f32(1, 3, 3, 2, low=-1.2, high=1.2)
    # (bicubic with border padding: onnxruntime reads taps around the unclamped coordinate,
    # like PyTorch; onnx's reference, which we follow, clamps the coordinate first)
    for padding_mode in ("zeros", "reflection") + (("border",) if mode != "bicubic" else ()):
        check_node(
            "GridSample",
            {"X": x, "grid": grid},
            {"mode": mode, "padding_mode": padding_mode},
            opset=16,
            reference="ort",
            atol=1e-5,
        )


@pytest.mark.slow  # over 5 s of CPU (many small compiles); `-m slow` runs it
def test_grid_sample_float64_and_constant_grid():
    x, grid = f32(1, 2, 4, 5).astype(np.float64), f32(1, 3, 3, 2).astype(np.float64)
    check_node(
        "GridSample", {"X": x, "grid": grid}, {"mode": "cubic"}, x64=True, rtol=1e-6, atol=1e-6
    )
    check_node(
        "GridSample",
        {"X": f32(1, 2, 4, 5), "grid": f32(1, 3, 3, 2)},
        {},
        constants=["grid"],
        atol=1e-6,
    )


# -- AffineGrid ---------------------------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("size", [[2, 3, 5, 6], [2, 1, 3, 4, 5]])
def test_affine_grid(align_corners, size):
    theta = f32(2, len(size) - 2, len(size) - 1)
    check_node(
        "AffineGrid",
        {"theta": theta, "size": np.array(size, np.int64)},
        {"align_corners": align_corners},
        constants=["size"],
        atol=1e-6,
    )


def test_affine_grid_then_grid_sample_is_identity_for_identity_theta():
    theta = np.tile(np.eye(2, 3, dtype=np.float32), (1, 1, 1))
    out = check_node(
        "AffineGrid",
        {"theta": theta, "size": np.array([1, 1, 3, 4], np.int64)},
        {"align_corners": 1},
        constants=["size"],
    )
    x = f32(1, 2, 3, 4)
    y = check_node("GridSample", {"X": x, "grid": out[0]}, {"align_corners": 1})
    np.testing.assert_allclose(y[0], x, atol=1e-6)


# -- RoiAlign -----------------------------------------------------------------------------------

ROIS = np.array(
    [
        [0.0, 0.0, 9.0, 9.0],
        [0.0, 5.0, 4.0, 9.0],
        [5.0, 5.0, 9.0, 9.0],
        [2.2, 1.3, 7.9, 3.1],
        [3.0, 3.0, 3.2, 3.1],
        [-4.0, -2.0, 14.0, 25.0],
        [8.5, 8.0, 30.0, 31.0],
    ],
    np.float32,
)


@pytest.mark.parametrize("mode", ["avg", pytest.param("max", marks=pytest.mark.slow)])
@pytest.mark.parametrize("ctm", ["half_pixel", "output_half_pixel"])
# mode "max" (the same sampling, another reduction: 5-9 s per case) and sampling_ratio 0 (samples per bin from the rois) takes 10-17 s per case: under `-m slow`
@pytest.mark.parametrize("sampling_ratio", [pytest.param(0, marks=pytest.mark.slow), 2])
def test_roi_align(mode, ctm, sampling_ratio):
    x = f32(2, 3, 10, 10)
    bi = np.array([0, 1, 0, 1, 0, 1, 1], np.int64)
    attrs = {
        "mode": mode,
        "coordinate_transformation_mode": ctm,
        "sampling_ratio": sampling_ratio,
        "output_height": 3,
        "output_width": 4,
        "spatial_scale": 1.0,
    }
    ins = {"X": x, "rois": ROIS, "batch_indices": bi}
    # traced rois (graph inputs, or float initializers, which are params): with
    # sampling_ratio 0 the samples per bin are data; rois larger than the image take more
    # than one chunk of samples
    check_node("RoiAlign", ins, attrs, opset=22, atol=1e-5)
    check_node(
        "RoiAlign",
        dict(ins, rois=ROIS[:5], batch_indices=bi[:5]),
        attrs,
        opset=22,
        atol=1e-5,
        constants=["rois", "batch_indices"],
    )
    # rois known at trace time (numpy): all samples of every bin at once
    want = ReferenceEvaluator(node_model("RoiAlign", ins, attrs)).run(None, ins)[0]
    got = roi_align(x, ROIS, bi, **attrs)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


@pytest.mark.slow  # over 5 s of CPU (many small compiles); `-m slow` runs it
def test_roi_align_spatial_scale_and_opset_10():
    x = f32(1, 4, 8, 12)
    rois = np.array([[0, 0, 20, 14], [4.5, 2, 17, 9], [10, 1, 11, 2]], np.float32)
    bi = np.zeros(3, np.int64)
    attrs = {"output_height": 2, "output_width": 3, "spatial_scale": 0.5}
    check_node(
        "RoiAlign",
        {"X": x, "rois": rois, "batch_indices": bi},
        attrs,
        opset=10,
        reference="ort",
        atol=1e-5,
    )
    check_node(
        "RoiAlign",
        {"X": x, "rois": rois, "batch_indices": bi},
        dict(attrs, mode="max", sampling_ratio=3),
        opset=16,
        atol=1e-5,
    )


# -- Col2Im -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image,block,dil,pads,strides",
    [
        ([5, 5], [2, 2], None, None, None),
        ([5, 6], [2, 3], [2, 1], [1, 0, 1, 2], [2, 1]),
        ([4, 4], [3, 3], None, [1, 1, 1, 1], [1, 1]),
        ([3, 4, 5], [2, 2, 2], [1, 2, 1], [0, 1, 0, 1, 0, 1], [1, 1, 2]),
        ([7], [3], [2], [1, 0], [2]),
    ],
)
def test_col2im(image, block, dil, pads, strides):
    nd = len(image)
    dil_, pads_, st_ = dil or [1] * nd, pads or [0] * (2 * nd), strides or [1] * nd
    blocks = [
        (image[i] + pads_[i] + pads_[i + nd] - dil_[i] * (block[i] - 1) - 1) // st_[i] + 1
        for i in range(nd)
    ]
    x = f32(2, 3 * int(np.prod(block)), int(np.prod(blocks)))
    attrs = {k: v for k, v in (("dilations", dil), ("pads", pads), ("strides", strides)) if v}
    check_node(
        "Col2Im",
        {
            "x": x,
            "image_shape": np.array(image, np.int64),
            "block_shape": np.array(block, np.int64),
        },
        attrs,
        constants=["image_shape", "block_shape"],
        atol=1e-5,
    )


# -- MaxUnpool ----------------------------------------------------------------------------------


def _pool_indices(x_shape, kernel, strides):
    """Flat indices (over the whole NC... tensor) of one element per pooling window."""
    n, c, *sp = x_shape
    outs = [(s - k) // st + 1 for s, k, st in zip(sp, kernel, strides, strict=True)]
    idx = np.zeros((n, c, *outs), np.int64)
    for pos in itertools.product(range(n), range(c), *[range(o) for o in outs]):
        full = [pos[0], pos[1]] + [
            pos[2 + i] * strides[i] + rng.integers(0, kernel[i]) for i in range(len(sp))
        ]
        idx[pos] = np.ravel_multi_index(full, x_shape)
    return idx


@pytest.mark.parametrize(
    "shape,kernel,strides",
    [([2, 3, 4, 4], [2, 2], [2, 2]), ([1, 2, 6, 4], [3, 2], [3, 2]), ([1, 2, 6], [2], [2])],
)
def test_max_unpool(shape, kernel, strides):
    idx = _pool_indices(shape, kernel, strides)
    x = f32(*idx.shape)
    attrs = {"kernel_shape": kernel, "strides": strides}
    check_node("MaxUnpool", {"x": x, "i": idx}, attrs, opset=11)
    # a larger output_shape: padded with zeros at the end (onnx's reference)
    out_shape = np.array([*shape[:2], *[s + 1 for s in shape[2:]]], np.int64)
    check_node(
        "MaxUnpool",
        {"x": x, "i": idx, "output_shape": out_shape},
        attrs,
        opset=22,
        constants=["output_shape"],
    )
    check_node("MaxUnpool", {"x": x, "i": idx}, attrs, opset=9, constants=["i"])


# -- ImageDecoder -------------------------------------------------------------------------------


def encode(fmt, mode="RGB", size=(7, 5), **options):
    """A random image of ``size`` (width, height) in ``mode``, encoded as ``fmt`` (uint8 bytes)."""
    image = pytest.importorskip("PIL.Image")
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return np.frombuffer(buf.getvalue(), np.uint8).copy()


FORMATS = {
    "PNG": {},
    "BMP": {},
    "JPEG": {"quality": 90},
    "JPEG2000": {},
    "WEBP": {"lossless": True},
    "TIFF": {},
    "PPM": {},
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("pixel_format", ["RGB", "BGR", "Grayscale"])
def test_image_decoder(fmt, pixel_format):
    data = encode(fmt, **FORMATS[fmt])
    out = check_node("ImageDecoder", {"encoded": data}, {"pixel_format": pixel_format}, opset=20)
    assert out[0].shape == (5, 7, 1 if pixel_format == "Grayscale" else 3)
    assert out[0].dtype == np.uint8


def test_image_decoder_constant_input():
    data = encode("PNG")
    check_node("ImageDecoder", {"encoded": data}, {"pixel_format": "BGR"}, constants=["encoded"])


def test_image_decoder_new_bytes_new_image():
    # a graph input is value-specialised: other bytes (another size, too) decode afresh
    image = pytest.importorskip("PIL.Image")
    first, second = encode("PNG"), encode("PNG", size=(4, 9))
    proto = node_model("ImageDecoder", {"encoded": first}, opset=20)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "bytes"
    model = onnx2jax.load(proto)
    for data in (first, second, first):
        (got,) = model(data)
        expected = np.asarray(image.open(io.BytesIO(data.tobytes())))
        np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_image_decoder_converts_to_three_channels(mode):
    # the spec's RGB/BGR output has 3 channels whatever the file stores (onnx's reference
    # returns a palette or RGBA file's array as it is)
    image = pytest.importorskip("PIL.Image")
    data = encode("PNG", mode=mode)
    expected = np.asarray(image.open(io.BytesIO(data.tobytes())).convert("RGB"))
    model = onnx2jax.load(node_model("ImageDecoder", {"encoded": data}, opset=20))
    np.testing.assert_array_equal(np.asarray(model(data)[0]), expected)
    bgr = node_model("ImageDecoder", {"encoded": data}, {"pixel_format": "BGR"}, opset=20)
    np.testing.assert_array_equal(np.asarray(onnx2jax.load(bgr)(data)[0]), expected[:, :, ::-1])


def test_image_decoder_without_pillow(monkeypatch):
    data = encode("PNG")
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL.Image` fail
    monkeypatch.delitem(sys.modules, "PIL.Image", raising=False)
    model = onnx2jax.load(node_model("ImageDecoder", {"encoded": data}, opset=20))
    with pytest.raises(NodeError, match=r"ImageDecoder.*pip install pillow"):
        model(data)


def test_image_decoder_bad_pixel_format():
    data = encode("PNG")
    model = node_model("ImageDecoder", {"encoded": data}, {"pixel_format": "CMYK"}, opset=20)
    with pytest.raises(NodeError, match="pixel_format"):
        onnx2jax.load(model)(data)
