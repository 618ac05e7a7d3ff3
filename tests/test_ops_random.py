"""Random ops (ops/random.py): shapes, dtypes, determinism and rough distributions.

Values cannot match onnx's reference (a different generator), so these check properties.
"""

import jax
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from op_check import node_model

import onnx2jax

rng = np.random.default_rng(0)


def run(op, inputs=None, attrs=None, *, n_outputs=1, x64=True, opset=22):
    inputs = inputs or {}
    m = onnx2jax.load(node_model(op, inputs, attrs, n_outputs=n_outputs, opset=opset), x64=x64)
    jitted = [np.asarray(v) for v in m(**inputs)]
    eager = [np.asarray(v) for v in m.apply(m.params, **inputs)]
    for a, b in zip(jitted, eager, strict=True):
        np.testing.assert_array_equal(a, b)  # deterministic: jit and eager draw the same
    return jitted


@pytest.mark.parametrize("dtype,np_dtype", [(1, np.float32), (11, np.float64), (10, np.float16)])
def test_random_normal_and_uniform(dtype, np_dtype):
    a = run(
        "RandomNormal",
        attrs={"shape": [200, 50], "dtype": dtype, "mean": 3.0, "scale": 2.0, "seed": 1.0},
    )[0]
    assert a.shape == (200, 50) and a.dtype == np_dtype
    assert abs(a.astype(np.float64).mean() - 3) < 0.1 and abs(a.astype(np.float64).std() - 2) < 0.1
    u = run("RandomUniform", attrs={"shape": [1000], "dtype": dtype, "low": -2.0, "high": 5.0})[0]
    assert u.shape == (1000,) and u.dtype == np_dtype
    assert u.min() >= -2 and u.max() <= 5 and abs(u.astype(np.float64).mean() - 1.5) < 0.3


def test_seed_decides_values():
    a = run("RandomUniform", attrs={"shape": [8], "seed": 3.0})[0]
    b = run("RandomUniform", attrs={"shape": [8], "seed": 3.0})[0]
    c = run("RandomUniform", attrs={"shape": [8], "seed": 4.0})[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_seedless_nodes_draw_different_streams():
    nodes = [oh.make_node("RandomNormal", [], [name], shape=[16]) for name in ("a", "b")]
    graph = oh.make_graph(
        nodes, "g", [], [oh.make_value_info(n, onnx.TypeProto()) for n in ("a", "b")]
    )
    m = onnx2jax.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 22)]))
    a, b = (np.asarray(v) for v in m())
    assert a.shape == b.shape == (16,) and not np.array_equal(a, b)


def test_like_ops_take_shape_and_dtype():
    x = rng.standard_normal((3, 4)).astype(np.float16)
    a = run("RandomNormalLike", {"x": x})[0]
    assert a.shape == (3, 4) and a.dtype == np.float16
    b = run("RandomUniformLike", {"x": x}, {"dtype": 11, "seed": 0.0})[0]
    assert b.shape == (3, 4) and b.dtype == np.float64 and (b >= 0).all() and (b < 1).all()


def test_bernoulli():
    p = np.array([0.0, 1.0] * 50 + [0.3] * 4000)
    out = run("Bernoulli", {"p": p}, {"seed": 2.0})[0]
    assert out.dtype == np.float64 and out.shape == p.shape
    assert (out[:100:2] == 0).all() and (out[1:100:2] == 1).all()
    assert abs(out[100:].mean() - 0.3) < 0.03
    ints = run("Bernoulli", {"p": p.astype(np.float32)}, {"dtype": 7})[0]
    assert ints.dtype == np.int64 and set(np.unique(ints)) <= {0, 1}
    flags = run("Bernoulli", {"p": p.astype(np.float32)}, {"dtype": 9}, opset=15)[0]
    assert flags.dtype == np.bool_


def test_multinomial():
    probs = np.array([[0.7, 0.2, 0.1, 0.0], [0.0, 0.0, 0.0, 1.0]])
    logits = np.log(np.maximum(probs, 1e-30)).astype(np.float32)
    out = run("Multinomial", {"x": logits}, {"sample_size": 3000, "seed": 5.0}, opset=7)[0]
    assert out.shape == (2, 3000) and out.dtype == np.int32
    freq = np.bincount(out[0], minlength=4) / 3000
    np.testing.assert_allclose(freq, probs[0], atol=0.03)
    assert (out[1] == 3).all()
    out64 = run("Multinomial", {"x": logits}, {"dtype": 7}, x64=False)[0]
    assert out64.shape == (2, 1) and out64.dtype == np.int32  # int64 computed as int32


def test_random_like_inside_a_jitted_graph():
    # A random op feeding arithmetic: one jit program, the draw is a constant of the program.
    node = oh.make_node("RandomUniformLike", ["x"], ["r"], seed=1.0)
    add = oh.make_node("Add", ["x", "r"], ["y"])
    graph = oh.make_graph(
        [node, add],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5])],
        [oh.make_value_info("y", onnx.TypeProto())],
    )
    m = onnx2jax.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 22)]))
    x = np.zeros(5, np.float32)
    y = np.asarray(jax.jit(m.apply)(m.params, x)[0])
    assert ((y >= 0) & (y < 1)).all()
