"""onnx2jax.serve.ray: the arguments it hands Ray, its replica class served by uvicorn (no Ray),
and (slow, needs the ``ray`` extra) the example CNN in two Ray Serve replicas behind Ray's HTTP
proxy, checked with the real ``tritonclient`` against onnxruntime."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import onnx
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from onnx2jax.serve import BatchConfig
from onnx2jax.serve import ray as sray
from serve_models import metric, mlp, ort
from tritonclient.utils import InferenceServerException

import onnx2jax
from onnx2jax import InputError, Onnx2JaxError

ROOT = pathlib.Path(__file__).parents[1]
CNN = ROOT / "examples" / "tiny_cnn.onnx"
RNG = np.random.default_rng(3)


def _input(name, arr, binary=True):
    i = th.InferInput(name, list(arr.shape), "FP32")
    i.set_data_from_numpy(arr, binary_data=binary)
    return i


# -- the arguments (no Ray) ---------------------------------------------------------------------
def test_model_sources_names_paths_and_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(CNN.parent)
    data = mlp().SerializeToString()
    assert sray.model_sources("tiny_cnn.onnx") == {"tiny_cnn": str(CNN)}  # made absolute
    assert sray.model_sources(["a=tiny_cnn.onnx", CNN]) == {"a": str(CNN), "tiny_cnn": str(CNN)}
    assert sray.model_sources({"m": data, "c": CNN}) == {"m": data, "c": str(CNN)}
    bad = [
        (["tiny_cnn.onnx", "tiny_cnn=x.onnx"], "'tiny_cnn' is empty or given twice"),
        (["=tiny_cnn.onnx"], "'' is empty or given twice"),
        ([str(tmp_path / "gone.onnx")], "no such model file"),
        ([], "models is empty"),
        ({"m": onnx2jax.load(mlp())}, "got Model; Ray replicas load each model themselves"),
        ([data], "a list of models holds paths"),
        (3, "give a path"),
    ]
    for models, message in bad:
        with pytest.raises(InputError, match=message):
            sray.model_sources(models)


def test_plan_passes_batcher_options_and_sizes_ray_to_the_queue():
    p = sray.plan(
        CNN,
        num_replicas=3,
        max_batch_size=8,
        max_queue_size=100,
        replicas=2,
        preferred_batch_sizes=[2, 8],
        dims={"seq": 5},
        ray_actor_options={"num_cpus": 2},
    )
    assert p.config == BatchConfig(
        max_batch_size=8, max_queue_size=100, replicas=2, preferred_batch_sizes=(2, 8)
    )
    assert p.models == {"tiny_cnn": str(CNN)} and p.dims == {"seq": 5}
    # Ray admits what the batcher admits (its queue, plus the batches running), not Ray's 5:
    # with fewer, no batch could fill past that and a full queue would never answer 503.
    assert p.options == {
        "name": "onnx2jax",
        "num_replicas": 3,
        "max_ongoing_requests": 100 + 8 * 2,
        "ray_actor_options": {"num_cpus": 2},
    }
    p = sray.plan(CNN, max_queue_size=0, deployment_options={"max_ongoing_requests": 7})
    assert p.options["max_ongoing_requests"] == 7 and p.config.max_queue_size == 0
    assert sray.plan(CNN, num_replicas="auto").options["num_replicas"] == "auto"
    with pytest.raises(InputError, match=r"unknown option\(s\) \['max_batch'\].*max_batch_size"):
        sray.plan(CNN, max_batch=4)
    with pytest.raises(Onnx2JaxError, match="BatchConfig.max_batch_size=0"):
        sray.plan(CNN, max_batch_size=0)
    with pytest.raises(InputError, match="num_replicas=0"):
        sray.plan(CNN, num_replicas=0)
    with pytest.raises(InputError, match="dims {'seq': 0}"):
        sray.plan(CNN, dims={"seq": 0})


def test_builder_kwargs_for_serve_run():
    kw = sray.builder_kwargs(
        {
            "models": f"{CNN},b={CNN}",
            "num_replicas": "2",
            "max_batch_size": "16",
            "max_queue_delay_ms": "2.5",
            "preferred_batch_sizes": "1,4,16",
            "batch_mode": "axis",
            "dims": "seq=128,n=3",
        }
    )
    assert kw == {
        "models": [str(CNN), f"b={CNN}"],
        "num_replicas": 2,
        "max_batch_size": 16,
        "max_queue_delay_ms": 2.5,
        "preferred_batch_sizes": (1, 4, 16),
        "batch_mode": "axis",
        "dims": {"seq": 128, "n": 3},
    }
    p = sray.plan(**kw)  # what app_builder hands deployment() is accepted as it is
    assert p.config.preferred_batch_sizes == (1, 4, 16) and set(p.models) == {"tiny_cnn", "b"}
    for args, message in [
        ({}, "give models="),
        ({"models": "a.onnx", "max_batch_size": "big"}, "max_batch_size='big': expected int"),
        ({"models": "a.onnx", "num_replica": "2"}, "unknown argument 'num_replica'"),
        ({"models": "a.onnx", "dims": "seq"}, "'seq' is not NAME=SIZE"),
    ]:
        with pytest.raises(InputError, match=message):
            sray.builder_kwargs(args)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as when missing
    with pytest.raises(Onnx2JaxError, match=r"pip install 'onnx2jax\[ray\]'"):
        sray.deployment(CNN)
    with pytest.raises(InputError, match="no such model file"):  # arguments are checked first
        sray.deployment("missing.onnx")


# -- one replica, without Ray -------------------------------------------------------------------
def test_replica_builds_the_app_and_reports_health():
    """What each Ray replica runs (_Replica, then its ASGI app under a lifespan), here under
    uvicorn on loopback: a model shipped as bytes, warmed up, served and drained."""
    import uvicorn

    p = sray.plan({"mlp": mlp().SerializeToString()}, max_batch_size=4, max_queue_delay_ms=20)
    replica = sray._Replica(p)
    with pytest.raises(RuntimeError, match=r"not ready: \['mlp'\]"):
        replica.check_health()  # loaded, not yet warm: Ray must not route to it
    app = replica.__serve_build_asgi_app__()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        t0 = time.monotonic()
        while not server.started and time.monotonic() - t0 < 60 and thread.is_alive():
            time.sleep(0.02)
        replica.check_health()
        c = th.InferenceServerClient(f"127.0.0.1:{sock.getsockname()[1]}")
        x = RNG.standard_normal((3, 8)).astype(np.float32)
        r = c.infer("mlp", [_input("x", x)])
        np.testing.assert_allclose(r.as_numpy("y"), ort(mlp(), x=x)["y"], rtol=1e-5, atol=1e-5)
        c.close()
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    with pytest.raises(RuntimeError, match="not ready"):
        replica.check_health()  # drained and stopped


# -- Ray Serve (slow: needs `pip install -e ".[ray]"`) ------------------------------------------
@pytest.fixture(scope="module")
def ray_url():
    import ray  # the ray extra: pip install -e ".[ray]"
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with socket.socket() as s:  # a free port for Ray's HTTP proxy (8000 may be taken)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = sray.deployment(
            {"cnn": CNN, "mlp": mlp().SerializeToString()},
            num_replicas=2,
            max_batch_size=16,
            max_queue_delay_ms=50,
        )
        serve.run(app, route_prefix="/")
        yield f"127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_ray_serve_replicas_answer_like_onnxruntime(ray_url):
    from ray import serve

    status = serve.status().applications["default"].deployments["onnx2jax"]
    assert status.replica_states == {"RUNNING": 2}
    c = th.InferenceServerClient(ray_url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_server_metadata()["name"] == "onnx2jax"
    assert c.is_model_ready("cnn") and c.is_model_ready("mlp", "1")
    meta = c.get_model_metadata("cnn")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert c.get_model_config("cnn")["max_batch_size"] == 16

    cnn = onnx.load(CNN)
    for k, binary in [(1, True), (3, False)]:
        x = RNG.standard_normal((k, 3, 32, 32)).astype(np.float32)
        r = c.infer("cnn", [_input("image", x, binary)])
        np.testing.assert_allclose(
            r.as_numpy("logits"), ort(cnn, image=x)["logits"], rtol=1e-4, atol=1e-5
        )
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    r = c.infer("mlp", [_input("x", x)])
    np.testing.assert_allclose(r.as_numpy("hidden"), ort(mlp(), x=x)["hidden"], rtol=1e-5)

    # 48 requests at once, spread by Ray's router over both replicas and batched in each:
    # every answer is the one for its own input.
    xs = [RNG.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(48)]

    async def burst():
        a = tha.InferenceServerClient(ray_url)
        try:
            return await asyncio.gather(*(a.infer("cnn", [_input("image", x)]) for x in xs))
        finally:
            await a.close()

    for x, r in zip(xs, asyncio.run(burst())):
        np.testing.assert_allclose(
            r.as_numpy("logits"), ort(cnn, image=x)["logits"], rtol=1e-4, atol=1e-5
        )
    # Batches past Ray's default of 5 requests in a replica formed (max_ongoing_requests is
    # sized to the batcher): some replica's /metrics (the proxy answers from either) counts a
    # batch of more than 8 examples.
    big = []
    for _ in range(12):
        with urllib.request.urlopen(f"http://{ray_url}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        n = metric(text, "onnx2jax_batch_size_count", model="cnn")
        big.append(n - metric(text, "onnx2jax_batch_size_bucket", model="cnn", le="8.0"))
    assert max(big) > 0, big
    c.close()


@pytest.mark.slow
def test_ray_serve_bad_requests_are_4xx_and_the_next_one_works(ray_url):
    c = th.InferenceServerClient(ray_url)
    bad = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(InferenceServerException, match="input 'image' has size 16 on axis 2"):
        c.infer("cnn", [_input("image", bad)])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        c.get_model_metadata("nope")

    def post(path, body):
        req = urllib.request.Request(f"http://{ray_url}{path}", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, doc = post("/v2/models/cnn/infer", b"{not json")
    assert status == 400 and "JSON" in doc["error"], doc
    status, doc = post("/v2/models/cnn/infer", json.dumps({"inputs": []}).encode())
    assert status == 400 and "missing input(s) ['image']" in doc["error"], doc
    status, doc = post("/v2/models/nope/infer", b"{}")
    assert status == 404 and "unknown model 'nope'" in doc["error"], doc
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    r = c.infer("cnn", [_input("image", x)])
    want = ort(onnx.load(CNN), image=x)["logits"]
    np.testing.assert_allclose(r.as_numpy("logits"), want, rtol=1e-4, atol=1e-5)
    c.close()
