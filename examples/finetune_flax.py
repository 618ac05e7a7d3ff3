"""Fine-tune a new head on an imported ONNX CNN with Flax NNX and optax, the backbone frozen by name.

Run: ``python examples/finetune_flax.py`` (needs ``pip install -e ".[train]"``). The CNN is built in
code with onnx.helper so the example is self-contained; any ONNX file works the same way.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import onnx
import onnx.helper as oh
import optax
from flax import nnx

from onnx2jax.flax import OnnxModule


def build_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm (8 features)."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        w = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return onnx.numpy_helper.from_array(w, name)

    nodes = [
        oh.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["c1"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c1"], ["r1"]),
        oh.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], strides=[2, 2]),
        oh.make_node("Relu", ["c2"], ["r2"]),
        oh.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        oh.make_node("Flatten", ["pooled"], ["flat"]),
        oh.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["features"], transB=1),
    ]
    weights = [
        init("conv1.weight", 8, 3, 3, 3),
        init("conv1.bias", 8),
        init("conv2.weight", 16, 8, 3, 3),
        init("conv2.bias", 16),
        init("fc.weight", 8, 16),
        init("fc.bias", 8),
    ]
    graph = oh.make_graph(
        nodes,
        "cnn",
        [oh.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [oh.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", 8])],
        weights,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


class Classifier(nnx.Module):
    """The imported backbone and a new linear head."""

    def __init__(self, backbone: OnnxModule, classes: int, rngs: nnx.Rngs):
        self.backbone = backbone
        self.head = nnx.Linear(8, classes, rngs=rngs)

    def __call__(self, image):
        (features,) = self.backbone(image)
        return self.head(features)


def main(steps: int = 60) -> list[float]:
    net = Classifier(OnnxModule(build_cnn()), classes=3, rngs=nnx.Rngs(0))
    # Train the head and the backbone's last layer (ONNX names "fc.*"); the convs stay frozen.
    trainable = nnx.Any(
        nnx.PathContains("head"), nnx.All(nnx.Param, net.backbone.param_filter(r"^fc\."))
    )
    optimizer = nnx.Optimizer(net, optax.adam(1e-2), wrt=trainable)

    # A toy task: class c is an image whose channel c is brighter.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 64)
    images = rng.standard_normal((64, 3, 16, 16), dtype=np.float32) * 0.5
    images[np.arange(64), labels] += 1.0

    @nnx.jit
    def train_step(net, optimizer, images, labels):
        def loss_fn(net):
            logits = net(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(net)
        optimizer.update(net, grads)
        return loss

    frozen = np.asarray(net.backbone.params["conv1.weight"][...])
    losses = [float(train_step(net, optimizer, images, jnp.asarray(labels))) for _ in range(steps)]
    assert np.array_equal(frozen, np.asarray(net.backbone.params["conv1.weight"][...]))
    accuracy = float((net(images).argmax(-1) == labels).mean())
    print(
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps; train accuracy {accuracy:.2f}"
    )
    return losses


if __name__ == "__main__":
    main()
