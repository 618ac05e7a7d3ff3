"""Optimizer ops of ai.onnx.preview.training (ops/training.py) against onnx's reference."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx.reference import ReferenceEvaluator

import onnx2jax

rng = np.random.default_rng(0)
DOMAIN = "ai.onnx.preview.training"


def check(op, n_params, kinds, attrs, t, rtol=1e-5, atol=1e-6):
    shapes = [(3,), (2, 4), ()][:n_params]
    names, feeds = ["R", "T"], {"R": np.array(0.1, np.float32), "T": np.array(t, np.int64)}
    for kind in kinds:
        for i, shape in enumerate(shapes):
            name = f"{kind}{i}"
            v = rng.standard_normal(shape).astype(np.float32)
            feeds[name] = np.abs(v) if kind == "H" else v  # accumulated squares are >= 0
            names.append(name)
    outs = [f"{k}{i}_new" for k in kinds if k != "G" for i in range(n_params)]
    node = oh.make_node(op, names, outs, domain=DOMAIN, **attrs)
    graph = oh.make_graph(
        [node],
        "g",
        [
            oh.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for n, v in feeds.items()
        ],
        [oh.make_value_info(o, onnx.TypeProto()) for o in outs],
    )
    model = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(DOMAIN, 1)]
    )
    expected = ReferenceEvaluator(model).run(None, feeds)
    m = onnx2jax.load(model)
    for got in (m(**feeds), m.apply(m.params, **feeds)):
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert np.asarray(g).shape == np.asarray(e).shape
            np.testing.assert_allclose(
                np.asarray(g), np.asarray(e, np.float32), rtol=rtol, atol=atol
            )


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("t", [0, 5])
def test_adagrad(n, t):
    check("Adagrad", n, "XGH", {"decay_factor": 0.1, "epsilon": 1e-5, "norm_coefficient": 0.001}, t)
    check("Adagrad", n, "XGH", {}, t)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("t", [0, 1, 7])
def test_adam(n, t):
    attrs = {
        "alpha": 0.95,
        "beta": 0.85,
        "epsilon": 1e-2,
        "norm_coefficient": 0.001,
        "norm_coefficient_post": 0.01,
    }
    check("Adam", n, "XGVH", attrs, t, rtol=1e-4)
    check("Adam", n, "XGVH", {}, t, rtol=1e-4)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("t", [0, 3])
@pytest.mark.parametrize("mode", ["standard", "nesterov"])
def test_momentum(n, t, mode):
    check(
        "Momentum",
        n,
        "XGV",
        {"alpha": 0.95, "beta": 0.1, "mode": mode, "norm_coefficient": 0.001},
        t,
    )
