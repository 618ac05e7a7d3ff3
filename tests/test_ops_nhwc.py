"""The channels-last ops of the layout pass (ops/nhwc.py) against their ONNX NCHW ops.

Each NHWC op must equal transpose -> the ONNX op (checked against onnx's reference evaluator
in tests/test_ops_conv.py and test_ops_pool.py) -> transpose, for every lowering strategy.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator
from op_check import node_model

from onnx2jax.ops import nhwc

RNG = np.random.default_rng(7)


def _nchw_reference(op, x, w=None, b=None, **attrs):
    ins = {"x": x} | ({"w": w} if w is not None else {}) | ({"b": b} if b is not None else {})
    return ReferenceEvaluator(node_model(op, ins, attrs)).run(None, ins)[0]


@pytest.mark.parametrize(
    "cin,cout,k,group,attrs",
    [
        (8, 16, 1, 1, {"strides": [2, 2]}),  # 1x1 strided: one matmul
        (3, 8, 7, 1, {"strides": [2, 2], "pads": [3, 3, 3, 3]}),  # an RGB stem
        (8, 8, 3, 8, {"pads": [1, 1, 1, 1]}),  # depthwise
        (4, 8, 3, 4, {"pads": [0, 1, 1, 0], "strides": [2, 1]}),  # depthwise, multiplier 2
        (8, 12, 3, 2, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),  # grouped, dilated
        (6, 5, 3, 1, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ],
)
def test_nhwc_conv(cin, cout, k, group, attrs):
    x = RNG.standard_normal((2, cin, 9, 10)).astype(np.float32)
    w = RNG.standard_normal((cout, cin // group, k, k)).astype(np.float32)
    b = RNG.standard_normal(cout).astype(np.float32)
    want = _nchw_reference("Conv", x, w, b, group=group, **attrs)
    fn = jax.jit(lambda x, w, b: nhwc.nhwc_conv(x, w, b, group=group, **attrs))
    got = fn(x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), b)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
        {"kernel_shape": [3, 2], "dilations": [2, 1], "pads": [0, 1, 2, 0]},
    ],
)
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_nhwc_pools(op, attrs):
    if op == "AveragePool" and "dilations" in attrs:
        attrs = {k: v for k, v in attrs.items() if k != "dilations"}
    x = RNG.standard_normal((2, 4, 11, 9)).astype(np.float32)
    want = _nchw_reference(op, x, **attrs)
    fn = nhwc.nhwc_max_pool if op == "MaxPool" else nhwc.nhwc_average_pool
    got = jax.jit(lambda x: fn(x, **attrs))(x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 5, 8])
@pytest.mark.parametrize(
    "kernel,stride,pad", [(1, 1, 0), (2, 2, 1), (3, 2, 1), (3, 3, 1), (5, 2, 2)]
)
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_nhwc_max_pool_reads_edges_for_padding(size, kernel, stride, pad, ceil_mode):
    # Without dilation the pool reads the nearest edge for taps in the padding rather than a
    # padded copy: every window (ceil_mode's last ones too) must still match the reference.
    if size + 2 * pad < kernel:
        pytest.skip("the window does not fit")
    attrs = {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4}
    attrs["ceil_mode"] = ceil_mode
    x = RNG.standard_normal((2, 3, size, size + 3)).astype(np.float32)
    want = _nchw_reference("MaxPool", x, **attrs)
    got = jax.jit(lambda x: nhwc.nhwc_max_pool(x, **attrs))(x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), want)


def test_nhwc_global_pools():
    x = RNG.standard_normal((2, 4, 5, 6)).astype(np.float32)
    for op, fn in (
        ("GlobalAveragePool", nhwc.nhwc_global_average_pool),
        ("GlobalMaxPool", nhwc.nhwc_global_max_pool),
    ):
        got = np.asarray(fn(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, _nchw_reference(op, x), rtol=1e-5, atol=1e-6)
