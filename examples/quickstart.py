"""The README quick start: load ``tiny_cnn.onnx`` and run it jitted, then with ``jax.jit(model.apply)``."""

from __future__ import annotations

import os

import jax
import numpy as np

import onnx2jax

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    model = onnx2jax.load(os.path.join(HERE, "tiny_cnn.onnx"))
    print(model)
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    (logits,) = model(images)  # a cached jax.jit with model.params bound
    print("logits", logits.shape, "argmax", np.asarray(logits).argmax(-1))
    (again,) = jax.jit(model.apply)(model.params, image=images)  # pure: params are an argument
    print("max |difference| between the two paths:", float(np.abs(logits - again).max()))


if __name__ == "__main__":
    main()
