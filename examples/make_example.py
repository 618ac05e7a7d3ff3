"""Build the tiny CNN used by the README quick start and export it to ``examples/tiny_cnn.onnx``.

Run by hand (needs torch): ``python examples/make_example.py``. The weights come from a fixed
seed, the model is in eval mode, and the batch axis is dynamic (images are 3x32x32).
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_cnn.onnx")


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def main() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            OUT,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
