"""docs/ops.md is generated from the registry and must match it."""

import pathlib

from onnx2jax._opsdoc import render


def test_ops_md_matches_registry():
    path = pathlib.Path(__file__).parents[1] / "docs" / "ops.md"
    assert path.read_text() == render(), (
        "docs/ops.md is stale: regenerate with `python -m onnx2jax._opsdoc > docs/ops.md`"
    )
