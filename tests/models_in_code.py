"""Small models built with onnx.helper, shared by the API, loader and error tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto as T

RNG = np.random.default_rng(42)
W = RNG.standard_normal((4,)).astype(np.float32)
B = RNG.standard_normal((4,)).astype(np.float32)


def affine_relu(batch: int | str = "batch", opset: int = 17) -> onnx.ModelProto:
    """y = relu(x * w + b), z = reshape(y, [-1]); x: float32[batch, 4]."""
    nodes = [
        oh.make_node("Mul", ["x", "w"], ["xw"], name="mul"),
        oh.make_node("Add", ["xw", "b"], ["pre"], name="add"),
        oh.make_node("Relu", ["pre"], ["y"], name="relu"),
        oh.make_node("Reshape", ["y", "flat"], ["z"], name="flatten"),
    ]
    graph = oh.make_graph(
        nodes,
        "affine_relu",
        [oh.make_tensor_value_info("x", T.FLOAT, [batch, 4])],
        [
            oh.make_tensor_value_info("y", T.FLOAT, [batch, 4]),
            oh.make_tensor_value_info("z", T.FLOAT, None),
        ],
        [
            onnx.numpy_helper.from_array(W, "w"),
            onnx.numpy_helper.from_array(B, "b"),
            onnx.numpy_helper.from_array(np.array([-1], np.int64), "flat"),
        ],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def reshape_by_input() -> onnx.ModelProto:
    """y = reshape(x, shape) where ``shape`` is a graph input (specialised on its value)."""
    graph = oh.make_graph(
        [oh.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
        "reshape_by_input",
        [
            oh.make_tensor_value_info("x", T.FLOAT, [2, 6]),
            oh.make_tensor_value_info("shape", T.INT64, [2]),
        ],
        [oh.make_tensor_value_info("y", T.FLOAT, None)],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def reference(model: onnx.ModelProto, **feeds) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)
