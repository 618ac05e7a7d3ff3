"""Language-model blocks (ops/llm.py) against onnx's reference."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from op_check import check_node

rng = np.random.default_rng(0)


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# -- TensorScatter --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["linear", "circular"])
@pytest.mark.parametrize("axis", [-2, 1, 2])
def test_tensor_scatter(mode, axis):
    cache = f32(3, 5, 6, 4)
    upd_shape = list(cache.shape)
    upd_shape[axis] = 2
    update = f32(*upd_shape)
    n = cache.shape[axis]
    hi = n if mode == "circular" else n - 1
    idx = rng.integers(0, hi, 3).astype(np.int64)
    check_node(
        "TensorScatter", {"c": cache, "u": update, "i": idx}, {"mode": mode, "axis": axis}, opset=24
    )
    check_node("TensorScatter", {"c": cache, "u": update}, {"axis": axis}, opset=24)


# -- SwiGLU ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("alpha", [1.0, 1.702])
def test_swiglu(dtype, alpha):
    a, b = f32(3, 8, scale=3).astype(dtype), f32(3, 8).astype(dtype)
    tol = {"rtol": 2e-3, "atol": 2e-3} if dtype == np.float16 else {}
    check_node("SwiGLU", {"a": a, "b": b}, {"alpha": alpha}, opset=28, x64=True, **tol)


# -- LinearAttention ------------------------------------------------------------------------


def _la_inputs(
    rule, b=2, t=5, hq=4, hkv=2, dk=3, dv=4, per_head_decay=False, beta_heads=True, past=False
):
    k = f32(b, t, hkv, dk)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)  # the delta rules expect unit keys
    inputs = {
        "q": f32(b, t, hq * dk),
        "k": k.reshape(b, t, hkv * dk),
        "v": f32(b, t, hkv * dv),
        "past": f32(b, hkv, dk, dv) if past else None,
        "decay": None,
        "beta": None,
    }
    if rule in ("gated", "gated_delta"):
        width = hkv if per_head_decay else hkv * dk
        inputs["decay"] = -rng.uniform(0.01, 0.5, (b, t, width)).astype(np.float32)
    if rule in ("delta", "gated_delta"):
        inputs["beta"] = rng.uniform(0.1, 0.9, (b, t, hkv if beta_heads else 1)).astype(np.float32)
    return inputs, {"q_num_heads": hq, "kv_num_heads": hkv, "update_rule": rule}


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
@pytest.mark.parametrize("past", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (3, 1)])
def test_linear_attention(rule, past, heads):
    inputs, attrs = _la_inputs(rule, hq=heads[0], hkv=heads[1], past=past)
    check_node("LinearAttention", inputs, attrs, n_outputs=2, opset=27, rtol=1e-4, atol=1e-5)


def test_linear_attention_variants():
    inputs, attrs = _la_inputs("gated_delta", per_head_decay=True, beta_heads=False)
    check_node(
        "LinearAttention",
        inputs,
        {**attrs, "scale": 0.3},
        n_outputs=2,
        opset=27,
        rtol=1e-4,
        atol=1e-5,
    )
    inputs, attrs = _la_inputs("gated", t=1, past=True)  # one decode step
    check_node("LinearAttention", inputs, attrs, n_outputs=2, opset=27, rtol=1e-4, atol=1e-5)
    inputs, attrs = _la_inputs("delta")
    half = {k: None if v is None else v.astype(np.float16) for k, v in inputs.items()}
    check_node("LinearAttention", half, attrs, n_outputs=2, opset=27, rtol=2e-3, atol=2e-3)


def test_linear_attention_rejects_missing_gate():
    from op_check import node_model

    import onnx2jax

    inputs, attrs = _la_inputs("linear")
    inputs["decay"] = -np.ones((2, 5, 6), np.float32)
    m = onnx2jax.load(node_model("LinearAttention", inputs, attrs, n_outputs=2, opset=27))
    with pytest.raises(onnx2jax.Onnx2JaxError, match="decay"):
        m(**{k: v for k, v in inputs.items() if v is not None})


# -- CausalConvWithState --------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("length", [1, 2, 9])
@pytest.mark.parametrize("extras", ["", "bias", "past", "bias+past"])
@pytest.mark.parametrize("activation", ["none", "silu"])
def test_causal_conv_with_state(k, length, extras, activation):
    c = 3
    inputs = {
        "x": f32(2, c, length),
        "w": f32(c, 1, k),
        "b": f32(c) if "bias" in extras else None,
        "s": f32(2, c, k - 1) if "past" in extras else None,
    }
    check_node("CausalConvWithState", inputs, {"activation": activation}, n_outputs=2, opset=27)


def test_causal_conv_with_state_float16_swish():
    inputs = {"x": f32(1, 4, 7).astype(np.float16), "w": f32(4, 1, 4).astype(np.float16)}
    check_node(
        "CausalConvWithState",
        inputs,
        {"activation": "swish"},
        n_outputs=2,
        opset=27,
        rtol=2e-3,
        atol=2e-3,
    )


# -- FlexAttention --------------------------------------------------------------------------


def _mod_graph(name, body, extra_inits=()):
    """A one-input, one-output modifier graph over a rank-4 float tensor ``s``."""
    return oh.make_graph(
        body,
        name,
        [oh.make_tensor_value_info("s", onnx.TensorProto.FLOAT, None)],
        [oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
        list(extra_inits),
    )


def _causal():
    return _mod_graph(
        "causal",
        [
            oh.make_node("Shape", ["s"], ["shp"]),
            oh.make_node("Gather", ["shp", "two"], ["L"], axis=0),
            oh.make_node("Gather", ["shp", "three"], ["S"], axis=0),
            oh.make_node("Range", ["zero", "L", "one"], ["qi"]),
            oh.make_node("Range", ["zero", "S", "one"], ["ki"]),
            oh.make_node("Unsqueeze", ["qi", "ax1"], ["qc"]),
            oh.make_node("GreaterOrEqual", ["qc", "ki"], ["keep"]),
            oh.make_node("Where", ["keep", "s", "ninf"], ["out"]),
        ],
        [
            onnx.numpy_helper.from_array(np.array(v, dt), n)
            for n, v, dt in [
                ("two", 2, np.int64),
                ("three", 3, np.int64),
                ("zero", 0, np.int64),
                ("one", 1, np.int64),
                ("ax1", [1], np.int64),
                ("ninf", -np.inf, np.float32),
            ]
        ],
    )


def _softcap():
    return _mod_graph(
        "softcap",
        [
            oh.make_node("Div", ["s", "cap"], ["d"]),
            oh.make_node("Tanh", ["d"], ["t"]),
            oh.make_node("Mul", ["t", "cap"], ["out"]),
        ],
        [onnx.numpy_helper.from_array(np.array(5.0, np.float32), "cap")],
    )


def _halve():
    return _mod_graph(
        "halve",
        [oh.make_node("Mul", ["s", "h"], ["out"])],
        [onnx.numpy_helper.from_array(np.array(0.5, np.float32), "h")],
    )


def _flex(inputs, attrs, **tol):
    return check_node("FlexAttention", inputs, attrs, opset=26, domain="ai.onnx.preview", **tol)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("mods", ["none", "causal", "softcap+halve"])
def test_flex_attention(heads, mods):
    hq, hkv = heads
    inputs = {"q": f32(2, hq, 5, 8), "k": f32(2, hkv, 5, 8), "v": f32(2, hkv, 5, 6)}
    attrs = {}
    if mods == "causal":
        attrs["score_mod"] = _causal()
    elif mods == "softcap+halve":
        attrs["score_mod"], attrs["prob_mod"], attrs["scale"] = _softcap(), _halve(), 0.7
    _flex(inputs, attrs, rtol=1e-5, atol=1e-6)


def test_flex_attention_dtypes():
    inputs = {"q": f32(1, 2, 3, 4), "k": f32(1, 2, 6, 4), "v": f32(1, 2, 6, 4)}
    _flex({n: v.astype(np.float16) for n, v in inputs.items()}, {}, rtol=2e-3, atol=2e-3)
    check_node(
        "FlexAttention",
        {n: v.astype(np.float64) for n, v in inputs.items()},
        {},
        opset=26,
        domain="ai.onnx.preview",
        x64=True,
    )
    _flex(inputs, {"softmax_precision": 1})
