"""Benchmark the whole model zoo: onnx2jax beside onnxruntime (and peers), batch 1 and 8.

    python benchmarks/run.py                          # the full zoo (builds what is missing)
    python benchmarks/run.py --only resnet18,bert     # some models (base or full zoo names)
    python benchmarks/run.py --kinds float            # no INT8 variants
    python benchmarks/run.py --small --batch 1,2      # the reduced zoo, quickly
    python benchmarks/run.py --files a.onnx b.onnx    # any ONNX files instead of the zoo
    python benchmarks/run.py --render                 # only regenerate RESULTS.md and the chart

Each model goes through ``onnx2jax._bench.bench_model`` (every engine in its own process, runs
interleaved; see benchmarks/README.md). Results: one ``benchmarks/results/<model>.json`` per
model plus ``results/run.json`` (machine, matmul peak, options), then ``benchmarks/RESULTS.md``
and ``benchmarks/results/ratios.png`` are regenerated from all the JSON files there.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
PEERS = ("jaxonnxruntime", "tract")
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

    return [p for p in PEERS if importlib.util.find_spec(p) is not None]


def run(args: argparse.Namespace) -> None:
    from onnx2jax import _bench

    os.makedirs(RESULTS, exist_ok=True)
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
    threads = args.threads or _bench.default_threads()
    t_start = time.perf_counter()
    print(
        f"{len(entries)} models, batches {batches}, {threads} threads; peers: "
        f"{', '.join(peers) or 'none'}; measuring the matmul peak ...",
        flush=True,
    )
    peak_start = _bench.measure_peak(threads)
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
        opts = _bench.BenchOptions(
            batches=batches,
            engines=("onnx2jax", "onnxruntime", *use_peers),
            runs=args.runs,
            seconds=args.seconds,
            min_runs=args.min_runs,
            threads=threads,
            peak=False,
            timeout_s=args.timeout,
        )
        inputs_for = None
        if zm is not None:

            def inputs_for(batch, zm=zm):
                return zm.make_inputs(batch=batch, seed=0, **dims)

        t0 = time.perf_counter()
        try:
            rec = _bench.bench_model(
                path,
                opts,
                name=name,
                inputs_for=inputs_for,
                peak=peak_start,
                log=lambda s: print(s, flush=True),
            )
        except Exception as e:  # keep going; the table says what is missing
            rec = {
                "schema": _bench.SCHEMA,
                "model": name,
                "path": path,
                "error": f"{type(e).__name__}: {e}",
                "machine": _bench.machine_info(),
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
        with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
            json.dump(rec, f, indent=1)
        done.append(name)
        print(
            f"== {name}: {rec['seconds']:.0f} s (total {time.perf_counter() - t_start:.0f} s)",
            flush=True,
        )
        for b in rec["batches"]:
            q = b.get("ratios", {}).get("onnx2jax/onnxruntime") or {}
            if q.get("median"):
                print(
                    f"   batch {b['batch']}: onnx2jax/onnxruntime latency {q['median']:.2f}x",
                    flush=True,
                )
    peak_end = _bench.measure_peak(threads)
    info = {
        "machine": _bench.machine_info(),
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
        },
        "wall_s": time.perf_counter() - t_start,
    }
    run_file = os.path.join(RESULTS, "run.json")
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


def _load_results() -> tuple[dict, list[dict]]:
    info = {}
    if os.path.exists(os.path.join(RESULTS, "run.json")):
        with open(os.path.join(RESULTS, "run.json")) as f:
            info = json.load(f)
    recs = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "*.json"))):
        if os.path.basename(path) == "run.json":
            continue
        with open(path) as f:
            recs.append(json.load(f))
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


def render() -> str:
    """Write RESULTS.md and results/ratios.png from the JSON files; returns the markdown."""
    info, recs = _load_results()
    machine = info.get("machine") or (recs[0]["machine"] if recs else {})
    v = machine.get("versions", {})
    peak = info.get("peak_gflops") or ((recs[0].get("peak") or {}).get("gflops") if recs else None)
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/run.py` (methodology: [README.md](README.md)); do not edit "
        "by hand. Every ratio is **onnx2jax / onnxruntime**: below 1 onnx2jax is faster (or "
        "smaller), above 1 slower. One shared machine, other jobs running: single numbers drift, "
        "engines were interleaved so the ratios are the trustworthy part.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu', '?')} ({', '.join(machine.get('cpu_flags', [])) or 'flags ?'}), "
        f"{machine.get('logical_cores', '?')} logical cores; every engine ran on "
        f"{info.get('threads') or (recs[0].get('threads') if recs else '?')} threads "
        "(tract: 1, its Python bindings are single-threaded)",
        f"- jax {v.get('jax', '?')}, jaxlib {v.get('jaxlib', '?')}, onnxruntime "
        f"{v.get('onnxruntime', '?')}, onnx {v.get('onnx', '?')}, numpy {v.get('numpy', '?')}, "
        f"Python {machine.get('python', '?')}" + "".join(f", {p} {v[p]}" for p in PEERS if p in v),
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
    loads = [
        r["machine"]["load_average"][0]
        for r in recs
        if (r.get("machine") or {}).get("load_average")
    ]
    if loads:
        lines.append(
            f"- Load average (1 min) as each model started: {min(loads):.1f} to "
            f"{max(loads):.1f} on {machine.get('logical_cores', '?')} cores (other jobs "
            "shared the machine), so absolute times from different models are not "
            "comparable; the ratios come from interleaved runs"
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
    lines += [
        "",
        "![onnx2jax / onnxruntime latency](results/ratios.png)",
        "",
        "## Latency and throughput",
        "",
        "Median latency per batch (host numpy in, outputs ready); GFLOP/s counts 2 x "
        "multiply-adds of Conv/MatMul/Gemm and their integer forms (the shapes as traced), "
        "% of the float32 matmul peak in brackets. For INT8 models these are integer "
        "operations: with AVX-512 VNNI an engine can pass the float32 peak.",
        "",
        "| model | batch | GFLOP | onnx2jax ms | onnxruntime ms | **ratio** | p90 ratio | "
        "onnx2jax items/s | onnxruntime items/s | onnx2jax GFLOP/s | onnxruntime GFLOP/s | "
        "max abs diff | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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

            diff = (a.get("vs_onnxruntime") or {}).get("max_abs_diff")
            lines.append(
                f"| {rec['model']} | {b['batch']} | {_f(fl / 1e9 if fl else None, '.3g')} | "
                f"{_f(a.get('median_ms'), '.3g')} | {_f(o.get('median_ms'), '.3g')} | "
                f"**{_f(q.get('median'), '.2f')}** | {_f(q.get('p90'), '.2f')} | "
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
    md = "\n".join(lines) + "\n"
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write(md)
    _chart(recs)
    return md


def _summary(recs: list[dict]) -> list[str]:
    """Geometric means of the latency ratio, float and INT8 models apart, per batch size."""
    import math

    groups: dict[tuple[str, int], list[float]] = {}
    for rec in recs:
        kind = "float" if (rec.get("zoo") or {}).get("kind", "float") == "float" else "INT8"
        for b in rec.get("batches", []):
            q = (b.get("ratios") or {}).get("onnx2jax/onnxruntime") or {}
            if q.get("median"):
                groups.setdefault((kind, b["batch"]), []).append(q["median"])
    if not groups:
        return []
    out = [
        "",
        "**Summary** (geometric mean of onnx2jax / onnxruntime median latency): "
        + "; ".join(
            f"{kind} models, batch {batch}: **{math.exp(sum(map(math.log, v)) / len(v)):.2f}x**"
            f" ({len(v)} models)"
            for (kind, batch), v in sorted(groups.items())
        ),
    ]
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
        "(interleaved in the same rounds). jaxonnxruntime: `call_onnx_model`, then the whole "
        "function under one `jax.jit` (same cores as onnx2jax). tract: concrete input facts "
        "(or, where that fails, the model's symbolic facts with the symbols bound), "
        "`into_runnable()`, one thread, under an 8 GiB address-space cap (uncapped, its "
        "analysis of GPT-2 grew past 18 GiB and was OOM-killed). Run on the float models "
        'only; a peer that fails at batch 1 is not retried at batch 8 ("not run").',
        "",
        "| model | batch | onnxruntime ms | onnx2jax ms | "
        + " | ".join(f"{p} ms" for p in used)
        + " |",
        "|---|---|---|---|" + "---|" * len(used),
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
                f"| {rec['model']} | {b['batch']} | {_f(o.get('median_ms'), '.3g')} | "
                + " | ".join(cells)
                + " |"
            )
    if failures:
        out += ["", "Where a peer could not run a model:", "", *failures]
    return out


def _chart(recs: list[dict]) -> None:
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
    colors = {"onnx2jax": "#1f77b4", "jaxonnxruntime": "#ff7f0e", "tract": "#2ca02c"}
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
        for i, rec in enumerate(recs):
            b = next((b for b in rec.get("batches", []) if b["batch"] == batch), None)
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
        ax.set_title(f"batch {batch}: latency / onnxruntime (< 1: faster)")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0][0].invert_yaxis()  # the y axis is shared: invert it once, zoo order from the top
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(engines), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(os.path.join(RESULTS, "ratios.png"), dpi=110)
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
        help="run jaxonnxruntime and tract (if installed) on float models (default), "
        "on all, or not at all",
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
        "--render", action="store_true", help="only regenerate RESULTS.md and the chart"
    )
    args = ap.parse_args(argv)
    if not args.render:
        run(args)
    render()
    print(f"wrote {os.path.join(HERE, 'RESULTS.md')} and {os.path.join(RESULTS, 'ratios.png')}")


if __name__ == "__main__":
    main()
