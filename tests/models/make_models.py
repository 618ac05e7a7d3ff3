"""Build small seeded models and export them to ONNX with both torch exporters (run by hand).

Needs torch, transformers and onnxscript; the test suite itself does not. Run from anywhere::

    python tests/models/make_models.py            # writes tests/models/*.onnx
    python tests/models/make_models.py resnet     # only the named families

Every model gets fixed-seed random weights and is put in eval mode. Each is exported twice:
by the TorchScript exporter (``dynamo=False``, opset 17, ``dynamic_axes``) and by the dynamo
exporter (``dynamo=True``, opset 18, ``dynamic_shapes``), always as one self-contained file.
Export shapes (batch 2, sequence 8, images 32x32; batch, sequence, height and width are
dynamic) differ on purpose from the shapes the tests
feed, so the tests also check that the dynamic axes really are dynamic.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import onnx
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
TORCHSCRIPT_OPSET = 17
DYNAMO_OPSET = 18
VOCAB = 100
# Ranges declared to the dynamo exporter; sequence stays within the 64 learned positions.
DIM_RANGES = {"batch": (1, 1024), "sequence": (1, 64), "height": (8, 1024), "width": (8, 1024)}


# -- a: a small ResNet/MobileNet-style CNN --------------------------------------------------------


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """ResNet basic block; a strided one gets a 1x1 projection on the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), nn.ReLU(), conv_bn(cout, cout, 3))
        self.shortcut = (
            conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class DepthwiseSeparable(nn.Module):
    """MobileNet-style: depthwise 3x3 + ReLU6, pointwise 1x1 + Hardswish, residual add.

    The BatchNorm after the residual add cannot be folded into a Conv by the exporters, so the
    files keep one real BatchNormalization node.
    """

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Sequential(conv_bn(c, c, 3, groups=c), nn.ReLU6())
        self.pw = nn.Sequential(conv_bn(c, c, 1), nn.Hardswish())
        self.post_bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.post_bn(x + self.pw(self.dw(x)))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3), nn.ReLU())
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = BasicBlock(16, 32, stride=2)  # strided, 1x1 projection shortcut
        self.layer3 = BasicBlock(32, 32)
        self.mobile = DepthwiseSeparable(32)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.mobile(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


def make_resnet() -> nn.Module:
    torch.manual_seed(0)
    return with_batchnorm_stats(TinyResNet())


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion + ReLU6 (none when ``expand`` is 1), depthwise 3x3
    + ReLU6, 1x1 projection (all with BatchNorm), and the input added when the shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        e = cin * expand
        expansion = [conv_bn(cin, e, 1), nn.ReLU6()] if expand != 1 else []
        self.body = nn.Sequential(
            *expansion, conv_bn(e, e, 3, stride, groups=e), nn.ReLU6(), conv_bn(e, cout, 1)
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class TinyMobileNet(nn.Module):
    """A MobileNetV2-style stack: stem, a block without expansion, a strided and a residual
    inverted-residual block, a head (the shapes fuse_inverted_residuals rewrites)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 6),
            InvertedResidual(24, 24, 1, 6), InvertedResidual(24, 32, 1, 4),
        )  # fmt: skip
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.gap(self.blocks(self.stem(x))), 1))


def with_batchnorm_stats(model: nn.Module) -> nn.Module:
    """Fresh BatchNorm has mean 0 / var 1, which would make it an identity: give it real stats."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def make_mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return with_batchnorm_stats(TinyMobileNet())


# -- b, c: small transformers ------------------------------------------------------------------------


class BertWrapper(nn.Module):
    """Positional (input_ids, attention_mask, token_type_ids) -> (last_hidden_state, pooler_output)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
        )
        return out.last_hidden_state, out.pooler_output


class GPT2Wrapper(nn.Module):
    """Positional (input_ids, attention_mask) -> logits, without a KV cache."""

    def __init__(self, gpt2):
        super().__init__()
        self.gpt2 = gpt2

    def forward(self, input_ids, attention_mask):
        return self.gpt2(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True
        ).logits


def perturb(model: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    """Add seeded noise to every parameter: fresh biases are 0 and LayerNorm weights 1, which
    would hide bias/scale bugs (and lets the exporter merge identical initializers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def make_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return BertWrapper(perturb(BertModel(cfg), 1)).eval()


def make_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        attn_implementation="eager",
    )
    return GPT2Wrapper(perturb(GPT2LMHeadModel(cfg), 1)).eval()


# -- d: recurrent layers ----------------------------------------------------------------------------


class TinyRnn(nn.Module):
    """A 2-layer bidirectional LSTM, then a bidirectional GRU: what a speech or tagging encoder
    looks like to the exporters (one bidirectional node per layer, weights for both directions
    in one initializer)."""

    def __init__(self, features: int = 12, hidden: int = 16):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(2 * hidden, hidden // 2, bidirectional=True, batch_first=True)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        return y, h


def make_rnn() -> nn.Module:
    torch.manual_seed(0)
    return perturb(TinyRnn(), 1).eval()


# -- export -------------------------------------------------------------------------------------------


def export_both(
    name: str,
    model: nn.Module,
    args: tuple,
    input_names: list[str],
    output_names: list[str],
    axes: dict[str, dict[int, str]],
) -> dict[str, str]:
    """Export with both exporters; returns {file: "ok" or the failure reason}."""
    results = {}
    path = os.path.join(HERE, f"{name}_torchscript.onnx")
    try:
        dynamic_axes = {n: dict(a) for n, a in axes.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                path,
                dynamo=False,
                opset_version=TORCHSCRIPT_OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        results[path] = finish(path)
    except Exception as e:  # keep going: the README records why
        traceback.print_exc()
        results[path] = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    path = os.path.join(HERE, f"{name}_dynamo.onnx")
    try:
        dims: dict[str, torch.export.Dim] = {}
        for a in axes.values():
            for label in a.values():
                lo, hi = DIM_RANGES[label]
                dims.setdefault(label, torch.export.Dim(label, min=lo, max=hi))
        dynamic_shapes = tuple(
            {ax: dims[label] for ax, label in axes.get(n, {}).items()} for n in input_names
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                model,
                args,
                dynamo=True,
                opset_version=DYNAMO_OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                external_data=False,
            )
        prog.save(path, external_data=False)
        results[path] = finish(path)
    except Exception as e:
        traceback.print_exc()
        results[path] = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return results


def finish(path: str) -> str:
    """Re-save as one self-contained file and check it with onnxruntime."""
    m = onnx.load(path)  # pulls external data in, if any was written
    for f in os.listdir(HERE):
        if f.startswith(os.path.basename(path)) and f != os.path.basename(path):
            os.remove(os.path.join(HERE, f))  # stray *.onnx.data
    onnx.save(m, path, save_as_external_data=False)
    onnx.checker.check_model(path)
    return f"ok ({os.path.getsize(path) / 1024:.0f} KiB)"


def main(which: list[str]) -> None:
    torch.set_grad_enabled(False)
    results = {}
    if not which or "resnet" in which:
        model = make_resnet()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        results |= export_both(
            "resnet",
            model,
            (x,),
            ["input"],
            ["logits"],
            {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
        )
    if not which or "mobilenet" in which:
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        results |= export_both(
            "mobilenet",
            make_mobilenet(),
            (x,),
            ["input"],
            ["logits"],
            {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
        )
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 6:] = 0
    if not which or "bert" in which:
        tt = torch.zeros(2, 8, dtype=torch.int64)
        tt[:, 4:] = 1
        bs = {0: "batch", 1: "sequence"}
        results |= export_both(
            "bert",
            make_bert(),
            (ids, mask, tt),
            ["input_ids", "attention_mask", "token_type_ids"],
            ["last_hidden_state", "pooler_output"],
            {
                "input_ids": bs,
                "attention_mask": bs,
                "token_type_ids": bs,
                "last_hidden_state": bs,
                "pooler_output": {0: "batch"},
            },
        )
    if not which or "gpt2" in which:
        bs = {0: "batch", 1: "sequence"}
        results |= export_both(
            "gpt2",
            make_gpt2(),
            (ids, mask),
            ["input_ids", "attention_mask"],
            ["logits"],
            {"input_ids": bs, "attention_mask": bs, "logits": bs},
        )
    if not which or "rnn" in which:
        x = torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(4))
        results |= export_both(
            "rnn",
            make_rnn(),
            (x,),
            ["features"],
            ["y", "h"],
            {"features": {0: "batch", 1: "sequence"}, "y": {0: "batch", 1: "sequence"}},
        )
    print(f"torch {torch.__version__}")
    for path, status in results.items():
        print(f"{os.path.basename(path)}: {status}")


if __name__ == "__main__":
    main(sys.argv[1:])
