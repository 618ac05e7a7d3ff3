"""onnx2jax.flax: the NNX module and the linen wrapper against the plain Model and onnxruntime."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import optax
import pytest
from flax import nnx

import onnx2jax
from onnx2jax.flax import OnnxBuffer, OnnxLinen, OnnxModule

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


@pytest.fixture(scope="module")
def int8_mlp(tmp_path_factory) -> str:
    """A float MLP dynamically quantized by onnxruntime: int8 MatMulInteger weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    c = onnx.numpy_helper.from_array
    inits = [
        c((rng.standard_normal((64, 128)) / 8).astype(np.float32), "fc1.weight"),
        c((rng.standard_normal(128) * 0.1).astype(np.float32), "fc1.bias"),
        c((rng.standard_normal((128, 32)) / 11).astype(np.float32), "fc2.weight"),
        c((rng.standard_normal(32) * 0.1).astype(np.float32), "fc2.bias"),
    ]
    nodes = [
        oh.make_node("MatMul", ["x", "fc1.weight"], ["h0"]),
        oh.make_node("Add", ["h0", "fc1.bias"], ["h"]),
        oh.make_node("Relu", ["h"], ["r"]),
        oh.make_node("MatMul", ["r", "fc2.weight"], ["o"]),
        oh.make_node("Add", ["o", "fc2.bias"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 32])],
        inits,
    )
    folder = tmp_path_factory.mktemp("int8")
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), folder / "f.onnx")
    quantize_dynamic(folder / "f.onnx", folder / "q.onnx", weight_type=QuantType.QInt8)
    return str(folder / "q.onnx")


def test_int8_weights_are_non_trainable_module_state(int8_mlp):
    x = np.random.default_rng(2).standard_normal((5, 64), dtype=np.float32)
    plain = onnx2jax.load(int8_mlp)
    quantized = {"fc1.weight_quantized", "fc2.weight_quantized"}
    assert set(plain._program.buffers) == quantized  # what the loader made buffers
    module = OnnxModule(int8_mlp)
    # In the module state as OnnxBuffer, not in the program, not trainable.
    assert set(module.buffers) == quantized
    assert not module.model._program.buffers
    buffers = {p[-1]: v[...] for p, v in nnx.to_flat_state(nnx.state(module, OnnxBuffer))}
    assert set(buffers) == quantized and buffers["fc1.weight_quantized"].dtype == np.int8
    params = {p[-1] for p, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))}
    assert params == {"fc1.bias", "fc2.bias", "fc1.weight_scale", "fc2.weight_scale"}
    ref = ort.InferenceSession(int8_mlp, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (want,) = module(x)
    np.testing.assert_allclose(np.asarray(want), ref[0], rtol=1e-4, atol=1e-4)
    run = nnx.jit(lambda m, x: m(x)[0])
    np.testing.assert_array_equal(np.asarray(run(module, x)), np.asarray(want))
    # split / merge round trip keeps them state
    graphdef, state = nnx.split(module)
    again = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(np.asarray(again(x)[0]), np.asarray(want))
    # the graph reads the state: a replaced weight changes the output, eagerly and jitted
    module.buffers["fc2.weight_quantized"][...] = -buffers["fc2.weight_quantized"]
    proto = onnx.load(int8_mlp)
    for init in proto.graph.initializer:
        if init.name == "fc2.weight_quantized":
            flipped = -onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(flipped, init.name))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want_flipped = sess.run(None, {"x": x})[0]
    assert not np.allclose(want_flipped, ref[0], atol=1e-2)
    np.testing.assert_allclose(np.asarray(module(x)[0]), want_flipped, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(run(module, x)), want_flipped, rtol=1e-4, atol=1e-4)
    # nnx.grad differentiates the float params only
    grads = nnx.eval_shape(lambda m: nnx.grad(lambda m: jnp.sum(m(x)[0] ** 2))(m), module)
    assert {p[-1] for p, _ in nnx.to_flat_state(grads)} == params


def test_load_options_pass_through_bfloat16_params():
    module = OnnxModule(CNN, dtype="bfloat16")
    state = nnx.to_flat_state(nnx.state(module, nnx.Param))
    assert state and {str(v[...].dtype) for _, v in state} == {"bfloat16"}
    assert not nnx.to_flat_state(nnx.state(module, OnnxBuffer))
