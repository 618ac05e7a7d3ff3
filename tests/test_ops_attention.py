"""Attention (opsets 23-25) and RotaryEmbedding against the ONNX reference and onnxruntime."""

import numpy as np
import pytest
from op_check import check_node, node_model

import onnx2jax

rng = np.random.default_rng(0)
TOL = {"rtol": 1e-4, "atol": 1e-5}


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def qkv4(b=2, hq=4, hkv=4, sq=3, skv=5, d=8, dv=8, dtype=np.float32):
    return {
        "Q": randn(b, hq, sq, d, dtype=dtype),
        "K": randn(b, hkv, skv, d, dtype=dtype),
        "V": randn(b, hkv, skv, dv, dtype=dtype),
    }


@pytest.mark.parametrize("hq,hkv,dv", [(4, 4, 8), (4, 2, 8), (4, 1, 8), (4, 2, 6)])
@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"scale": 0.3},
        {"is_causal": 1},
        {"softcap": 2.0},
        {"is_causal": 1, "scale": 0.5, "softcap": 1.5},
    ],
)
def test_attention_4d(hq, hkv, dv, attrs):
    check_node("Attention", qkv4(hq=hq, hkv=hkv, dv=dv), attrs, opset=23, **TOL)


@pytest.mark.parametrize("hq,hkv,dv", [(4, 4, 8), (4, 2, 8), (6, 3, 4)])
@pytest.mark.parametrize("attrs", [{}, {"is_causal": 1}, {"softcap": 3.0, "scale": 0.2}])
def test_attention_3d(hq, hkv, dv, attrs):
    b, sq, skv, d = 2, 3, 5, 8
    inputs = {"Q": randn(b, sq, hq * d), "K": randn(b, skv, hkv * d), "V": randn(b, skv, hkv * dv)}
    attrs = {"q_num_heads": hq, "kv_num_heads": hkv} | attrs
    check_node("Attention", inputs, attrs, opset=23, **TOL)
    check_node("Attention", inputs, attrs, opset=23, reference="ort", **TOL)


@pytest.mark.parametrize(
    "mask_shape", [(3, 5), (4, 3, 5), (2, 4, 3, 5), (2, 1, 3, 5), (5,), (3, 4)]
)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_masks(mask_shape, kind, is_causal):
    # (3, 4): a mask shorter than the keys is padded with "not allowed".
    if is_causal and len(mask_shape) == 1:
        pytest.skip("the reference cannot compose a rank-1 mask with is_causal")
    if kind == "bool":
        mask = rng.random(mask_shape) > 0.3
    else:
        mask = randn(*mask_shape)
    inputs = qkv4() | {"attn_mask": mask}
    check_node("Attention", inputs, {"is_causal": is_causal}, opset=23, **TOL)


def test_attention_fully_masked_rows_are_zero():
    mask = np.ones((3, 5), np.bool_)
    mask[1] = False
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    inputs = qkv4()
    for m in (mask, fmask):
        out = check_node(
            "Attention",
            inputs | {"attn_mask": m},
            {"qk_matmul_output_mode": 3},
            n_outputs=4,
            opset=24,
            **TOL,
        )
        assert np.all(np.isfinite(out[0])) and np.all(out[0][:, :, 1] == 0)
        assert np.all(out[3][:, :, 1] == 0)
    # Causal with more queries than keys: the structurally empty leading rows are zero too.
    out = check_node("Attention", qkv4(sq=5, skv=3), {"is_causal": 1}, opset=23, **TOL)
    assert np.all(np.isfinite(out[0]))


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2)])
@pytest.mark.parametrize("attrs", [{}, {"is_causal": 1}])
def test_attention_past_present(hq, hkv, attrs):
    b, past, d = 2, 4, 8
    inputs = qkv4(hq=hq, hkv=hkv, sq=2, skv=2) | {
        "attn_mask": randn(2, past + 2),
        "past_key": randn(b, hkv, past, d),
        "past_value": randn(b, hkv, past, d),
    }
    check_node("Attention", inputs, attrs, n_outputs=3, opset=23, **TOL)
    check_node("Attention", inputs, attrs, n_outputs=3, opset=23, reference="ort", **TOL)


def test_attention_past_present_3d():
    b, sq, hq, hkv, d, past = 2, 2, 4, 2, 8, 3
    inputs = {
        "Q": randn(b, sq, hq * d),
        "K": randn(b, sq, hkv * d),
        "V": randn(b, sq, hkv * d),
        "attn_mask": None,
        "past_key": randn(b, hkv, past, d),
        "past_value": randn(b, hkv, past, d),
    }
    check_node(
        "Attention",
        inputs,
        {"q_num_heads": hq, "kv_num_heads": hkv, "is_causal": 1},
        n_outputs=3,
        opset=23,
        **TOL,
    )


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("softcap", [0.0, 2.0])
def test_attention_qk_matmul_output_modes(mode, softcap):
    inputs = qkv4(hq=4, hkv=2) | {
        "attn_mask": randn(3, 5),
        "past_key": randn(2, 2, 1, 8),
        "past_value": randn(2, 2, 1, 8),
    }
    inputs["attn_mask"] = randn(3, 6)
    attrs = {"qk_matmul_output_mode": mode, "softcap": softcap, "is_causal": 1}
    # Mode 0 with a softcap: the spec (and onnxruntime) report the raw product; onnx's
    # reference reports the soft-capped one, so that combination is checked against ORT only.
    if not (mode == 0 and softcap):
        check_node("Attention", inputs, attrs, n_outputs=4, opset=23, **TOL)
    if mode != 2:  # ORT's mode 2 writes masked scores as float32-lowest instead of -inf
        check_node("Attention", inputs, attrs, n_outputs=4, opset=23, reference="ort", **TOL)


@pytest.mark.parametrize("precision", [1, 10, 11])
def test_attention_softmax_precision(precision):
    inputs = qkv4(dtype=np.float16)
    out = check_node(
        "Attention",
        inputs,
        {"softmax_precision": precision, "qk_matmul_output_mode": 3},
        n_outputs=4,
        opset=24,
        rtol=1e-2,
        atol=2e-3,
    )
    assert out[0].dtype == np.float16 and out[3].dtype == np.float16


def test_attention_float16():
    inputs = qkv4(hq=4, hkv=2, dtype=np.float16) | {"attn_mask": randn(3, 5, dtype=np.float16)}
    out = check_node("Attention", inputs, {"is_causal": 1}, opset=23, rtol=1e-2, atol=2e-3)
    assert out[0].dtype == np.float16


@pytest.mark.parametrize("attrs", [{}, {"is_causal": 1}])
@pytest.mark.parametrize("nonpad", [[5, 3], [2, 5], [1, 2]])
def test_attention_nonpad_kv_seqlen(attrs, nonpad):
    # External cache: bottom-right causal alignment per batch, padding keys masked out.
    inputs = qkv4(hq=4, hkv=2, sq=2, skv=5) | {
        "attn_mask": None,
        "past_key": None,
        "past_value": None,
        "nonpad_kv_seqlen": np.array(nonpad, np.int64),
    }
    check_node("Attention", inputs, attrs, opset=24, **TOL)
    inputs["attn_mask"] = rng.random((4, 2, 5)) > 0.2
    check_node("Attention", inputs, attrs, opset=24, **TOL)


@pytest.mark.parametrize(
    "left,right,causal", [(2, 0, 0), (2, 1, 0), (1, -1, 1), (-1, 1, 0), (0, 0, 0), (3, -1, 0)]
)
def test_attention_sliding_window(left, right, causal):
    attrs = {"left_window_size": left, "right_window_size": right, "is_causal": causal}
    check_node("Attention", qkv4(sq=4, skv=6), attrs, opset=25, **TOL)
    past = {
        "attn_mask": rng.random((4, 7)) > 0.2,
        "past_key": randn(2, 4, 3, 8),
        "past_value": randn(2, 4, 3, 8),
    }
    check_node("Attention", qkv4(sq=4, skv=4) | past, attrs, n_outputs=3, opset=25, **TOL)
    ext = {
        "attn_mask": randn(4, 1, 6),
        "past_key": None,
        "past_value": None,
        "nonpad_kv_seqlen": np.array([6, 4], np.int64),
    }
    check_node("Attention", qkv4(sq=4, skv=6) | ext, attrs, opset=25, **TOL)


# From 512 queries and 256 keys, on CPU, the lowering takes query blocks (ops/attention.py)
# unless the graph reads the scores output. Each case checks that it did (a scan in the
# program) and the result against the reference and onnxruntime.
def _long(hq, hkv, sq=520, skv=300, d=8, rank3=False):
    if rank3:
        return {"Q": randn(2, sq, hq * d), "K": randn(2, skv, hkv * d), "V": randn(2, skv, hkv * d)}
    return qkv4(hq=hq, hkv=hkv, sq=sq, skv=skv, d=d, dv=d)


def _takes_blocks(inputs, attrs, n_outputs=1):
    import jax

    m = onnx2jax.load(node_model("Attention", inputs, attrs, n_outputs=n_outputs, opset=23))
    feeds = {k: v for k, v in inputs.items() if v is not None}
    return "scan" in str(jax.make_jaxpr(lambda f: m.apply(m.params, **f))(feeds))


def _masked_rows(shape):
    mask = rng.random(shape) > 0.3
    mask[..., 7, :] = False  # rows with no attendable key come out 0
    mask[..., 515, :] = False
    return mask


@pytest.mark.parametrize(
    "case",
    ["plain", "gqa causal", "bool mask, empty rows", "float mask per batch", "3-D heads"],
)
def test_attention_long_sequences_in_blocks(case):
    attrs = {}
    if case == "plain":
        inputs = _long(2, 2)
    elif case == "gqa causal":
        inputs, attrs = _long(4, 2, sq=600, skv=600), {"is_causal": 1, "scale": 0.2}
    elif case == "bool mask, empty rows":
        inputs = _long(2, 1) | {"attn_mask": _masked_rows((520, 300))}
    elif case == "float mask per batch":
        inputs = _long(2, 2) | {"attn_mask": randn(2, 1, 520, 300)}
    else:
        inputs, attrs = _long(4, 2, rank3=True), {"q_num_heads": 4, "kv_num_heads": 2}
    assert _takes_blocks(inputs, attrs)
    out = check_node("Attention", inputs, attrs, opset=23, **TOL)
    check_node("Attention", inputs, attrs, opset=23, reference="ort", **TOL)
    if case.startswith("bool"):
        assert np.all(out[0][:, :, [7, 515]] == 0)


def test_attention_long_sequences_reading_scores_take_one_pass():
    inputs = _long(2, 2) | {"attn_mask": _masked_rows((520, 300))}
    attrs = {"qk_matmul_output_mode": 3}
    assert not _takes_blocks(inputs, attrs, n_outputs=4)
    check_node("Attention", inputs, attrs, n_outputs=4, opset=23, **TOL)


def test_attention_rejects_window_before_opset_25():
    with pytest.raises(onnx2jax.UnsupportedOpsError, match="left_window_size"):
        onnx2jax.load(node_model("Attention", qkv4(), {"left_window_size": 1}, opset=24))


def rope_caches(rows, half, dtype=np.float32):
    theta = rng.uniform(0, 6, (rows, half))
    return np.cos(theta).astype(dtype), np.sin(theta).astype(dtype)


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rot_dim", [0, 4])
@pytest.mark.parametrize("layout", ["4d", "3d"])
def test_rotary_embedding(interleaved, rot_dim, layout):
    b, h, s, d = 2, 3, 5, 8
    x = randn(b, h, s, d) if layout == "4d" else randn(b, s, h * d)
    half = (rot_dim or d) // 2
    cos, sin = rope_caches(16, half)
    pos = rng.integers(0, 16, (b, s)).astype(np.int64)
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": rot_dim}
    if layout == "3d":
        attrs["num_heads"] = h
    check_node(
        "RotaryEmbedding", {"X": x, "cos": cos, "sin": sin, "pos": pos}, attrs, opset=23, **TOL
    )
    # Without position ids the caches are already (batch, seq, rot/2).
    cos3, sin3 = (np.stack([c[:s]] * b) for c in (cos, sin))
    check_node(
        "RotaryEmbedding",
        {"X": x, "cos": cos3, "sin": sin3},
        attrs,
        opset=23,
        constants=["cos", "sin"],
        **TOL,
    )


def test_rotary_embedding_float16():
    x = randn(1, 2, 4, 8, dtype=np.float16)
    cos, sin = rope_caches(6, 4, np.float16)
    out = check_node(
        "RotaryEmbedding",
        {"X": x, "cos": cos, "sin": sin, "pos": np.array([[0, 2, 3, 5]], np.int64)},
        {"interleaved": 1},
        opset=23,
        rtol=1e-2,
        atol=1e-3,
    )
    assert out[0].dtype == np.float16


def test_attention_gradient_finite_with_masked_rows():
    import jax

    mask = rng.random((3, 5)) > 0.5
    mask[0] = False  # a fully masked row must not turn gradients into NaN
    inputs = qkv4() | {"attn_mask": mask}
    m = onnx2jax.load(node_model("Attention", inputs, {"is_causal": 1}, opset=23))
    rest = {k: v for k, v in inputs.items() if k != "Q"}

    def loss(q):
        return m.apply(m.params, Q=q, **rest)[0].sum()

    g = jax.grad(loss)(jax.numpy.asarray(inputs["Q"]))
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(g)[:, :, 0] == 0)
