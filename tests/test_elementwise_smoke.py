"""Smoke tests of the op checker itself on the first ops."""

import numpy as np
import pytest
from op_check import check_node

rng = np.random.default_rng(0)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_binary(op):
    check_node(
        op,
        {
            "a": rng.standard_normal((2, 3)).astype(np.float32),
            "b": rng.standard_normal((3,)).astype(np.float32),
        },
    )


def test_reshape_static_shape_from_input_and_constant():
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    check_node("Reshape", {"x": x, "s": np.array([0, -1], np.int64)})
    check_node("Reshape", {"x": x, "s": np.array([6, 4], np.int64)}, constants=["s"])
