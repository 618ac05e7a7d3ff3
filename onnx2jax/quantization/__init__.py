"""Post-training quantization into QDQ form, and straight-through fake quantization for QAT."""

from __future__ import annotations

from ._qat import finish_qat as finish_qat
from ._qat import prepare_qat as prepare_qat
from ._quantize import QuantizationError as QuantizationError
from ._quantize import quantize as quantize

__all__ = ["QuantizationError", "finish_qat", "prepare_qat", "quantize"]
