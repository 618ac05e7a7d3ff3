"""Benchmark the whole model zoo: onnx2jax beside onnxruntime (and peers), batch 1 and 8.

    python benchmarks/run.py                          # the full zoo (builds what is missing)
    python benchmarks/run.py --only resnet18,bert     # some models (base or full zoo names)
    python benchmarks/run.py --kinds float            # no INT8 variants
    python benchmarks/run.py --small --batch 1,2      # the reduced zoo, quickly
    python benchmarks/run.py --files a.onnx b.onnx    # any ONNX files instead of the zoo
    python benchmarks/run.py --render                 # only regenerate RESULTS.md and the chart

Each model goes through ``onnx2jax.bench.bench_model`` (every engine in its own process, runs
interleaved, after waiting for a quiet machine; see benchmarks/README.md). Results: one ``benchmarks/results/<model>.json`` per
model plus ``results/run.json`` (machine, matmul peak, options), then ``benchmarks/RESULTS.md``
and ``benchmarks/results/ratios.png`` are regenerated from all the JSON files there.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# Model.tune's choice, as RESULTS.md marks it beside the batch (the default: no mark).
_TUNED_MARK = {"eigen dots": " E", "ynnpack convs and dots": " YC"}
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
PEERS = ("openvino", "jaxonnxruntime", "tract")
# Rows measured on a busy machine carry this mark in RESULTS.md and stay out of the means.
BUSY = "\u2020"
# Sizes of the zoo's other symbolic axes (batch comes from --batch).
FULL_DIMS = {"sequence": 128, "past": 128}
SMALL_DIMS = {"sequence": 32, "past": 16}


def _zoo(names: list[str] | None, small: bool, build_missing: bool):
    sys.path.insert(0, ROOT)
    from benchmarks.zoo.build import build, models

    if build_missing:
        return build(names, small=small)
    return [m for m in models(names, small=small) if os.path.exists(m.path)]


def _peers_available() -> list[str]:
    import importlib.util

    # ONNX2JAX_BENCH_PEERS=openvino limits the peers (jaxonnxruntime and tract take minutes).
    wanted = os.environ.get("ONNX2JAX_BENCH_PEERS")
    chosen = PEERS if not wanted else tuple(p for p in PEERS if p in wanted.split(","))
    return [p for p in chosen if importlib.util.find_spec(p) is not None]


def run(args: argparse.Namespace) -> None:
    from onnx2jax import bench

    results = _results_dir(args.machine)
    os.makedirs(results, exist_ok=True)
    batches = tuple(int(b) for b in args.batch.split(","))
    only = [s for s in (args.only or "").split(",") if s] or None
    if args.files:
        entries = [(os.path.splitext(os.path.basename(p))[0], p, None, "float") for p in args.files]
    else:
        zoo = _zoo(only, args.small, not args.no_build)
        dims = SMALL_DIMS if args.small else FULL_DIMS
        kinds = [k for k in (args.kinds or "").split(",") if k]
        entries = [(m.name, m.path, m, m.kind) for m in zoo if not kinds or m.kind in kinds]
        if not entries:
            raise SystemExit("no zoo models found; build them with benchmarks/zoo/build.py")
    peers = _peers_available() if args.peers != "none" else []
    missing_peers = [p for p in PEERS if p not in peers] if args.peers != "none" else []
    threads = args.threads or bench.default_threads()
    t_start = time.perf_counter()
    print(
        f"{len(entries)} models, batches {batches}, {threads} threads; peers: "
        f"{', '.join(peers) or 'none'}; measuring the matmul peak ...",
        flush=True,
    )
    peak_start = bench.measure_peak(threads)
    print(
        f"peak: XLA {peak_start.get('xla_gflops', 0):.1f} GFLOP/s, onnxruntime "
        f"{peak_start.get('onnxruntime_gflops', 0):.1f}",
        flush=True,
    )
    done = []
    for name, path, zm, kind in entries:
        use_peers = (
            peers if (args.peers == "all" or (args.peers == "float" and kind == "float")) else []
        )
        opts = bench.BenchOptions(
            batches=batches,
            engines=("onnx2jax", "onnxruntime", *use_peers),
            runs=args.runs,
            seconds=args.seconds,
            min_runs=args.min_runs,
            threads=threads,
            peak=False,
            timeout_s=args.timeout,
            max_load=args.max_load,
            quiet_wait=args.quiet_wait,
            tune=not args.no_tune,
        )
        inputs_for = None
        if zm is not None:

            def inputs_for(batch, zm=zm):
                return zm.make_inputs(batch=batch, seed=0, **dims)

        t0 = time.perf_counter()
        try:
            rec = bench.bench_model(
                path,
                opts,
                name=name,
                inputs_for=inputs_for,
                peak=peak_start,
                log=lambda s: print(s, flush=True),
            )
        except Exception as e:  # keep going; the table says what is missing
            rec = {
                "schema": bench.SCHEMA,
                "model": name,
                "path": path,
                "error": f"{type(e).__name__}: {e}",
                "machine": bench.machine_info(),
                "batches": [],
            }
        rec["zoo"] = (
            {
                "kind": zm.kind,
                "base": zm.base,
                "exporter": zm.exporter,
                "opset": zm.opset,
                "small": zm.small,
                "description": zm.description,
            }
            if zm is not None
            else None
        )
        rec["seconds"] = time.perf_counter() - t0
        with open(os.path.join(results, f"{name}.json"), "w") as f:
            json.dump(rec, f, indent=1)
        done.append(name)
        print(
            f"== {name}: {rec['seconds']:.0f} s (total {time.perf_counter() - t_start:.0f} s)",
            flush=True,
        )
        for b in rec["batches"]:
            said = [
                f"onnx2jax/{e} latency {q['median']:.2f}x"
                for e in ("onnxruntime", "openvino")
                if (q := b.get("ratios", {}).get(f"onnx2jax/{e}") or {}).get("median")
            ]
            if said:
                busy = "" if (b.get("load") or {}).get("quiet") else " (busy machine)"
                print(f"   batch {b['batch']}: {', '.join(said)}{busy}", flush=True)
    peak_end = bench.measure_peak(threads)
    info = {
        "machine": bench.machine_info(),
        "threads": threads,
        "batches": list(batches),
        "peak_start": peak_start,
        "peak_end": peak_end,
        "peak_gflops": max(p.get("xla_gflops") or 0 for p in (peak_start, peak_end)) or None,
        "onnxruntime_matmul_gflops": max(
            p.get("onnxruntime_gflops") or 0 for p in (peak_start, peak_end)
        )
        or None,
        "peers": peers,
        "missing_peers": {p: "not installed (pip install " + p + ")" for p in missing_peers},
        "models": done,
        "small": bool(args.small) and not args.files,
        "options": {
            "seconds": args.seconds,
            "runs": args.runs,
            "min_runs": args.min_runs,
            "dims": None if args.files else (SMALL_DIMS if args.small else FULL_DIMS),
            "peers": args.peers,
            "max_load": args.max_load or bench.default_max_load(),
            "quiet_wait": args.quiet_wait,
        },
        "wall_s": time.perf_counter() - t_start,
    }
    run_file = os.path.join(results, "run.json")
    if os.path.exists(run_file) and (only or args.kinds or args.files):
        # A partial rerun: keep the full run's record, note this one beside it.
        with open(run_file) as f:
            full = json.load(f)
        full["models"] += [m for m in done if m not in full["models"]]
        full.setdefault("reruns", []).append(
            {k: info[k] for k in ("models", "peak_start", "peak_end", "wall_s")}
            | {"date": info["machine"]["date"]}
        )
        full["peak_gflops"] = max(full.get("peak_gflops") or 0, info["peak_gflops"] or 0) or None
        info = full
    with open(run_file, "w") as f:
        json.dump(info, f, indent=1)
    print(f"done in {info['wall_s']:.0f} s")


# -- RESULTS.md and the chart ---------------------------------------------------------------------


def _load_results(results: str = RESULTS) -> tuple[dict, list[dict]]:
    info = {}
    if os.path.exists(os.path.join(results, "run.json")):
        with open(os.path.join(results, "run.json")) as f:
            info = json.load(f)
    recs = []
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        if os.path.basename(path) == "run.json":
            continue
        with open(path) as f:
            rec = json.load(f)
        if isinstance(rec.get("model"), str) and "batches" in rec:  # not other scripts' JSON
            recs.append(rec)
    order = {n: i for i, n in enumerate(info.get("models", []))}
    recs.sort(key=lambda r: (order.get(r["model"], len(order)), r["model"]))
    return info, recs


def _f(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _engine(b: dict, name: str) -> dict:
    return b.get("engines", {}).get(name) or {}


def _short_error(r: dict) -> str:
    err = (r.get("error") or "").replace("|", "/").replace("\n", " ")
    return err[:110] + ("..." if len(err) > 110 else "")


def _geomean(v: list[float]) -> float:
    return math.exp(sum(map(math.log, v)) / len(v))


def _quiet(rec: dict, b: dict) -> bool:
    """Whether this batch was measured on a quiet machine (``load.quiet``, the harness's verdict).
    Records from before the harness kept a per-batch load (schema 1) have only the load average
    at the model's start: quiet when it was below 0.25 per logical core."""
    load = b.get("load") or {}
    if "quiet" in load:
        return bool(load["quiet"])
    m = rec.get("machine") or {}
    la = m.get("load_average")
    return bool(la) and la[0] < 0.25 * (m.get("logical_cores") or 1)


def _load_cell(rec: dict, b: dict) -> str:
    """The 1-minute load average before the timed runs, marked when the machine was busy."""
    load = b.get("load") or {}
    la = load.get("load_1m_before")
    if la is None and "quiet" not in load:  # schema 1: the load at the model's start
        la = ((rec.get("machine") or {}).get("load_average") or [None])[0]
    return _f(la, ".2f") + ("" if _quiet(rec, b) else f" {BUSY}")


def _busy_rule(info: dict, max_load: float) -> str:
    """The paragraph that says what a busy row is and why it is not to be trusted."""
    wait = (info.get("options") or {}).get("quiet_wait")
    rule = (
        f"before each batch's timed runs the harness waited up to {wait:.0f} s for the 1-minute "
        f"load average to fall below {max_load:.2f} (0.25 per logical core) and measured the CPU "
        "other processes took during the runs; a row is busy when the load average stayed above "
        f"the threshold, or other processes (plus steal time) used {max_load:.2f} cores or more "
        "during its timed runs"
        if wait is not None
        else "these records predate the per-batch load record; a row is busy when the 1-minute "
        f"load average as its model started was {max_load:.2f} (0.25 per logical core) or more"
    )
    return (
        f"**Busy rows ({BUSY})**: {rule}. Ratios from a busy machine are unreliable: "
        "onnxruntime's spinning thread pool loses up to 4x under contention (ResNet-18, batch 1: "
        "100 ms in a run at a load average of 1.6-7.2 on 2 cores, 27 ms on a quiet machine) "
        "while XLA's barely moves (113 ms in both), so a busy machine flatters onnx2jax. Busy "
        "rows are kept out of the summary's means."
    )


def _kind(rec: dict) -> str:
    return "float" if (rec.get("zoo") or {}).get("kind", "float") == "float" else "INT8"


def _results_dir(machine: str | None) -> str:
    """Where a run's JSON goes: results/, or results/MACHINE/ for a run kept apart (another
    CPU: its rows must not mix with the main table's)."""
    return os.path.join(RESULTS, machine) if machine else RESULTS


def _results_md(machine: str | None) -> str:
    return f"RESULTS-{machine}.md" if machine else "RESULTS.md"


def render(results: str = RESULTS, out_dir: str = HERE, md_name: str = "RESULTS.md") -> str:
    """Write ``md_name`` (in ``out_dir``) and ratios.png (in ``results``) from the JSON files in
    ``results``; returns the markdown."""
    info, recs = _load_results(results)
    # The rows' own machine (run.json keeps the last full run's, which may be another machine).
    machine = recs[-1]["machine"] if recs else info.get("machine") or {}
    v = machine.get("versions", {})
    peak = info.get("peak_gflops") or ((recs[0].get("peak") or {}).get("gflops") if recs else None)
    flags = machine.get("cpu_flags") or []
    max_load = (info.get("options") or {}).get("max_load") or 0.25 * (
        machine.get("logical_cores") or 1
    )
    has_ov = any("openvino" in b.get("engines", {}) for r in recs for b in r.get("batches", []))
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/run.py` (methodology: [README.md](README.md)); do not edit "
        "by hand. Every ratio is **onnx2jax / other engine** (onnxruntime unless said otherwise"
        + (", and OpenVINO beside it" if has_ov else "")
        + "): below 1 onnx2jax is faster (or smaller), above 1 slower. Engines were interleaved "
        "in short rounds, so the ratios are the trustworthy part; single numbers drift.",
        "",
        _busy_rule(info, max_load),
        "",
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu', '?')} ({', '.join(flags) or 'flags ?'}; "
        + ("AVX-512" if "avx512f" in flags else "no AVX-512")
        + (", VNNI" if {"avx512_vnni", "avx_vnni"} & set(flags) else ", no VNNI")
        + f"), {machine.get('logical_cores', '?')} logical cores; every engine ran on "
        f"{info.get('threads') or (recs[0].get('threads') if recs else '?')} threads "
        "(tract: 1, its Python bindings are single-threaded)",
        f"- jax {v.get('jax', '?')}, jaxlib {v.get('jaxlib', '?')}, onnxruntime "
        f"{v.get('onnxruntime', '?')}, onnx {v.get('onnx', '?')}, numpy {v.get('numpy', '?')}, "
        f"Python {machine.get('python', '?')}" + "".join(f", {p} {v[p]}" for p in PEERS if p in v),
        f"- Every engine's process ran with `GLIBC_TUNABLES={machine['glibc_tunables']}` "
        "(transparent huge pages for malloc'd memory; README: deployment)"
        if machine.get("glibc_tunables")
        else "- glibc tunables: not recorded (runs before session 7: 4 KiB pages)",
        f"- {machine.get('platform', '?')}; run finished {machine.get('date', '?')}; load average "
        f"then {', '.join(f'{x:.1f}' for x in machine.get('load_average') or [])}"
        + (f"; the whole run took {info['wall_s'] / 60:.1f} min" if info.get("wall_s") else ""),
        f"- Reference peak: a 2048^3 float32 matmul in XLA, best of 10: **{_f(peak, '.1f')} "
        "GFLOP/s**"
        + (
            f" (start of the run {_f(info['peak_start'].get('xla_gflops'), '.1f')}, end "
            f"{_f(info['peak_end'].get('xla_gflops'), '.1f')}); onnxruntime's MatMul "
            f"on the same product: {_f(info.get('onnxruntime_matmul_gflops'), '.1f')}"
            if info.get("peak_start")
            else ""
        ),
    ]
    cpus: dict[tuple, list[str]] = {}
    for r in recs:  # records from reruns may come from another machine of this pool
        m = r.get("machine") or {}
        key = (m.get("cpu", "?"), tuple(m.get("cpu_flags") or ()))
        cpus.setdefault(key, []).append(r.get("model", "?"))
    if len(cpus) > 1:
        lines[lines.index(next(x for x in lines if x.startswith("- CPU: ")))] = (
            "- CPUs (records from several runs; the flags decide INT8 and speed ratios): "
            + "; ".join(
                f"{cpu} ({', '.join(fl) or 'flags ?'}) for {', '.join(sorted(set(models)))}"
                for (cpu, fl), models in cpus.items()
            )
        )
    rows = [(r, b) for r in recs for b in r.get("batches", []) if not b.get("skipped")]
    if rows:
        busy = sum(not _quiet(r, b) for r, b in rows)
        loads = [
            la for r, b in rows if (la := (b.get("load") or {}).get("load_1m_before")) is not None
        ]
        lines.append(
            f"- {len(rows) - busy} of {len(rows)} model/batch rows measured on a quiet machine"
            + (
                f"; 1-minute load average before the timed runs {min(loads):.2f} to "
                f"{max(loads):.2f}"
                if loads
                else "; only the load average at each model's start was recorded (older records)"
            )
        )
    for rr in info.get("reruns", []):
        lines.append(
            f"- Rerun on its own afterwards ({rr['date']}, peak then "
            f"{_f(rr['peak_start'].get('xla_gflops'), '.1f')} GFLOP/s): " + ", ".join(rr["models"])
        )
    if info.get("options", {}).get("dims"):
        lines.append(
            "- Text models run at sequence length "
            f"{info['options']['dims'].get('sequence')}, the decode step with "
            f"{info['options']['dims'].get('past')} cached positions; images 224x224 "
            "(small zoo: 32x32)"
            if not info.get("small")
            else f"- Small zoo; dims {info['options']['dims']}"
        )
    lines += _summary(recs)
    ov_head = " OpenVINO ms | **vs OpenVINO** |" if has_ov else ""
    lines += [
        "",
        f"![onnx2jax / onnxruntime latency]({os.path.relpath(results, out_dir)}/ratios.png)",
        "",
        "## Latency and throughput",
        "",
        "Median latency per batch (host numpy in, outputs ready); **vs** columns are onnx2jax's "
        "median over the other engine's. Load: the 1-minute load average right before the "
        f"timed runs ({BUSY}: busy machine, see above). GFLOP/s counts 2 x multiply-adds of "
        "Conv/MatMul/Gemm and their integer forms (the shapes as traced), % of the float32 "
        "matmul peak in brackets. For INT8 models these are integer operations: with AVX-512 "
        "VNNI an engine can pass the float32 peak. onnx2jax runs after `Model.tune` (once per "
        "model and batch, after the start-up measurements): batch marked E = it chose XLA's "
        "Eigen dots over YNNPACK's, YC = YNNPACK for convolutions too (by default they run on "
        "Eigen; benchmarks/NOTES.md 12-13).",
        "",
        "| model | batch | load | GFLOP | onnx2jax ms | onnxruntime ms | **vs onnxruntime** | "
        f"p90 ratio |{ov_head} onnx2jax items/s | onnxruntime items/s | onnx2jax GFLOP/s | "
        "onnxruntime GFLOP/s | max abs diff | runs |",
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if has_ov else "") + "---|" * 6,
    ]
    problems: list[str] = []
    for rec in recs:
        if rec.get("error"):
            problems.append(f"- **{rec['model']}**: benchmark failed: {_short_error(rec)}")
            continue
        for b in rec["batches"]:
            if b.get("skipped"):
                problems.append(
                    f"- **{rec['model']}** batch {b['batch']}: skipped ({b['skipped']})"
                )
                continue
            a, o = _engine(b, "onnx2jax"), _engine(b, "onnxruntime")
            for name, r in (("onnx2jax", a), ("onnxruntime", o)):
                if not r.get("ok"):
                    problems.append(
                        f"- **{rec['model']}** batch {b['batch']}, {name}: {_short_error(r)}"
                    )
            q = b.get("ratios", {}).get("onnx2jax/onnxruntime") or {}
            fl = b.get("flops")

            def gf(r):
                if r.get("gflops") is None:
                    return "-"
                # Against the run's reference peak (the best of its measurements), not the one
                # the model's record was made with.
                return (
                    f"{r['gflops']:.1f} ({100 * r['gflops'] / peak:.0f}%)"
                    if peak
                    else f"{r['gflops']:.1f}"
                )

            ov_cells = ""
            if has_ov:
                ov = _engine(b, "openvino")
                qv = b.get("ratios", {}).get("onnx2jax/openvino") or {}
                ov_cells = (
                    f" {_f(ov.get('median_ms'), '.3g')} | **{_f(qv.get('median'), '.2f')}** |"
                )
            diff = (a.get("vs_onnxruntime") or {}).get("max_abs_diff")
            tuned = _TUNED_MARK.get((a.get("warm") or {}).get("tuned"), "")
            lines.append(
                f"| {rec['model']} | {b['batch']}{tuned} | {_load_cell(rec, b)} | "
                f"{_f(fl / 1e9 if fl else None, '.3g')} | "
                f"{_f(a.get('median_ms'), '.3g')} | {_f(o.get('median_ms'), '.3g')} | "
                f"**{_f(q.get('median'), '.2f')}** | {_f(q.get('p90'), '.2f')} |{ov_cells} "
                f"{_f(a.get('items_per_s'), '.1f')} | {_f(o.get('items_per_s'), '.1f')} | {gf(a)} | "
                f"{gf(o)} | {_f(diff, '.1e')} | {a.get('runs', '-')}/{o.get('runs', '-')} |"
            )
    lines += [
        "",
        "## Compile time and memory",
        "",
        "Load + compile + first run in a fresh process, seconds. onnx2jax cold: empty JAX "
        "persistent compilation cache; warm: the cache filled by the cold process. "
        "onnxruntime: session creation (graph optimizations) + first run. Peak RSS: the "
        "worker process's high-water mark (VmHWM), MiB, imports included "
        "(importing JAX alone: about "
        f"{_f(_median_import_rss(recs, 'onnx2jax'), '.0f')} MiB; onnxruntime: "
        f"{_f(_median_import_rss(recs, 'onnxruntime'), '.0f')} MiB).",
        "",
        "| model | batch | onnx2jax cold s | of which XLA compile | onnx2jax warm s | "
        "onnxruntime s | cold ratio | warm ratio | onnx2jax MiB | onnxruntime MiB | "
        "RSS ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in recs:
        for b in rec.get("batches", []):
            if b.get("skipped"):
                continue
            a, o = _engine(b, "onnx2jax"), _engine(b, "onnxruntime")
            q = b.get("ratios", {}).get("onnx2jax/onnxruntime") or {}
            lines.append(
                f"| {rec['model']} | {b['batch']} | {_f(a.get('compile_cold_s'))} | "
                f"{_f((a.get('cold') or {}).get('compile_s'))} | {_f(a.get('compile_warm_s'))} | "
                f"{_f(o.get('compile_cold_s'))} | {_f(q.get('compile_cold'), '.1f')} | "
                f"{_f(q.get('compile_warm'), '.1f')} | {_f(a.get('peak_rss_mb'), '.0f')} | "
                f"{_f(o.get('peak_rss_mb'), '.0f')} | {_f(q.get('peak_rss'), '.2f')} |"
            )
    lines += _peer_section(info, recs)
    lines += ["", "## What is missing or failed", ""]
    lines += problems or [
        "- nothing: every model ran in onnx2jax and onnxruntime at every batch size"
    ]
    lines += _other_benchmarks(results)
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, md_name), "w") as f:
        f.write(md)
    _chart(recs, results)
    return md


def _summary(recs: list[dict]) -> list[str]:
    """Geometric means of onnx2jax's latency ratios to onnxruntime and to OpenVINO, float and
    INT8 models apart, per batch size, over the rows measured on a quiet machine; the busy rows
    are listed apart."""
    groups: dict[tuple[str, int], dict[str, list[float]]] = {}
    busy: dict[tuple[str, int], dict[str, list[float]]] = {}
    busy_rows: dict[str, list[tuple[int, str]]] = {}
    for rec in recs:
        for b in rec.get("batches", []):
            rs = b.get("ratios") or {}
            if not (rs.get("onnx2jax/onnxruntime") or {}).get("median"):
                continue
            quiet = _quiet(rec, b)
            g = (groups if quiet else busy).setdefault((_kind(rec), b["batch"]), {})
            for e in ("onnxruntime", "openvino"):
                if (x := (rs.get(f"onnx2jax/{e}") or {}).get("median")) is not None:
                    g.setdefault(e, []).append(x)
            if not quiet:
                busy_rows.setdefault(rec["model"], []).append(
                    (b["batch"], _load_cell(rec, b).rstrip(BUSY).strip())
                )
    if not groups and not busy:
        return []

    def means(gs: dict) -> str:
        parts = []
        for (kind, batch), g in sorted(gs.items()):
            ort = g.get("onnxruntime") or []
            ov = g.get("openvino") or []
            parts.append(
                f"{kind} models, batch {batch}: **{_geomean(ort):.2f}x** onnxruntime "
                f"({len(ort)} models)"
                + (f", **{_geomean(ov):.2f}x** OpenVINO ({len(ov)} models)" if ov else "")
            )
        return "; ".join(parts)

    out = [
        "",
        "**Summary** (geometric mean of onnx2jax's median latency over the other engine's, "
        "rows measured on a quiet machine only): "
        + (means(groups) if groups else "no row was measured on a quiet machine"),
    ]
    if busy:
        out += [
            "",
            f"Measured on a busy machine ({BUSY}; batch sizes, and the 1-minute load average in "
            "brackets), not in the means above: "
            + ", ".join(
                f"{model} b{'/'.join(str(b) for b, _ in rows)} "
                f"({'/'.join(dict.fromkeys(la for _, la in rows))})"
                for model, rows in busy_rows.items()
            )
            + ". Their geometric means, unreliable (see above): "
            + means(busy),
        ]
    return out


# Other scripts' generated tables, embedded as they are (each says how it was made).
_OTHER = (
    ("generate.md", "benchmarks/generate.py"),
    ("serve/serve.md", "benchmarks/serve_load.py"),
    ("serve/serve_zoo.md", "benchmarks/serve_load.py"),
    ("serve/soak.md", "tests/test_serve_load.py"),
    ("startup.md", "benchmarks/startup.py"),
)


def _other_benchmarks(results: str) -> list[str]:
    out = []
    for rel, script in _OTHER:
        path = os.path.join(results, rel)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            body = f.read().strip().splitlines()
        title = body[0].lstrip("# ") if body and body[0].startswith("#") else script
        out += ["", f"## {title}", "", f"From `{script}` (results/{rel}):", ""]
        out += [("#" + line) if line.startswith("## ") else line for line in body[1:]]
    return out


def _median_import_rss(recs: list[dict], engine: str) -> float | None:
    vals = sorted(
        _engine(b, engine).get("import_rss_mb")
        for r in recs
        for b in r.get("batches", [])
        if _engine(b, engine).get("import_rss_mb")
    )
    return vals[len(vals) // 2] if vals else None


def _peer_section(info: dict, recs: list[dict]) -> list[str]:
    used = [
        p
        for p in PEERS
        if any(p in b.get("engines", {}) for r in recs for b in r.get("batches", []))
    ]
    out = ["", "## Other engines", ""]
    for p, why in (info.get("missing_peers") or {}).items():
        out.append(f"- {p}: {why}")
    if not used:
        return out + ["- no peer engine was run"]
    out += [
        "Median latency in ms, and in brackets the ratio to onnxruntime at the same batch "
        "(interleaved in the same rounds). OpenVINO: `read_model` on the ONNX file, inputs "
        "reshaped to the benchmark's shapes, `compile_model` on the CPU plugin with "
        "`INFERENCE_NUM_THREADS` = the same thread count, one stream, latency hint, float32 "
        "inference precision. jaxonnxruntime: `call_onnx_model`, then the whole "
        "function under one `jax.jit` (same cores as onnx2jax). tract: concrete input facts "
        "(or, where that fails, the model's symbolic facts with the symbols bound), "
        "`into_runnable()`, one thread, under an 8 GiB address-space cap (uncapped, its "
        "analysis of GPT-2 grew past 18 GiB and was OOM-killed). Run on the float models "
        'only; a peer that fails at batch 1 is not retried at batch 8 ("not run").',
        "",
        "| model | batch | load | onnxruntime ms | onnx2jax ms | "
        + " | ".join(f"{p} ms" for p in used)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(used),
    ]
    failures = []
    for rec in recs:
        for b in rec.get("batches", []):
            if not any(p in b.get("engines", {}) for p in used):
                continue
            o = _engine(b, "onnxruntime")
            cells = []
            for name in ("onnx2jax", *used):
                r = _engine(b, name)
                if name not in b.get("engines", {}):
                    cells.append("-")
                elif r.get("skipped"):
                    cells.append("not run")
                elif not r.get("ok"):
                    cells.append("failed")
                    if name != "onnx2jax":
                        failures.append(
                            f"- {name} on {rec['model']} (batch {b['batch']}): {_short_error(r)}"
                        )
                else:
                    ratio = r["median_ms"] / o["median_ms"] if o.get("median_ms") else None
                    cells.append(f"{r['median_ms']:.3g} ({_f(ratio, '.2f')}x)")
            out.append(
                f"| {rec['model']} | {b['batch']} | {_load_cell(rec, b)} | "
                f"{_f(o.get('median_ms'), '.3g')} | " + " | ".join(cells) + " |"
            )
    if failures:
        out += ["", "Where a peer could not run a model:", "", *failures]
    return out


def _chart(recs: list[dict], results: str = RESULTS) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no chart")
        return
    batches = sorted({b["batch"] for r in recs for b in r.get("batches", [])})
    names = [r["model"] for r in recs]
    engines = [
        "onnx2jax",
        *[
            p
            for p in PEERS
            if any(p in b.get("engines", {}) for r in recs for b in r.get("batches", []))
        ],
    ]
    colors = {
        "onnx2jax": "#1f77b4",
        "openvino": "#9467bd",
        "jaxonnxruntime": "#ff7f0e",
        "tract": "#2ca02c",
    }
    fig, axes = plt.subplots(
        1,
        len(batches),
        figsize=(6 * len(batches), 0.32 * len(names) + 1.6),
        sharey=True,
        squeeze=False,
    )
    height = 0.8 / len(engines)
    every: list[float] = []
    for ax, batch in zip(axes[0], batches, strict=True):
        bars: dict[str, tuple[list[float], list[float]]] = {e: ([], []) for e in engines}
        labels = []
        for i, rec in enumerate(recs):
            b = next((b for b in rec.get("batches", []) if b["batch"] == batch), None)
            labels.append(rec["model"] + ("" if b is None or _quiet(rec, b) else f" {BUSY}"))
            o = _engine(b, "onnxruntime") if b else {}
            present = [
                e for e in engines if b and _engine(b, e).get("median_ms") and o.get("median_ms")
            ]
            for k, engine in enumerate(present):  # centred on the row, whatever ran
                bars[engine][0].append(i + (k - (len(present) - 1) / 2) * height)
                bars[engine][1].append(_engine(b, engine)["median_ms"] / o["median_ms"])
        for engine, (ys, xs) in bars.items():
            ax.barh(ys, xs, height=height, color=colors.get(engine), label=engine)
            every += xs
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        lo, hi = min([*every, 1.0]) / 1.5, max([*every, 1.0]) * 1.5
        ticks = [
            t for t in (1 / 16, 0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128) if lo <= t <= hi
        ]
        ax.set_xlim(lo, hi)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"batch {batch}: latency / onnxruntime (< 1: faster; {BUSY} busy)")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0][0].invert_yaxis()  # the y axis is shared: invert it once, zoo order from the top
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(engines), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(os.path.join(results, "ratios.png"), dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="zoo models, comma-separated (base names include INT8 variants)")
    ap.add_argument("--batch", default="1,8", help="batch sizes (default 1,8)")
    ap.add_argument(
        "--kinds",
        help="zoo kinds, comma-separated: float, int8-dynamic, int8-qdq, "
        "int8-qop (default all; float alone takes about half the time)",
    )
    ap.add_argument("--small", action="store_true", help="the reduced zoo (quick check)")
    ap.add_argument("--files", nargs="+", help="benchmark these ONNX files instead of the zoo")
    ap.add_argument("--no-build", action="store_true", help="use only zoo files already built")
    ap.add_argument(
        "--peers",
        choices=["float", "all", "none"],
        default="float",
        help="run openvino, jaxonnxruntime and tract (those installed) on float models "
        "(default), on all, or not at all",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=0.5,
        help="timed running per engine, model and batch (default 0.5)",
    )
    ap.add_argument("--min-runs", type=int, default=3, help="timed runs at least (default 3)")
    ap.add_argument("--runs", type=int, help="exactly this many timed runs (overrides --seconds)")
    ap.add_argument("--threads", type=int, help="cores per engine (default: all usable)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per worker request, seconds")
    ap.add_argument(
        "--max-load",
        type=float,
        help="quiet below this 1-minute load average (default 0.25 per logical core); rows "
        "measured above it are marked busy and left out of the summary's means",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each batch's timed runs, wait up to this many seconds for the load "
        "average to fall below --max-load (default 120; 0: only record it)",
    )
    ap.add_argument(
        "--no-tune",
        action="store_true",
        help="time onnx2jax with its default kernel libraries (by default Model.tune picks "
        "them per model and batch after the start-up measurements, as a deployment would)",
    )
    ap.add_argument(
        "--render", action="store_true", help="only regenerate RESULTS.md and the chart"
    )
    ap.add_argument(
        "--machine",
        help="keep this run apart: JSON in results/MACHINE/, the table in RESULTS-MACHINE.md "
        "(a run on another CPU, e.g. avx512, whose rows must not mix with the main table's)",
    )
    args = ap.parse_args(argv)
    if not args.render:
        run(args)
    results, name = _results_dir(args.machine), _results_md(args.machine)
    render(results, HERE, name)
    print(f"wrote {os.path.join(HERE, name)} and {os.path.join(results, 'ratios.png')}")


if __name__ == "__main__":
    main()
