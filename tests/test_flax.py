"""onnx2jax.flax: the NNX module and the linen wrapper against the plain Model and onnxruntime."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import optax
import pytest
from flax import nnx

import onnx2jax
from onnx2jax.flax import OnnxLinen, OnnxModule

CNN = str(pathlib.Path(__file__).parents[1] / "examples" / "tiny_cnn.onnx")
X = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)


@pytest.fixture(scope="module")
def model() -> onnx2jax.Model:
    return onnx2jax.load(CNN)


def _ort(x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(CNN, providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


def test_module_matches_onnxruntime_eager_and_under_nnx_jit(model):
    module = OnnxModule(model)
    ref = _ort(X)
    (eager,) = module(X)
    np.testing.assert_allclose(np.asarray(eager), ref, rtol=1e-4, atol=1e-5)
    jitted = nnx.jit(lambda m, x: m(image=x)[0])(module, X)
    np.testing.assert_allclose(np.asarray(jitted), ref, rtol=1e-4, atol=1e-5)
    assert module.output_names == ["logits"] and module.input_names == ["image"]


def test_params_are_keyed_by_onnx_name_and_split_merge(model):
    module = OnnxModule(CNN, passes=None)  # a path with load options
    graphdef, state = nnx.split(module, nnx.Param)
    flat = {path[-1]: v for path, v in nnx.to_flat_state(state)}
    assert set(flat) == set(model.params)
    for k, v in model.params.items():
        np.testing.assert_array_equal(np.asarray(flat[k][...]), np.asarray(v))
    again = nnx.merge(graphdef, state)
    np.testing.assert_allclose(np.asarray(again(X)[0]), _ort(X), rtol=1e-4, atol=1e-5)
    with pytest.raises(onnx2jax.InputError, match="passes"):
        OnnxModule(model, passes=None)


def test_nnx_grad_equals_jax_grad_of_apply(model):
    module = OnnxModule(model)

    def loss_module(m):
        return jnp.sum(m(X)[0] ** 2)

    grads = nnx.jit(nnx.grad(loss_module))(module)
    ref = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, X)[0] ** 2)))(model.params)
    got = {path[-1]: v[...] for path, v in nnx.to_flat_state(grads)}
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-4, atol=1e-5)


class _WithHead(nnx.Module):
    """An imported backbone with a new head: a larger NNX model."""

    def __init__(self, backbone: OnnxModule, rngs: nnx.Rngs):
        self.backbone = backbone
        self.head = nnx.Linear(10, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.backbone(x)[0])


def test_finetune_a_head_with_frozen_backbone_loss_falls(model):
    net = _WithHead(OnnxModule(model), nnx.Rngs(0))
    # Train the new head and the backbone's last layer ("classifier.*"); freeze the convs.
    trainable = nnx.Any(
        nnx.PathContains("head"), nnx.All(nnx.Param, net.backbone.param_filter(r"^classifier\."))
    )
    opt = nnx.Optimizer(net, optax.adam(5e-2), wrt=trainable)
    # A separable task: class c is an image whose channel c is bright.
    labels = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    images = np.random.default_rng(1).standard_normal((8, 3, 32, 32), dtype=np.float32) * 0.5
    images[np.arange(8), labels] += 2.0

    @nnx.jit
    def step(net, opt):
        def loss_fn(net):
            return optax.softmax_cross_entropy_with_integer_labels(net(images), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(net)
        opt.update(net, grads)
        return loss

    before = {k: np.asarray(v[...]) for k, v in net.backbone.params.items()}
    losses = [float(step(net, opt)) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0], losses
    after = {k: np.asarray(v[...]) for k, v in net.backbone.params.items()}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}
    # The module's model follows the trained weights.
    np.testing.assert_array_equal(
        np.asarray(net.backbone.model.params["classifier.weight"]), after["classifier.weight"]
    )


def test_linen_wrapper(model):
    lin = OnnxLinen(model)
    variables = lin.init(jax.random.key(0), X)
    assert set(variables["params"]) == set(model.params)
    np.testing.assert_allclose(
        np.asarray(lin.apply(variables, X)[0]), _ort(X), rtol=1e-4, atol=1e-5
    )
    grads = jax.jit(jax.grad(lambda v: jnp.sum(lin.apply(v, X)[0])))(variables)
    ref = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, X)[0])))(model.params)
    np.testing.assert_allclose(
        np.asarray(grads["params"]["classifier.weight"]),
        np.asarray(ref["classifier.weight"]),
        rtol=1e-5,
    )
