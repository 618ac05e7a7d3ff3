"""The parent side of a benchmark: inputs, worker processes per engine and batch size, the wait
for a quiet machine, interleaved timing, and the JSON record of one model."""

from __future__ import annotations

import math
import os
import pickle
import statistics
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .engines import ADAPTERS, ENGINES
from .flops import onnx_flops
from .record import (
    SCHEMA,
    CpuWindow,
    compare_outputs,
    default_max_load,
    default_threads,
    format_load,
    load_average,
    machine_info,
    ratios,
    settle,
    stats,
    verdict,
    wait_for_quiet,
)
from .workers import Worker, WorkerError

PEAK_SIZE = 2048
# The engine every other one's outputs are compared with.
REFERENCE = "onnxruntime"


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
    rounds: int = 50  # at most this many blocks per engine, interleaved
    block_seconds: float = 0.05  # aim for blocks of about this long (the longest engine's)
    warmup_seconds: float = 0.3  # warm-up: at least one run (after the first), until this long
    threads: int | None = None  # default: every core this process may run on
    seed: int = 0
    peak: bool = True  # measure the matmul peak (skipped when run.py passes one in)
    timeout_s: float = 900.0  # per worker request (load + compile of a big model included)
    max_load: float | None = None  # quiet below this 1-min load average; default 0.25 per core
    quiet_wait: float = 120.0  # wait up to this long for it before timing each batch
    # onnx2jax: Model.tune after the first run (start-up columns are measured before it)
    tune: bool = False


def measure_peak(threads: int | None = None, timeout_s: float = 300.0) -> dict[str, Any]:
    """Time a ``PEAK_SIZE``^3 float32 matmul in XLA (the reference peak) and in onnxruntime."""
    threads = threads or default_threads()
    out: dict[str, Any] = {"matmul": f"{PEAK_SIZE}^3 float32", "threads": threads}
    with tempfile.TemporaryDirectory(prefix="onnx2jax-peak-") as tmp:
        for engine in ("xla", "onnxruntime"):
            w = Worker(tmp, f"peak-{engine}")
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
    if options.max_load is None:
        options = replace(options, max_load=default_max_load())
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
                if e not in ("onnx2jax", REFERENCE) and not r.get("ok")
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
    workers: dict[str, Worker] = {}
    try:
        for engine in options.engines:
            res[engine] = {"threads": 1 if ADAPTERS[engine].single_threaded else threads}
            if engine in failed:
                res[engine].update(ok=False, skipped=True, error=f"not run: {failed[engine]}")
                continue
            try:
                if engine == "onnx2jax":
                    # Cold: a fresh process, empty cache folder (it fills it).
                    log("  onnx2jax: cold compile")
                    cold = Worker(tmp, "onnx2jax-cold")
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
                else:
                    log(f"  {engine}: load and compile")
                w = workers[engine] = Worker(tmp, engine)
                info = w.request(
                    options.timeout_s,
                    cmd="init",
                    engine=engine,
                    cache_dir=cache_dir if engine == "onnx2jax" else None,
                    tune=options.tune and engine == "onnx2jax",
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
        if workers:
            entry["load"] = _interleave(workers, options, res, batch, log)
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
    # every counted node, else XLA's count of the compiled program. The traced count sees the
    # graph after onnx2jax's passes; where a complete count of the original graph disagrees
    # (a pass put in an op the traced count does not know), the original graph's wins.
    complete = (entry.get("flops_onnx_detail") or {}).get("complete")
    traced = entry.get("flops_traced")
    if traced and complete and traced != entry.get("flops_onnx"):
        entry["flops_traced_differs"] = True
        traced = None
    if traced:
        entry["flops"], entry["flops_source"] = traced, "traced"
    elif entry.get("flops_onnx") and (complete or not entry.get("flops_xla")):
        entry["flops"], entry["flops_source"] = (
            entry["flops_onnx"],
            "onnx" if complete else "onnx (partial)",
        )
    elif entry.get("flops_xla"):
        entry["flops"], entry["flops_source"] = entry["flops_xla"], "xla"
    else:
        entry["flops"], entry["flops_source"] = None, None
    ref_file = os.path.join(tmp, f"out-{REFERENCE}.pkl")
    if os.path.exists(ref_file):
        with open(ref_file, "rb") as f:
            ref = pickle.load(f)
        for engine in res:
            out_file = os.path.join(tmp, f"out-{engine}.pkl")
            if engine != REFERENCE and os.path.exists(out_file):
                with open(out_file, "rb") as f:
                    res[engine][f"vs_{REFERENCE}"] = compare_outputs(ref, pickle.load(f))
    entry["ratios"] = ratios(res)
    return entry


def _interleave(
    workers: dict[str, Worker], options: BenchOptions, res: dict, batch: int, log
) -> dict[str, Any]:
    """Wait for a quiet machine, warm each engine up, then alternate short blocks of timed runs
    between them. Returns the load record of these timed runs (see ``record.verdict``)."""
    load = wait_for_quiet(options.max_load, options.quiet_wait, log)
    plan: dict[str, int] = {}
    typical: dict[str, float] = {}
    for engine, w in list(workers.items()):
        try:
            r = w.request(options.timeout_s, cmd="warmup", seconds=options.warmup_seconds)
        except WorkerError as e:
            res[engine].update(ok=False, error=str(e)[:2000])
            workers.pop(engine).close()
            continue
        res[engine]["warmup_runs"] = len(r["times"])
        typical[engine] = statistics.median(r["times"])
        plan[engine] = options.runs or int(
            np.clip(
                options.seconds / max(typical[engine], 1e-6), options.min_runs, options.max_runs
            )
        )
    if not plan:
        return load
    # Blocks of about block_seconds for the engine that takes longest (at least 3 rounds, so
    # that the order flips), as many as the engine with the fewest runs allows (one run per
    # block at least), at most options.rounds.
    longest = max(plan[e] * typical[e] for e in plan)
    by_time = max(3, math.ceil(longest / options.block_seconds))
    rounds = max(1, min(options.rounds, min(plan.values()), by_time))
    times: dict[str, list[float]] = {e: [] for e in plan}
    order = list(plan)
    load["load_1m_before"] = (load_average() or [None])[0]
    log(f"  timing: {rounds} rounds, runs per engine {plan}")
    window = CpuWindow()
    window.start(w.pid for w in workers.values())
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
            if engine in workers:
                settle(workers[engine].pid)
    load.update(window.stop())
    load["load_1m_after"] = (load_average() or [None])[0]
    load["quiet"] = verdict(load)
    for engine, ts in times.items():
        if ts and res[engine].get("ok"):
            res[engine].update(stats(ts, batch))
            res[engine]["rounds"] = rounds
    log(f"  {format_load(load)}")
    return load
