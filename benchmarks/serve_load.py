"""Load benchmark of ``onnx2jax serve``: tritonclient clients against a server process.

    python benchmarks/serve_load.py                                  # tiny CNN (+ ResNet-18 if built)
    python benchmarks/serve_load.py --seconds 3 --warmup-s 1         # a short check that it works
    python benchmarks/serve_load.py --model bert=benchmarks/zoo/cache/full/bert.onnx --dim sequence=128
    python benchmarks/serve_load.py --model resnet18=benchmarks/zoo/cache/full/resnet18.onnx \
        --settings batched --clients 64 --requests 20000 --seconds 3600 \
        --out benchmarks/results/serve/serve_zoo.json     # the issue's 20,000-request runs

For each model and setting (``batched``: dynamic batching up to ``--max-batch-size``;
``batch1``: ``--max-batch-size 1``, batching off; ``axis``: batching along the model's own
symbolic batch axis instead of ``jax.vmap``; ``replicas2``: ``batched`` with two batches
allowed at once; ``processes2``: two server processes on the port), it starts ``onnx2jax serve`` in its own process,
drives it for ``--seconds`` with ``--clients`` concurrent ``tritonclient.http.aio`` clients
(one example per request, spread over ``--client-procs`` processes), checks every response
against onnxruntime, and records requests/s, p50/p99 latency, the mean batch the server
formed (from ``/metrics``), the server's RSS before and after, and its start-up time. Then
the model is called directly (``model(batch)`` in a loop, no server) at the batch size the
server formed, so ``served / direct`` says what the server and batcher cost.

Triton's ``perf_analyzer`` is not used: the ``tritonclient`` 2.73 wheel no longer ships it,
and the only ``perf-analyzer`` on the package index reachable here is a 0.1.0 placeholder
without the binary. Results: ``benchmarks/results/serve/serve.json`` (not in
``benchmarks/results/`` itself, whose every ``*.json`` ``run.py --render`` reads as a zoo
record) and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "serve" / "serve.json"
ZOO = ROOT / "benchmarks" / "zoo" / "cache" / "full"
DEFAULT_DIMS = {"height": 224, "width": 224, "sequence": 128}
POOL = 16  # distinct requests per model, each checked against onnxruntime


# -- inputs and references -------------------------------------------------------------------
def _inputs(model, dims: dict[str, int], seed: int) -> list[dict[str, np.ndarray]]:
    """``POOL`` requests of one example each (batch axis 1), values each model accepts."""
    rng = np.random.default_rng(seed)
    specs = model.inputs
    out = []
    for _ in range(POOL):
        req = {}
        for s in specs:
            shape = [1] + [d if isinstance(d, int) and d > 0 else dims[d] for d in s.shape[1:]]
            if s.dtype.kind == "f":
                req[s.name] = rng.standard_normal(shape).astype(s.dtype)
            elif "mask" in s.name:
                req[s.name] = np.ones(shape, s.dtype)
            elif "type" in s.name:
                req[s.name] = np.zeros(shape, s.dtype)
            else:  # token ids: small enough for any vocabulary
                req[s.name] = rng.integers(0, 1000, shape).astype(s.dtype)
        out.append(req)
    return out


def _references(path: str, pool: list[dict]) -> list[dict[str, np.ndarray]]:
    import onnxruntime as rt

    sess = rt.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, feeds))) for feeds in pool]


def _matches(got: dict, want: dict) -> bool:
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape:
            return False
        scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
        if not np.allclose(g, w, rtol=1e-3, atol=1e-3 * scale):
            return False
    return True


# -- the server ------------------------------------------------------------------------------
def _start(name: str, path: str, flags: list[str]) -> tuple[subprocess.Popen, str, float]:
    cmd = [sys.executable, "-m", "onnx2jax.cli", "serve", f"{name}={path}", "--port", "0", *flags]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if "ready on http://" not in line:
        proc.kill()
        raise RuntimeError(f"onnx2jax serve did not start: {' '.join(cmd)}: {line!r}")
    return proc, line.split("http://")[1].split()[0], time.perf_counter() - t0


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``--processes N`` serves from child processes)."""
    out = [pid]
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += _tree(int(child))
    return out


def _rss_mb(pid: int) -> float:
    """Resident memory of the server, its child processes included."""
    total = 0.0
    for p in _tree(pid):
        for line in pathlib.Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) the server has used, child processes too."""
    total = 0
    for p in _tree(pid):
        fields = pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _metrics(url: str, name: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=30).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") == name and s.name in (
                "onnx2jax_batch_size_sum",
                "onnx2jax_batch_size_count",
            ):
                out[s.name] = s.value
            if s.name == "onnx2jax_compiles_total" and s.labels.get("model") == name:
                out[f"compiles_{s.labels.get('phase')}"] = s.value
    return out


# -- the clients -----------------------------------------------------------------------------
async def _drive(
    url: str, name: str, clients: int, seconds: float, pool, refs, limit: int | None = None
) -> dict:
    """``clients`` concurrent clients, each sending one request after another for ``seconds``
    or until ``limit`` requests have been sent in all."""
    import tritonclient.http as th
    import tritonclient.http.aio as tha
    from tritonclient.utils import np_to_triton_dtype

    lat: list[float] = []
    counts = {"ok": 0, "lost": 0, "mismatched": 0}
    deadline = time.perf_counter() + seconds
    sent = [0]

    async def client(j: int) -> None:
        c = tha.InferenceServerClient(url, conn_limit=1)
        i = j
        try:
            while time.perf_counter() < deadline and (limit is None or sent[0] < limit):
                sent[0] += 1
                feeds = pool[i % len(pool)]
                inputs = []
                for n, a in feeds.items():
                    inp = th.InferInput(n, list(a.shape), np_to_triton_dtype(a.dtype))
                    inp.set_data_from_numpy(a)
                    inputs.append(inp)
                t0 = time.perf_counter()
                try:
                    r = await c.infer(name, inputs)
                except Exception:
                    counts["lost"] += 1
                    i += clients
                    continue
                lat.append(time.perf_counter() - t0)
                want = refs[i % len(pool)]
                got = {n: r.as_numpy(n) for n in want}
                counts["ok" if _matches(got, want) else "mismatched"] += 1
                i += clients
        finally:
            await c.close()

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(j) for j in range(clients)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "latencies": lat, **counts}


def _drive_proc(args: tuple) -> dict:
    return asyncio.run(_drive(*args))


def _load(url, name, clients, procs, seconds, pool, refs, requests=None) -> dict:
    """Run the clients in ``procs`` processes (so the load generator is not one core's worth
    of Python) and merge what they saw; ``requests``: stop after that many in all."""
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    limits = [None if requests is None else requests * n // clients for n in shares]
    if requests is not None:
        limits[0] += requests - sum(limits)
    jobs = [(url, name, n, seconds, pool, refs, lim) for n, lim in zip(shares, limits, strict=True)]
    if procs == 1:
        parts = [_drive_proc(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(procs) as p:
            parts = p.map(_drive_proc, jobs)
    lat = sorted(x for p in parts for x in p["latencies"])
    wall = max(p["wall_s"] for p in parts)
    n = sum(p["ok"] + p["mismatched"] for p in parts)
    return {
        "requests": n,
        "requests_per_s": n / wall,
        "p50_ms": 1e3 * statistics.median(lat) if lat else None,
        "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))] if lat else None,
        "lost": sum(p["lost"] for p in parts),
        "mismatched": sum(p["mismatched"] for p in parts),
        # What the load generator spent per request: on a small machine it competes with the
        # server for the same cores, so served/direct there says more about the client.
        "client_cpu_ms_per_request": 1e3 * sum(p["cpu_s"] for p in parts) / max(n, 1),
    }


# -- the model called directly ---------------------------------------------------------------
def _direct_items_per_s(model, pool: list[dict], batch: int, seconds: float) -> float:
    names = list(pool[0])
    xs = [np.concatenate([pool[i % len(pool)][n] for i in range(batch)]) for n in names]
    np.asarray(model(*xs)[0])
    best = 0.0
    for _ in range(3):
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            np.asarray(model(*xs)[0])
            k += 1
        best = max(best, k * batch / (time.perf_counter() - t0))
    return best


# -- the benchmark ---------------------------------------------------------------------------
def _models(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.model:
        return [
            tuple(m.split("=", 1)) if "=" in m else (pathlib.Path(m).stem, m) for m in args.model
        ]
    out = [("tiny_cnn", str(ROOT / "examples" / "tiny_cnn.onnx"))]
    if (ZOO / "resnet18.onnx").exists():
        out.append(("resnet18", str(ZOO / "resnet18.onnx")))
    return out


def _settings(args: argparse.Namespace, kind: str | None) -> list[tuple[str, list[str]]]:
    common = ["--max-queue-delay-ms", str(args.max_queue_delay_ms)]
    common += [f"--dim={k}={v}" for k, v in args.dims.items()]
    table = {
        "batched": ["--max-batch-size", str(args.max_batch_size)],
        "batch1": ["--max-batch-size", "1"],
        "axis": ["--max-batch-size", str(args.max_batch_size), "--batch-mode", "axis"],
        "replicas2": ["--max-batch-size", str(args.max_batch_size), "--replicas", "2"],
        "processes2": ["--max-batch-size", str(args.max_batch_size), "--processes", "2"],
    }
    out = []
    for s in args.settings.split(","):
        if s == "axis" and kind != "symbolic":
            continue  # a batch-1 export has no axis of its own to batch along
        out.append((s, table[s] + common))
    return out


def run(args: argparse.Namespace) -> dict:
    from onnx2jax.serve import batch_axis

    from onnx2jax import load
    from onnx2jax.bench import machine_info

    rows = []
    for name, path in _models(args):
        model = load(path)
        pool = _inputs(model, args.dims, seed=len(rows))
        refs = _references(path, pool)
        kind = batch_axis(model)
        for setting, flags in _settings(args, kind):
            proc, url, ready_s = _start(name, path, flags)
            try:
                rss0 = _rss_mb(proc.pid)
                _load(url, name, args.clients, args.client_procs, args.warmup_s, pool, refs)
                before, cpu0 = _metrics(url, name), _cpu_s(proc.pid)
                r = _load(
                    url, name, args.clients, args.client_procs, args.seconds, pool, refs,
                    args.requests,
                )  # fmt: skip
                cpu1, after = _cpu_s(proc.pid), _metrics(url, name)
                rss1 = _rss_mb(proc.pid)
            finally:
                _stop(proc)
            batches = after.get("onnx2jax_batch_size_count", 0) - before.get(
                "onnx2jax_batch_size_count", 0
            )
            items = after.get("onnx2jax_batch_size_sum", 0) - before.get(
                "onnx2jax_batch_size_sum", 0
            )
            rows.append(
                {
                    "model": name,
                    "setting": setting,
                    "flags": flags,
                    "clients": args.clients,
                    "seconds": args.seconds,
                    **r,
                    "mean_batch": items / batches if batches else None,
                    "server_cpu_ms_per_request": 1e3 * (cpu1 - cpu0) / max(r["requests"], 1),
                    "runtime_compiles": after.get("compiles_runtime", 0),
                    "rss_before_mb": rss0,
                    "rss_after_mb": rss1,
                    "ready_s": ready_s,
                }
            )
            print(_row(rows[-1]), flush=True)
        for row in rows:
            if row["model"] == name and row["mean_batch"]:
                b = max(1, round(row["mean_batch"]))
                row["direct_batch"] = b
                row["direct_items_per_s"] = _direct_items_per_s(model, pool, b, args.direct_s)
                row["served_over_direct"] = row["requests_per_s"] / row["direct_items_per_s"]
    for name in {r["model"] for r in rows}:
        by = {r["setting"]: r for r in rows if r["model"] == name}
        if "batched" in by and "batch1" in by:
            by["batched"]["speedup_over_batch1"] = (
                by["batched"]["requests_per_s"] / by["batch1"]["requests_per_s"]
            )
    return {
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "machine": machine_info(),
        "load_generator": "tritonclient.http.aio (perf_analyzer not installable here)",
        "rows": rows,
    }


def _row(r: dict) -> str:
    def f(v, spec=",.1f"):
        return "-" if v is None else format(v, spec)

    return (
        f"| {r['model']} | {r['setting']} | {f(r['requests_per_s'])} | {f(r.get('mean_batch'))} "
        f"| {f(r.get('direct_items_per_s'))} | {f(r.get('served_over_direct'), '.0%')} "
        f"| {f(r.get('speedup_over_batch1'), '.1f')} | {f(r['p50_ms'])} | {f(r['p99_ms'])} "
        f"| {r['requests']} | {r['lost']} | {r['mismatched']} "
        f"| {f(r['server_cpu_ms_per_request'], '.2f')} | {f(r['client_cpu_ms_per_request'], '.2f')} "
        f"| {f(r['rss_before_mb'], '.0f')} -> {f(r['rss_after_mb'], '.0f')} | {f(r['ready_s'])} |"
    )


HEADER = (
    "| model | setting | req/s | mean batch | direct items/s | served/direct | x batch1 "
    "| p50 ms | p99 ms | requests | lost | mismatched | server CPU ms/req | client CPU ms/req "
    "| RSS MB | ready s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _write_md(out: pathlib.Path, result: dict) -> None:
    """``out``.md from the JSON record ``result`` (``--render`` rewrites it alone)."""
    load = result.get("load_average_end")
    md = [
        "# Serving: onnx2jax serve under load ("
        + ", ".join(dict.fromkeys(r["model"] for r in result["rows"]))
        + ")",
        "",
        f"Generated by `python {result['command']}` (do not edit); clients and server share "
        "the machine's cores"
        + (f"; 1-minute load average at the end {load:.2f}." if load is not None else "."),
        "",
        HEADER,
        *(_row(r) for r in result["rows"]),
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", metavar="NAME=PATH",
                   help="model(s) to serve (default: the example CNN, and ResNet-18 if built)")  # fmt: skip
    p.add_argument("--settings", default="batched,batch1,axis,replicas2,processes2",
                   help="comma-separated: batched, batch1, axis, replicas2, processes2")  # fmt: skip
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--client-procs", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 4)),
                   help="processes the clients are spread over")  # fmt: skip
    p.add_argument("--seconds", type=float, default=20.0, help="measured load per setting")
    p.add_argument("--requests", type=int, default=None,
                   help="stop each setting after this many measured requests (or --seconds)")  # fmt: skip
    p.add_argument("--warmup-s", type=float, default=3.0, help="load before measuring")
    p.add_argument("--direct-s", type=float, default=3.0, help="direct model(batch) timing")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="symbolic dims other than batch (default height/width 224, sequence 128)")  # fmt: skip
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--render", action="store_true", help="rewrite --out's .md from its JSON")
    args = p.parse_args(argv)
    if args.render:
        _write_md(pathlib.Path(args.out), json.loads(pathlib.Path(args.out).read_text()))
        return 0
    args.dims = dict(DEFAULT_DIMS)
    for item in args.dim:
        k, _, v = item.partition("=")
        args.dims[k] = int(v)
    print(HEADER, flush=True)
    result = run(args)
    print("\n" + HEADER)
    for r in result["rows"]:
        print(_row(r))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "getloadavg"):
        result["load_average_end"] = os.getloadavg()[0]
    out.write_text(json.dumps(result, indent=1) + "\n")
    _write_md(out, result)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    bad = sum(r["lost"] + r["mismatched"] for r in result["rows"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
