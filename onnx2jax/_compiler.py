"""XLA compiler options onnx2jax passes to its own ``jax.jit`` calls.

On CPU, XLA can hand matmuls (and convolutions) to YNNPACK (XNNPACK's successor) instead of
its own Eigen kernels. With the weights prepared once in the layout the kernels want (passes/,
_prepare.py), YNNPACK's dots measured up to 1.7x faster on GPT-2 (benchmarks/NOTES.md, entries
3 and 12), so onnx2jax's jits send dots there. Convolutions stay on Eigen, which spreads them
over the cores where YNNPACK ran the small ones on one (ResNet-18 27-30% and ResNet-50 13-17%
faster, entry 13). ``Model.tune`` times the other choices per model. Nothing changes on other
backends. ``ONNX2JAX_XLA_LIBRARY=off`` turns it off; a jaxlib that does not know the option runs
without it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_CONV, _DOT = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
_CPU = {_YNN: _DOT}


@functools.cache
def compiler_options() -> dict[str, Any]:
    """The options for this process's default backend (empty when none apply).

    Use them for your own ``jax.jit`` of ``model.apply``:
    ``jax.jit(model.apply, compiler_options=onnx2jax.compiler_options())``.
    """
    import jax

    if os.environ.get("ONNX2JAX_XLA_LIBRARY", "").strip().lower() in ("0", "off", "none", "no"):
        return {}
    if jax.default_backend() != "cpu":
        return {}
    try:  # an older or newer jaxlib may not know the option
        jax.jit(lambda a: a @ a, compiler_options=_CPU).lower(
            jax.ShapeDtypeStruct((8, 8), "float32")
        ).compile()
    except Exception:
        return {}
    return dict(_CPU)


def candidates(convolutions: bool = True) -> dict[str, dict[str, Any]]:
    """The option sets ``Model.tune`` chooses between, by name; the default first.

    On CPU the dots go to YNNPACK (the default) or to XLA's own Eigen kernels; neither wins
    everywhere (benchmarks/NOTES.md, entry 12: Eigen 18-29% faster on ViT and the GPT-2 decode
    step at batch 8, YNNPACK 1.7x faster on GPT-2 prefill at batch 1). Convolutions run on
    Eigen in both; a program with ``convolutions`` also gets a choice with them on YNNPACK
    (entry 13: on a 2-core AVX2 machine slower on the ResNets, about even on MobileNetV2, where
    tune picked it at batch 8; machines with AVX-512 are not measured).
    """
    default = compiler_options()
    if _YNN not in default:
        return {"default": default}
    choices = {"ynnpack dots": default, "eigen dots": {**default, _YNN: ""}}
    if convolutions:
        choices["ynnpack convs and dots"] = {**default, _YNN: f"{_CONV},{_DOT}"}
    return choices
