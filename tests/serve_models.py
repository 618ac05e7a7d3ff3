"""Small models for the serving tests, built with onnx.helper, and onnxruntime references."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto as T
from onnx import numpy_helper as nh

_RNG = np.random.default_rng(7)
W1 = _RNG.standard_normal((8, 16)).astype(np.float32)
B1 = _RNG.standard_normal((16,)).astype(np.float32)
W2 = _RNG.standard_normal((16, 4)).astype(np.float32)
B2 = _RNG.standard_normal((4,)).astype(np.float32)
EMB = _RNG.standard_normal((50, 6)).astype(np.float32)
WC = _RNG.standard_normal((6, 3)).astype(np.float32)


def mlp(batch: int | str = "batch") -> onnx.ModelProto:
    """MatMul+Add+Relu, MatMul+Add: x float32[batch, 8] -> y [batch, 4], hidden [batch, 16]."""
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["xw"]),
        oh.make_node("Add", ["xw", "b1"], ["pre"]),
        oh.make_node("Relu", ["pre"], ["hidden"]),
        oh.make_node("MatMul", ["hidden", "w2"], ["hw"]),
        oh.make_node("Add", ["hw", "b2"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", T.FLOAT, [batch, 8])],
        [
            oh.make_tensor_value_info("y", T.FLOAT, [batch, 4]),
            oh.make_tensor_value_info("hidden", T.FLOAT, [batch, 16]),
        ],
        [
            nh.from_array(W1, "w1"),
            nh.from_array(B1, "b1"),
            nh.from_array(W2, "w2"),
            nh.from_array(B2, "b2"),
        ],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def bertish() -> onnx.ModelProto:
    """BERT-style int64 inputs: input_ids, attention_mask int64[batch, seq] -> logits
    float32[batch, 3] (masked mean of embeddings, then a linear layer), hidden [batch, seq, 6]."""
    nodes = [
        oh.make_node("Gather", ["emb", "input_ids"], ["e"]),
        oh.make_node("Cast", ["attention_mask"], ["m"], to=T.FLOAT),
        oh.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        oh.make_node("Mul", ["e", "m3"], ["hidden"]),
        oh.make_node("ReduceSum", ["hidden", "axis1"], ["s"], keepdims=0),
        oh.make_node("ReduceSum", ["m", "axis1"], ["n"], keepdims=1),
        oh.make_node("Max", ["n", "one"], ["n1"]),
        oh.make_node("Div", ["s", "n1"], ["mean"]),
        oh.make_node("MatMul", ["mean", "wc"], ["logits"]),
    ]
    graph = oh.make_graph(
        nodes,
        "bertish",
        [
            oh.make_tensor_value_info("input_ids", T.INT64, ["batch", "seq"]),
            oh.make_tensor_value_info("attention_mask", T.INT64, ["batch", "seq"]),
        ],
        [
            oh.make_tensor_value_info("logits", T.FLOAT, ["batch", 3]),
            oh.make_tensor_value_info("hidden", T.FLOAT, ["batch", "seq", 6]),
        ],
        [
            nh.from_array(EMB, "emb"),
            nh.from_array(WC, "wc"),
            nh.from_array(np.array([2], np.int64), "axis2"),
            nh.from_array(np.array([1], np.int64), "axis1"),
            nh.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def strings() -> onnx.ModelProto:
    """String (BYTES) tensors: text, ref string[n] -> joined string[n] (text + ref), same
    bool[n] (text == ref)."""
    nodes = [
        oh.make_node("StringConcat", ["text", "ref"], ["joined"]),
        oh.make_node("Equal", ["text", "ref"], ["same"]),
    ]
    graph = oh.make_graph(
        nodes,
        "strings",
        [
            oh.make_tensor_value_info("text", T.STRING, ["n"]),
            oh.make_tensor_value_info("ref", T.STRING, ["n"]),
        ],
        [
            oh.make_tensor_value_info("joined", T.STRING, ["n"]),
            oh.make_tensor_value_info("same", T.BOOL, ["n"]),
        ],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)])


def ort(model: onnx.ModelProto, **feeds) -> dict[str, np.ndarray]:
    """The model's outputs by name, from onnxruntime."""
    sess = _session(model.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


@functools.cache
def _session(data: bytes):
    import onnxruntime as rt

    return rt.InferenceSession(data, providers=["CPUExecutionProvider"])


class ServerThread:
    """A real uvicorn server on a free loopback port, in a thread of this process.

    ``batchers`` maps names to ``Batcher`` objects built with ``metrics`` as their observer.
    """

    def __init__(self, batchers, metrics, body_limit: int = 1 << 20):
        import asyncio
        import socket
        import threading

        import uvicorn
        from onnx2jax.serve.app import create_app

        self.metrics = metrics
        app = create_app(batchers, metrics=metrics, body_limit=body_limit)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.url = f"127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )
        self.thread.start()
        import time

        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 60:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0
