"""The KServe v2 / Open Inference Protocol server against the real ``tritonclient.http``: a
uvicorn server on a free loopback port, results compared with onnxruntime, bad input, a full
queue, timeouts, a client that disconnects, and ``onnx2jax serve`` draining on SIGTERM."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from onnx2jax.serve import BatchConfig, Batcher
from onnx2jax.serve.metrics import Metrics
from serve_models import ServerThread, bertish, metric, mlp, ort, strings
from tritonclient.utils import InferenceServerException

import onnx2jax

RNG = np.random.default_rng(1)
SLOW_DELAY_MS = 1500


@pytest.fixture(scope="module")
def server():
    metrics = Metrics(4)
    fast = BatchConfig(max_batch_size=4, max_queue_delay_ms=30)
    slow = BatchConfig(max_batch_size=4, max_queue_delay_ms=SLOW_DELAY_MS, max_queue_size=2)
    mlp_model = onnx2jax.load(mlp())
    batchers = {
        "mlp": Batcher(mlp_model, "mlp", fast, observer=metrics),
        "mlp1": Batcher(onnx2jax.load(mlp(1)), "mlp1", fast, observer=metrics),
        "bert": Batcher(onnx2jax.load(bertish()), "bert", fast, dims={"seq": 5}, observer=metrics),
        "slow": Batcher(mlp_model, "slow", slow, observer=metrics),
        "text": Batcher(onnx2jax.load(strings()), "text", fast, observer=metrics),
    }
    s = ServerThread(batchers, metrics, body_limit=256 * 1024)
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    c = th.InferenceServerClient(server.url)
    yield c
    c.close()


def _input(name, arr, binary=True, datatype=None):
    from tritonclient.utils import np_to_triton_dtype

    i = th.InferInput(name, list(arr.shape), datatype or np_to_triton_dtype(arr.dtype))
    i.set_data_from_numpy(arr, binary_data=binary)
    return i


def _x(k: int) -> np.ndarray:
    return RNG.standard_normal((k, 8)).astype(np.float32)


def _good(client) -> None:
    """The server still serves: a correct request succeeds with the right numbers."""
    x = _x(2)
    r = client.infer("mlp", [_input("x", x)])
    np.testing.assert_allclose(r.as_numpy("y"), ort(mlp(), x=x)["y"], rtol=1e-5, atol=1e-5)


def _status(e: InferenceServerException) -> int:
    return int(e.status())


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "onnx2jax" and "binary_tensor_data" in meta["extensions"]
    for name in ("mlp", "mlp1", "bert", "slow"):
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("nope")
    m = client.get_model_metadata("mlp1")
    assert m["versions"] == ["1"]
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert [(o["name"], o["shape"]) for o in m["outputs"]] == [("y", [-1, 4]), ("hidden", [-1, 16])]
    b = client.get_model_metadata("bert", "1")
    assert [(i["name"], i["datatype"], i["shape"]) for i in b["inputs"]] == [
        ("input_ids", "INT64", [-1, -1]),
        ("attention_mask", "INT64", [-1, -1]),
    ]
    cfg = client.get_model_config("mlp")
    assert cfg["max_batch_size"] == 4
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [1, 2, 4]
    assert cfg["instance_group"][0]["count"] == 1
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="no version '2'"):
        client.get_model_metadata("mlp", "2")


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_infer_json_and_binary(client, binary_in, binary_out):
    x = _x(3)
    outputs = [th.InferRequestedOutput(n, binary_data=binary_out) for n in ("y", "hidden")]
    r = client.infer("mlp", [_input("x", x, binary_in)], outputs=outputs, request_id="r7")
    ref = ort(mlp(), x=x)
    for n in ("y", "hidden"):
        np.testing.assert_allclose(r.as_numpy(n), ref[n], rtol=1e-5, atol=1e-5)
    assert r.get_response()["id"] == "r7"
    header = r.get_response().get("outputs")[0].get("parameters", {})
    assert ("binary_data_size" in header) == binary_out


def test_requested_output_by_version_and_compressed_request(client):
    x = _x(1)
    r = client.infer(
        "mlp",
        [_input("x", x)],
        model_version="1",
        outputs=[th.InferRequestedOutput("hidden")],
        request_compression_algorithm="gzip",
    )
    np.testing.assert_allclose(r.as_numpy("hidden"), ort(mlp(), x=x)["hidden"], rtol=1e-5)
    assert r.as_numpy("y") is None


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_bytes_tensors(server, client, binary_in, binary_out):
    """BYTES (string) inputs and outputs, JSON and binary, against onnxruntime."""
    text = np.array(["abc", "Déf", "", "x y"], dtype=object)
    ref = np.array(["abc", "déf", "", "ü"], dtype=object)
    outputs = [th.InferRequestedOutput(n, binary_data=binary_out) for n in ("joined", "same")]
    inputs = [_input("text", text, binary_in, "BYTES"), _input("ref", ref, binary_in, "BYTES")]
    r = client.infer("text", inputs, outputs=outputs)
    want = ort(strings(), text=text, ref=ref)
    got = [v.decode() if isinstance(v, bytes) else v for v in r.as_numpy("joined")]
    assert got == list(want["joined"]) == ["abcabc", "Défdéf", "", "x yü"]
    np.testing.assert_array_equal(r.as_numpy("same"), want["same"])
    m = client.get_model_metadata("text")
    assert [(i["name"], i["datatype"], i["shape"]) for i in m["inputs"]] == [
        ("text", "BYTES", [-1]),
        ("ref", "BYTES", [-1]),
    ]
    assert client.get_model_config("text")["input"][0]["data_type"] == "TYPE_STRING"
    if binary_in:  # malformed BYTES, each a 400 naming what is wrong
        return
    ok = {"name": "ref", "datatype": "BYTES", "shape": [1], "data": ["a"]}
    cases = [  # (the "text" tensor, its binary data, the message)
        ({"shape": [2], "data": ["a"]}, b"", "1 values given, but shape [2] needs 2"),
        ({"shape": [1], "data": [3]}, b"", "element 0 is int, not a string"),
        ({"shape": [1], "parameters": {"binary_data_size": 6}}, b"\x09\0\0\0ab", "says 9 bytes"),
        ({"shape": [1], "parameters": {"binary_data_size": 3}}, b"\x09\0\0", "cut length"),
        ({"shape": [1], "parameters": {"binary_data_size": 5}}, b"\x01\0\0\0\xff", "UTF-8"),
    ]
    for tensor, blob, message in cases:
        head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", **tensor}, ok]})
        headers = {"Inference-Header-Content-Length": str(len(head))} if blob else None
        status, doc = _raw(server, head.encode() + blob, headers, "/v2/models/text/infer")
        assert status == 400 and message in doc["error"], (tensor, doc)
    _good(client)


@pytest.mark.parametrize("binary", [False, True])
def test_int64_inputs_bert_style(client, binary):
    ids = RNG.integers(0, 50, (2, 5)).astype(np.int64)
    mask = np.ones((2, 5), np.int64)
    mask[1, 3:] = 0
    r = client.infer(
        "bert", [_input("input_ids", ids, binary), _input("attention_mask", mask, binary)]
    )
    ref = ort(bertish(), input_ids=ids, attention_mask=mask)
    np.testing.assert_allclose(r.as_numpy("logits"), ref["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.as_numpy("hidden"), ref["hidden"], rtol=1e-5, atol=1e-6)


def _aio(server, coro_fn):
    async def main():
        c = tha.InferenceServerClient(server.url)
        try:
            return await coro_fn(c)
        finally:
            await c.close()

    return asyncio.run(main())


def test_batch1_export_batched_under_concurrency_no_runtime_compiles(server):
    xs = [_x(1) for _ in range(12)] + [_x(3)]  # a batch-1 export takes several examples too
    bad = np.zeros((1, 7), np.float32)  # joins no batch and fails alone

    async def go(c):
        reqs = [c.infer("mlp1", [_input("x", x)]) for x in xs]
        reqs.append(c.infer("mlp1", [_input("x", bad)]))
        return await asyncio.gather(*reqs, return_exceptions=True)

    before = server.metrics.render().decode()
    results = _aio(server, go)
    after = server.metrics.render().decode()
    for x, r in zip(xs, results):
        refs = [ort(mlp(1), x=x[i : i + 1])["y"] for i in range(len(x))]
        np.testing.assert_allclose(r.as_numpy("y"), np.concatenate(refs), rtol=1e-5, atol=1e-5)
    assert isinstance(results[-1], InferenceServerException) and _status(results[-1]) == 400

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    batches = delta("onnx2jax_batch_size_count", model="mlp1")
    assert delta("onnx2jax_batch_size_sum", model="mlp1") == 15
    assert batches < 13  # batches formed: fewer than requests
    assert metric(after, "onnx2jax_compiles_total", model="mlp1", phase="warmup") == 3
    assert metric(after, "onnx2jax_compiles_total", model="mlp1", phase="runtime") == 0


@pytest.mark.parametrize(
    "name, inputs, status, message",
    [
        ("mlp", lambda: [_input("x", np.zeros((1, 7), np.float32))], 400, "size 7 on axis 1"),
        ("mlp", lambda: [_input("x", np.zeros((1, 8)))], 400, "'x' has dtype float64"),
        ("mlp", lambda: [_input("z", _x(1))], 400, "no input(s) ['z']"),
        ("bert", lambda: [_input("input_ids", np.zeros((1, 5), np.int64))], 400, "missing input"),
        ("nope", lambda: [_input("x", _x(1))], 404, "unknown model 'nope'"),
        ("mlp", lambda: [_input("x", _x(5))], 400, "carries 5 examples"),
    ],
)
def test_bad_inputs_then_still_serving(client, server, name, inputs, status, message):
    with pytest.raises(InferenceServerException) as e:
        client.infer(name, inputs())
    assert _status(e.value) == status
    assert message in e.value.message()
    _good(client)


def _raw(server, body: bytes, headers: dict | None = None, path="/v2/models/mlp/infer"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def test_malformed_and_oversized_bodies(server, client):
    cases = [
        (b"{not json", None, "not valid JSON"),
        (b'{"inputs": 3}', None, '"inputs" list'),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8]}]}', None, "neither"),
        (
            b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,8],"data":[1,2]}]}',
            None,
            "2 values",
        ),
        (b'{"inputs":[{"name":"x","datatype":"STR","shape":[1],"data":[1]}]}', None, "'STR'"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, "Header-Content-Length"),
    ]
    for body, headers, message in cases:
        status, doc = _raw(server, body, headers)
        assert status == 400 and message in doc["error"], (body, doc)
    big = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 8], "data": [0.5] * 80000}]}
    ).encode()
    status, doc = _raw(server, big)
    assert status == 413 and "limit" in doc["error"]
    _good(client)


def test_timeout_while_queued_then_queue_full(server):
    # "slow" waits 1.5 s for a batch to fill and queues at most 2 requests
    async def go(c):
        t0 = time.perf_counter()
        with pytest.raises(InferenceServerException) as e:
            await c.infer("slow", [_input("x", _x(1))], timeout=100_000)  # microseconds
        timed_out = (time.perf_counter() - t0, _status(e.value), e.value.message())
        xs = [_x(1), _x(1)]
        waiting = [asyncio.ensure_future(c.infer("slow", [_input("x", x)])) for x in xs]
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        with pytest.raises(InferenceServerException) as e:
            await c.infer("slow", [_input("x", _x(1))])
        full = (time.perf_counter() - t0, _status(e.value), e.value.message())
        return timed_out, full, xs, await asyncio.gather(*waiting)

    timed_out, full, xs, results = _aio(server, go)
    assert timed_out[0] < 1.0 and timed_out[1] == 504 and "timed out" in timed_out[2]
    assert full[0] < 0.5 and full[1] == 503 and "queue is full" in full[2]
    for x, r in zip(xs, results):
        np.testing.assert_allclose(r.as_numpy("y"), ort(mlp(), x=x)["y"], rtol=1e-5, atol=1e-5)


def test_client_disconnect_leaks_nothing(server):
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.1] * 8}]}
    ).encode()
    before = server.metrics.render().decode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    time.sleep(0.2)
    queued = metric(server.metrics.render().decode(), "onnx2jax_queue_depth", model="slow")
    sock.close()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:  # well before the 1.5 s batch delay
        after = server.metrics.render().decode()
        if metric(after, "onnx2jax_queue_depth", model="slow") == 0:
            break
        time.sleep(0.02)
    assert queued == 1
    assert metric(after, "onnx2jax_queue_depth", model="slow") == 0
    reason = {"model": "slow", "reason": "disconnected"}
    assert metric(after, "onnx2jax_request_failures_total", **reason) == 1 + metric(
        before, "onnx2jax_request_failures_total", **reason
    )
    count = {"model": "slow"}
    assert metric(after, "onnx2jax_batch_size_count", **count) == metric(
        before, "onnx2jax_batch_size_count", **count
    )


def test_cli_serve_drains_on_sigterm(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(mlp(1), path)
    cmd = [sys.executable, "-m", "onnx2jax.cli", "serve", f"b1={path}", "--port", "0",
           "--max-batch-size", "2", "--max-queue-delay-ms", "400"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("onnx2jax serve: ready on http://127.0.0.1:"), line
        url = line.split("http://")[1].split()[0]
        xs = [_x(1) for _ in range(3)]

        async def go():
            c = tha.InferenceServerClient(url)
            try:
                reqs = [asyncio.ensure_future(c.infer("b1", [_input("x", x)])) for x in xs]
                await asyncio.sleep(0.1)  # queued, waiting for the 400 ms delay
                os.kill(proc.pid, signal.SIGTERM)
                return await asyncio.gather(*reqs)
            finally:
                await c.close()

        results = asyncio.run(go())
        # uvicorn drains, then exits by the signal it caught (as a process killed by it would)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for x, r in zip(xs, results):
        np.testing.assert_allclose(r.as_numpy("y"), ort(mlp(1), x=x)["y"], rtol=1e-5, atol=1e-5)
