"""com.microsoft GroupQueryAttention and MultiHeadAttention options (single nodes built with
onnx.helper) against onnxruntime's CPU kernels: softcap, smooth softmax, head sinks, local
windows, attention_bias, qk_output, total_sequence_length as a graph input; MultiHeadAttention's
shared buffer (past_sequence_length), beam search's cache_indirection, 4-D key/value and key
padding masks; and the errors for what is not supported."""

from __future__ import annotations

import jax
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx2jax

HQ, HK, N, D = 4, 2, 4, 16
MS = "com.microsoft"


def _model(op_type, ins, outs, attrs, rng):
    """One ``op_type`` node; ``ins`` is a list of (name, array or None for an absent input)."""
    feeds = {n: a for n, a in ins if a is not None}
    vi = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
          for n, a in feeds.items()]  # fmt: skip
    names = [n if a is not None else "" for n, a in ins]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op_type, names, outs, name=f"{op_type}_node", domain=MS, **attrs)
    graph = helper.make_graph(
        [node], "g", vi, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model, feeds


def _merged(cases):
    """Several one-node models ``{case: (model, feeds)}`` as one graph (names prefixed by the
    case), so that all of them cost one compile and one onnxruntime session."""
    nodes, inputs, outputs, feeds = [], [], [], {}
    for case, (model, case_feeds) in cases.items():
        g = model.graph
        rename = {v.name: f"{case}.{v.name}" for v in [*g.input, *g.output]}
        for node in g.node:
            node.input[:] = [rename.get(n, n) for n in node.input]
            node.output[:] = [rename.get(n, n) for n in node.output]
            node.name = f"{case}.{node.name}"
            nodes.append(node)
        for v in [*g.input, *g.output]:
            v.name = rename[v.name]
        inputs += g.input
        outputs += g.output
        feeds.update({rename[k]: v for k, v in case_feeds.items()})
    graph = helper.make_graph(nodes, "cases", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model, feeds


def _check(cases, views=None):
    """onnx2jax (the model object: one jitted call for all cases) against onnxruntime;
    ``views`` maps an output to the part of it onnxruntime defines."""
    model, feeds = _merged(cases)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = dict(zip(names, sess.run(None, feeds), strict=True))
    m = onnx2jax.load(model)
    got = m.outputs_dict(m(**feeds))
    for name in names:
        g, w = np.asarray(got[name]), want[name]
        assert g.shape == w.shape, (name, g.shape, w.shape)
        view = (views or {}).get(name)
        if view is not None:
            g, w = view(g), view(w)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def _gqa(b, s, p, attrs=None, bias=None, sink=None, qk=False, seed=0, seqlens=None):
    """A GroupQueryAttention node with separate Q/K/V, a past of ``p`` positions, rows of
    ``p`` and ``p - 2`` valid positions (ragged when b = 2) and total_sequence_length given as
    a graph input (int32 scalar)."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    lens = np.array([p, max(p - 2, 0)][:b])
    total = int((lens + s).max())
    if seqlens is not None:  # a first prompt: total = s, rows of seqlens + 1 tokens
        lens = np.asarray(seqlens) + 1 - s
    ins = [("q", r(b, s, HQ * D)), ("k", r(b, s, HK * D)), ("v", r(b, s, HK * D)),
           ("past_k", r(b, HK, p, D)), ("past_v", r(b, HK, p, D)),
           ("seqlens_k", (lens + s - 1).astype(np.int32)),
           ("total_sequence_length", np.array(total, np.int32)),
           ("cos", None), ("sin", None), ("pos", None),
           ("bias", None if bias is None else r(bias[0], bias[1], s, total)),
           ("sink", None if sink is None else np.array(sink, np.float32))]  # fmt: skip
    outs = ["y", "present_k", "present_v"] + (["qk"] if qk else [])
    attrs = {"num_heads": HQ, "kv_num_heads": HK, **(attrs or {})}
    return _model("GroupQueryAttention", ins, outs, attrs, rng)


# Each option at least once, combined the way onnxruntime orders them: scale, softcap, bias,
# causal and local-window masks, then the softmax with its sink. Fewer nodes: less compile time.
GQA_CASES = {
    "softcap_bias_qk_before_softmax": {"attrs": {"softcap": 1.5, "qk_output": 1},
                                       "bias": (2, HQ), "qk": True},
    "smooth_softmax_local_window_qk_after": {"attrs": {"smooth_softmax": 1, "qk_output": 2,
                                                       "local_window_size": 3}, "qk": True},
    "head_sink_broadcast_bias_window": {"attrs": {"local_window_size": 2}, "bias": (1, 1),
                                        "sink": [0.5, -1.0, 2.0, 0.0]},
}  # fmt: skip


def test_group_query_attention_options_match_onnxruntime():
    """A ragged decode step (batch 2, one token, past lengths 5 and 3), a chunk (batch 1,
    3 tokens after 5) and a ragged first prompt; total_sequence_length a graph input (the
    loader specialises on it)."""
    cases = {}
    for shape, tag in (((2, 1, 5), "decode"), ((1, 3, 5), "chunk")):
        for case, kw in GQA_CASES.items():
            kw = dict(kw)
            if kw.get("bias") and shape[0] == 1:
                kw["bias"] = (1, kw["bias"][1])
            cases[f"{tag}_{case}"] = _gqa(*shape, **kw)
    # a ragged first prompt (rows of 4 and 2 tokens): onnxruntime pads on the right
    cases["first_prompt"] = _gqa(2, 4, 0, attrs={"softcap": 1.0}, seqlens=[3, 1])
    # a ragged row's scores past its own keys (4 of 6) and the first prompt's padding rows
    # are left unwritten by onnxruntime
    views = {f"decode_{c}.qk": (lambda a: a[..., :4]) for c in GQA_CASES}
    views["first_prompt.y"] = lambda a: np.concatenate([a[0, :4], a[1, :2]])
    _check(cases, views)


def _mha(b, s, n_keys, *, attrs=None, past=None, psl=None, beams=None, kpm=None, bias=False,
         cross=False, attention_bias=False, seed=0):  # fmt: skip
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    kv = (b, N, n_keys, D) if cross else (b, s, N * D)
    total = n_keys if past is None or psl is None else psl + s
    ci = None
    if beams:
        ci = rng.integers(0, beams, size=(b // beams, beams, past)).astype(np.int32)
    ins = [("q", r(b, s, N * D)), ("k", r(*kv)), ("v", r(*kv)),
           ("bias", r(3 * N * D) if bias else None), ("kpm", kpm),
           ("attention_bias", r(1, N, s, total) if attention_bias else None),
           ("past_k", None if past is None else r(b, N, past, D)),
           ("past_v", None if past is None else r(b, N, past, D)),
           ("psl", None if psl is None else np.array([psl], np.int32)),
           ("cache_indirection", ci)]  # fmt: skip
    outs = ["y"] if past is None else ["y", "present_k", "present_v"]
    return _model("MultiHeadAttention", ins, outs, {"num_heads": N, **(attrs or {})}, rng)


MHA_CASES = {
    # a shared buffer of 8 slots holding 3 (then 5) positions, the new ones written after them
    "past_sequence_length": {"b": 2, "s": 1, "n_keys": 1, "past": 8, "psl": 3,
                             "attrs": {"unidirectional": 1}},
    "past_sequence_length_chunk": {"b": 2, "s": 2, "n_keys": 2, "past": 8, "psl": 3,
                                   "attrs": {"unidirectional": 1}, "attention_bias": True},
    "cache_indirection": {"b": 4, "s": 1, "n_keys": 1, "past": 8, "psl": 5, "beams": 2,
                          "attrs": {"unidirectional": 1}},
    "key_value_4d": {"b": 2, "s": 3, "n_keys": 5, "cross": True, "bias": True},
    "key_lengths": {"b": 2, "s": 3, "n_keys": 3, "bias": True, "kpm": np.array([3, 2], np.int32)},
    "mask_3d": {"b": 2, "s": 3, "n_keys": 3,
                "kpm": np.array([[[1, 0, 1]] * 3, [[1, 1, 0]] * 3], np.int32)},
}  # fmt: skip


def test_multi_head_attention_options_match_onnxruntime():
    _check({case: _mha(**kw) for case, kw in MHA_CASES.items()})


def test_unsupported_options_name_the_node_and_what_is_missing():
    rng = np.random.default_rng(0)
    packed = [("q", rng.normal(size=(1, 2, N, 3, D)).astype(np.float32))]
    model, feeds = _model("MultiHeadAttention", packed, ["y"], {"num_heads": N}, rng)
    with pytest.raises(onnx2jax.NodeError, match="MultiHeadAttention_node.*packed QKV"):
        onnx2jax.load(model)(**feeds)
    model, feeds = _gqa(1, 1, 3, attrs={"qk_output": 3}, qk=True)
    with pytest.raises(onnx2jax.NodeError, match="GroupQueryAttention_node.*qk_output=3"):
        onnx2jax.load(model)(**feeds)
    # total_sequence_length decides the present's shape: traced, it is refused by name
    model, feeds = _gqa(1, 1, 3)
    m = onnx2jax.load(model)
    with pytest.raises(onnx2jax.StaticValueError, match="total_sequence_length"):
        jax.jit(m.apply)(m.params, **feeds)
