"""The public API composes with JAX: jit, grad, vmap, embedding, signatures, sources."""

from __future__ import annotations

import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_in_code import affine_relu, reference, reshape_by_input

import onnx2jax

X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return onnx2jax.load(affine_relu())


def test_call_matches_reference_and_eager(model):
    expected = reference(affine_relu(), x=X)
    jitted = model(X)
    eager = model.apply(model.params, X)
    assert isinstance(jitted, tuple) and len(jitted) == 2
    for e, j, g in zip(expected, jitted, eager):
        np.testing.assert_allclose(np.asarray(j), e, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(g), np.asarray(j), rtol=1e-6, atol=1e-6)


def test_named_inputs_and_outputs_dict(model):
    out = model.outputs_dict(model(x=X))
    assert list(out) == ["y", "z"]
    assert out["z"].shape == (12,)


def test_params_are_float_initializers_only(model):
    assert set(model.params) == {"w", "b"}  # "flat" is an int64 shape constant


def test_signature_keeps_symbolic_dims(model):
    (x,) = model.inputs
    assert x.name == "x" and x.dtype == np.float32 and x.shape == ("batch", 4)
    assert [o.name for o in model.outputs] == ["y", "z"]


def test_jit_of_apply(model):
    out = jax.jit(model.apply)(model.params, X)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(model(X)[0]), rtol=1e-6, atol=1e-6)


def test_grad_wrt_params_matches_finite_difference(model):
    def loss(p):
        return jnp.sum(model.apply(p, X)[0] ** 2)

    grads = jax.grad(loss)(model.params)
    assert set(grads) == set(model.params)
    # Analytic check: d/dw sum(relu(xw+b)^2) = sum_batch 2*relu(.)*1[pre>0]*x
    pre = X * np.asarray(model.params["w"]) + np.asarray(model.params["b"])
    expected_w = (2 * np.maximum(pre, 0) * (pre > 0) * X).sum(0)
    np.testing.assert_allclose(np.asarray(grads["w"]), expected_w, rtol=1e-5)


def test_model_is_a_pytree(model):
    leaves = jax.tree_util.tree_leaves(model)
    assert len(leaves) == 2
    doubled = jax.tree_util.tree_map(lambda p: 2 * p, model)
    assert isinstance(doubled, onnx2jax.Model)
    np.testing.assert_allclose(np.asarray(doubled.params["w"]), 2 * np.asarray(model.params["w"]))


def test_vmap_over_added_batch_axis_of_batch1_export():
    m = onnx2jax.load(affine_relu(batch=1))
    xb = np.random.default_rng(1).standard_normal((5, 1, 4)).astype(np.float32)
    ys = jax.vmap(lambda x: m(x)[0])(xb)
    assert ys.shape == (5, 1, 4)
    for i in range(5):
        np.testing.assert_allclose(
            np.asarray(ys[i]), reference(affine_relu(batch=1), x=xb[i])[0], rtol=1e-6, atol=1e-6
        )
    ys2 = jax.vmap(m.apply, in_axes=(None, 0))(m.params, xb)[1]
    assert ys2.shape == (5, 4)


def test_embedded_in_larger_jitted_function(model):
    @jax.jit
    def pipeline(params, x, scale):
        y, _ = model.apply(params, x * scale)
        return jnp.tanh(y).sum()

    got = pipeline(model.params, X, 2.0)
    expected = np.tanh(reference(affine_relu(), x=X * 2.0)[0]).sum()
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_model_called_inside_user_jit(model):
    got = jax.jit(lambda x: model(x)[0] + 1)(X)
    np.testing.assert_allclose(
        np.asarray(got), reference(affine_relu(), x=X)[0] + 1, rtol=1e-6, atol=1e-6
    )


def test_value_input_is_specialised_and_compiles_once_per_value():
    m = onnx2jax.load(reshape_by_input())
    assert m.value_inputs == frozenset({"shape"})
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert m(x, np.array([3, 4]))[0].shape == (3, 4)
    assert m(x, np.array([4, 3]))[0].shape == (4, 3)
    assert m(x, np.array([3, 4]))[0].shape == (3, 4)
    from onnx2jax._api import _jitted

    assert _jitted(m._program)._cache_size() == 2


def test_traced_value_input_gives_clear_error():
    m = onnx2jax.load(reshape_by_input())
    x = np.zeros((2, 6), np.float32)
    with pytest.raises(onnx2jax.StaticValueError, match="shape"):
        jax.jit(m.apply)(m.params, x, np.array([3, 4]))


@pytest.mark.parametrize("kind", ["path", "str", "bytes", "file", "proto"])
def test_load_sources(tmp_path, kind):
    proto = affine_relu()
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    source = {
        "path": path,
        "str": str(path),
        "bytes": proto.SerializeToString(),
        "file": io.BytesIO(proto.SerializeToString()),
        "proto": proto,
    }[kind]
    m = onnx2jax.load(source)
    np.testing.assert_allclose(np.asarray(m(X)[0]), reference(proto, x=X)[0], rtol=1e-6, atol=1e-6)


def test_float64_input_is_cast_to_declared_float32(model):
    out = model(X.astype(np.float64))
    assert out[0].dtype == jnp.float32


def test_x64_mode_computes_int64():
    m = onnx2jax.load(reshape_by_input(), x64=True)
    assert m(np.zeros((2, 6), np.float32), np.array([3, 4]))[0].shape == (3, 4)


def test_sequence_input_specialised_on_value():
    """A sequence input feeding a shape: frozen element by element, ragged shapes allowed."""
    import onnx
    import onnx.helper as oh

    seq_type = oh.make_sequence_type_proto(oh.make_tensor_type_proto(onnx.TensorProto.INT64, None))
    graph = oh.make_graph(
        [
            oh.make_node("SequenceAt", ["s", "zero"], ["shape"]),
            oh.make_node("Reshape", ["x", "shape"], ["y"]),
        ],
        "g",
        [
            oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [6]),
            oh.make_value_info("s", seq_type),
        ],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    m = onnx2jax.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    x = np.arange(6, dtype=np.float32)
    assert m(x, [np.array([2, 3]), np.array([6])])[0].shape == (2, 3)
    assert m(x, [np.array([3, 2]), np.array([6])])[0].shape == (3, 2)
    assert m.apply(m.params, x, [np.array([6]), np.array([1, 6])])[0].shape == (6,)


def test_lower_is_the_call_ahead_of_time(model):
    lowered, call_args = model.lower(X)
    got = lowered.compile()(*call_args)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(model(X)[0]))


def test_apply_prepared_skips_param_only_steps_and_matches_call():
    """prepare() + apply_prepared() is model(...)'s program: the laid-out weights are inputs."""
    path = Path(__file__).parent.parent / "examples" / "tiny_cnn.onnx"
    cnn = onnx2jax.load(path)
    assert cnn._program.prep, "the nhwc pass should leave weight transposes for prep"
    images = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    prepared = cnn.prepare()
    assert prepared is cnn.prepare()  # cached per params object
    (want,) = cnn.apply(cnn.params, images)
    (got,) = jax.jit(cnn.apply_prepared)(cnn.params, prepared, images)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    # vmapped over examples, prepared weights broadcast (the serving pattern)
    per_example = jax.vmap(lambda x: cnn.apply_prepared(cnn.params, prepared, x[None])[0][0])
    np.testing.assert_allclose(
        np.asarray(per_example(images)), np.asarray(want), rtol=1e-5, atol=1e-6
    )
    # the prepared values are really used: zeroed, the output changes
    zeroed = {k: jnp.zeros_like(v) for k, v in prepared.items()}
    (bad,) = cnn.apply_prepared(cnn.params, zeroed, images)
    assert not np.allclose(np.asarray(bad), np.asarray(want))
    # other params: prepare(params) recomputes
    doubled = {k: v * 2 for k, v in cnn.params.items()}
    (want2,) = cnn.apply(doubled, images)
    (got2,) = cnn.apply_prepared(doubled, cnn.prepare(doubled), images)
    np.testing.assert_allclose(np.asarray(got2), np.asarray(want2), rtol=1e-5, atol=1e-5)
