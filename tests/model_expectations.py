"""Expected failures of the ONNX model suites (tests/test_onnx_model_suite.py), by cause.

Each entry is ``case name: cause``; the suite marks them ``xfail(strict=True)``, so a case that
starts passing fails until its entry is removed: this list can only shrink. A listed case that
fails for another cause (``tests/failure_cause.py``) fails too. Draft a new one
with ``python tests/tools/update_expectations.py --suite model --write`` and review it by hand.
"""

from __future__ import annotations

EXPECTED_FAILURES: dict[str, str] = {
    # Float32 rounding under XLA CPU's FMA contraction: 1 case. The light model's constant weights
    # drive the logits to ~1e10 (an ULP is 1024). XLA fuses GlobalAveragePool's scaling into
    # Softmax's `x - max(x)` as one FMA, while max(x) was taken of the rounded products, so the
    # largest logit shifts by its rounding error (hundreds) instead of 0 and exp over/underflows:
    # NaN. jax.nn.softmax alone shows it; realistic logits (error ~1e-6) are unaffected.
    "test_squeezenet": "wrong values: Softmax of ~1e10 logits after an FMA-contracted mean is NaN",
    # Not implemented yet: Gradient: 2 cases
    "test_gradient_of_add": "not implemented: Gradient",
    "test_gradient_of_add_and_mul": "not implemented: Gradient",
}
