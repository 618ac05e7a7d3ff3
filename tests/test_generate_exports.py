"""Generator on real exports (-m slow: needs torch and transformers): a Llama (RoPE, grouped-query
attention, RMSNorm) by the legacy torch exporter, a Llama and GPT-2 by transformers' own exporter
(``transformers.exporters.OnnxExporter``), GPT-2 by the dynamo exporter, and the INT8
dynamic-quantized GPT-2; 128 greedy tokens, batch 4, ragged, against onnxruntime's own loop."""

from __future__ import annotations

import onnx
import pytest
from decoders import export_decode_step, export_gpt2, export_transformers
from test_generate_attention import OrtLoop, _agree

import onnx2jax

pytestmark = pytest.mark.slow
LAYERS, VOCAB = 2, 500


def _gpt2(path, dynamo=False):
    export_gpt2(path, n_layer=LAYERS, n_embd=64, vocab=VOCAB, n_positions=512, attention="eager",
                dynamo=dynamo)  # fmt: skip


def _check(path, rewritten=True):
    gen = onnx2jax.Generator(str(path))
    assert gen.rewritten == rewritten  # decode steps write into the buffer in place
    _agree(gen, OrtLoop(onnx.load(str(path))), 128)


def _llama(attention="eager"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512)  # fmt: skip
    if attention is not None:
        cfg._attn_implementation = attention
    return LlamaForCausalLM(cfg).eval(), cfg


def test_llama_legacy_export(tmp_path):
    path = tmp_path / "llama.onnx"
    lm, cfg = _llama()
    export_decode_step(lm, cfg, path, layers=LAYERS, kv_heads=2, head_dim=16, vocab=VOCAB)
    _check(path)


def _gpt2_lm():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=512, n_embd=64, n_layer=LAYERS, n_head=4)
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_transformers_exporter(tmp_path, family):
    """transformers' own exporter: input.cache.layers.N.keys -> output.cache.layers.N.keys,
    fixed dims declared as dim_params "2" / "16", a separate prefill graph without past;
    transformers' default attention (sdpa), as users export it."""
    lm = _llama(attention=None)[0] if family == "llama" else _gpt2_lm()
    prefill, decode = export_transformers(lm, tmp_path, vocab=VOCAB)
    gen = onnx2jax.Generator(str(decode))
    assert gen.pairs[0] == ("input.cache.layers.0.keys", "output.cache.layers.0.keys")
    assert gen.rewritten
    ref = OrtLoop(onnx.load(str(decode)))
    _agree(gen, ref, 128)
    # the prefill graph's presents are cache.layers.N.keys (no "output." prefix)
    _agree(onnx2jax.Generator(str(decode), prefill=str(prefill)), ref, 128)


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
