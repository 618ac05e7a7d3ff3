"""Quantize the checked-in float models to INT8 with onnxruntime.quantization (run by hand).

Needs onnxruntime only (no torch). Run from anywhere::

    python tests/models/make_quantized.py

Writes, next to the float models made by ``make_models.py``:

- ``resnet_int8_dynamic.onnx``: ``quantize_dynamic`` (uint8 weights): DynamicQuantizeLinear,
  ConvInteger, MatMulInteger.
- ``resnet_int8_qdq.onnx``: ``quantize_static``, QuantFormat.QDQ, per-channel int8 weights,
  uint8 activations: QuantizeLinear/DequantizeLinear around float Conv/Gemm.
- ``resnet_int8_qop.onnx``: ``quantize_static``, QuantFormat.QOperator: QLinearConv and the
  com.microsoft contrib ops QLinearAdd, QLinearGlobalAveragePool, QGemm.
- ``bert_int8_dynamic.onnx`` and ``bert_int8_qop.onnx``: the small BERT, dynamic
  (MatMulInteger) and QOperator (QLinearMatMul, QLinearAdd, QLinearMul, QLinearSoftmax, QGemm).

Calibration uses four seeded batches at the export-time shapes. The files are deterministic
for a given onnxruntime version.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 100


def image_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((2, 3, 32, 32), dtype=np.float32)}


def text_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((2, 8), np.int64)
    mask[1, 6:] = 0
    tt = np.zeros((2, 8), np.int64)
    tt[:, 4:] = 1
    return {
        "input_ids": rng.integers(0, VOCAB, (2, 8)),
        "attention_mask": mask,
        "token_type_ids": tt,
    }


class Reader(CalibrationDataReader):
    def __init__(self, make):
        self.batches = iter([make(100 + i) for i in range(4)])

    def get_next(self):
        return next(self.batches, None)


def quantize(src: str, dst: str, kind: str, make, weight_type=QuantType.QInt8) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        try:
            quant_pre_process(src, pre, skip_optimization=True)
        except Exception:  # symbolic shape inference gives up on some graphs
            quant_pre_process(src, pre, skip_optimization=True, skip_symbolic_shape=True)
        if kind == "dynamic":
            quantize_dynamic(pre, dst, weight_type=weight_type)
        else:
            fmt = QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator
            quantize_static(
                pre,
                dst,
                Reader(make),
                quant_format=fmt,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    onnx.checker.check_model(dst)
    print(f"{os.path.basename(dst)}: {os.path.getsize(dst) / 1024:.0f} KiB")


def main() -> None:
    resnet = os.path.join(HERE, "resnet_torchscript.onnx")
    for kind in ("dynamic", "qdq", "qop"):
        # onnxruntime's ConvInteger takes uint8 weights only
        wt = QuantType.QUInt8 if kind == "dynamic" else QuantType.QInt8
        quantize(resnet, os.path.join(HERE, f"resnet_int8_{kind}.onnx"), kind, image_batch, wt)
    bert = os.path.join(HERE, "bert_torchscript.onnx")
    for kind in ("dynamic", "qop"):
        quantize(bert, os.path.join(HERE, f"bert_int8_{kind}.onnx"), kind, text_batch)


if __name__ == "__main__":
    main()
