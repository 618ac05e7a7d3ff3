"""Load-to-first-result time: onnx2jax.load vs a jax.export artifact vs onnxruntime, fresh processes.

    python benchmarks/startup.py                          # tiny_cnn + the zoo's resnet18, bert, gpt2
    python benchmarks/startup.py --models tiny_cnn,bert --repeats 5
    python benchmarks/startup.py --models path/to/model.onnx --dim sequence=64
    python benchmarks/startup.py --quick                  # tiny_cnn, one repeat: checks the script
    python benchmarks/startup.py --render                 # startup.md again from startup.json
    python benchmarks/startup.py --phases --models bert   # load + first call phase by phase

Every measurement is its own child process (this file with ``--child``), so nothing is cached
in-process. Modes: ``load`` (``onnx2jax.load(path)`` + first ``model(...)``), ``load_exported``
(``onnx2jax.load_exported(artifact)`` + first call; the artifact is written once beforehand by
``onnx2jax convert``) and ``onnxruntime`` (``InferenceSession`` + first ``run``). Each repeat
gives every mode a fresh, empty JAX persistent-cache folder (cold) and then a second process on
the folder the first filled (warm). Writes ``benchmarks/results/startup.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
MODES = ("load", "load_exported", "onnxruntime")
DEFAULT_MODELS = ("tiny_cnn", "resnet18", "bert", "gpt2")
# The sizes benchmarks/run.py uses for the full zoo (batch 1 here: a first request).
ZOO_DIMS = {"sequence": 128, "past": 128}
MARK = "STARTUP_RESULT "


# -- the child: one measurement, stdlib imports only before the clock starts ---------------------


def _vm(field: str) -> float | None:
    """A /proc/self/status field (VmHWM, VmRSS) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _entries(folder: str | None) -> int | None:
    return len(os.listdir(folder)) if folder and os.path.isdir(folder) else None


def child(req: dict) -> dict:
    """Import the engine, then time load + first result ready; report times and peak RSS."""
    t_begin = time.time()
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if allowed and req["threads"] < len(allowed):
        os.sched_setaffinity(0, allowed[: req["threads"]])  # XLA sizes its pool from this
    t0 = time.perf_counter()
    mode, cache = req["mode"], req.get("cache_dir")
    out: dict = {"mode": mode, "cache_entries_before": _entries(cache)}
    if mode == "onnxruntime":
        import numpy as np
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = req["threads"]
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        feeds = dict(np.load(req["inputs"]))
        t1 = time.perf_counter()
        sess = ort.InferenceSession(req["path"], so, providers=["CPUExecutionProvider"])
        t2 = time.perf_counter()
        outs = [np.asarray(o) for o in sess.run(None, feeds)]
    else:
        import jax

        # Explicit, so both modes use the folder (load_exported does not set up onnx2jax's
        # default cache) and small programs are cached too (JAX skips compiles under 1 s).
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        import numpy as np

        import onnx2jax

        jax.devices()  # start the backend as part of the imports, as onnx2jax bench does
        feeds = dict(np.load(req["inputs"]))
        t1 = time.perf_counter()
        if mode == "load":
            model = onnx2jax.load(req["path"])
        else:
            model = onnx2jax.load_exported(req["artifact"])
        t2 = time.perf_counter()
        outs = [np.asarray(o) for o in jax.block_until_ready(model(**feeds))]
    t3 = time.perf_counter()
    if req.get("save_outputs"):
        np.savez(req["save_outputs"], *outs)
    out.update(
        imports_s=t1 - t0,
        load_s=t2 - t1,
        first_run_s=t3 - t2,
        first_result_s=t3 - t1,
        ready_unix=t_begin + (t3 - t0),
        peak_rss_mb=_vm("VmHWM"),
        cache_entries_after=_entries(cache),
    )
    return out


def phases_child(req: dict) -> dict:
    """``onnx2jax.load`` + first ``model(...)`` phase by phase: seconds, VmRSS and VmHWM after
    each. Wraps the loader's internal steps (names as of benchmarks/NOTES.md entry 10), so a
    step that was renamed simply gets no row of its own (its time goes to the next one)."""
    import types

    import jax

    jax.config.update("jax_compilation_cache_dir", req["cache_dir"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import numpy as np
    import onnx2jax.passes
    import onnx_ir

    import onnx2jax
    from onnx2jax import _api, _loader, _tracer

    jax.devices()
    feeds = dict(np.load(req["inputs"]))
    rows: list[dict] = []
    clock = [time.perf_counter()]

    def mark(phase: str) -> None:
        now = time.perf_counter()
        rows.append(
            {"phase": phase, "s": now - clock[0], "rss_mb": _vm("VmRSS"), "hwm_mb": _vm("VmHWM")}
        )
        clock[0] = time.perf_counter()

    def wrap(owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return

        def timed(*a, **k):
            out = fn(*a, **k)
            mark(label)
            return out

        setattr(owner, attr, timed)

    wrap(_loader, "read_proto", "parse (whole file, protobuf)")
    wrap(_loader, "_read_lean", "read (one weight at a time)")
    wrap(_loader, "_infer_shapes", "shape inference (proto)")
    wrap(onnx_ir.serde, "deserialize_model", "onnx-ir deserialize")
    wrap(onnx2jax.passes, "optimize", "passes")
    wrap(onnx_ir.serde, "serialize_model", "weights out + serialize")
    if hasattr(_loader, "gc"):
        _loader.gc = types.SimpleNamespace(collect=_loader.gc.collect)
        wrap(_loader.gc, "collect", "gc.collect")
    wrap(_loader, "convert", "convert to IR")
    wrap(_tracer, "build_plan", "build_plan")
    mark("(imports done)")
    model = onnx2jax.load(req["path"])
    mark("breaks, params to device, prep plan")
    prog = model._program
    prepared = jax.block_until_ready(model._prepared_values())
    mark("prep (trace + compile + run)")
    dynamic = {k: jax.numpy.asarray(v) for k, v in feeds.items()}
    with prog.context():
        traced = _api._jitted(prog).trace(model.params, prepared, dynamic, ())
        mark("trace")
        lowered = traced.lower()
        mark("lower")
        compiled = lowered.compile()
        mark("compile (XLA)")
        jax.block_until_ready(compiled(model.params, prepared, dynamic))
        mark("first run")
    params_mb = sum(v.nbytes for v in model.params.values()) / 2**20
    return {"rows": rows, "params_mb": params_mb, "ready_unix": time.time()}


def _phases(args: argparse.Namespace) -> None:
    import numpy as np

    dims = {k: int(v) for k, v in (d.split("=", 1) for d in args.dim)}
    work = tempfile.mkdtemp(prefix="onnx2jax-phases-")
    try:
        for entry in _resolve(args.models.split(","), dims):
            inputs = os.path.join(work, entry["name"] + ".npz")
            np.savez(inputs, **_inputs(entry, dims))
            req = {"mode": "phases", "path": entry["path"], "inputs": inputs}
            req["cache_dir"] = tempfile.mkdtemp(dir=work)
            for phase in ("cold", "warm"):  # warm: a second process on the folder cold filled
                res = _spawn(req, args.timeout, os.path.join(work, "children.log"))
                if "rows" not in res:
                    print(f"{entry['name']} {phase}: {res}")
                    break
                print(f"\n{entry['name']} (params {res['params_mb']:.0f} MB), {phase} cache")
                print("| phase | s | RSS MB | peak RSS MB |\n|---|---:|---:|---:|")
                for r in res["rows"]:
                    print(
                        f"| {r['phase']} | {r['s']:.2f} | {r['rss_mb']:.0f} | {r['hwm_mb']:.0f} |"
                    )
                total = sum(r["s"] for r in res["rows"] if r["phase"] != "(imports done)")
                print(f"| load + first result | {total:.2f} | | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the parent ----------------------------------------------------------------------------------


def _resolve(names: list[str], dims: dict[str, int]) -> list[dict]:
    """Model entries: name, path, inputs maker; zoo models only where their file exists."""
    sys.path.insert(0, ROOT)
    from benchmarks.zoo.build import models as zoo_models

    zoo = {m.name: m for m in zoo_models(None, small=False)}
    out = []
    for name in names:
        if name.endswith(".onnx"):
            out.append({"name": os.path.splitext(os.path.basename(name))[0], "path": name})
        elif name == "tiny_cnn":
            out.append({"name": name, "path": os.path.join(ROOT, "examples", "tiny_cnn.onnx")})
        elif name in zoo:
            m = zoo[name]
            if not os.path.exists(m.path):
                print(f"{name}: {m.path} not built (benchmarks/zoo/build.py); skipped", flush=True)
                continue
            axes = m.dynamic_axes
            mdims = {k: v for k, v in {**ZOO_DIMS, **dims}.items() if k in axes and k != "batch"}
            out.append({"name": name, "path": m.path, "zoo": m, "dims": {"batch": 1, **mdims}})
        else:
            raise SystemExit(f"unknown model {name!r}: tiny_cnn, a zoo name or an .onnx path")
    return out


def _inputs(entry: dict, dims: dict[str, int]) -> dict:
    if "zoo" in entry:
        d = dict(entry["dims"])
        return entry["zoo"].make_inputs(batch=d.pop("batch"), seed=0, **d)
    from onnx2jax.bench import make_inputs

    feeds = make_inputs(entry["path"], 1, dims, seed=0)
    if isinstance(feeds, str):
        raise SystemExit(f"{entry['name']}: {feeds}")
    entry["dims"] = {"batch": 1, **dims}
    return feeds


def _dim_sizes(path: str, feeds: dict) -> dict[str, int]:
    """Each dim_param of the model's inputs -> its size in ``feeds`` (for ``convert --dim``)."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    sizes = {}
    for i in m.graph.input:
        if i.name in feeds:
            for axis, d in enumerate(i.type.tensor_type.shape.dim):
                if d.dim_param:
                    sizes[d.dim_param] = int(feeds[i.name].shape[axis])
    return sizes


def _convert(entry: dict, feeds: dict, artifact: str, timeout: float) -> dict:
    """``onnx2jax convert``: symbolic dims first; where that fails, every dim fixed."""
    env = {**os.environ, "ONNX2JAX_CACHE_DIR": "off"}  # keep the user's cache out of it
    base = [sys.executable, "-c", "import sys; from onnx2jax.cli import main; sys.exit(main())"]
    fixed = _dim_sizes(entry["path"], feeds)
    tries = [{}, fixed] if fixed else [{}]
    err = ""
    for dims in tries:
        cmd = [*base, "convert", entry["path"], "-o", artifact]
        cmd += [a for k, v in dims.items() for a in ("--dim", f"{k}={v}")]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        took = time.perf_counter() - t0
        if p.returncode == 0:
            return {
                "dims": dims,
                "convert_s": took,
                "size_mb": os.path.getsize(artifact) / 2**20,
                "symbolic_error": err or None,
            }
        err = (p.stderr.strip().splitlines() or ["?"])[-1][:500]
    return {"error": err}


def _spawn(req: dict, timeout: float, log: str) -> dict:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": req.get("cache_dir") or ""}
    env["ONNX2JAX_CACHE_DIR"] = req.get("cache_dir") or "off"
    t0 = time.time()
    try:
        p = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", json.dumps(req)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    with open(log, "a") as f:
        f.write(f"--- {req['mode']} {req.get('cache_dir')}\n{p.stderr}")
    line = next((x for x in p.stdout.splitlines() if x.startswith(MARK)), None)
    if p.returncode != 0 or line is None:
        tail = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        return {"error": tail[:500]}
    res = json.loads(line[len(MARK) :])
    res["process_s"] = res.pop("ready_unix") - t0  # interpreter start + imports + the rest
    return res


def _median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def measure(args: argparse.Namespace) -> dict:
    from onnx2jax.bench.record import default_threads, load_average, machine_info

    dims = dict(d.split("=", 1) for d in args.dim)
    dims = {k: int(v) for k, v in dims.items()}
    entries = _resolve(args.models.split(","), dims)
    threads = args.threads or default_threads()
    work = tempfile.mkdtemp(prefix="onnx2jax-startup-")
    log = os.path.join(work, "children.log")
    record = {
        "schema": 1,
        "machine": machine_info(),
        "load_average_start": load_average(),
        "options": {"repeats": args.repeats, "threads": threads, "quick": args.quick},
        "models": [],
    }
    print(f"{len(entries)} models, {args.repeats} repeats, {threads} threads; work in {work}")
    try:
        for entry in entries:
            rec = _measure_model(entry, dims, args, threads, work, log)
            record["models"].append(rec)
    finally:
        record["load_average_end"] = load_average()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return record


def _measure_model(entry, dims, args, threads, work, log) -> dict:
    import numpy as np

    name = entry["name"]
    folder = os.path.join(work, name)
    os.makedirs(folder)
    feeds = _inputs(entry, dims)
    npz = os.path.join(folder, "inputs.npz")
    np.savez(npz, **feeds)
    artifact = os.path.join(folder, "model.jaxexp")
    conv = _convert(entry, feeds, artifact, args.timeout)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    print(f"{name}: inputs {shapes}; convert: {_conv_text(conv)}", flush=True)
    rec = {"model": name, "path": entry["path"], "inputs": shapes, "convert": conv, "modes": {}}
    runs: dict[str, dict[str, list]] = {m: {"cold": [], "warm": []} for m in MODES}
    for r in range(args.repeats):
        for mode in MODES:  # interleaved, so drifting load lands on every mode
            if mode == "load_exported" and "error" in conv:
                continue
            cache = os.path.join(folder, f"cache-{mode}-{r}")
            os.makedirs(cache)
            req = {"mode": mode, "path": entry["path"], "artifact": artifact, "inputs": npz}
            req.update(threads=threads, cache_dir=cache if mode != "onnxruntime" else None)
            for phase in ("cold", "warm"):
                if r == 0 and phase == "cold":
                    req["save_outputs"] = os.path.join(folder, f"out-{mode}.npz")
                res = _spawn(req, args.timeout, log)
                req.pop("save_outputs", None)
                runs[mode][phase].append(res)
                print(f"  {r + 1}/{args.repeats} {mode:13s} {phase}: {_res_text(res)}", flush=True)
    ref = _outputs(os.path.join(folder, "out-onnxruntime.npz"))
    for mode in MODES:
        cold, warm = runs[mode]["cold"], runs[mode]["warm"]
        errors = [x["error"] for x in cold + warm if "error" in x]
        got = _outputs(os.path.join(folder, f"out-{mode}.npz"))
        diff = None
        if ref is not None and got is not None and len(ref) == len(got):
            diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(got, ref))
        rec["modes"][mode] = {
            "cold_s": _median(cold, "first_result_s"),
            "warm_s": _median(warm, "first_result_s"),
            "cold_process_s": _median(cold, "process_s"),
            "warm_process_s": _median(warm, "process_s"),
            "peak_rss_cold_mb": _median(cold, "peak_rss_mb"),
            "peak_rss_warm_mb": _median(warm, "peak_rss_mb"),
            "max_abs_diff_vs_onnxruntime": diff,
            "errors": errors,
            "runs": {"cold": cold, "warm": warm},
        }
    ort = rec["modes"]["onnxruntime"]
    for m in rec["modes"].values():
        for k in ("cold", "warm"):
            a, b = m[f"{k}_s"], ort[f"{k}_s"]
            m[f"{k}_ratio_vs_onnxruntime"] = a / b if a and b else None
    return rec


def _outputs(path: str):
    import numpy as np

    if not os.path.exists(path):
        return None
    z = np.load(path)
    return [z[f"arr_{i}"] for i in range(len(z.files))]


def _conv_text(conv: dict) -> str:
    if "error" in conv:
        return f"FAILED ({conv['error']})"
    d = ", ".join(f"{k}={v}" for k, v in conv["dims"].items()) or "all dims symbolic"
    text = f"{conv['size_mb']:.1f} MiB in {conv['convert_s']:.1f} s ({d})"
    if conv.get("symbolic_error"):
        text += f"; with symbolic dims it failed: {conv['symbolic_error'][:200]}"
    return text


def _res_text(res: dict) -> str:
    if "error" in res:
        return f"ERROR {res['error']}"
    hits = res.get("cache_entries_before")
    return (
        f"{res['first_result_s']:.2f} s (load {res['load_s']:.2f} + first run "
        f"{res['first_run_s']:.2f}; imports {res['imports_s']:.2f}; process "
        f"{res['process_s']:.2f}), {res['peak_rss_mb']:.0f} MiB"
        + (
            f", cache entries {hits} -> {res.get('cache_entries_after')}"
            if hits is not None
            else ""
        )
    )


def _f(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def render(record: dict) -> str:
    """startup.md from the record."""
    mach = record["machine"]
    la0, la1 = record.get("load_average_start"), record.get("load_average_end")
    lines = [
        "# Start-up: load to first result",
        "",
        "Generated by `python benchmarks/startup.py"
        + (" --quick" if record["options"].get("quick") else "")
        + "`; do not edit."
        + (
            " **Quick run (one repeat, a check of the script), not a measurement.**"
            if record["options"].get("quick")
            else ""
        ),
        "",
        f"- machine: {mach.get('cpu')}, {mach.get('logical_cores')} logical cores, "
        f"{record['options']['threads']} used; flags: {' '.join(mach.get('cpu_flags') or [])}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in mach.get('versions', {}).items())}",
        f"- date: {mach.get('date')}; load average (1, 5, 15 min) at start "
        f"{_la(la0)}, at end {_la(la1)}",
        f"- medians of {record['options']['repeats']} repeat(s), each a fresh process",
        "",
        "| model | mode | cold s | warm s | cold s, with process start | RSS MB (cold / warm) "
        "| cold / onnxruntime | warm / onnxruntime | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rec in record["models"]:
        for mode, m in rec["modes"].items():
            if mode == "load_exported" and "error" in rec["convert"]:
                lines.append(
                    f"| {rec['model']} | {mode} | convert failed: "
                    f"{rec['convert']['error'][:80]} | | | | | | |"
                )
                continue
            err = f" ({len(m['errors'])} failed)" if m["errors"] else ""
            lines.append(
                f"| {rec['model']} | {mode}{err} | {_f(m['cold_s'])} | {_f(m['warm_s'])} | "
                f"{_f(m['cold_process_s'])} | {_f(m['peak_rss_cold_mb'], '.0f')} / "
                f"{_f(m['peak_rss_warm_mb'], '.0f')} | {_f(m['cold_ratio_vs_onnxruntime'])} | "
                f"{_f(m['warm_ratio_vs_onnxruntime'])} | "
                f"{_f(m['max_abs_diff_vs_onnxruntime'], '.1e')} |"
            )
    lines += ["", "Artifacts (`onnx2jax convert`, made once before the runs):", ""]
    for rec in record["models"]:
        lines.append(f"- {rec['model']} (inputs {rec['inputs']}): {_conv_text(rec['convert'])}")
    lines += [
        "",
        "**cold s**: from the call (`onnx2jax.load(path)`, `onnx2jax.load_exported(artifact)`, "
        "`onnxruntime.InferenceSession(path)`) to the first outputs ready as numpy arrays, in a "
        "fresh process whose imports (and JAX's backend start) are done; JAX's persistent "
        "compilation cache points at an empty folder (minimum compile time and entry size 0, so "
        "every program is cached). **warm s**: the same in a second fresh process on the folder "
        "the cold one filled, so XLA's compile becomes a cache read; onnxruntime has no such "
        "cache (its two columns are two samples of the same thing). **with process start**: "
        "cold, from spawning the process (interpreter, imports) to the first result. **RSS**: "
        "the process's high-water mark (VmHWM), imports included. **ratios**: below 1 the "
        "onnx2jax mode is faster than onnxruntime. **max abs diff**: the first repeat's outputs "
        "against onnxruntime's. The model files stay in the OS page cache between runs.",
    ]
    return "\n".join(lines) + "\n"


def _la(la) -> str:
    return "-" if not la else " / ".join(f"{x:.2f}" for x in la)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated: tiny_cnn, zoo names (e.g. resnet18), .onnx paths",
    )
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per mode and phase")
    p.add_argument("--quick", action="store_true", help="tiny_cnn, one repeat (checks the script)")
    p.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help="symbolic dim sizes (zoo default: sequence=128, past=128; batch 1)",
    )
    p.add_argument("--threads", type=int, default=0, help="cores per process (default: all)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    p.add_argument("--out", default=RESULTS, help="folder for startup.json and startup.md")
    p.add_argument("--keep", action="store_true", help="keep the work folder (artifacts, logs)")
    p.add_argument("--render", action="store_true", help="only regenerate startup.md")
    p.add_argument(
        "--phases", action="store_true", help="load + first call phase by phase (cold, warm)"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        req = json.loads(args.child)
        out = phases_child(req) if req["mode"] == "phases" else child(req)
        print(MARK + json.dumps(out), flush=True)
        return
    if args.phases:
        _phases(args)
        return
    json_path = os.path.join(args.out, "startup.json")
    if not args.render:
        if args.quick:
            args.models, args.repeats = "tiny_cnn", 1
        record = measure(args)
        os.makedirs(args.out, exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(record, f, indent=1)
    with open(json_path) as f:
        record = json.load(f)
    md = render(record)
    with open(os.path.join(args.out, "startup.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
