"""`onnx2jax bench`: time one model in onnx2jax beside onnxruntime (and peers), each engine in its
own process, interleaved, with compile times, memory and FLOP rates.

How it measures (the full account is in ``benchmarks/README.md``):

- Every engine runs in a **worker process** of its own that imports only that engine, so peak
  RSS (the kernel's high-water mark ``VmHWM``) belongs to that engine alone.
  Workers take one JSON request per line on stdin and answer one line (on a private copy of
  stdout: whatever the libraries print goes to a log file).
- **Cold compile**: a fresh onnx2jax process with an empty JAX persistent compilation cache
  folder; **warm**: a second fresh process pointed at the same, now filled, folder. Each reports
  load, trace+lower, XLA compile and first-run times. onnxruntime's counterpart is session
  creation (graph optimizations included) plus its first run, in its own fresh process.
- **Latency**: after a warm-up, the engines take turns running blocks of runs (rounds; the order
  flips every round) so that drift on a shared machine hits all of them; median and p90 of the
  per-run times. A run goes from host numpy inputs to outputs ready
  (``jax.block_until_ready`` on an ahead-of-time compiled ``jax.jit(model.apply)``).
- **Threads**: every engine gets the same cores: the worker's CPU affinity is the first
  ``threads`` allowed cores (XLA's CPU thread pool sizes itself from it) and onnxruntime gets
  ``intra_op_num_threads = threads``. tract's Python bindings run on one thread.
- **FLOPs**: ``2 x multiply-adds`` of Conv, ConvTranspose, MatMul and Gemm nodes from ONNX shape
  inference at the benchmark's input shapes (engine-independent), beside XLA's own count of
  the compiled program (``compiled.cost_analysis()['flops']``). GFLOP/s is compared with the
  measured peak: the best time of a 2048^3 float32 matmul in XLA on the same cores.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import pickle
import platform
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# This module is also run as a worker process that loads it from its file, not as part of the
# package (so that an onnxruntime worker never imports JAX): keep module-level imports to the
# standard library and numpy, and import onnx2jax lazily, by absolute name.

ENGINES = ("onnx2jax", "onnxruntime", "jaxonnxruntime", "tract")
PEAK_SIZE = 2048
SCHEMA = 1


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. ``runs=None`` picks the number of timed runs from ``seconds``."""

    batches: tuple[int, ...] = (1, 8)
    dims: Mapping[str, int] = field(default_factory=dict)  # sizes of other symbolic dims
    engines: tuple[str, ...] = ("onnx2jax", "onnxruntime")
    runs: int | None = None  # timed runs per engine and batch size
    seconds: float = 2.0  # with runs=None: about this much timed running per engine and batch
    min_runs: int = 5
    max_runs: int = 2000
    rounds: int = 10  # blocks per engine, interleaved
    warmup_seconds: float = 0.3  # warm-up: at least one run (after the first), until this long
    threads: int | None = None  # default: every core this process may run on
    seed: int = 0
    peak: bool = True  # measure the matmul peak (skipped when run.py passes one in)
    timeout_s: float = 900.0  # per worker request (load + compile of a big model included)


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------

_WORKER_BOOT = (
    "import importlib.util as u, sys; s = u.spec_from_file_location('_onnx2jax_bench_worker', "
    "sys.argv[1]); m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); "
    "m._serve()"
)


class WorkerError(RuntimeError):
    """A worker process failed, timed out or answered with an error."""


class _Worker:
    """One engine process; requests and answers are JSON lines."""

    def __init__(self, tmp: str, label: str):
        self.log_path = os.path.join(tmp, f"{label}.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )

    def request(self, timeout_s: float, **req: Any) -> dict:
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(f"worker exited early; {self._log_tail()}") from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            self.close()
            raise WorkerError(f"no answer to {req['cmd']!r} within {timeout_s:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            tail = self._log_tail()
            self.close()
            code = self.proc.returncode
            why = " (killed: out of memory?)" if code in (-9, 137) else ""
            raise WorkerError(f"worker died during {req['cmd']!r}, exit code {code}{why}; {tail}")
        resp = json.loads(line)
        if not resp.get("ok"):
            raise WorkerError(resp.get("error", "unknown error"))
        return resp

    def _log_tail(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, errors="replace") as f:
            text = f.read()[-1500:]
        return f"log tail: {text.strip()}" if text.strip() else "no log output"

    def close(self) -> None:
        if self._log.closed:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def default_threads() -> int:
    """The cores this process may run on (what XLA's CPU thread pool would size itself to)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU model, core counts and library versions, for the record."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = [
                        f
                        for f in (
                            "avx",
                            "avx2",
                            "fma",
                            "avx512f",
                            "avx512_vnni",
                            "avx_vnni",
                            "avx512_bf16",
                            "amx_tile",
                        )
                        if f in have
                    ]
                    break
    versions = {}
    for mod in ("jax", "jaxlib", "onnx", "onnxruntime", "numpy", "jaxonnxruntime", "tract"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[mod] = version(mod)
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": default_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def measure_peak(threads: int | None = None, timeout_s: float = 300.0) -> dict[str, Any]:
    """Time a ``PEAK_SIZE``^3 float32 matmul in XLA (the reference peak) and in onnxruntime."""
    threads = threads or default_threads()
    out: dict[str, Any] = {"matmul": f"{PEAK_SIZE}^3 float32", "threads": threads}
    with tempfile.TemporaryDirectory(prefix="onnx2jax-peak-") as tmp:
        for engine in ("xla", "onnxruntime"):
            w = _Worker(tmp, f"peak-{engine}")
            try:
                r = w.request(
                    timeout_s,
                    cmd="peak",
                    engine=engine,
                    n=PEAK_SIZE,
                    threads=threads,
                    path=os.path.join(tmp, "matmul.onnx"),
                )
                out[f"{engine}_gflops"] = r["best_gflops"]
                out[f"{engine}_gflops_median"] = r["median_gflops"]
            except WorkerError as e:
                out[f"{engine}_error"] = str(e)
            finally:
                w.close()
    out["gflops"] = out.get("xla_gflops")
    return out


def _concrete_shape(spec, batch: int, dims: Mapping[str, int]) -> tuple[int, ...] | str:
    """The input shape at this batch size, or why there is none."""
    shape = []
    for axis, d in enumerate(spec.shape or ()):
        if isinstance(d, int) and d > 0:
            if axis == 0 and d != batch:
                return f"input {spec.name!r} fixes axis 0 to {d}"
            shape.append(d)
        elif isinstance(d, str) and d in dims:
            shape.append(int(dims[d]))
        elif axis == 0:
            shape.append(batch)  # a symbolic (or unnamed) leading axis is the batch axis
        else:
            shape.append(1)
    return tuple(shape)


def make_inputs(
    path: str, batch: int, dims: Mapping[str, int], seed: int = 0
) -> dict[str, np.ndarray] | str:
    """Seeded inputs for ``path``: axis 0 is the batch axis, ``dims`` sizes the other named dims
    (default 1). Like ``onnx2jax run --random`` (integers in [0, 8)), except that integer and
    boolean inputs named like "mask" are all ones and integer ones named like "type" alternate
    0, 1. Returns a string saying why when the batch size cannot be set."""
    from onnx2jax._inspect import example_inputs
    from onnx2jax._ir import TensorSpec
    from onnx2jax._loader import load_model

    specs = load_model(path).graph.inputs
    fixed = []
    for s in specs:
        shape = _concrete_shape(s, batch, dims)
        if isinstance(shape, str):
            return shape
        fixed.append(TensorSpec(s.name, s.dtype, shape, s.kind))
    inputs = example_inputs(fixed, {}, seed=seed)
    for name, v in inputs.items():
        if v.dtype.kind in "iub" and "mask" in name.lower():
            inputs[name] = np.ones_like(v)
        elif v.dtype.kind in "iu" and "type" in name.lower():  # token types: BERT has two
            inputs[name] = (np.arange(v.size).reshape(v.shape) % 2).astype(v.dtype)
    return inputs


# op -> the input holding the weights (convolutions) or the left operand (matmuls).
_CONV_W = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL_A = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}
COUNTED_OPS = (*_CONV_W, *_MATMUL_A, "Gemm", "ConvTranspose")


def node_flops(
    op: str,
    ins: Sequence[Sequence[int] | None],
    outs: Sequence[Sequence[int]],
    trans_a: bool = False,
) -> int:
    """2 x multiply-adds of one Conv/ConvTranspose/MatMul/Gemm (or integer form) node."""
    if op in _CONV_W:  # out (N, M, *spatial) x reduction (C/group * kernel)
        return 2 * int(np.prod(outs[0])) * int(np.prod(ins[_CONV_W[op]][1:]))
    if op == "ConvTranspose":  # every input pixel scatters (M/group * kernel) products
        return 2 * int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))
    if op in _MATMUL_A:
        return 2 * int(np.prod(outs[0])) * int(ins[_MATMUL_A[op]][-1])
    if op == "Gemm":
        a = ins[0]
        return 2 * int(np.prod(outs[0])) * int(a[0] if trans_a else a[1])
    raise KeyError(op)


def onnx_flops(path: str, shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """2 x multiply-adds of the Conv, ConvTranspose, MatMul and Gemm nodes (and their integer
    forms: ConvInteger, QLinearConv, MatMulInteger, QLinearMatMul) of the main graph at the given
    input shapes (ONNX shape inference with data propagation). ``complete`` is False when some
    such node's shapes could not be inferred (its FLOPs are then missing)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    for inp in model.graph.input:
        if inp.name in shapes:
            t = inp.type.tensor_type
            t.shape.Clear()
            for d in shapes[inp.name]:
                t.shape.dim.add().dim_value = int(d)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    known: dict[str, list[int | None]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            known[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim
            ]
    for t in g.initializer:
        known[t.name] = list(t.dims)

    def shape(name: str) -> list[int]:
        s = known.get(name)
        if s is None or any(d is None for d in s):
            raise KeyError(name)
        return s

    total, by_op, missing = 0, {}, []
    for node in g.node:
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in COUNTED_OPS:
            continue
        try:
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            f = node_flops(
                op, [shape(i) if i else None for i in node.input], [shape(node.output[0])], trans_a
            )
        except (KeyError, IndexError):
            missing.append(node.name or op)
            continue
        total += f
        by_op[op] = by_op.get(op, 0) + f
    return {"flops": total, "by_op": by_op, "complete": not missing, "missing_nodes": missing[:10]}


def _stats(times: list[float], batch: int) -> dict[str, Any]:
    med = statistics.median(times)
    return {
        "runs": len(times),
        "median_ms": med * 1e3,
        "p90_ms": float(np.percentile(times, 90)) * 1e3,
        "mean_ms": statistics.fmean(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "items_per_s": batch / med,
    }


def _compare_outputs(ref: list, got: list) -> dict[str, Any]:
    """Largest absolute difference over the numeric outputs, and relative to the largest |ref|."""
    worst_abs, scale = 0.0, 0.0
    for r, g in zip(ref, got, strict=False):
        if (
            not (isinstance(r, np.ndarray) and isinstance(g, np.ndarray))
            or r.dtype.kind not in "fiub"
        ):
            continue
        if r.shape != g.shape:
            return {"error": f"shape {g.shape} vs {r.shape}"}
        if r.size:
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            worst_abs = max(worst_abs, float(np.max(np.abs(r64 - g64))))
            scale = max(scale, float(np.max(np.abs(r64))))
    return {"max_abs_diff": worst_abs, "max_rel_diff": worst_abs / scale if scale else worst_abs}


def bench_model(
    path: str,
    options: BenchOptions = BenchOptions(),
    *,
    name: str | None = None,
    inputs_for: Callable[[int], Mapping[str, np.ndarray]] | None = None,
    peak: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark one model at each batch size; returns the JSON-ready record.

    ``inputs_for(batch)`` makes the inputs (default: :func:`make_inputs`). ``peak`` is a result
    of :func:`measure_peak` to reuse (else one is measured when ``options.peak``).
    """
    log = log or (lambda _msg: None)
    threads = options.threads or default_threads()
    unknown = [e for e in options.engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; choose from {ENGINES}")
    if peak is None and options.peak:
        log("measuring the matmul peak ...")
        peak = measure_peak(threads)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "model": name or os.path.splitext(os.path.basename(path))[0],
        "path": path,
        "machine": machine_info(),
        "threads": threads,
        "options": {
            k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(options).items()
        },
        "peak": peak,
        "batches": [],
    }
    peak_gflops = (peak or {}).get("gflops")
    failed: dict[str, str] = {}
    for batch in options.batches:
        log(f"{record['model']}: batch {batch}")
        with tempfile.TemporaryDirectory(prefix="onnx2jax-bench-") as tmp:
            entry = _bench_batch(path, batch, options, threads, tmp, inputs_for, log, failed)
        # A peer that cannot load the model at one batch size is not retried at the next.
        failed.update(
            {
                e: f"failed at batch {batch}"
                for e, r in entry["engines"].items()
                if e not in ("onnx2jax", "onnxruntime") and not r.get("ok")
            }
        )
        for eng in entry["engines"].values():
            if eng.get("median_ms") and entry.get("flops"):
                eng["gflops"] = entry["flops"] / (eng["median_ms"] * 1e-3) / 1e9
                if peak_gflops:
                    eng["pct_peak"] = 100 * eng["gflops"] / peak_gflops
        record["batches"].append(entry)
    return record


def _bench_batch(
    path: str,
    batch: int,
    options: BenchOptions,
    threads: int,
    tmp: str,
    inputs_for,
    log,
    failed: Mapping[str, str],
) -> dict[str, Any]:
    entry: dict[str, Any] = {"batch": batch, "engines": {}}
    inputs = (
        dict(inputs_for(batch))
        if inputs_for
        else make_inputs(path, batch, options.dims, options.seed)
    )
    if isinstance(inputs, str):
        entry["skipped"] = inputs
        return entry
    entry["inputs"] = {k: [str(v.dtype), list(v.shape)] for k, v in inputs.items()}
    inputs_file = os.path.join(tmp, "inputs.pkl")
    with open(inputs_file, "wb") as f:
        pickle.dump(inputs, f)
    try:
        fl = onnx_flops(path, {k: v.shape for k, v in inputs.items()})
        entry["flops_onnx"] = fl["flops"]
        entry["flops_onnx_detail"] = fl
    except Exception as e:  # shape inference can fail on exotic graphs; XLA's count remains
        entry["flops_onnx_error"] = f"{type(e).__name__}: {e}"[:300]

    cache_dir = os.path.join(tmp, "jax_cache")
    os.makedirs(cache_dir)
    base = dict(path=os.path.abspath(path), inputs=inputs_file, threads=threads)
    res = entry["engines"]
    workers: dict[str, _Worker] = {}
    try:
        for engine in options.engines:
            res[engine] = {"threads": 1 if engine == "tract" else threads}
            if engine in failed:
                res[engine].update(ok=False, skipped=True, error=f"not run: {failed[engine]}")
                continue
            try:
                if engine == "onnx2jax":
                    # Cold: a fresh process, empty cache folder (it fills it).
                    log("  onnx2jax: cold compile")
                    cold = _Worker(tmp, "onnx2jax-cold")
                    try:
                        info = cold.request(
                            options.timeout_s,
                            cmd="init",
                            engine=engine,
                            cache_dir=cache_dir,
                            cost=True,
                            **base,
                        )
                        fin = cold.request(60, cmd="finish")
                    finally:
                        cold.close()
                    res[engine]["cold"] = info["info"]
                    res[engine]["peak_rss_cold_mb"] = fin["peak_rss_mb"]
                    entry["flops_xla"] = info["info"].pop("flops_xla", None)
                    traced = info["info"].pop("flops_traced", None)
                    if traced:
                        entry["flops_traced"] = traced["flops"]
                        entry["flops_traced_by_op"] = traced["by_op"]
                    log("  onnx2jax: warm-cache compile")
                w = workers[engine] = _Worker(tmp, engine)
                info = w.request(
                    options.timeout_s,
                    cmd="init",
                    engine=engine,
                    cache_dir=cache_dir if engine == "onnx2jax" else None,
                    outputs=os.path.join(tmp, f"out-{engine}.pkl"),
                    **base,
                )
                res[engine]["warm" if engine == "onnx2jax" else "cold"] = info["info"]
                res[engine]["import_rss_mb"] = info["info"].pop("import_rss_mb", None)
                res[engine]["ok"] = True
            except Exception as e:  # one engine's failure must not lose the others' numbers
                msg = str(e) if isinstance(e, WorkerError) else f"{type(e).__name__}: {e}"
                log(f"  {engine}: FAILED: {msg[:200]}")
                res[engine].update(ok=False, error=msg[:2000])
                if engine in workers:
                    workers.pop(engine).close()
        _interleave(workers, options, res, batch, log)
        for engine, w in workers.items():
            try:
                res[engine]["peak_rss_mb"] = w.request(60, cmd="finish")["peak_rss_mb"]
            except WorkerError as e:
                res[engine]["finish_error"] = str(e)[:500]
    finally:
        for w in workers.values():
            w.close()

    for r in res.values():
        c = r.get("cold") or {}
        if "total_s" in c:
            r["compile_cold_s"] = c["total_s"]
        if "total_s" in (r.get("warm") or {}):
            r["compile_warm_s"] = r["warm"]["total_s"]
    # The analytic count: from the traced shapes, else from ONNX shape inference when it covered
    # every counted node, else XLA's count of the compiled program.
    complete = (entry.get("flops_onnx_detail") or {}).get("complete")
    if entry.get("flops_traced"):
        entry["flops"], entry["flops_source"] = entry["flops_traced"], "traced"
    elif entry.get("flops_onnx") and (complete or not entry.get("flops_xla")):
        entry["flops"], entry["flops_source"] = (
            entry["flops_onnx"],
            "onnx" if complete else "onnx (partial)",
        )
    elif entry.get("flops_xla"):
        entry["flops"], entry["flops_source"] = entry["flops_xla"], "xla"
    else:
        entry["flops"], entry["flops_source"] = None, None
    ref_file = os.path.join(tmp, "out-onnxruntime.pkl")
    if os.path.exists(ref_file):
        with open(ref_file, "rb") as f:
            ref = pickle.load(f)
        for engine in res:
            out_file = os.path.join(tmp, f"out-{engine}.pkl")
            if engine != "onnxruntime" and os.path.exists(out_file):
                with open(out_file, "rb") as f:
                    res[engine]["vs_onnxruntime"] = _compare_outputs(ref, pickle.load(f))
    entry["ratios"] = _ratios(res)
    return entry


def _interleave(
    workers: dict[str, _Worker], options: BenchOptions, res: dict, batch: int, log
) -> None:
    """Warm each engine up, then alternate blocks of timed runs between them."""
    plan: dict[str, int] = {}
    for engine, w in list(workers.items()):
        try:
            r = w.request(options.timeout_s, cmd="warmup", seconds=options.warmup_seconds)
        except WorkerError as e:
            res[engine].update(ok=False, error=str(e)[:2000])
            workers.pop(engine).close()
            continue
        res[engine]["warmup_runs"] = len(r["times"])
        typical = statistics.median(r["times"])
        n = options.runs or int(
            np.clip(options.seconds / max(typical, 1e-6), options.min_runs, options.max_runs)
        )
        plan[engine] = n
    if not plan:
        return
    rounds = max(1, min(options.rounds, min(plan.values())))
    times: dict[str, list[float]] = {e: [] for e in plan}
    order = list(plan)
    log(f"  timing: {rounds} rounds, runs per engine {plan}")
    for i in range(rounds):
        for engine in order if i % 2 == 0 else order[::-1]:
            if engine not in workers:
                continue
            n = plan[engine] // rounds + (1 if i < plan[engine] % rounds else 0)
            if not n:
                continue
            try:
                times[engine] += workers[engine].request(options.timeout_s, cmd="run", n=n)["times"]
            except WorkerError as e:
                res[engine].update(ok=False, error=str(e)[:2000])
                workers.pop(engine).close()
            # Let spinning worker threads (onnxruntime spins after a run) go idle first.
            time.sleep(0.02)
    for engine, ts in times.items():
        if ts and res[engine].get("ok"):
            res[engine].update(_stats(ts, batch))
            res[engine]["rounds"] = rounds


def _ratios(res: dict) -> dict[str, Any]:
    """onnx2jax / other for each other engine: > 1 means onnx2jax takes longer (or more memory);
    for throughput > 1 means onnx2jax serves more items per second."""
    a = res.get("onnx2jax") or {}
    out = {}
    for engine, b in res.items():
        if engine == "onnx2jax" or not a.get("ok") or not b.get("ok"):
            continue

        def ratio(x, y):
            return x / y if x and y else None

        out[f"onnx2jax/{engine}"] = {
            "median": ratio(a.get("median_ms"), b.get("median_ms")),
            "p90": ratio(a.get("p90_ms"), b.get("p90_ms")),
            "throughput": ratio(a.get("items_per_s"), b.get("items_per_s")),
            "compile_cold": ratio(a.get("compile_cold_s"), b.get("compile_cold_s")),
            # Other engines have no compilation cache: their only (cold) time is the reference.
            "compile_warm": ratio(
                a.get("compile_warm_s"), b.get("compile_warm_s") or b.get("compile_cold_s")
            ),
            "peak_rss": ratio(a.get("peak_rss_mb"), b.get("peak_rss_mb")),
        }
    return out


# --------------------------------------------------------------------------------------------
# The report printed by `onnx2jax bench`
# --------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def format_record(rec: dict[str, Any]) -> str:
    """A plain-text table of one model's results."""
    m = rec["machine"]
    lines = [
        f"model: {rec['path']}",
        f"machine: {m['cpu']}, {rec['threads']} threads; jax {m['versions'].get('jax', '?')}, "
        f"onnxruntime {m['versions'].get('onnxruntime', '?')}",
    ]
    peak = rec.get("peak") or {}
    if peak.get("gflops"):
        lines.append(
            f"peak (XLA {peak['matmul']} matmul): {peak['gflops']:.1f} GFLOP/s"
            + (
                f"; onnxruntime: {peak['onnxruntime_gflops']:.1f}"
                if peak.get("onnxruntime_gflops")
                else ""
            )
        )
    for b in rec["batches"]:
        lines.append("")
        if b.get("skipped"):
            lines.append(f"batch {b['batch']}: skipped ({b['skipped']})")
            continue
        fl = b.get("flops")
        lines.append(
            f"batch {b['batch']}: "
            + ", ".join(f"{k} {v[0]}{v[1]}" for k, v in b.get("inputs", {}).items())
            + (f"; {fl / 1e9:.3g} GFLOP ({b['flops_source']})" if fl else "")
        )
        lines.append(
            f"  {'engine':<15}{'cold':>9}{'warm':>9}{'median':>11}{'p90':>11}"
            f"{'items/s':>10}{'GFLOP/s':>9}{'%peak':>7}{'RSS MB':>8}  check"
        )
        for engine, r in b["engines"].items():
            if not r.get("ok"):
                lines.append(f"  {engine:<15}FAILED: {r.get('error', '?').splitlines()[0][:150]}")
                continue
            diff = (r.get("vs_onnxruntime") or {}).get("max_abs_diff")
            lines.append(
                f"  {engine:<15}{_fmt(r.get('compile_cold_s'), '.2f', 's'):>9}"
                f"{_fmt(r.get('compile_warm_s'), '.2f', 's'):>9}"
                f"{_fmt(r.get('median_ms'), '.3f', 'ms'):>11}{_fmt(r.get('p90_ms'), '.3f', 'ms'):>11}"
                f"{_fmt(r.get('items_per_s'), '.1f'):>10}{_fmt(r.get('gflops'), '.1f'):>9}"
                f"{_fmt(r.get('pct_peak'), '.0f', '%'):>7}{_fmt(r.get('peak_rss_mb'), '.0f'):>8}"
                f"  {'' if diff is None else f'max|diff| {diff:.2g}'}"
            )
        for pair, q in b.get("ratios", {}).items():
            lines.append(
                f"  {pair}: latency {_fmt(q['median'], '.2f', 'x')}, p90 "
                f"{_fmt(q['p90'], '.2f', 'x')}, compile cold {_fmt(q['compile_cold'], '.1f', 'x')}"
                f" / warm {_fmt(q['compile_warm'], '.1f', 'x')}, peak RSS "
                f"{_fmt(q['peak_rss'], '.2f', 'x')}"
            )
    return "\n".join(lines)


def main(args) -> int:
    """`onnx2jax bench` (arguments parsed by ``cli.py``). Checks the arguments and that the model
    loads before anything is measured (the matmul peak alone takes seconds)."""
    from onnx2jax._errors import InputError
    from onnx2jax._loader import load_model
    from onnx2jax.cli import check_dims, parse_dims

    dims = parse_dims(args.dim)
    engines = ["onnx2jax"]
    for item in args.compare:
        engines += [e for e in item.split(",") if e and e not in engines]
    try:
        batches = tuple(int(b) for b in args.batch.split(",") if b)
    except ValueError:
        batches = ()
    if not batches or min(batches) < 1:
        raise InputError(f"--batch takes sizes >= 1 like 1,8, got {args.batch!r}")
    specs = load_model(args.model).graph.inputs  # ModelLoadError if it does not load
    check_dims(dims, specs)
    leading = sorted({s.shape[0] for s in specs if s.shape} & set(dims))
    if leading:  # _concrete_shape would let --dim override --batch
        raise InputError(
            f"--dim {', '.join(leading)}: the leading (batch) axis is set by --batch, not --dim"
        )
    opts = BenchOptions(
        batches=batches,
        dims=dims,
        engines=tuple(engines),
        runs=args.runs,
        seconds=args.seconds,
        threads=args.threads,
        seed=args.seed,
        peak=not args.no_peak,
    )
    rec = bench_model(args.model, opts, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_record(rec))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)
        print(f"\nwrote {args.json}")
    failed = [e for b in rec["batches"] for e, r in b["engines"].items() if not r.get("ok")]
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# Worker side (runs in its own process; imports only its engine)
# --------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux: ``VmHWM`` from ``/proc/self/status``, the high-water mark of this process image.
    Not ``getrusage``'s ``ru_maxrss``: Linux carries that across ``execve``, so a worker would
    inherit the high-water mark of the parent it was forked from (the parent has JAX loaded).
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10


def _pin(threads: int) -> None:
    """Restrict this process to ``threads`` cores before any engine starts its thread pool."""
    with contextlib.suppress(AttributeError, OSError):
        allowed = sorted(os.sched_getaffinity(0))
        if threads < len(allowed):
            os.sched_setaffinity(0, allowed[:threads])


def _as_numpy(outs) -> list:
    res = []
    for o in outs:
        if hasattr(o, "to_numpy"):
            o = o.to_numpy()
        res.append(np.asarray(o) if hasattr(o, "shape") else o)
    return res


class _Engine:
    """Loads a model, compiles it, runs it. ``info`` holds the timings of getting ready."""

    run: Callable[[], Any]

    def __init__(self, req: dict):
        _pin(req["threads"])
        with open(req["inputs"], "rb") as f:
            self.inputs: dict[str, np.ndarray] = pickle.load(f)
        self.info: dict[str, Any] = {}
        t0 = time.perf_counter()
        getattr(self, f"_init_{req['engine']}")(req)
        self.info["total_s"] = time.perf_counter() - t0 - self.info.get("import_s", 0.0)
        if req.get("outputs"):
            with open(req["outputs"], "wb") as f:
                pickle.dump(self.first_outputs, f)

    def _timed(self, key: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.info[key] = time.perf_counter() - t0
        return out

    def _init_onnx2jax(self, req: dict) -> None:
        t0 = time.perf_counter()
        import jax

        if req.get("cache_dir"):
            jax.config.update("jax_compilation_cache_dir", req["cache_dir"])
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
            self.info["cache_entries_before"] = len(os.listdir(req["cache_dir"]))
        else:
            jax.config.update("jax_enable_compilation_cache", False)
        import onnx2jax

        jax.devices()  # start the backend (its thread pool) as part of the imports
        self.info["import_s"] = time.perf_counter() - t0
        self.info["import_rss_mb"] = _rss_mb()
        self.info["device"] = str(jax.devices()[0].device_kind)
        model = self._timed("load_s", lambda: onnx2jax.load(req["path"]))
        static = {k: v for k, v in self.inputs.items() if k in model.value_inputs}
        dynamic = {k: v for k, v in self.inputs.items() if k not in model.value_inputs}
        fn = jax.jit(lambda params, ins: model.apply(params, **ins, **static))
        params = model.params
        lowered = self._timed("trace_s", lambda: fn.lower(params, dynamic))
        compiled = self._timed("compile_s", lambda: lowered.compile())
        self.run = lambda: jax.block_until_ready(compiled(params, dynamic))
        self.first_outputs = _as_numpy(self._timed("first_run_s", self.run))
        if req.get("cache_dir"):
            self.info["cache_entries_after"] = len(os.listdir(req["cache_dir"]))
        if req.get("cost"):
            with contextlib.suppress(Exception):
                ca = compiled.cost_analysis()
                ca = ca[0] if isinstance(ca, (list, tuple)) else ca
                self.info["flops_xla"] = float(ca["flops"])
            try:
                self.info["flops_traced"] = _traced_flops(model, dynamic, static)
            except Exception as e:  # internals moved: the parent falls back to shape inference
                self.info["flops_traced_error"] = f"{type(e).__name__}: {e}"[:300]

    def _init_onnxruntime(self, req: dict) -> None:
        t0 = time.perf_counter()
        import onnxruntime as ort

        self.info["import_s"] = time.perf_counter() - t0
        self.info["import_rss_mb"] = _rss_mb()
        so = ort.SessionOptions()
        so.intra_op_num_threads = req["threads"]
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = self._timed(
            "load_s",
            lambda: ort.InferenceSession(req["path"], so, providers=["CPUExecutionProvider"]),
        )
        feed = {i.name: self.inputs[i.name] for i in sess.get_inputs()}
        self.run = lambda: sess.run(None, feed)
        self.first_outputs = _as_numpy(self._timed("first_run_s", self.run))

    def _init_jaxonnxruntime(self, req: dict) -> None:
        t0 = time.perf_counter()
        import jax

        jax.config.update("jax_enable_compilation_cache", False)
        import onnx
        from jaxonnxruntime import call_onnx

        jax.devices()
        self.info["import_s"] = time.perf_counter() - t0
        self.info["import_rss_mb"] = _rss_mb()
        model = self._timed("load_s", lambda: onnx.load(req["path"]))
        init_names = {t.name for t in model.graph.initializer}
        ins = [self.inputs[i.name] for i in model.graph.input if i.name not in init_names]
        # call_onnx_model runs every node once (eagerly) to collect static facts.
        func, params = self._timed("trace_s", lambda: call_onnx.call_onnx_model(model, ins))
        fn = jax.jit(func)
        compiled = self._timed("compile_s", lambda: fn.lower(params, ins).compile())
        self.run = lambda: jax.block_until_ready(compiled(params, ins))
        self.first_outputs = _as_numpy(self._timed("first_run_s", self.run))

    def _init_tract(self, req: dict) -> None:
        # tract's analysis of some exports (GPT-2 with symbolic dims) grew past 18 GiB and was
        # OOM-killed on a shared machine: cap its address space so it fails alone.
        with contextlib.suppress(ValueError, OSError):
            cap = int(req.get("memory_cap_gb") or 8) * 2**30
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        t0 = time.perf_counter()
        import tract
        from tract.transform import SetSymbols

        self.info["import_s"] = time.perf_counter() - t0
        self.info["import_rss_mb"] = _rss_mb()
        inf = self._timed("load_s", lambda: tract.onnx().load(req["path"]))
        names = [inf.input_name(i) for i in range(inf.input_count())]
        ins = [self.inputs[n] for n in names]

        kinds = {"f": "f", "i": "i", "u": "u"}

        def typed():
            # tract's documented way: concrete input facts, then optimise. Some exports keep
            # symbolic value_info that then cannot unify; those load with their symbolic facts
            # and get the symbols bound instead.
            try:
                m = tract.onnx().load(req["path"])
                for i, x in enumerate(ins):
                    dt = (
                        "bool"
                        if x.dtype == bool
                        else f"{kinds[x.dtype.kind]}{8 * x.dtype.itemsize}"
                    )
                    m.set_input_fact(i, ",".join(map(str, x.shape)) + "," + dt)
                self.info["tract_facts"] = "concrete"
                return m.into_model().into_runnable()
            except Exception as e:
                self.info["tract_facts"] = (
                    f"symbolic (concrete failed: {str(e).splitlines()[0][:200]})"
                )
            m = inf.into_model()
            syms: dict[str, int] = {}
            for i, x in enumerate(ins):
                dims = str(m.input_fact(i)).split(",")[:-1]
                for d, size in zip(dims, x.shape, strict=False):
                    if not d.strip().isdigit():
                        syms[d.strip()] = int(size)
            if syms:
                m.transform(SetSymbols(syms))
            return m.into_runnable()

        runnable = self._timed("compile_s", typed)
        self.run = lambda: [o.to_numpy() for o in runnable.run(ins)]
        self.first_outputs = self._timed("first_run_s", self.run)


def _traced_flops(model, dynamic: dict, static: dict) -> dict[str, Any]:
    """:func:`node_flops` over the main graph's nodes, with the shapes their inputs really have
    when onnx2jax traces the model (exact even where ONNX shape inference gives up).

    Wraps each counted step of the model's plan and traces it with ``jax.eval_shape``; this
    reads onnx2jax internals (``Program``, ``Plan``, ``Step``, ``OpImpl``), hence the caller's
    fallback.
    """
    import dataclasses

    import jax

    from onnx2jax import _tracer

    prog = model._program
    total, by_op = 0, {}

    def wrap(step):
        fn = step.impl.fn

        def counted(*args, **kwargs):
            nonlocal total
            out = fn(*args, **kwargs)
            first = out[0] if isinstance(out, tuple) else out
            f = node_flops(
                step.node.op_type,
                [getattr(a, "shape", None) for a in args],
                [first.shape],
                bool(kwargs.get("transA", 0)),
            )
            total += f
            by_op[step.node.op_type] = by_op.get(step.node.op_type, 0) + f
            return out

        return dataclasses.replace(step, impl=dataclasses.replace(step.impl, fn=counted))

    plan = dataclasses.replace(
        prog.plan,
        steps=[
            wrap(st) if st.node.op_type in COUNTED_OPS and st.node.domain in ("", "ai.onnx") else st
            for st in prog.plan.steps
        ],
    )

    def run(params, ins):
        env = {**prog.constants, **params, **static, **ins}
        return _tracer.run(plan, env)

    with prog.context():
        jax.eval_shape(run, model.params, dynamic)
    return {"flops": total, "by_op": by_op}


def _peak(req: dict) -> dict[str, Any]:
    """Best and median GFLOP/s of an n^3 float32 matmul (10 timed runs after 3 warm-ups)."""
    _pin(req["threads"])
    n = req["n"]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if req["engine"] == "xla":
        import jax

        x, y = jax.device_put(a), jax.device_put(b)
        f = jax.jit(lambda p, q: p @ q)
        run = lambda: f(x, y).block_until_ready()  # noqa: E731
    else:
        import onnx
        import onnx.helper as oh
        import onnxruntime as ort

        g = oh.make_graph(
            [oh.make_node("MatMul", ["a", "b"], ["c"])],
            "mm",
            [oh.make_tensor_value_info(k, onnx.TensorProto.FLOAT, [n, n]) for k in "ab"],
            [oh.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [n, n])],
        )
        onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]), req["path"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = req["threads"]
        sess = ort.InferenceSession(req["path"], so, providers=["CPUExecutionProvider"])
        run = lambda: sess.run(None, {"a": a, "b": b})  # noqa: E731
    for _ in range(3):
        run()
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    flops = 2 * n**3
    return {
        "best_gflops": flops / min(times) / 1e9,
        "median_gflops": flops / statistics.median(times) / 1e9,
    }


def _timed_runs(run: Callable[[], Any], n: int | None = None, seconds: float = 0.0) -> list[float]:
    """Per-run wall times: ``n`` runs, or at least one and until ``seconds`` have passed."""
    times: list[float] = []
    gc.collect()
    gc.disable()  # a collection inside a timed run would land on one engine only
    try:
        start = time.perf_counter()
        while (
            (len(times) < n)
            if n is not None
            else (not times or time.perf_counter() - start < seconds)
        ):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return times


def _serve() -> None:
    """The worker loop: one JSON request per stdin line, one JSON answer per line."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter on stdout goes to the log, not into the protocol
    engine: _Engine | None = None
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        try:
            if cmd == "init":
                engine = _Engine(req)
                resp = {"info": engine.info}
            elif cmd == "warmup":
                resp = {"times": _timed_runs(engine.run, seconds=req["seconds"])}
            elif cmd == "run":
                resp = {"times": _timed_runs(engine.run, n=req["n"])}
            elif cmd == "peak":
                resp = _peak(req)
            elif cmd == "finish":
                resp = {"peak_rss_mb": _rss_mb()}
            else:
                raise ValueError(f"unknown command {cmd!r}")
            resp["ok"] = True
        except BaseException as e:  # noqa: BLE001  (reported to the parent, which decides)
            traceback.print_exc()
            msg = str(e).split("\nStack backtrace:")[0]  # tract appends a Rust backtrace
            resp = {"ok": False, "error": f"{type(e).__name__}: {msg}"}
        proto.write(json.dumps(resp) + "\n")
        proto.flush()
        if cmd in ("finish", "peak") or not resp["ok"]:
            break


if __name__ == "__main__":
    _serve()
