"""Small BERT-like and GPT-2-like transformers built with onnx.helper (for export and shard tests).

Both have symbolic ``batch`` and ``seq`` dims and no Shape ops (reshapes use 0 / -1), the shape a
clean export gives; weights are named like Hugging Face's (``layer.0.attention.query.weight``),
so sharding rules are regexes on those names.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh

F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def w(self, name: str, *shape: int, scale: float = 0.2) -> str:
        value = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(onnx.numpy_helper.from_array(value, name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        self.n += 1
        name = f"const_{self.n}"
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(oh.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def linear(self, x: str, prefix: str, n_in: int, n_out: int) -> str:
        y = self.op("MatMul", [x, self.w(f"{prefix}.weight", n_in, n_out)])
        return self.op("Add", [y, self.w(f"{prefix}.bias", n_out, scale=0.05)])

    def layer_norm(self, x: str, prefix: str, hidden: int) -> str:
        gamma = (1 + 0.1 * self.rng.standard_normal(hidden)).astype(np.float32)
        self.inits.append(onnx.numpy_helper.from_array(gamma, f"{prefix}.weight"))
        bias = self.w(f"{prefix}.bias", hidden, scale=0.05)
        return self.op("LayerNormalization", [x, f"{prefix}.weight", bias], axis=-1)

    def attention(
        self, x: str, prefix: str, hidden: int, heads: int, bias_add: str | None, causal: bool
    ) -> str:
        dh = hidden // heads

        def split_heads(t: str) -> str:  # [b, s, H] -> [b, heads, s, dh]
            t = self.op("Reshape", [t, self.const([0, 0, heads, dh])])
            return self.op("Transpose", [t], perm=[0, 2, 1, 3])

        q = split_heads(self.linear(x, f"{prefix}.query", hidden, hidden))
        k = split_heads(self.linear(x, f"{prefix}.key", hidden, hidden))
        v = split_heads(self.linear(x, f"{prefix}.value", hidden, hidden))
        kt = self.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = self.op("Div", [self.op("MatMul", [q, kt]), self.const(np.sqrt(dh), np.float32)])
        if causal:  # -1e4 above the diagonal, built from the scores themselves (no Shape op)
            ones = self.op(
                "Add",
                [self.op("Mul", [scores, self.const(0, np.float32)]), self.const(1, np.float32)],
            )
            upper = self.op("Trilu", [ones, self.const(1)], upper=1)
            scores = self.op("Add", [scores, self.op("Mul", [upper, self.const(-1e4, np.float32)])])
        if bias_add is not None:
            scores = self.op("Add", [scores, bias_add])
        probs = self.op("Softmax", [scores], axis=-1)
        ctx = self.op("Transpose", [self.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = self.op("Reshape", [ctx, self.const([0, 0, hidden])])
        return self.linear(ctx, f"{prefix}.output", hidden, hidden)

    def mlp(self, x: str, prefix: str, hidden: int) -> str:
        h = self.op("Gelu", [self.linear(x, f"{prefix}.fc_in", hidden, 4 * hidden)])
        return self.linear(h, f"{prefix}.fc_out", 4 * hidden, hidden)


def bert(layers: int = 2, hidden: int = 32, heads: int = 4, vocab: int = 64, seed: int = 0):
    """Post-LN encoder: embeddings + positions, masked self-attention, GELU MLP; ``[b, s, H]``."""
    b = _Builder(seed)
    x = b.op(
        "Add",
        [
            b.op("Gather", [b.w("embeddings.word.weight", vocab, hidden), "input_ids"]),
            b.op("Gather", [b.w("embeddings.position.weight", 128, hidden), "position_ids"]),
        ],
    )
    x = b.layer_norm(x, "embeddings.norm", hidden)
    # attention_mask [b, s] (1 keep, 0 pad) -> additive bias [b, 1, 1, s]
    m = b.op("Cast", ["attention_mask"], to=F)
    m = b.op("Mul", [b.op("Sub", [b.const(1, np.float32), m]), b.const(-1e4, np.float32)])
    bias = b.op("Unsqueeze", [m, b.const([1, 2])])
    for i in range(layers):
        p = f"layer.{i}"
        x = b.layer_norm(
            b.op("Add", [x, b.attention(x, f"{p}.attention", hidden, heads, bias, False)]),
            f"{p}.attention.norm",
            hidden,
        )
        x = b.layer_norm(b.op("Add", [x, b.mlp(x, f"{p}.mlp", hidden)]), f"{p}.mlp.norm", hidden)
    b.nodes.append(oh.make_node("Identity", [x], ["last_hidden_state"]))
    ids = [
        oh.make_tensor_value_info(n, I64, ["batch", "seq"])
        for n in ("input_ids", "position_ids", "attention_mask")
    ]
    out = [oh.make_tensor_value_info("last_hidden_state", F, ["batch", "seq", hidden])]
    graph = oh.make_graph(b.nodes, "bert", ids, out, b.inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)])


def gpt2(layers: int = 2, hidden: int = 32, heads: int = 4, vocab: int = 64, seed: int = 1):
    """Pre-LN causal decoder with tied embeddings: ``input_ids, position_ids -> logits``."""
    b = _Builder(seed)
    wte = b.w("wte.weight", vocab, hidden)
    x = b.op(
        "Add",
        [
            b.op("Gather", [wte, "input_ids"]),
            b.op("Gather", [b.w("wpe.weight", 128, hidden), "position_ids"]),
        ],
    )
    for i in range(layers):
        p = f"h.{i}"
        x = b.op(
            "Add",
            [
                x,
                b.attention(
                    b.layer_norm(x, f"{p}.ln_1", hidden), f"{p}.attn", hidden, heads, None, True
                ),
            ],
        )
        x = b.op("Add", [x, b.mlp(b.layer_norm(x, f"{p}.ln_2", hidden), f"{p}.mlp", hidden)])
    x = b.layer_norm(x, "ln_f", hidden)
    b.nodes.append(oh.make_node("MatMul", [x, b.op("Transpose", [wte], perm=[1, 0])], ["logits"]))
    ids = [
        oh.make_tensor_value_info(n, I64, ["batch", "seq"]) for n in ("input_ids", "position_ids")
    ]
    out = [oh.make_tensor_value_info("logits", F, ["batch", "seq", vocab])]
    graph = oh.make_graph(b.nodes, "gpt2", ids, out, b.inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)])


def inputs(model: onnx.ModelProto, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids, positions and (for BERT) a mask with some padding."""
    rng = np.random.default_rng(seed)
    feeds = {
        "input_ids": rng.integers(0, 64, (batch, seq)).astype(np.int64),
        "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy(),
    }
    if any(i.name == "attention_mask" for i in model.graph.input):
        mask = np.ones((batch, seq), np.int64)
        mask[::2, seq - max(seq // 3, 1) :] = 0
        feeds["attention_mask"] = mask
    return feeds
