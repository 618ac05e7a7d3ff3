"""The op registry: version ranges, newer opsets, double registration; and the layer rule."""

from __future__ import annotations

import pathlib
import re

import onnx
import pytest

import onnx2jax.ops  # noqa: F401  (registers the standard ops)
from onnx2jax import _registry
from onnx2jax._registry import lookup, register

DOMAIN = "test.onnx2jax.registry"


@register("Twice", domain=DOMAIN, since=1)
def _v1(x):
    return x


@register("Twice", domain=DOMAIN, since=5)
def _v5(x):
    return x


def test_version_ranges_pick_newest_not_above_opset():
    assert lookup(DOMAIN, "Twice", 1).fn is _v1
    assert lookup(DOMAIN, "Twice", 4).fn is _v1
    assert lookup(DOMAIN, "Twice", 5).fn is _v5
    assert lookup(DOMAIN, "Twice", 99).fn is _v5


def test_double_registration_raises():
    with pytest.raises(RuntimeError, match="registered twice"):
        register("Twice", domain=DOMAIN, since=5)(lambda x: x)


def test_unknown_op_is_none():
    assert lookup(DOMAIN, "Nope", 3) is None


def test_newer_opset_than_any_registration_uses_schema_version():
    """Relu is registered once; any newer opset (whose schema did not change it) still works."""
    newest = onnx.defs.onnx_opset_version()
    impl = lookup("", "Relu", newest)
    assert impl is not None
    assert impl.since <= onnx.defs.get_schema("Relu", newest).since_version
    assert lookup("", "Relu", newest + 5) is impl


def test_static_inputs_table_is_data():
    assert _registry.STATIC_INPUTS[("", "Reshape")] == (1,)


def test_layer_rule_ops_never_touch_protobuf():
    """Only the loader touches protobuf: op modules must not import onnx."""
    ops_dir = pathlib.Path(_registry.__file__).parent / "ops"
    for path in ops_dir.glob("*.py"):
        src = path.read_text()
        assert not re.search(r"^\s*(import onnx|from onnx)", src, re.M), f"{path.name} imports onnx"
