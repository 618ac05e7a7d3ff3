"""Decode-step exports of transformers decoders (past inputs, present outputs), shared by
benchmarks/generate.py and the Generator's slow tests (tests/test_generate*.py).

The graph takes ``input_ids``, ``attention_mask``, ``position_ids`` and
``past_key_values.N.key`` / ``.value`` and returns ``logits`` and ``present.N.key`` / ``.value``
(the names torch exporters and Optimum use), with transformers' DynamicCache inside;
:func:`export_transformers` uses transformers' own exporter instead (``input.cache.layers.N.keys``
-> ``output.cache.layers.N.keys``). Needs torch and transformers.
"""

from __future__ import annotations

from pathlib import Path


def export_decode_step(lm, cfg, path: str | Path, *, layers: int, kv_heads: int, head_dim: int,
                       vocab: int, dynamo: bool = False) -> None:  # fmt: skip
    """Export ``lm`` (a transformers causal LM built from ``cfg``) as one decode step: the legacy
    exporter at opset 17 with named dynamic axes, or the dynamo exporter at opset 18."""
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
    past = tuple(torch.randn(b, kv_heads, p, head_dim) for _ in range(2 * layers))
    names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    outs = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    args = (torch.randint(0, vocab, (b, t)), torch.ones(b, p + t, dtype=torch.long),
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


def export_gpt2(path: str | Path, *, n_layer: int, n_embd: int, vocab: int, n_positions: int = 1024,
                attention: str | None = None, dynamo: bool = False) -> None:  # fmt: skip
    """A GPT-2 (4 heads, seeded random weights) as one decode step. ``attention``: transformers'
    attention implementation ("eager", "sdpa"); None keeps transformers' default."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                     n_head=4)  # fmt: skip
    if attention is not None:
        cfg._attn_implementation = attention
    lm = GPT2LMHeadModel(cfg).eval()
    export_decode_step(lm, cfg, path, layers=n_layer, kv_heads=4, head_dim=n_embd // 4,
                       vocab=vocab, dynamo=dynamo)  # fmt: skip


def export_transformers(lm, out_dir: str | Path, *, vocab: int) -> tuple[Path, Path]:
    """Export ``lm`` with transformers' own ONNX exporter (``transformers.exporters``,
    ``OnnxExporter.export_for_generation``, dynamic shapes, multi-token decode): returns the
    paths of ``prefill.onnx`` (no past; outputs ``cache.layers.N.keys`` / ``.values``) and
    ``decode.onnx`` (inputs ``input.cache.layers.N.keys`` / ``.values``, outputs
    ``output.cache.layers.N.keys`` / ``.values``), weights in ``.onnx.data`` files beside them.

    The sample prompt is left-padded: the exporter keeps an ``attention_mask`` input only when
    the sample's mask has padding (without one the graph attends over every past slot, which a
    fixed-size cache cannot use).
    """
    import torch
    from transformers.exporters import OnnxConfig, OnnxExporter

    ids = torch.randint(0, vocab, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    sample = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 3}
    exported = OnnxExporter().export_for_generation(
        lm, sample, OnnxConfig(dynamic=True), multi_token_decode=True
    )
    exported.save_pretrained(str(out_dir))
    return Path(out_dir) / "prefill.onnx", Path(out_dir) / "decode.onnx"
