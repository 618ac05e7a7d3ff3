"""The `onnx2jax bench` command: argument checks, the run, and the plain-text report."""

from __future__ import annotations

import json
import sys
from typing import Any

from .harness import BenchOptions, bench_model
from .record import fmt as _fmt
from .record import format_load


def format_record(rec: dict[str, Any]) -> str:
    """A plain-text table of one model's results."""
    m = rec["machine"]
    v = m["versions"]
    lines = [
        f"model: {rec['path']}",
        f"machine: {m['cpu']} ({', '.join(m.get('cpu_flags') or []) or 'flags ?'}), "
        f"{rec['threads']} threads; jax {v.get('jax', '?')}, onnxruntime "
        f"{v.get('onnxruntime', '?')}"
        + "".join(
            f", {p} {v[p]}"
            for p in ("openvino", "jaxonnxruntime", "tract")
            if p in v and any(p in b.get("engines", {}) for b in rec["batches"])
        ),
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
        lines.append(f"  {format_load(b.get('load'))}")
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
    """`onnx2jax bench` (arguments parsed by ``onnx2jax/cli.py``). Checks the arguments and that
    the model loads before anything is measured (the matmul peak alone takes seconds)."""
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
        max_load=args.max_load,
        quiet_wait=args.quiet_wait,
        tune=getattr(args, "tune", False),
    )
    rec = bench_model(args.model, opts, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_record(rec))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)
        print(f"\nwrote {args.json}")
    failed = [e for b in rec["batches"] for e, r in b["engines"].items() if not r.get("ok")]
    return 1 if failed else 0
