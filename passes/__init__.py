"""Graph passes: ONNX-to-ONNX rewrites on onnx-ir that run in ``onnx2jax.load`` before tracing.

Every pass has onnx-ir's contract (``pass(model) -> PassResult(model, modified)``) and the
pipeline runs the chosen ones to a fixed point. Passes never import JAX: they rewrite the graph
so that the tracer's ops see weights and activations in the form the kernels want, and emit the
nodes that prepare weights from the original ONNX-named params (``onnx2jax`` computes such
param-only nodes once per params object, see docs/ARCHITECTURE.md).

Install name ``onnx2jax.passes``; see ``pipeline.PASSES`` for what each pass does.
"""

from __future__ import annotations

from .pipeline import DEFAULT, KERNEL_PASSES, PASSES, PassReport, Report, optimize, resolve

__all__ = ["DEFAULT", "KERNEL_PASSES", "PASSES", "PassReport", "Report", "optimize", "resolve"]
