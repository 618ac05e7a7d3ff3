"""Build the model zoo: real architectures with seeded random weights, exported to ONNX and INT8.

    python benchmarks/zoo/build.py                       # the full-size zoo
    python benchmarks/zoo/build.py --small               # reduced configs (fast CI parity tests)
    python benchmarks/zoo/build.py --only resnet18 bert  # some models (and their INT8 variants)
    python benchmarks/zoo/build.py --list                # names, kinds and files; builds nothing

Files go to ``benchmarks/zoo/cache/{full,small}/`` (gitignored); a file already there is not
rebuilt (``--force`` rebuilds). Building needs torch, transformers and onnxscript (exports) and
onnxruntime (quantization); *using* a built zoo needs neither torch nor transformers: the
specs below are plain data.

Python API (for the benchmark runner and the tests)::

    from benchmarks.zoo.build import build, models
    for m in build(["resnet18"], small=True):       # builds what is missing, returns the built
        feeds = m.make_inputs(batch=4, seed=0)       # {input name: seeded numpy array}
        m.name, m.base, m.kind, m.path, m.inputs     # kind: float / int8-dynamic / int8-qdq / int8-qop

Every model gets fixed-seed weights, is put in eval mode and is exported with one of the two
torch exporters (``dynamo=False``, opset 17, ``dynamic_axes``; ``dynamo=True``, opset 18,
``dynamic_shapes``), with dynamic batch and sequence (and image) axes where the model has them.
INT8 variants are made from the float file with ``onnxruntime.quantization``: dynamic
(``quantize_dynamic``), static QDQ and static QOperator (``quantize_static`` with a seeded
calibration reader). README.md in this folder lists the models and what could not be exported.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.path.join(HERE, "cache")
KINDS = ("float", "int8-dynamic", "int8-qdq", "int8-qop")
TORCHSCRIPT_OPSET = 17
DYNAMO_OPSET = 18

Dim = int | str  # a fixed size or a symbolic axis: batch, sequence, past, total, height, width


# -- specs: plain data, usable without torch -----------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One graph input. ``fill`` says how :meth:`ZooModel.make_inputs` draws it:

    ``normal`` N(0, 1) float32; ``ids`` int64 in [0, high); ``mask`` int64 ones with some
    padding (row 1 right-padded by 3, row 2 left-padded by 2); ``token_types`` int64, 0 for
    the first half of the sequence and 1 for the second.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    fill: str = "normal"
    high: int = 0


@dataclass(frozen=True)
class ZooModel:
    """One zoo file: what it is, where it is, and how to make inputs for it."""

    name: str  # e.g. "resnet18" or "resnet18-int8-qop"
    base: str  # the float model it comes from, e.g. "resnet18"
    kind: str  # one of KINDS
    exporter: str  # "torchscript" (dynamo=False) or "dynamo" (dynamo=True)
    opset: int
    small: bool
    path: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    export_dims: Mapping[str, int]  # the symbolic sizes the model was exported (and calibrated) at
    # Other sizes to check parity at (each differs from the export-time ones).
    test_dims: tuple[Mapping[str, int], ...] = ()
    description: str = ""

    @property
    def dynamic_axes(self) -> tuple[str, ...]:
        """The symbolic axes of the inputs (batch, sequence, ...), in first-seen order."""
        seen: list[str] = []
        for s in self.inputs:
            for d in s.shape:
                if isinstance(d, str) and d not in seen:
                    seen.append(d)
        return tuple(seen)

    def dims(self, **overrides: int | None) -> dict[str, int]:
        """Symbolic sizes: export-time ones, with ``overrides`` (None = keep); total = past + sequence."""
        dims = dict(self.export_dims)
        dims.update({k: v for k, v in overrides.items() if v is not None})
        if "past" in dims:
            dims["total"] = dims["past"] + dims.get("sequence", 1)
        return dims

    def input_shapes(self, **dims: int | None) -> dict[str, tuple[int, ...]]:
        d = self.dims(**dims)
        return {
            s.name: tuple(x if isinstance(x, int) else d[x] for x in s.shape) for s in self.inputs
        }

    def make_inputs(
        self,
        batch: int | None = None,
        sequence: int | None = None,
        *,
        seed: int = 0,
        **dims: int | None,
    ) -> dict[str, np.ndarray]:
        """Seeded inputs at ``batch`` / ``sequence`` (and ``past``, ``height``, ``width``);
        sizes not given are the export-time ones."""
        rng = np.random.default_rng(seed)
        shapes = self.input_shapes(batch=batch, sequence=sequence, **dims)
        feeds = {}
        for s in self.inputs:
            shape = shapes[s.name]
            if s.fill == "normal":
                v = rng.standard_normal(shape, dtype=np.float32)
            elif s.fill == "ids":
                v = rng.integers(0, s.high, shape)
            elif s.fill == "mask":
                v = np.ones(shape)
                if shape[0] > 1 and shape[1] > 4:
                    v[1, -3:] = 0  # right padding
                if shape[0] > 2 and shape[1] > 4:
                    v[2, :2] = 0  # left padding, as used for generation
            elif s.fill == "token_types":
                v = np.zeros(shape)
                v[:, shape[1] // 2 :] = 1
            else:
                raise ValueError(f"{self.name}: unknown fill {s.fill!r} for input {s.name!r}")
            feeds[s.name] = np.asarray(v).astype(s.dtype)
        return feeds


@dataclass(frozen=True)
class Recipe:
    """How to make one float model (and which INT8 variants to derive from it)."""

    base: str
    exporter: str
    description: str
    spec: Callable[[bool], dict]  # small -> inputs, outputs, output_axes, export_dims, test_dims
    module: Callable[[bool], object]  # small -> torch.nn.Module (imports torch)
    quant: tuple[str, ...] = ()
    # Dynamic quantization of convolutions (ConvInteger) needs uint8 weights in onnxruntime.
    dynamic_weight_type: str = "QInt8"
    # Dim ranges declared to the dynamo exporter (sequence stays within learned positions).
    dim_ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def _image_spec(size: int, classes: int, dynamic_hw: bool = True, test_hw=((1, 0, 0), (3, 0, 0))):
    hw: tuple[Dim, Dim] = ("height", "width") if dynamic_hw else (size, size)
    dims = {"batch": 2} | ({"height": size, "width": size} if dynamic_hw else {})
    tests = []
    for b, h, w in test_hw:
        t = {"batch": b}
        if dynamic_hw and h:
            t |= {"height": h, "width": w}
        tests.append(t)
    return {
        "inputs": (InputSpec("input", "float32", ("batch", 3, *hw)),),
        "outputs": ("logits",),
        "output_axes": {"logits": {0: "batch"}},
        "export_dims": dims,
        "test_dims": tuple(tests),
    }


def _cnn_spec(small: bool) -> dict:
    if small:
        return _image_spec(32, 10, test_hw=((3, 40, 48), (1, 24, 24)))
    return _image_spec(224, 1000, test_hw=((1, 192, 256), (3, 0, 0)))


def _vit_spec(small: bool) -> dict:
    return _image_spec(32 if small else 224, 10 if small else 1000, dynamic_hw=False)


def _text_inputs(vocab: int, token_types: bool) -> tuple[InputSpec, ...]:
    bs = ("batch", "sequence")
    ins = [
        InputSpec("input_ids", "int64", bs, "ids", vocab),
        InputSpec("attention_mask", "int64", bs, "mask"),
    ]
    if token_types:
        ins.append(InputSpec("token_type_ids", "int64", bs, "token_types"))
    return tuple(ins)


BERT_SMALL = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
GPT2_SMALL = dict(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4)
GPT2_FULL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)


def _bert_spec(small: bool) -> dict:
    bs = {0: "batch", 1: "sequence"}
    return {
        "inputs": _text_inputs(100 if small else 30522, True),
        "outputs": ("last_hidden_state", "pooler_output"),
        "output_axes": {"last_hidden_state": bs, "pooler_output": {0: "batch"}},
        "export_dims": {"batch": 2, "sequence": 16},
        "test_dims": ({"batch": 3, "sequence": 11}, {"batch": 1, "sequence": 37}),
    }


def _gpt2_spec(small: bool) -> dict:
    bs = {0: "batch", 1: "sequence"}
    return {
        "inputs": _text_inputs(100 if small else 50257, False),
        "outputs": ("logits",),
        "output_axes": {"logits": bs},
        "export_dims": {"batch": 2, "sequence": 16},
        "test_dims": ({"batch": 3, "sequence": 11}, {"batch": 1, "sequence": 37}),
    }


def _gpt2_decode_spec(small: bool) -> dict:
    cfg = GPT2_SMALL if small else GPT2_FULL
    heads, hd = cfg["n_head"], cfg["n_embd"] // cfg["n_head"]
    past, present = [], []
    for i in range(cfg["n_layer"]):
        for kv in ("key", "value"):
            past.append(InputSpec(f"past_{kv}_{i}", "float32", ("batch", heads, "past", hd)))
            present.append(f"present_{kv}_{i}")
    pax = {0: "batch", 2: "total"}
    return {
        # One new token per sequence (the decode step), attending to `past` cached positions.
        "inputs": (
            InputSpec("input_ids", "int64", ("batch", 1), "ids", cfg["vocab_size"]),
            InputSpec("attention_mask", "int64", ("batch", "total"), "mask"),
            *past,
        ),
        "outputs": ("logits", *present),
        "output_axes": {"logits": {0: "batch"}} | {p: pax for p in present},
        "export_dims": {"batch": 2, "past": 15},
        "test_dims": ({"batch": 3, "past": 10}, {"batch": 1, "past": 36}),
    }


def _whisper_spec(small: bool) -> dict:
    mels, frames = (16, 32) if small else (80, 3000)
    return {
        "inputs": (InputSpec("input_features", "float32", ("batch", mels, frames)),),
        "outputs": ("last_hidden_state",),
        "output_axes": {"last_hidden_state": {0: "batch"}},
        "export_dims": {"batch": 2},
        "test_dims": ({"batch": 3}, {"batch": 1}),
    }


LSTM_FULL = dict(features=80, hidden=512, layers=2, classes=32)
LSTM_SMALL = dict(features=8, hidden=16, layers=2, classes=5)


def _lstm_spec(small: bool) -> dict:
    cfg = LSTM_SMALL if small else LSTM_FULL
    return {
        "inputs": (InputSpec("features", "float32", ("batch", "sequence", cfg["features"])),),
        "outputs": ("logits",),
        "output_axes": {"logits": {0: "batch", 1: "sequence"}},
        "export_dims": {"batch": 2, "sequence": 16},
        "test_dims": ({"batch": 3, "sequence": 11}, {"batch": 1, "sequence": 37}),
    }


# -- torch modules (torch imported only here) ------------------------------------------------------


def _randomize_bn(model, seed: int):
    """Give BatchNorm layers non-trivial affine parameters (fresh ones are 1 and 0)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _calibrate_bn(model, size: int, seed: int):
    """Set BatchNorm running statistics from a few seeded batches (train-mode forward passes),
    so activations keep a sane scale through deep random networks; then eval mode."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size, generator=g))
    return model.eval()


def _perturb(model, seed: int, scale: float):
    """Add seeded noise to every parameter: fresh biases are 0 and LayerNorm weights 1, which
    would hide bias/scale bugs (and lets exporters merge identical initializers)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _resnet(small: bool, bottleneck: bool):
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, stride=1, groups=1):
        return [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width
            self.body = nn.Sequential(
                *conv_bn(cin, width, 3, stride), nn.ReLU(), *conv_bn(width, cout, 3)
            )
            self.short = (
                nn.Sequential(*conv_bn(cin, cout, 1, stride))
                if stride != 1 or cin != cout
                else nn.Identity()
            )
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.short(x))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                *conv_bn(cin, width, 1),
                nn.ReLU(),
                *conv_bn(width, width, 3, stride),
                nn.ReLU(),
                *conv_bn(width, cout, 1),
            )
            self.short = (
                nn.Sequential(*conv_bn(cin, cout, 1, stride))
                if stride != 1 or cin != cout
                else nn.Identity()
            )
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.short(x))

    class ResNet(nn.Module):
        def __init__(self, block, layers, width, classes):
            super().__init__()
            self.stem = nn.Sequential(*conv_bn(3, width, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            stages, cin = [], width
            for i, n in enumerate(layers):
                w = width * 2**i
                for j in range(n):
                    stages.append(block(cin, w, 2 if j == 0 and i > 0 else 1))
                    cin = w * block.expansion
            self.stages = nn.Sequential(*stages)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))

    torch.manual_seed(0)
    block = Bottleneck if bottleneck else Basic
    if small:
        model = ResNet(block, [1, 1, 1, 1], 8, 10)
    else:
        model = ResNet(block, [3, 4, 6, 3] if bottleneck else [2, 2, 2, 2], 64, 1000)
    return _calibrate_bn(_randomize_bn(model, 1), 32 if small else 224, 2)


def _mobilenetv2(small: bool):
    import torch
    from torch import nn

    def conv_bn_relu6(cin, cout, k, stride=1, groups=1, act=True):
        layers = [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        return layers + [nn.ReLU6()] if act else layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = conv_bn_relu6(cin, hidden, 1) if expand != 1 else []
            layers += conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)  # depthwise
            layers += conv_bn_relu6(hidden, cout, 1, act=False)  # linear bottleneck
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        def __init__(self, settings, width_mult, last, classes):
            super().__init__()
            c = int(32 * width_mult)
            layers = conv_bn_relu6(3, c, 3, 2)
            for t, ch, n, s in settings:
                cout = max(8, int(ch * width_mult))
                for i in range(n):
                    layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                    c = cout
            layers += conv_bn_relu6(c, last, 1)
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    torch.manual_seed(0)
    full = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    if small:
        model = MobileNetV2(
            [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2), (6, 64, 1, 1)], 0.5, 64, 10
        )
    else:
        model = MobileNetV2(full, 1.0, 1280, 1000)
    return _calibrate_bn(_randomize_bn(model, 1), 32 if small else 224, 2)


def _vit(small: bool):
    import torch
    from torch import nn
    from transformers import ViTConfig, ViTForImageClassification

    class Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values, return_dict=True).logits

    torch.manual_seed(0)
    if small:
        cfg = ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
            num_labels=10,
        )
    else:  # ViT-S/16
        cfg = ViTConfig(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            image_size=224,
            patch_size=16,
            num_labels=1000,
        )
    cfg.attn_implementation = "eager"
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    return Logits(_perturb(ViTForImageClassification(cfg), 1, 0.02)).eval()


def _bert(small: bool):
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel

    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.m(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=True,
            )
            return out.last_hidden_state, out.pooler_output

    torch.manual_seed(0)
    cfg = BertConfig(**BERT_SMALL) if small else BertConfig()  # default = BERT-base sizes
    cfg.attn_implementation = "eager"
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    return Wrapper(_perturb(BertModel(cfg), 1, 0.05 if small else 0.02)).eval()


def _gpt2_model(small: bool):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    sizes = GPT2_SMALL if small else GPT2_FULL
    last = sizes["vocab_size"] - 1
    cfg = GPT2Config(**sizes, bos_token_id=last, eos_token_id=last)
    cfg.attn_implementation = "eager"
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    return _perturb(GPT2LMHeadModel(cfg), 1, 0.05 if small else 0.02).eval()


def _gpt2(small: bool):
    from torch import nn

    class Prefill(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=False,
                return_dict=True,
            ).logits

    return Prefill(_gpt2_model(small)).eval()


def _gpt2_decode(small: bool):
    from torch import nn
    from transformers import DynamicCache

    class Decode(nn.Module):
        """(input_ids, attention_mask, past_key_0, past_value_0, ...) -> (logits, present...)."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, *past):
            pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
            cache = DynamicCache(pairs, config=self.m.config)
            out = self.m(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return Decode(_gpt2_model(small)).eval()


def _whisper(small: bool):
    import torch
    from torch import nn
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    class Encoder(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_features):
            return self.m(input_features=input_features, return_dict=True).last_hidden_state

    torch.manual_seed(0)
    if small:
        cfg = WhisperConfig(
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=64,
            num_mel_bins=16,
            max_source_positions=16,
            decoder_layers=1,
        )
    else:
        # The default config has whisper-tiny's encoder: 4 layers, d_model 384, 80 mels, 3000 frames.
        cfg = WhisperConfig()
    cfg.attn_implementation = "eager"
    cfg.dropout = cfg.attention_dropout = cfg.activation_dropout = 0.0
    return Encoder(_perturb(WhisperEncoder(cfg), 1, 0.02)).eval()


def _lstm(small: bool):
    import torch
    from torch import nn

    cfg = LSTM_SMALL if small else LSTM_FULL

    class Tagger(nn.Module):
        """Bidirectional multi-layer LSTM over feature frames, a linear head per frame."""

        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(
                cfg["features"], cfg["hidden"], cfg["layers"], batch_first=True, bidirectional=True
            )
            self.head = nn.Linear(2 * cfg["hidden"], cfg["classes"])

        def forward(self, features):
            y, _ = self.lstm(features)
            return self.head(y)

    torch.manual_seed(0)
    return _perturb(Tagger(), 1, 0.05).eval()


IMAGE_RANGES = {"batch": (1, 1024), "height": (32, 1024), "width": (32, 1024)}
TEXT_RANGES = {"batch": (1, 1024), "sequence": (1, 1024)}  # 1024 learned positions (64 when small)

RECIPES: dict[str, Recipe] = {
    r.base: r
    for r in (
        Recipe(
            "resnet18",
            "torchscript",
            "ResNet-18 (basic blocks, BatchNorm folded), in code",
            _cnn_spec,
            lambda s: _resnet(s, False),
            ("int8-dynamic", "int8-qdq", "int8-qop"),
            dynamic_weight_type="QUInt8",
        ),
        Recipe(
            "resnet50",
            "dynamo",
            "ResNet-50 (bottleneck blocks), in code",
            _cnn_spec,
            lambda s: _resnet(s, True),
            ("int8-qdq", "int8-qop"),
            dim_ranges=IMAGE_RANGES,
        ),
        Recipe(
            "mobilenetv2",
            "torchscript",
            "MobileNetV2 (inverted residuals, depthwise, ReLU6), in code",
            _cnn_spec,
            _mobilenetv2,
            ("int8-qdq", "int8-qop"),
        ),
        Recipe(
            "vit",
            "dynamo",
            "ViT-S/16 (transformers ViTForImageClassification)",
            _vit_spec,
            _vit,
            ("int8-dynamic", "int8-qop"),
            dim_ranges=IMAGE_RANGES,
        ),
        Recipe(
            "bert",
            "torchscript",
            "BERT-base (transformers BertModel, default BertConfig)",
            _bert_spec,
            _bert,
            ("int8-dynamic", "int8-qdq", "int8-qop"),
        ),
        Recipe(
            "gpt2",
            "dynamo",
            "GPT-2 small LM head, prefill (no KV cache)",
            _gpt2_spec,
            _gpt2,
            ("int8-dynamic",),
            dim_ranges=TEXT_RANGES,
        ),
        Recipe(
            "gpt2-decode",
            "torchscript",
            "GPT-2 small LM head, one decode step with past key/values",
            _gpt2_decode_spec,
            _gpt2_decode,
            ("int8-dynamic",),
        ),
        Recipe(
            "whisper-encoder",
            "dynamo",
            "Whisper encoder (transformers, default WhisperConfig = tiny sizes)",
            _whisper_spec,
            _whisper,
            ("int8-dynamic",),
            dim_ranges=IMAGE_RANGES,
        ),
        Recipe(
            "lstm",
            "torchscript",
            "2-layer bidirectional LSTM tagger over feature frames",
            _lstm_spec,
            _lstm,
            ("int8-dynamic",),
        ),
    )
}


def _folder(cache_dir: str | None, small: bool) -> str:
    return os.path.join(cache_dir or DEFAULT_CACHE, "small" if small else "full")


def _zoo_model(recipe: Recipe, kind: str, small: bool, cache_dir: str | None) -> ZooModel:
    spec = recipe.spec(small)
    name = recipe.base if kind == "float" else f"{recipe.base}-{kind}"
    return ZooModel(
        name=name,
        base=recipe.base,
        kind=kind,
        exporter=recipe.exporter,
        opset=TORCHSCRIPT_OPSET if recipe.exporter == "torchscript" else DYNAMO_OPSET,
        small=small,
        path=os.path.join(_folder(cache_dir, small), f"{name}.onnx"),
        inputs=spec["inputs"],
        outputs=spec["outputs"],
        export_dims=spec["export_dims"],
        test_dims=spec["test_dims"],
        description=recipe.description + ("" if kind == "float" else f", {kind}"),
    )


def models(
    names: Iterable[str] | None = None, small: bool = False, cache_dir: str | None = None
) -> list[ZooModel]:
    """The zoo's specs (built or not). ``names`` are base names (a model and its INT8 variants)
    or full names such as ``resnet18-int8-qop``."""
    out = []
    for recipe in RECIPES.values():
        for kind in ("float", *recipe.quant):
            m = _zoo_model(recipe, kind, small, cache_dir)
            if names is None or m.base in names or m.name in names:
                out.append(m)
    if names is not None:
        unknown = set(names) - {m.base for m in out} - {m.name for m in out}
        if unknown:
            raise ValueError(f"unknown zoo model(s) {sorted(unknown)}; see --list")
    return out


# -- building ---------------------------------------------------------------------------------------


def _export(recipe: Recipe, m: ZooModel, spec: dict, path: str) -> None:
    import torch

    module = recipe.module(m.small)
    feeds = m.make_inputs(seed=1234)
    args = tuple(torch.from_numpy(feeds[s.name]) for s in m.inputs)
    names = [s.name for s in m.inputs]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if recipe.exporter == "torchscript":
            axes = {
                s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
                for s in m.inputs
            }
            axes |= spec["output_axes"]
            torch.onnx.export(
                module,
                args,
                path,
                dynamo=False,
                opset_version=m.opset,
                input_names=names,
                output_names=list(m.outputs),
                dynamic_axes={k: v for k, v in axes.items() if v},
                do_constant_folding=True,
            )
        else:
            dims: dict = {}
            for label, (lo, hi) in recipe.dim_ranges.items():
                if label == "sequence" and m.small:
                    hi = 64  # the small configs learn 64 positions
                dims[label] = torch.export.Dim(label, min=lo, max=hi)
            if "past" in m.export_dims:
                dims["past"] = torch.export.Dim("past", min=1, max=1000)
                dims["total"] = dims["past"] + 1
            dynamic_shapes = tuple(
                {i: dims[d] for i, d in enumerate(s.shape) if isinstance(d, str)} or None
                for s in m.inputs
            )
            # torch.export matches dynamic_shapes to forward's parameters: *args is one tuple.
            params = inspect.signature(module.forward).parameters.values()
            if any(p.kind is p.VAR_POSITIONAL for p in params):
                n = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
                dynamic_shapes = (*dynamic_shapes[:n], dynamic_shapes[n:])
            prog = torch.onnx.export(
                module,
                args,
                dynamo=True,
                opset_version=m.opset,
                input_names=names,
                output_names=list(m.outputs),
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                external_data=False,
            )
            prog.save(path, external_data=False)


class _Calibration:
    """onnxruntime CalibrationDataReader: a few seeded batches at the export-time sizes."""

    def __init__(self, m: ZooModel, n: int = 4):
        self._feeds = iter([m.make_inputs(seed=100 + i) for i in range(n)])

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # pragma: no cover - onnxruntime may call it
        pass


def _quantize(recipe: Recipe, m: ZooModel, src: ZooModel, path: str, tmp: str) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Shape inference first (the quantizer needs the types of intermediate values); no
    # onnxruntime graph optimizations, so the graph stays made of standard ops.
    pre = os.path.join(tmp, f"{m.name}.pre.onnx")
    try:
        quant_pre_process(src.path, pre, skip_optimization=True)
    except Exception:  # symbolic shape inference gives up on some graphs: onnx's is enough
        quant_pre_process(src.path, pre, skip_optimization=True, skip_symbolic_shape=True)
    if m.kind == "int8-dynamic":
        quantize_dynamic(pre, path, weight_type=getattr(QuantType, recipe.dynamic_weight_type))
    else:
        fmt = QuantFormat.QDQ if m.kind == "int8-qdq" else QuantFormat.QOperator
        quantize_static(
            pre,
            path,
            _Calibration(src),
            quant_format=fmt,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def _finish(path: str) -> None:
    """Re-save as one self-contained file (no external data) and check it."""
    import onnx

    model = onnx.load(path)
    onnx.save(model, path, save_as_external_data=False)
    folder = os.path.dirname(path)
    for f in os.listdir(folder):  # stray *.onnx.data an exporter may have written
        if f.startswith(os.path.basename(path)) and f != os.path.basename(path):
            os.remove(os.path.join(folder, f))
    onnx.checker.check_model(path)


def _log_path(folder: str) -> str:
    return os.path.join(folder, "build_log.json")


def build(
    names: Iterable[str] | None = None,
    small: bool = False,
    cache_dir: str | None = None,
    force: bool = False,
    verbose: bool = True,
) -> list[ZooModel]:
    """Build what is missing of the zoo (or of ``names``) and return the models that exist.

    A model that fails to export or quantize is left out of the result; the reason is printed
    and kept in ``build_log.json`` in the cache folder.
    """
    names = None if names is None else list(names)
    wanted = models(names, small, cache_dir)
    bases = {m.base for m in wanted}
    # A variant needs its float model: build it first (and return it too).
    floats = [m for m in models(None, small, cache_dir) if m.kind == "float" and m.base in bases]
    wanted = floats + [m for m in wanted if m.kind != "float"]
    folder = _folder(cache_dir, small)
    os.makedirs(folder, exist_ok=True)
    log_file = _log_path(folder)
    log = json.load(open(log_file)) if os.path.exists(log_file) else {}
    by_name = {m.name: m for m in wanted}
    built = []
    for m in wanted:
        if os.path.exists(m.path) and not force:
            built.append(m)
            continue
        recipe = RECIPES[m.base]
        src = by_name.get(m.base)
        if m.kind != "float" and (src is None or not os.path.exists(src.path)):
            log[m.name] = {"status": f"skipped: float model {m.base} is missing"}
            continue
        t0 = time.perf_counter()
        tmp = m.path + ".tmp"
        os.makedirs(tmp, exist_ok=True)
        out = os.path.join(tmp, os.path.basename(m.path))
        try:
            if m.kind == "float":
                _export(recipe, m, recipe.spec(small), out)
            else:
                _quantize(recipe, m, src, out, tmp)
            _finish(out)
            os.replace(out, m.path)
            status = "ok"
            built.append(m)
        except Exception as e:  # keep going: the log and the README record why
            if verbose:
                traceback.print_exc()
            status = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            for f in os.listdir(tmp):
                os.remove(os.path.join(tmp, f))
            os.rmdir(tmp)
        dt = time.perf_counter() - t0
        size = os.path.getsize(m.path) / 2**20 if status == "ok" else 0.0
        log[m.name] = {"status": status, "seconds": round(dt, 1), "MiB": round(size, 1)}
        if verbose:
            print(
                f"{m.name}: {status} ({dt:.1f} s{f', {size:.1f} MiB' if size else ''})", flush=True
            )
        with open(log_file, "w") as f:
            json.dump(log, f, indent=1, sort_keys=True)
    return built


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only", nargs="+", metavar="NAME", help="models to build (base or full names)"
    )
    ap.add_argument("--small", action="store_true", help="reduced configs, for fast parity tests")
    ap.add_argument("--cache", default=None, help=f"cache folder (default {DEFAULT_CACHE})")
    ap.add_argument("--force", action="store_true", help="rebuild files that exist")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    args = ap.parse_args(argv)
    if args.list:
        for m in models(args.only, args.small, args.cache):
            state = "built" if os.path.exists(m.path) else "-"
            print(f"{m.name:28} {m.kind:13} {m.exporter:12} {state:6} {m.description}")
        return
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    built = build(args.only, args.small, args.cache, args.force)
    want = models(args.only, args.small, args.cache)
    print(
        f"{len(built)} of {len(want)} models present in {_folder(args.cache, args.small)} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    missing = [m.name for m in want if not os.path.exists(m.path)]
    if missing:
        print("missing (see build_log.json):", ", ".join(missing))
        sys.exit(1)


if __name__ == "__main__":
    main()
