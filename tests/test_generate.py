"""onnx2jax.Generator and the kv_cache pass on a tiny GPT-2-style decoder built in onnx.helper,
checked against onnxruntime's growing-past loop and a no-cache full recompute."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from decoders import export_gpt2
from onnx import TensorProto, helper, numpy_helper
from onnx2jax.passes.kv_cache import BUFFER_SUFFIX, WRITE_POSITION, FixedKvCache, find_pairs

import onnx2jax
from onnx2jax.cli import main as cli_main

VOCAB, EMBED, HEADS, LAYERS, MAX_POS = 53, 32, 4, 2, 1024
HEAD_DIM = EMBED // HEADS


def _decoder(
    layers: int = LAYERS,
    seed: int = 0,
    past: bool = True,
    past_name: str = "past_key_values.{i}.{kv}",
    present_name: str = "present.{i}.{kv}",
    sdpa: bool = False,
    positions_from_past: bool = False,
    attention_mask: bool = True,
) -> onnx.ModelProto:
    """A GPT-2-style decoder step: token + position embeddings, ``layers`` attention blocks with
    ``present = Concat(past, new)`` on the sequence axis, a causal mask sliced from a
    lower-triangular table by shapes (as torch's GPT-2 export does), the attention mask added
    as ``(1 - mask) * min``, an MLP, a final LayerNorm and an LM head. ``sdpa``: Q and K^T each
    scaled by sqrt(scale) before their product, as torch's scaled-dot-product export does.
    ``positions_from_past``: no position_ids input; positions are past length + arange(t).
    ``attention_mask=False``: no attention_mask input (every past slot attended)."""
    rng = np.random.default_rng(seed)
    inits = []

    def w(name, *shape, scale=0.3):
        inits.append(numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name))
        return name

    def c(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    nodes = []

    def op(op_type, ins, out, **attrs):
        nodes.append(helper.make_node(op_type, ins, [out], name=out, **attrs))
        return out

    c("bias", np.tril(np.ones((MAX_POS, MAX_POS), bool)))
    c("neg", np.float32(-3.4e38))
    c("one", np.float32(1.0))
    c("scale", np.float32(1 / np.sqrt(HEAD_DIM)))
    c("sqrt_scale", np.float32(HEAD_DIM**-0.25))
    c("heads_shape", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
    c("embed_shape", np.array([0, 0, EMBED], np.int64))
    c("ax0", np.array([0], np.int64))
    c("ax01", np.array([0, 1], np.int64))
    c("idx2", np.array([2], np.int64))
    c("zero", np.array([0], np.int64))
    c("ax12", np.array([1, 2], np.int64))
    w("wte", VOCAB, EMBED)
    w("wpe", MAX_POS, EMBED, scale=0.1)
    positions = "position_ids"
    if positions_from_past:
        c("idx2s", np.array(2, np.int64))
        c("idx1s", np.array(1, np.int64))
        c("one_s", np.array(1, np.int64))
        plen = op("Gather", [op("Shape", ["past_key_values.0.key"], "pshape"), "idx2s"], "plen")
        t = op("Gather", [op("Shape", ["input_ids"], "ishape"), "idx1s"], "tlen")
        positions = op("Range", [plen, op("Add", [plen, t], "end"), "one_s"], "positions")
    h = op(
        "Add",
        [op("Gather", ["wte", "input_ids"], "tok"), op("Gather", ["wpe", positions], "pos")],
        "h0",
    )
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    if attention_mask:
        am = op("Cast", ["attention_mask"], "am_f", to=TensorProto.FLOAT)
        am = op("Mul", [op("Sub", ["one", am], "am_inv"), "neg"], "am_add")
        am = op("Unsqueeze", [am, "ax12"], "am4")  # [b, 1, 1, K]
        inputs.append(helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, ["batch", "total_seq"]))  # fmt: skip
    if not positions_from_past:
        inputs.append(
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"])
        )
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    for i in range(layers):
        p = f"l{i}."
        w(p + "g1", EMBED, scale=0.1)
        c(p + "b1", np.zeros(EMBED, np.float32))
        x = op("LayerNormalization", [h, p + "g1", p + "b1"], p + "ln1", axis=-1)

        def heads(name, x=x, p=p):
            y = op("MatMul", [x, w(p + "w" + name, EMBED, EMBED)], p + name)
            y = op("Reshape", [y, "heads_shape"], p + name + "_r")
            return op("Transpose", [y], p + name + "_t", perm=[0, 2, 1, 3])  # [b, H, t, D]

        q, k, v = heads("q"), heads("k"), heads("v")
        kv = {}
        for name, new in (("key", k), ("value", v)):
            if past:
                past_in = past_name.format(i=i, kv=name)
                present = present_name.format(i=i, kv=name)
                inputs.append(
                    helper.make_tensor_value_info(
                        past_in, TensorProto.FLOAT, ["batch", HEADS, "past_seq", HEAD_DIM]
                    )
                )
                op("Concat", [past_in, new], present, axis=-2)
            else:
                present = present_name.format(i=i, kv=name)
                op("Identity", [new], present)
            outputs.append(
                helper.make_tensor_value_info(
                    present, TensorProto.FLOAT, ["batch", HEADS, "total_seq", HEAD_DIM]
                )
            )
            kv[name] = present
        kt = op("Transpose", [kv["key"]], p + "kT", perm=[0, 1, 3, 2])
        if sdpa:
            q, kt = (
                op("Mul", [q, "sqrt_scale"], p + "q_s"),
                op("Mul", [kt, "sqrt_scale"], p + "kT_s"),
            )
            s = op("MatMul", [q, kt], p + "s_scaled")
        else:
            s = op("Mul", [op("MatMul", [q, kt], p + "s"), "scale"], p + "s_scaled")
        klen = op("Gather", [op("Shape", [kv["key"]], p + "kshape"), "idx2"], p + "klen")
        qlen = op("Gather", [op("Shape", [q], p + "qshape"), "idx2"], p + "qlen")
        start = op("Sub", [klen, qlen], p + "start")
        causal = op(
            "Slice",
            ["bias", op("Concat", [start, "zero"], p + "starts", axis=0),
             op("Concat", [klen, klen], p + "ends", axis=0), "ax01"],
            p + "causal",
        )  # fmt: skip
        s = op("Where", [causal, s, "neg"], p + "s_causal")
        if attention_mask:
            s = op("Add", [s, am], p + "s_masked")
        a = op("MatMul", [op("Softmax", [s], p + "probs", axis=-1), kv["value"]], p + "att")
        a = op(
            "Reshape",
            [op("Transpose", [a], p + "att_t", perm=[0, 2, 1, 3]), "embed_shape"],
            p + "att_r",
        )
        h = op("Add", [h, op("MatMul", [a, w(p + "wo", EMBED, EMBED)], p + "proj")], p + "h1")
        m = op("Tanh", [op("MatMul", [h, w(p + "w1", EMBED, 2 * EMBED)], p + "fc")], p + "act")
        h = op("Add", [h, op("MatMul", [m, w(p + "w2", 2 * EMBED, EMBED)], p + "fc2")], p + "h2")
    w("gf", EMBED, scale=0.1)
    c("bf", np.zeros(EMBED, np.float32))
    h = op("LayerNormalization", [h, "gf", "bf"], "lnf", axis=-1)
    op("MatMul", [h, w("head", EMBED, VOCAB, scale=1.0)], "logits")
    graph = helper.make_graph(nodes, "tiny_gpt", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


ROWS = [[7, 3, 22, 9, 1, 30, 2], [4, 8], [11, 12, 13, 14], [6]]


def _ragged(rows):
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = (np.arange(width) >= width - np.array([[len(r)] for r in rows])).astype(np.int64)
    return ids, mask


class OrtDecoder:
    """onnxruntime, run the way users run an exported decoder: numpy feeds, a growing past."""

    def __init__(self, proto: onnx.ModelProto):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(proto.SerializeToString(), opts)
        self.pasts = [i.name for i in self.sess.get_inputs() if "past" in i.name]

    def run(self, ids: np.ndarray, past: list[np.ndarray] | None):
        b, t = ids.shape
        plen = 0 if past is None else past[0].shape[2]
        if past is None:
            past = [np.zeros((b, HEADS, 0, HEAD_DIM), np.float32) for _ in self.pasts]
        feeds = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((b, plen + t), np.int64),
            "position_ids": np.broadcast_to(np.arange(plen, plen + t), (b, t)).astype(np.int64),
            **dict(zip(self.pasts, past, strict=True)),
        }
        logits, *present = self.sess.run(None, feeds)
        return logits, present

    def check_greedy(self, prompt: np.ndarray, tokens: np.ndarray, tie: float = 1e-4) -> None:
        """Feed prompt + tokens through the growing-past loop; each token must be onnxruntime's
        argmax for its prefix (or within ``tie`` of the max logit)."""
        logits, past = self.run(prompt, None)
        for j in range(tokens.shape[1]):
            last = logits[:, -1]
            chosen = last[np.arange(len(last)), tokens[:, j]]
            assert np.all(chosen >= last.max(-1) - tie), (j, tokens[:, j], last.argmax(-1))
            logits, past = self.run(tokens[:, j : j + 1], past)

    def greedy(self, prompt: np.ndarray, n: int) -> np.ndarray:
        logits, past = self.run(prompt, None)
        out = []
        for _ in range(n):
            tok = logits[:, -1].argmax(-1)
            out.append(tok)
            logits, past = self.run(tok[:, None], past)
        return np.stack(out, 1)

    def greedy_no_cache(self, prompt: np.ndarray, n: int) -> np.ndarray:
        seq = prompt
        for _ in range(n):
            logits, _ = self.run(seq, None)
            seq = np.concatenate([seq, logits[:, -1].argmax(-1)[:, None]], 1)
        return seq[:, prompt.shape[1] :]


@pytest.fixture(scope="module")
def proto():
    return _decoder()


@pytest.fixture(scope="module")
def gen(proto):
    return onnx2jax.Generator(proto)


@pytest.fixture(scope="module")
def ref(proto):
    return OrtDecoder(proto)


PROMPT = np.array([[5, 17, 3, 44, 9], [1, 2, 3, 4, 50]])


def test_greedy_matches_onnxruntime_loop_and_full_recompute(gen, ref):
    assert gen.rewritten  # the decode steps run the in-place graph
    tokens = gen.generate(PROMPT, 24)
    assert tokens.shape == (2, 24) and tokens.dtype == np.int64
    ref.check_greedy(PROMPT, tokens)
    np.testing.assert_array_equal(tokens, ref.greedy(PROMPT, 24))
    np.testing.assert_array_equal(tokens, ref.greedy_no_cache(PROMPT, 24))


def test_tune_times_each_dot_library_and_keeps_greedy_tokens(proto, ref, monkeypatch):
    """Generator.tune compiles generate once per choice (here the CPU ones, which this suite's
    default options leave out), keeps the fastest, and the tokens stay onnxruntime's."""
    import jax

    from onnx2jax import _compiler, generate

    if jax.default_backend() != "cpu":
        pytest.skip("the choices are CPU libraries")
    choices = {"ynnpack dots": {_compiler._YNN: _compiler._DOT}, "eigen dots": {_compiler._YNN: ""}}
    monkeypatch.setattr(generate, "candidates", lambda convolutions=True: choices)
    gen = onnx2jax.Generator(proto)
    report = gen.tune(PROMPT, 8, rounds=1)
    assert set(report.ms) == set(choices) and report.chosen == min(report.ms, key=report.ms.get)
    assert gen.compiled_programs() == 1  # the chosen choice's jit, compiled during the tune
    np.testing.assert_array_equal(gen.generate(PROMPT, 8), ref.greedy(PROMPT, 8))


def test_ragged_left_padded_batch_matches_rows_alone(gen, ref):
    rows = [[7, 3, 22, 9, 1, 30, 2], [4, 8], [11, 12, 13, 14], [6]]
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    batch = gen.generate(ids, 24, attention_mask=mask)
    for r, row in enumerate(rows):  # each row alone, unpadded, in onnxruntime's loop
        ref.check_greedy(np.array([row]), batch[r : r + 1])


def test_decode_windows_grow_the_cache_and_agree_with_onnxruntime():
    from onnx2jax.generate import decode_windows

    assert decode_windows(16, 64) == [64]  # small caches: one window
    assert decode_windows(16, 256) == [32, 64, 128, 256]
    assert decode_windows(64, 768) == [96, 192, 384, 768]
    one = _decoder(layers=1, seed=3, sdpa=True)
    rewrite = FixedKvCache()
    assert rewrite(ir.from_proto(one)).modified
    assert rewrite.matches["A @ (c * T(buffer)) -> (c * A) @ T(buffer)"] == 1  # off the cache
    g = onnx2jax.Generator(one, capacity=128)
    rows = [[7, 3, 22, 9, 1, 30, 2], [4, 8]]
    ids = np.array([[0] * (7 - len(r)) + r for r in rows])
    mask = (np.arange(7) >= 7 - np.array([[len(r)] for r in rows])).astype(np.int64)
    out = g.generate(ids, 80, attention_mask=mask)  # windows 32, 64, 128
    ref = OrtDecoder(one)
    for r, row in enumerate(rows):
        ref.check_greedy(np.array([row]), out[r : r + 1])


def test_compiles_once_per_bucket():
    g = onnx2jax.Generator(_decoder(layers=1))
    for length in (3, 5, 7, 11):
        g.generate(np.arange(1, length + 1)[None] % VOCAB, 8)
    assert g.compiled_programs() == 1  # prompt lengths 3..11 share the 16-wide bucket
    g.generate(np.arange(1, 20)[None], 8)  # a 32-wide prompt bucket compiles once more
    assert g.compiled_programs() == 2


def test_eos_rows_repeat_eos(gen, ref):
    expected = ref.greedy(PROMPT, 24)
    eos = int(expected[0, 3])
    stop = [int(np.argmax(row == eos)) if (row == eos).any() else None for row in expected]
    out = gen.generate(PROMPT, 24, eos_token_id=eos)
    for r, s in enumerate(stop):
        if s is None:
            np.testing.assert_array_equal(out[r], expected[r])
        else:
            np.testing.assert_array_equal(out[r, : s + 1], expected[r, : s + 1])
            assert (out[r, s:] == eos).all()


def test_sampling_reproducible_and_top_k_1_is_greedy(gen):
    a = gen.generate(PROMPT, 24, temperature=1.5, seed=3)
    b = gen.generate(PROMPT, 24, temperature=1.5, seed=3)
    c = gen.generate(PROMPT, 24, temperature=1.5, seed=4)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    greedy = gen.generate(PROMPT, 24)
    np.testing.assert_array_equal(gen.generate(PROMPT, 24, temperature=0.7, top_k=1), greedy)
    programs = gen.compiled_programs()
    gen.generate(PROMPT, 24, temperature=0.9, seed=5)
    gen.generate(PROMPT, 24, temperature=0.5, top_k=3, top_p=0.9, eos_token_id=2)
    assert gen.compiled_programs() == programs  # settings are run-time values


def _fixed_logits_decoder(logits: np.ndarray) -> onnx.ModelProto:
    """A 'decoder' whose next-token logits are always ``logits``, with one past/present pair."""
    vocab = logits.size
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Concat", ["ids_shape", "vocab"], ["out_shape"], axis=0),
        helper.make_node("Expand", ["table", "out_shape"], ["logits"]),
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids_f", "axes"], ["new"]),  # [b, 1, t, 1]
        helper.make_node("Concat", ["past_key_values.0.key", "new"], ["present.0.key"], axis=2),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"]),
            helper.make_tensor_value_info(
                "past_key_values.0.key", TensorProto.FLOAT, ["b", 1, "p", 1]
            ),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "t", vocab]),
            helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["b", 1, "n", 1]),
        ],
        [
            numpy_helper.from_array(logits.astype(np.float32), "table"),
            numpy_helper.from_array(np.array([vocab], np.int64), "vocab"),
            numpy_helper.from_array(np.array([1, 3], np.int64), "axes"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_top_k_and_top_p_restrict_to_the_right_sets():
    logits = np.log(np.array([0.05, 0.4, 0.02, 0.3, 0.2, 0.03]))
    g = onnx2jax.Generator(_fixed_logits_decoder(logits))
    ids = np.ones((64, 1), np.int64)
    k3 = g.generate(ids, 8, temperature=1.0, top_k=3, seed=1)
    assert set(k3.ravel()) == {1, 3, 4}  # the three most likely, each drawn at least once
    p = g.generate(ids, 8, temperature=1.0, top_p=0.65, seed=2)
    assert set(p.ravel()) == {1, 3}  # 0.4 + 0.3 reaches 0.65; 0.4 alone does not
    full = g.generate(ids, 8, temperature=1.0, seed=5)
    assert set(full.ravel()) == set(range(6))  # 512 draws: every token shows up


def test_step_matches_onnxruntime_for_chunks_and_single_tokens(gen, ref):
    cache = gen.init_cache(2, capacity=32)
    logits, cache = gen.step(gen.params, cache, PROMPT[:, :2], np.zeros(2, np.int32))
    want, past = ref.run(PROMPT[:, :2], None)
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)
    logits, cache = gen.step(gen.params, cache, PROMPT[:, 2:4], np.full(2, 2, np.int32))
    want, past = ref.run(PROMPT[:, 2:4], past)
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)
    for j in range(4):
        tok = np.array([[j + 1], [j + 7]])
        logits, cache = gen.step(gen.params, cache, tok, np.full(2, 4 + j, np.int32))
        want, past = ref.run(tok, past)
        np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(cache["past_key_values.1.value"])[:, :, :8], past[3], rtol=1e-5, atol=1e-5
    )


def test_a_loaded_model_and_a_prefill_graph():
    one = _decoder(layers=1)
    g = onnx2jax.Generator(onnx2jax.load(one), prefill=_decoder(layers=1, past=False))
    assert not g.rewritten  # a loaded Model runs as written: past + Concat, new slots sliced
    np.testing.assert_array_equal(g.generate(PROMPT, 10), OrtDecoder(one).greedy(PROMPT, 10))


def test_names_override_and_not_a_decoder_error(proto):
    odd = _decoder(layers=1, past_name="cache_in_{i}_{kv}", present_name="cache_out_{i}_{kv}")
    with pytest.raises(onnx2jax.InputError, match="past_key_values.N.key.*inputs are"):
        onnx2jax.Generator(odd)
    pairs = {f"cache_in_0_{kv}": f"cache_out_0_{kv}" for kv in ("key", "value")}
    g = onnx2jax.Generator(odd, names={"pairs": pairs})
    assert g.rewritten
    ref = OrtDecoder(odd)
    ref.pasts = list(pairs)
    np.testing.assert_array_equal(g.generate(PROMPT, 6), ref.greedy(PROMPT, 6))


def _transformers_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with the past inputs' fixed dims declared as dim_params "4" / "8", as
    transformers' exporter writes them (its outputs carry the numbers)."""
    for v in proto.graph.input:
        if v.name.startswith("input.cache."):
            for d in v.type.tensor_type.shape.dim[1:]:
                if d.HasField("dim_value"):
                    d.dim_param = str(d.dim_value)  # clears dim_value (a oneof)
    return proto


def test_transformers_exporter_names():
    """transformers' own exporter (transformers.exporters.OnnxExporter): input.cache.layers.N.keys
    -> output.cache.layers.N.keys, found without names=; a graph without attention_mask (what
    that exporter writes when its sample prompt has no padding) is refused."""
    kw = {"layers": 1, "past_name": "input.cache.layers.{i}.{kv}s",
          "present_name": "output.cache.layers.{i}.{kv}s"}  # fmt: skip
    proto = _transformers_names(_decoder(**kw))
    g = onnx2jax.Generator(proto)
    assert g.pairs == (("input.cache.layers.0.keys", "output.cache.layers.0.keys"),
                       ("input.cache.layers.0.values", "output.cache.layers.0.values"))  # fmt: skip
    assert g.rewritten and g._layout.shapes["input.cache.layers.0.keys"] == (HEADS, HEAD_DIM)
    ref = OrtDecoder(proto)
    ref.pasts = [p for p, _ in g.pairs]
    ids, mask = _ragged(ROWS)
    out = g.generate(ids, 16, attention_mask=mask)
    for r, row in enumerate(ROWS):
        ref.check_greedy(np.array([row]), out[r : r + 1])
    with pytest.raises(onnx2jax.InputError, match="no attention_mask input"):
        onnx2jax.Generator(_transformers_names(_decoder(**kw, attention_mask=False)))


def test_positions_from_the_past_length_are_refused():
    with pytest.raises(onnx2jax.InputError, match="position_ids"):
        onnx2jax.Generator(_decoder(layers=1, positions_from_past=True))


def test_bad_arguments_name_the_field(gen):
    with pytest.raises(onnx2jax.InputError, match="max_new_tokens"):
        gen.generate(PROMPT, 0)
    with pytest.raises(onnx2jax.InputError, match="left-pad"):
        gen.generate(PROMPT, 2, attention_mask=[[1, 1, 1, 1, 0], [1] * 5])
    with pytest.raises(onnx2jax.InputError, match="capacity"):
        onnx2jax.Generator(_decoder(layers=1), capacity=8).generate(PROMPT, 8)


def test_kv_cache_pass_rewrites_every_concat(proto):
    model = ir.from_proto(proto)
    names = ([v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs])
    pairs = find_pairs(*names)
    assert pairs == [(f"past_key_values.{i}.{kv}", f"present.{i}.{kv}")
                     for i in range(LAYERS) for kv in ("key", "value")]  # fmt: skip
    p = FixedKvCache()
    assert p(model).modified
    assert p.matches == {"Concat(past, new) -> KvCacheUpdate": 4} and set(p.axes.values()) == {2}
    assert WRITE_POSITION in [v.name for v in model.graph.inputs]
    outs = {v.name: v for v in model.graph.outputs}
    for past, present in pairs:
        node = outs[present].producer()
        assert (node.domain, node.op_type, node.inputs[0].name) == (
            "ai.onnx2jax",
            "KvCacheUpdate",
            past + BUFFER_SUFFIX,
        )
        # attention reads the updated buffer, not a Concat
        assert all(u.node.op_type != "Concat" for u in outs[present].uses())
    assert not FixedKvCache()(model).modified  # already rewritten: nothing to do


def test_cli_generate(tmp_path, capsys):
    path = tmp_path / "decoder.onnx"
    one = _decoder(layers=1)
    onnx.save(one, path)
    assert cli_main(["generate", str(path), "--prompt-ids", "5,17,3", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    want = OrtDecoder(one).greedy(PROMPT[:1, :3], 6)[0]
    assert " ".join(map(str, want)) in out and "tokens/s" in out


# -- a real transformers GPT-2 (random weights), exported by torch: -m slow -------------------


class OrtGpt2(OrtDecoder):
    def __init__(self, path):
        super().__init__(onnx.load(str(path)))
        shape = self.sess.get_inputs()[3].shape
        self.heads, self.head_dim = shape[1], shape[3]

    def run(self, ids, past):
        global HEADS, HEAD_DIM
        saved = HEADS, HEAD_DIM
        HEADS, HEAD_DIM = self.heads, self.head_dim
        try:
            return super().run(ids, past)
        finally:
            HEADS, HEAD_DIM = saved


@pytest.mark.slow
def test_real_gpt2_greedy_matches_onnxruntime(tmp_path):
    path = tmp_path / "gpt2-decode.onnx"
    export_gpt2(path, n_layer=2, n_embd=64, vocab=500)
    gen = onnx2jax.Generator(str(path))
    ref = OrtGpt2(path)
    rows = [[7, 3, 22, 9, 1, 30, 2], [4, 8], [11, 12, 13, 14], [6, 5, 4]]
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = gen.generate(ids, 128, attention_mask=mask)
    for r, row in enumerate(rows):
        ref.check_greedy(np.array([row]), out[r : r + 1])


@pytest.mark.slow
def test_real_gpt2_tokens_per_second_vs_onnxruntime(tmp_path):
    """A short measurement (not a benchmark): tokens/s of generate vs onnxruntime's concat
    loop on the same graph, batch 1 and 4, 128 new tokens; printed with -s."""
    import time

    path = tmp_path / "gpt2-decode.onnx"
    export_gpt2(path, n_layer=4, n_embd=256, vocab=8000)
    gen = onnx2jax.Generator(str(path))
    ref = OrtGpt2(path)
    for batch in (1, 4):
        prompt = np.tile(np.arange(1, 9), (batch, 1))
        gen.generate(prompt, 128)  # compile
        t0 = time.perf_counter()
        ours = gen.generate(prompt, 128)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = ref.greedy(prompt, 128)
        t_ort = time.perf_counter() - t0
        ref.check_greedy(prompt, ours)
        print(
            f"batch {batch}: onnx2jax {ours.size / t_ours:,.0f} tokens/s, onnxruntime loop "
            f"{theirs.size / t_ort:,.0f} tokens/s ({t_ort / t_ours:.2f}x; rewritten={gen.rewritten})"
        )
