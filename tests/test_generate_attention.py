"""Generator on decoders whose attention is one op: opset-23 Attention with past inputs and
onnxruntime-genai's com.microsoft GroupQueryAttention (built with onnx.helper), checked against
onnxruntime's own growing-past loop; -m slow: a Llama built by onnxruntime-genai's builder."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx2jax.passes.kv_cache import FixedKvCache, find_pairs
from test_generate import ROWS, _ragged  # the same ragged prompts as the GPT-style tests

import onnx2jax

VOCAB, EMBED, HEADS, KV_HEADS, MAX_POS = 61, 64, 4, 2, 256  # onnxruntime GQA: head size % 16 == 0
HEAD_DIM = EMBED // HEADS


class _Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.inits, self.nodes = [], []

    def w(self, name, *shape, scale=0.3):
        self.inits.append(
            numpy_helper.from_array(self.rng.normal(0, scale, shape).astype(np.float32), name)
        )
        return name

    def c(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, ins, outs, domain="", **attrs):
        outs = [outs] if isinstance(outs, str) else outs
        self.nodes.append(
            helper.make_node(op_type, ins, outs, name=outs[0], domain=domain or None, **attrs)
        )
        return outs[0]

    def ops_multi(self, op_type, ins, outs, domain=""):
        self.nodes.append(helper.make_node(op_type, ins, outs, name=outs[0], domain=domain or None))
        return outs


def attention23_decoder(layers=2, seed=0):
    """Opset-23 Attention with past_key/past_value inputs, GQA (4 query heads, 2 kv heads),
    RMSNormalization, causal + a padding mask from attention_mask."""
    b = _Builder(seed)
    op, w, c = b.op, b.w, b.c
    c("ax12", np.array([1, 2], np.int64))
    c("q_shape", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
    c("kv_shape", np.array([0, 0, KV_HEADS, HEAD_DIM], np.int64))
    c("embed_shape", np.array([0, 0, EMBED], np.int64))
    w("wte", VOCAB, EMBED)
    w("wpe", MAX_POS, EMBED, scale=0.1)
    h = op(
        "Add",
        [op("Gather", ["wte", "input_ids"], "tok"), op("Gather", ["wpe", "position_ids"], "pos")],
        "h0",
    )
    mask = op(
        "Unsqueeze", [op("Cast", ["attention_mask"], "am_b", to=TensorProto.BOOL), "ax12"], "am4"
    )
    # onnxruntime wants the mask's query axis spelled out: [batch, 1, seq, total]
    c("one1", np.array([1], np.int64))
    c("idx1", np.array([1], np.int64))
    t = op("Gather", [op("Shape", ["input_ids"], "ids_shape"), "idx1"], "t")
    mask = op(
        "Expand", [mask, op("Concat", ["one1", "one1", t, "one1"], "mask_shape", axis=0)], "mask4"
    )
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    for i in range(layers):
        p = f"l{i}."
        x = op("RMSNormalization", [h, w(p + "g1", EMBED, scale=0.1)], p + "ln1", axis=-1)

        def heads(name, n, shape, x=x, p=p):
            y = op("MatMul", [x, w(p + "w" + name, EMBED, n * HEAD_DIM)], p + name)
            y = op("Reshape", [y, shape], p + name + "_r")
            return op("Transpose", [y], p + name + "_t", perm=[0, 2, 1, 3])

        q, k, v = (
            heads("q", HEADS, "q_shape"),
            heads("k", KV_HEADS, "kv_shape"),
            heads("v", KV_HEADS, "kv_shape"),
        )
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        for name in (pk, pv):
            inputs.append(
                helper.make_tensor_value_info(
                    name, TensorProto.FLOAT, ["batch", KV_HEADS, "past_seq", HEAD_DIM]
                )
            )
        outs = [p + "att", f"present.{i}.key", f"present.{i}.value"]
        for name in outs[1:]:
            outputs.append(
                helper.make_tensor_value_info(
                    name, TensorProto.FLOAT, ["batch", KV_HEADS, "total_seq", HEAD_DIM]
                )
            )
        a = op("Attention", [q, k, v, mask, pk, pv], outs, is_causal=1)
        a = op(
            "Reshape",
            [op("Transpose", [a], p + "att_t", perm=[0, 2, 1, 3]), "embed_shape"],
            p + "att_r",
        )
        h = op("Add", [h, op("MatMul", [a, w(p + "wo", EMBED, EMBED)], p + "proj")], p + "h1")
        x2 = op("RMSNormalization", [h, w(p + "g2", EMBED, scale=0.1)], p + "ln2", axis=-1)
        m = op("Tanh", [op("MatMul", [x2, w(p + "w1", EMBED, 2 * EMBED)], p + "fc")], p + "act")
        h = op("Add", [h, op("MatMul", [m, w(p + "w2", 2 * EMBED, EMBED)], p + "fc2")], p + "h2")
    h = op("RMSNormalization", [h, w("gf", EMBED, scale=0.1)], "lnf", axis=-1)
    op("MatMul", [h, w("head", EMBED, VOCAB, scale=1.0)], "logits")
    graph = helper.make_graph(b.nodes, "attention23", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def mha_decoder(layers=2, seed=0):
    """com.microsoft MultiHeadAttention with past inputs (3-D Q/K/V, a key padding mask from
    attention_mask, unidirectional), LayerNormalization, learned positions."""
    b = _Builder(seed)
    op, w, c = b.op, b.w, b.c
    w("wte", VOCAB, EMBED)
    w("wpe", MAX_POS, EMBED, scale=0.1)
    h = op("Add", [op("Gather", ["wte", "input_ids"], "tok"),
                   op("Gather", ["wpe", "position_ids"], "pos")], "h0")  # fmt: skip
    kpm = op("Cast", ["attention_mask"], "kpm", to=TensorProto.INT32)
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    for i in range(layers):
        p = f"l{i}."
        c(p + "b1", np.zeros(EMBED, np.float32))
        x = op("LayerNormalization", [h, w(p + "g1", EMBED, scale=0.1), p + "b1"], p + "ln1")
        q, k, v = (op("MatMul", [x, w(p + "w" + n, EMBED, EMBED)], p + n) for n in "qkv")
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        for name in (pk, pv):
            inputs.append(helper.make_tensor_value_info(
                name, TensorProto.FLOAT, ["batch", HEADS, "past_seq", HEAD_DIM]))  # fmt: skip
        outs = [p + "att", f"present.{i}.key", f"present.{i}.value"]
        for name in outs[1:]:
            outputs.append(helper.make_tensor_value_info(
                name, TensorProto.FLOAT, ["batch", HEADS, "total_seq", HEAD_DIM]))  # fmt: skip
        a = op("MultiHeadAttention", [q, k, v, "", kpm, "", pk, pv], outs,
               domain="com.microsoft", num_heads=HEADS, unidirectional=1)  # fmt: skip
        h = op("Add", [h, op("MatMul", [a, w(p + "wo", EMBED, EMBED)], p + "proj")], p + "h1")
        m = op("Tanh", [op("MatMul", [h, w(p + "w1", EMBED, 2 * EMBED)], p + "fc")], p + "act")
        h = op("Add", [h, op("MatMul", [m, w(p + "w2", 2 * EMBED, EMBED)], p + "fc2")], p + "h2")
    op("MatMul", [h, w("head", EMBED, VOCAB, scale=1.0)], "logits")
    graph = helper.make_graph(b.nodes, "mha", inputs, outputs, b.inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def gqa_decoder(layers=2, seed=0, total_input=False):
    """An onnxruntime-genai-style decoder: packed QKV into com.microsoft GroupQueryAttention
    (rotary inside, 4 query heads, 2 kv heads), seqlens_k and total_sequence_length computed
    from attention_mask as the model builder writes them, (Skip)SimplifiedLayerNormalization,
    a past head dim left symbolic (``kv_cache_dim``). ``total_input``: total_sequence_length
    is a graph input (int32 [1]) instead."""
    b = _Builder(seed)
    op, w, c = b.op, b.w, b.c
    c("one", np.array([1], np.int64))
    c("idx1", np.array(1, np.int64))
    inv = 1.0 / 10000 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    angles = np.arange(MAX_POS)[:, None] * inv[None]
    c("cos_cache", np.cos(angles).astype(np.float32))
    c("sin_cache", np.sin(angles).astype(np.float32))
    seqlens = op("Sub", [op("ReduceSum", ["attention_mask", "one"], "am_sum"), "one"], "seqlens")
    seqlens = op("Cast", [seqlens], "seqlens_k", to=TensorProto.INT32)
    total = op("Gather", [op("Shape", ["attention_mask"], "am_shape"), "idx1"], "total")
    total = op("Cast", [total], "total_len", to=TensorProto.INT32)
    if total_input:
        total = "total_sequence_length"
    w("wte", VOCAB, EMBED)
    h = op("Gather", ["wte", "input_ids"], "h0")
    x = op("SimplifiedLayerNormalization", [h, w("g0", EMBED, scale=0.1)], "ln0", epsilon=1e-5)
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
    ]
    if total_input:
        inputs.append(helper.make_tensor_value_info(total, TensorProto.INT32, [1]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    width = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    for i in range(layers):
        p = f"l{i}."
        qkv = op("MatMul", [x, w(p + "wqkv", EMBED, width)], p + "qkv")
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        shape = ["batch", KV_HEADS, "past_seq", "kv_cache_dim"]
        for name in (pk, pv):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        outs = [p + "att", f"present.{i}.key", f"present.{i}.value"]
        for name in outs[1:]:
            outputs.append(helper.make_tensor_value_info(
                name, TensorProto.FLOAT, ["batch", KV_HEADS, "total_seq", "kv_cache_dim"]))  # fmt: skip
        a = op("GroupQueryAttention",
               [qkv, "", "", pk, pv, seqlens, total, "cos_cache", "sin_cache"], outs,
               domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS, do_rotary=1,
               scale=float(1 / np.sqrt(HEAD_DIM)))  # fmt: skip
        a = op("MatMul", [a, w(p + "wo", EMBED, EMBED)], p + "proj")
        x, _, _, h = b.ops_multi("SkipSimplifiedLayerNormalization",
                                 [a, h, w(p + "g1", EMBED, scale=0.1)],
                                 [p + "ln1", "", "", p + "h1"], domain="com.microsoft")  # fmt: skip
        m = op("Tanh", [op("MatMul", [x, w(p + "w1", EMBED, 2 * EMBED)], p + "fc")], p + "act")
        m = op("MatMul", [m, w(p + "w2", 2 * EMBED, EMBED)], p + "fc2")
        x, _, _, h = b.ops_multi("SkipSimplifiedLayerNormalization",
                                 [m, h, w(p + "g2", EMBED, scale=0.1)],
                                 [p + "ln2", "", "", p + "h2"], domain="com.microsoft")  # fmt: skip
    op("MatMul", [x, w("head", EMBED, VOCAB, scale=1.0)], "logits")
    graph = helper.make_graph(b.nodes, "gqa", inputs, outputs, b.inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


class OrtLoop:
    """onnxruntime the usual way: numpy feeds, the present fed back as the next past."""

    def __init__(self, proto, threads=1, dims=None):
        self.dims = (
            dims  # past shape without batch and sequence, where the graph leaves it symbolic
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(
            proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.pairs = find_pairs(self.inputs, self.outputs)  # the names the Generator finds
        self.pasts = [p for p, _ in self.pairs]

    def run(self, ids, past):
        bsz, t = ids.shape
        plen = 0 if past is None else past[0].shape[2]
        if past is None:
            shape = self.inputs[self.pasts[0]].shape
            h, d = self.dims or (int(shape[1]), int(shape[3]))
            past = [np.zeros([bsz, h, 0, d], np.float32) for n in self.pasts]
        feeds = {"input_ids": ids.astype(np.int64), **dict(zip(self.pasts, past))}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.ones((bsz, plen + t), np.int64)
        if "total_sequence_length" in self.inputs:
            feeds["total_sequence_length"] = np.array([plen + t], np.int32)
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.broadcast_to(np.arange(plen, plen + t), (bsz, t)).astype(
                np.int64
            )
        res = dict(zip(self.outputs, self.sess.run(None, feeds)))
        return res["logits"], [res[q] for _, q in self.pairs]

    def check_greedy(self, prompt, tokens, tie=1e-4):
        logits, past = self.run(prompt, None)
        for j in range(tokens.shape[1]):
            last = logits[:, -1]
            chosen = last[np.arange(len(last)), tokens[:, j]]
            assert np.all(chosen >= last.max(-1) - tie), (j, tokens[:, j], last.argmax(-1))
            logits, past = self.run(tokens[:, j : j + 1], past)


def _agree(gen, ref, n):
    ids, mask = _ragged(ROWS)
    out = gen.generate(ids, n, attention_mask=mask)
    for r, row in enumerate(ROWS):  # each row alone, unpadded, through onnxruntime's loop
        ref.check_greedy(np.array([row]), out[r : r + 1])
    return out


def test_opset23_attention_with_past_agrees_with_onnxruntime():
    model = attention23_decoder()
    rewrite = FixedKvCache()
    assert rewrite(ir.from_proto(model)).modified is False  # the mask's type is not declared
    assert "attn_mask's type is unknown" in rewrite.reason
    inferred = ir.passes.common.ShapeInferencePass()(ir.from_proto(model)).model
    assert rewrite(inferred).modified
    assert rewrite.matches == {"Concat(past, new) -> KvCacheUpdate": 0,
                               "Attention(past) -> KvCacheUpdate + Attention": 2}  # fmt: skip
    gen = onnx2jax.Generator(model)
    assert not gen.shared_buffer and gen.rewritten  # decode steps attend over the buffer
    _agree(gen, OrtLoop(model), 24)


def test_multi_head_attention_with_past_agrees_with_onnxruntime():
    model = mha_decoder()
    gen = onnx2jax.Generator(model)
    assert not gen.shared_buffer and not gen.rewritten  # as written: the op appends inside
    _agree(gen, OrtLoop(model), 16)


def test_group_query_attention_decoder_agrees_with_onnxruntime():
    model = gqa_decoder()
    gen = onnx2jax.Generator(model)
    # the op writes into a past of fixed size itself; the symbolic head dim is probed
    assert gen.shared_buffer and set(gen._layout.shapes.values()) == {(KV_HEADS, HEAD_DIM)}
    _agree(gen, OrtLoop(model, dims=(KV_HEADS, HEAD_DIM)), 24)


def test_group_query_attention_step_matches_onnxruntime():
    """total_sequence_length fed as a graph input here (not computed from shapes): the loader
    specialises on its value, the Generator feeds it the buffer's length."""
    model = gqa_decoder(layers=1, seed=2, total_input=True)
    assert onnx2jax.load(model).value_inputs == {"total_sequence_length"}
    ref = OrtLoop(model, dims=(KV_HEADS, HEAD_DIM))
    gen = onnx2jax.Generator(model)
    assert gen.shared_buffer and gen._layout.roles["total_sequence_length"]
    prompt = np.array([[5, 17, 3], [1, 2, 50]])
    cache = gen.init_cache(2, 32)
    logits, cache = gen.step(gen.params, cache, prompt, np.zeros(2, np.int32))
    want, past = ref.run(prompt, None)
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)
    for j in range(3):
        tok = np.array([[j + 1], [j + 9]])
        logits, cache = gen.step(gen.params, cache, tok, np.full(2, 3 + j, np.int32))
        want, past = ref.run(tok, past)
        np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)
    got = np.asarray(cache["past_key_values.0.value"])[:, :, :6]
    np.testing.assert_allclose(got, past[1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_onnxruntime_genai_llama_agrees_with_onnxruntime(tmp_path):
    """A Llama (RoPE, GQA, RMSNorm) built by onnxruntime-genai's model builder from a local
    random-weight checkpoint (needs torch, transformers, onnxruntime-genai)."""
    import importlib.util
    import sys
    from pathlib import Path

    pytest.importorskip("onnxruntime_genai")
    spec = importlib.util.spec_from_file_location(
        "bench_generate", Path(__file__).parents[1] / "benchmarks" / "generate.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_generate"] = bench
    spec.loader.exec_module(bench)
    path = bench.llama_genai_dir(2, 128, 500) / "model.onnx"  # 8 heads of 16
    gen = onnx2jax.Generator(str(path))
    assert gen.shared_buffer
    ref = OrtLoop(onnx.load(str(path)), dims=gen._layout.shapes["past_key_values.0.key"])
    _agree(gen, ref, 128)
