"""The `onnx2jax` command line: `info` describes a model, `run` runs (and compares) it, `bench`
times it."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from ._errors import Onnx2JaxError


def _parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"onnx2jax: {what} must look like NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from ._inspect import inspect_model

    print(inspect_model(args.model).format())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import jax

    from ._api import load
    from ._inspect import example_inputs

    dims = {k: int(v) for k, v in _parse_pairs(args.dim, "--dim").items()}
    files = _parse_pairs(args.input, "--input")
    t0 = time.perf_counter()
    model = load(args.model, x64=args.x64)
    load_s = time.perf_counter() - t0
    unknown = set(files) - set(model.input_names)
    if unknown:
        raise SystemExit(
            f"onnx2jax: --input names {sorted(unknown)} are not inputs of the model "
            f"({model.input_names})"
        )
    inputs = {name: np.load(path) for name, path in files.items()}
    rest = [s for s in model.inputs if s.name not in inputs]
    if rest and not args.random:
        raise SystemExit(
            "onnx2jax: no value for input(s) "
            f"{[s.name for s in rest]}; pass --input NAME=FILE.npy or --random"
        )
    inputs.update(example_inputs(rest, dims, seed=args.seed))

    print(f"model: {args.model}")
    for name, v in inputs.items():
        print(f"  input  {name}: {v.dtype}{list(v.shape)}")
    t0 = time.perf_counter()
    outs = jax.block_until_ready(model(**inputs))
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        jax.block_until_ready(model(**inputs))
        times.append(time.perf_counter() - t0)
    for name, o in zip(model.output_names, outs):
        a = np.asarray(o)
        summary = (
            f"mean {a.astype(np.float64).mean():.6g}, min {a.min():.6g}, max {a.max():.6g}"
            if a.size and a.dtype.kind in "fiub"
            else ""
        )
        print(f"  output {name}: {a.dtype}{list(a.shape)}  {summary}")
    print(
        f"load: {load_s * 1e3:.1f} ms   compile + first run: {first_s * 1e3:.1f} ms   "
        f"median run: {statistics.median(times) * 1e3:.3f} ms over {args.runs} runs"
    )
    if args.compare:
        return _compare(
            args, model, inputs, outs, statistics.median(times) if times else float("nan")
        )
    return 0


def _compare(args: argparse.Namespace, model, inputs, outs, jax_median: float) -> int:
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit(
            "onnx2jax: --compare onnxruntime needs onnxruntime: pip install onnxruntime"
        ) from None
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    ref = sess.run(None, inputs)
    ort_times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        sess.run(None, inputs)
        ort_times.append(time.perf_counter() - t0)
    ort_median = statistics.median(ort_times) if ort_times else float("nan")
    worst = 0.0
    print(
        f"compare with onnxruntime (median run {ort_median * 1e3:.3f} ms; "
        f"onnx2jax/onnxruntime time ratio {jax_median / ort_median:.2f}; "
        "for careful numbers use `onnx2jax bench`):"
    )
    for name, got, exp in zip(model.output_names, outs, ref):
        got, exp = np.asarray(got).astype(np.float64), np.asarray(exp).astype(np.float64)
        if got.shape != exp.shape:
            print(f"  {name}: SHAPE MISMATCH {got.shape} vs {exp.shape}")
            return 1
        abs_d = float(np.max(np.abs(got - exp))) if got.size else 0.0
        rel_d = (
            float(np.max(np.abs(got - exp) / np.maximum(np.abs(exp), 1e-6))) if got.size else 0.0
        )
        worst = max(worst, abs_d / (args.atol + args.rtol * float(np.max(np.abs(exp), initial=0))))
        print(f"  {name}: max abs diff {abs_d:.3g}, max rel diff {rel_d:.3g}")
    ok = worst <= 1.0
    print("MATCH" if ok else f"MISMATCH (beyond atol={args.atol}, rtol={args.rtol})")
    return 0 if ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from ._bench import main as bench_main

    return bench_main(args)


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time a model beside onnxruntime: compile, latency, memory, "
        "GFLOP/s (each engine in its own process; see benchmarks/README.md)",
    )
    p.add_argument("model")
    p.add_argument("--batch", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    p.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help="size of another symbolic dimension (default 1)",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="ENGINE[,ENGINE]",
        help="also time onnxruntime, jaxonnxruntime and/or tract",
    )
    p.add_argument("--runs", type=int, help="timed runs per engine and batch (default: ~--seconds)")
    p.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="timed running per engine and batch when --runs is not given",
    )
    p.add_argument("--threads", type=int, help="cores for every engine (default: all usable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-peak", action="store_true", help="skip measuring the matmul peak")
    p.add_argument("--json", metavar="OUT.json", help="write the full record as JSON")
    p.set_defaults(func=cmd_bench)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onnx2jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="describe a model: signature, ops, params, recompiles")
    p_info.add_argument("model")
    p_info.set_defaults(func=cmd_info)
    p_run = sub.add_parser("run", help="run a model with jax.jit, time it, optionally compare")
    p_run.add_argument("model")
    p_run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p_run.add_argument("--random", action="store_true", help="random values for inputs not given")
    p_run.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help="size of a symbolic dimension for --random (default 1)",
    )
    p_run.add_argument("--compare", choices=["onnxruntime"])
    p_run.add_argument("--runs", type=int, default=20)
    p_run.add_argument("--seed", type=int, default=0)
    p_run.add_argument("--x64", action="store_true", help="compute int64/float64 in 64 bits")
    p_run.add_argument("--rtol", type=float, default=1e-4)
    p_run.add_argument("--atol", type=float, default=1e-5)
    p_run.set_defaults(func=cmd_run)
    _add_bench(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Onnx2JaxError as e:
        print(f"onnx2jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
