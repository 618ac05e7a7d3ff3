"""XLA compiler options onnx2jax passes to its own ``jax.jit`` calls.

On CPU, XLA can hand matmuls (and convolutions, and reductions) to YNNPACK (XNNPACK's
successor) instead of its own Eigen kernels. With the weights prepared once in the layout the
kernels want (passes/, _prepare.py), YNNPACK's dots measured up to 1.7x faster on GPT-2
(benchmarks/NOTES.md, entries 3 and 12), so onnx2jax's jits send dots there, and reductions.
Convolutions stay on Eigen, which spreads them over the cores where YNNPACK ran the small ones
on one (ResNet-18 27-30% and ResNet-50 13-17% faster, entry 13). ``Model.tune`` times the
other choices per model. Nothing changes on other backends. ``ONNX2JAX_XLA_LIBRARY=off`` turns
it off; a jaxlib that does not know the option runs without it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_CONV, _DOT = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
# Reductions go to YNNPACK too: with any YNNPACK option set, XLA splits long reductions into
# reduce-windows of 32 (its TreeReductionRewriter) unless YNNPACK takes them, and those ran
# 2x slower than the plain reduction on LayerNorm and softmax (Whisper encoder b1 -17%, ViT
# b8 -10%, BERT b8 -6% with them on YNNPACK; benchmarks/NOTES.md entry 27).
_REDUCE = "LIBRARY_FUSION_TYPE_REDUCE"


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
    return cpu_options()


@functools.cache
def cpu_options() -> dict[str, Any]:
    """The YNNPACK options this jaxlib compiles (the environment switch aside): dots and
    reductions, or dots alone where it does not know the reduce fusion, or none."""
    import jax

    for fusions in (f"{_DOT},{_REDUCE}", _DOT):
        try:
            jax.jit(lambda a: a @ a, compiler_options={_YNN: fusions}).lower(
                jax.ShapeDtypeStruct((8, 8), "float32")
            ).compile()
        except Exception:
            continue
        return {_YNN: fusions}
    return {}


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
    reduce = [_REDUCE] if _REDUCE in default[_YNN] else []  # with the dots wherever they run
    choices = {"ynnpack dots": default, "eigen dots": {**default, _YNN: ",".join(reduce)}}
    if convolutions:
        choices["ynnpack convs and dots"] = {**default, _YNN: ",".join([_CONV, _DOT, *reduce])}
    return choices
