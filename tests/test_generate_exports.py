"""Generator on real exports (-m slow: needs torch and transformers): a Llama (RoPE, grouped-query
attention, RMSNorm) by the legacy torch exporter, GPT-2 by the dynamo exporter, and the INT8
dynamic-quantized GPT-2; 128 greedy tokens, batch 4, ragged, against onnxruntime's own loop."""

from __future__ import annotations

import onnx
import pytest
from test_generate_attention import OrtLoop, _agree

import onnx2jax

pytestmark = pytest.mark.slow
LAYERS, VOCAB = 2, 500


def _export(lm, cfg, path, kv_heads: int, head_dim: int, dynamo: bool) -> None:
    """The decode step with ``position_ids`` and ``past_key_values.N.key`` / ``present.N.key``
    names (transformers' DynamicCache inside)."""
    import torch
    from transformers import DynamicCache

    class Decode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, *past):
            pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=DynamicCache(pairs, config=cfg),
                use_cache=True,
            )
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    b, t, p = 2, 3, 4
    past = tuple(torch.randn(b, kv_heads, p, head_dim) for _ in range(2 * LAYERS))
    names = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    outs = [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    args = (torch.randint(0, VOCAB, (b, t)), torch.ones(b, p + t, dtype=torch.long),
            torch.arange(p, p + t).repeat(b, 1), *past)  # fmt: skip
    kw = {"input_names": ["input_ids", "attention_mask", "position_ids", *names],
          "output_names": ["logits", *outs]}  # fmt: skip
    if dynamo:
        B, S, P, T = (torch.export.Dim(n) for n in ("batch", "seq", "past", "total"))
        kw["dynamic_shapes"] = ({0: B, 1: S}, {0: B, 1: T}, {0: B, 1: S},
                                tuple({0: B, 2: P} for _ in past))  # fmt: skip
        kw |= {"dynamo": True, "opset_version": 18}
    else:
        axes = {"input_ids": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "total"}, "logits": {0: "batch", 1: "seq"}}  # fmt: skip
        axes |= {n: {0: "batch", 2: "past"} for n in names}
        axes |= {o: {0: "batch", 2: "total"} for o in outs}
        kw |= {"dynamic_axes": axes, "dynamo": False, "opset_version": 17}
    with torch.no_grad():
        torch.onnx.export(Decode(), args, str(path), **kw)


def _gpt2(path, dynamo=False):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=512, n_embd=64, n_layer=LAYERS, n_head=4)
    cfg._attn_implementation = "eager"
    _export(GPT2LMHeadModel(cfg).eval(), cfg, path, 4, 16, dynamo)


def _check(path, rewritten=True):
    gen = onnx2jax.Generator(str(path))
    assert gen.rewritten == rewritten  # decode steps write into the buffer in place
    _agree(gen, OrtLoop(onnx.load(str(path))), 128)


def test_llama_legacy_export(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512)  # fmt: skip
    cfg._attn_implementation = "eager"
    path = tmp_path / "llama.onnx"
    _export(LlamaForCausalLM(cfg).eval(), cfg, path, 2, 16, dynamo=False)
    _check(path)


def test_gpt2_dynamo_export(tmp_path):
    path = tmp_path / "gpt2-dynamo.onnx"
    _gpt2(path, dynamo=True)
    _check(path)


def test_gpt2_int8_dynamic(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _gpt2(tmp_path / "gpt2.onnx")
    path = tmp_path / "gpt2-int8.onnx"
    quantize_dynamic(str(tmp_path / "gpt2.onnx"), str(path), weight_type=QuantType.QInt8)
    _check(path)
