"""The `onnx2jax` command line: `info` describes a model, `run` runs (and compares) it, `bench`
times it."""

from __future__ import annotations

import argparse
import difflib
import os
import statistics
import sys
import time

import numpy as np

from ._errors import InputError, Onnx2JaxError


def parse_pairs(items: list[str], flag: str, form: str) -> dict[str, str]:
    """``NAME=VALUE`` arguments of ``flag`` as a dict; each name at most once."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"{flag} must look like {form}, got {item!r}")
        if name in out and out[name] != value:
            raise InputError(f"{flag} gives {name!r} twice ({out[name]!r} and {value!r})")
        out[name] = value
    return out


def parse_dims(items: list[str]) -> dict[str, int]:
    """``--dim NAME=SIZE`` arguments as ``{name: size}``; sizes are whole numbers >= 0."""
    dims = {}
    for name, value in parse_pairs(items, "--dim", "NAME=SIZE").items():
        try:
            size = int(value)
        except ValueError:
            size = -1
        if size < 0:
            raise InputError(
                f"--dim {name}={value}: SIZE must be a whole number >= 0, e.g. --dim {name}=4"
            )
        dims[name] = size
    return dims


def check_dims(dims: dict[str, int], specs) -> None:
    """Refuse ``--dim`` names that are no symbolic dim of the model's inputs (``specs``): a typo
    would otherwise be ignored and the dim left at its default."""
    from ._inspect import symbolic_dims

    known = symbolic_dims(specs)
    unknown = [d for d in dims if d not in known]
    if not unknown:
        return
    have = (
        f"its symbolic dims are: {', '.join(known)}"
        if known
        else "it has none (every input dimension is fixed)"
    )
    close = {d: difflib.get_close_matches(d, known, n=1) for d in unknown}
    hint = "; ".join(f"did you mean {c[0]!r} for {d!r}?" for d, c in close.items() if c)
    raise InputError(
        f"--dim {', '.join(repr(d) for d in unknown)}: not a symbolic dim of the model's "
        f"inputs; {have}" + (f"; {hint}" if hint else "")
    )


def _load_npy(name: str, path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise InputError(f"--input {name}={path}: no such file; give the path of a .npy file")
    try:
        value = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(
            f"--input {name}={path}: not a readable .npy file ({e}); save it with numpy.save"
        ) from None
    if not isinstance(value, np.ndarray):  # an .npz archive
        raise InputError(
            f"--input {name}={path}: holds several arrays; give one array saved with numpy.save"
        )
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnx2jax")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from . import __version__

        return __version__


def cmd_info(args: argparse.Namespace) -> int:
    from ._inspect import inspect_model

    print(inspect_model(args.model).format())
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    import onnx

    from ._api import _pass_names, load
    from ._loader import optimize_proto, read_proto

    load(args.model, passes=None)  # a malformed or unsupported model fails here, clearly
    proto, _ = read_proto(args.model)
    optimized, report = optimize_proto(proto, _pass_names(_passes(args.passes)), portable=True)
    big = optimized.ByteSize() > 1_900_000_000
    onnx.save(optimized, args.output, save_as_external_data=big)
    print(report)
    print(f"wrote {args.output}" + (" (weights as external data beside it)" if big else ""))
    return 0


def _passes(text: str) -> str | list[str]:
    return text if text in ("default", "all", "none") else [t for t in text.split(",") if t]


def cmd_run(args: argparse.Namespace) -> int:
    import jax

    from ._api import load
    from ._inspect import example_inputs

    dims = parse_dims(args.dim)
    inputs = {
        name: _load_npy(name, path)
        for name, path in parse_pairs(args.input, "--input", "NAME=FILE.npy").items()
    }
    t0 = time.perf_counter()
    model = load(args.model, x64=args.x64, passes=_passes(args.passes))
    load_s = time.perf_counter() - t0
    unknown = set(inputs) - set(model.input_names)
    if unknown:
        raise InputError(
            f"--input names {sorted(unknown)} are not inputs of the model; its inputs are "
            f"{model.input_names}"
        )
    check_dims(dims, model.inputs)
    rest = [s for s in model.inputs if s.name not in inputs]
    if rest and not args.random:
        raise InputError(
            f"no value for input(s) {[s.name for s in rest]}; pass --input NAME=FILE.npy or "
            "--random"
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
            "onnx2jax: error: --compare onnxruntime needs onnxruntime: pip install onnxruntime"
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


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def _engines(text: str) -> str:
    from .bench import ENGINES

    unknown = [e for e in text.split(",") if e and e not in ENGINES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES[1:])}"
        )
    return text


def _new_file(path: str) -> str:
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise argparse.ArgumentTypeError(f"the folder of {path!r} does not exist")
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def _load(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return x


def _seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return x


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
        type=_engines,
        metavar="ENGINE[,ENGINE]",
        help="also time onnxruntime, openvino, jaxonnxruntime and/or tract",
    )
    p.add_argument(
        "--runs", type=_positive_int, help="timed runs per engine and batch (default: ~--seconds)"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="timed running per engine and batch when --runs is not given",
    )
    p.add_argument(
        "--threads", type=_positive_int, help="cores for every engine (default: all usable)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-load",
        type=_load,
        help="the machine counts as quiet below this 1-minute load average "
        "(default 0.25 per logical core); rows measured above it are marked busy",
    )
    p.add_argument(
        "--quiet-wait",
        type=_seconds,
        default=120.0,
        metavar="SECONDS",
        help="before each batch's timed runs, wait up to this long for the load average to fall "
        "below --max-load (default 120; 0: do not wait, only record)",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="after the start-up measurements, let Model.tune pick onnx2jax's kernel "
        "libraries for each batch size (as a deployment would once)",
    )
    p.add_argument("--no-peak", action="store_true", help="skip measuring the matmul peak")
    p.add_argument(
        "--json", type=_new_file, metavar="OUT.json", help="write the full record as JSON"
    )
    p.set_defaults(func=cmd_bench)


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import Generator

    try:
        ids = np.array([[int(t) for t in args.prompt_ids.split(",") if t.strip()]])
    except ValueError:
        raise InputError(f"--prompt-ids must look like 1,2,3, got {args.prompt_ids!r}") from None
    gen = Generator(args.model, prefill=args.prefill, capacity=args.capacity)
    kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
              eos_token_id=args.eos)  # fmt: skip
    t0 = time.perf_counter()
    gen.generate(ids, args.max_new_tokens, **kw)  # compiles (or reads the compile cache)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = gen.generate(ids, args.max_new_tokens, **kw)
    took = time.perf_counter() - t0
    print(" ".join(str(t) for t in out[0]))
    print(
        f"{out.size / took:,.1f} tokens/s ({out.size} tokens in {took * 1e3:.1f} ms; first call "
        f"with compile {first:.2f} s)"
    )
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate tokens with a decoder's KV cache, on device")
    p.add_argument("model", help="decoder step graph with past inputs and present outputs")
    p.add_argument("--prompt-ids", required=True, metavar="1,2,3")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--prefill", metavar="PREFILL.onnx", help="separate prompt graph (no past)")
    p.add_argument("--capacity", type=_positive_int, help="cache positions (default: bucketed)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=_positive_int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eos", type=int, metavar="TOKEN_ID")
    p.set_defaults(func=cmd_generate)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.app import serve
    from .serve.config import BatchConfig

    models = {}
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = os.path.splitext(os.path.basename(item))[0], item
        if not name or name in models:
            raise InputError(f"model name {name!r} is empty or given twice; use NAME=PATH")
        if not os.path.isfile(path):
            raise InputError(f"{item}: no such model file")
        models[name] = path
    try:
        sizes = tuple(int(b) for b in args.preferred_batch_sizes.split(",") if b.strip())
    except ValueError:
        raise InputError(
            f"--preferred-batch-sizes must look like 1,4,16, got {args.preferred_batch_sizes!r}"
        ) from None
    config = BatchConfig(
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=sizes,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=args.max_queue_size,
        default_timeout_ms=args.timeout_ms,
        batch_mode=args.batch_mode,
        replicas=args.replicas,
        devices=args.devices,
    )
    serve(
        models,
        host=args.host,
        port=args.port,
        config=config,
        dims=parse_dims(args.dim),
        processes=args.processes,
    )
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over HTTP (KServe v2 / Triton protocol) with dynamic batching",
    )
    p.add_argument("models", nargs="+", metavar="MODEL.onnx | NAME=PATH")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--max-batch-size", type=_positive_int, default=32)
    p.add_argument("--preferred-batch-sizes", default="", metavar="1,4,16",
                   help="buckets batches are padded to (default: powers of two)")  # fmt: skip
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    p.add_argument("--max-queue-size", type=int, default=1024, help="0: unbounded")
    p.add_argument("--timeout-ms", type=float, default=0.0, help="queue timeout (0: none)")
    p.add_argument("--batch-mode", choices=["vmap", "axis"], default="vmap")
    p.add_argument("--replicas", type=_positive_int, default=1,
                   help="batches of a model that may run at once, one worker thread each")  # fmt: skip
    p.add_argument("--devices", type=int, default=1,
                   help="local devices a batch is split over (0: all)")  # fmt: skip
    p.add_argument("--processes", type=_positive_int, default=1,
                   help="server processes sharing the port (SO_REUSEPORT), each with its own batchers")  # fmt: skip
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of a non-batch symbolic dim, to compile its buckets at start-up")  # fmt: skip
    p.set_defaults(func=cmd_serve)


def _add_quantize(sub) -> None:
    from .quantization._cli import add_parser  # the command lives beside onnx2jax.quantize

    add_parser(sub)


def cmd_convert(args: argparse.Namespace) -> int:
    from .export import convert

    dims = parse_dims(args.dim)
    platforms = [p for p in args.platform.split(",") if p] if args.platform else None
    data = convert(
        args.model,
        args.output,
        dims=dims,
        constraints=args.constraint,
        platforms=platforms,
        x64=args.x64,
        vjp_order=args.vjp_order,
        passes=_passes(args.passes),
        dtype=args.dtype,
    )
    fixed = ", ".join(f"{k}={v}" for k, v in dims.items())
    print(f"wrote {args.output} ({len(data) / 1e6:.2f} MB)" + (f"; fixed {fixed}" if fixed else ""))
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="write a jax.export artifact (symbolic dims) that onnx2jax.load_exported runs "
        "without onnx",
    )
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help="fix a symbolic dimension (default: every dim_param stays symbolic)",
    )
    p.add_argument(
        "--constraint",
        action="append",
        default=[],
        metavar="EXPR",
        help="a jax.export shape constraint on the symbolic dims, e.g. 'seq <= 512'",
    )
    p.add_argument("--platform", help="lowering platforms, comma-separated (default: this one)")
    p.add_argument("--x64", action="store_true", help="compute int64/float64 in 64 bits")
    p.add_argument(
        "--vjp-order", type=int, default=0, help="store VJPs so jax.grad works (default 0)"
    )
    p.add_argument("--passes", default="default", help="graph passes: default, none, or a,b,...")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16"],
        help="store float weights and compute in this dtype (float32 accumulation)",
    )
    p.set_defaults(func=cmd_convert)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onnx2jax", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    p_run.add_argument("--runs", type=_positive_int, default=20)
    p_run.add_argument("--seed", type=int, default=0)
    p_run.add_argument("--x64", action="store_true", help="compute int64/float64 in 64 bits")
    p_run.add_argument("--rtol", type=float, default=1e-4)
    p_run.add_argument("--atol", type=float, default=1e-5)
    p_run.set_defaults(func=cmd_run)
    p_run.add_argument(
        "--passes", default="default", help="graph passes: default, none, or a,b,... by name"
    )
    p_opt = sub.add_parser(
        "optimize",
        help="write the graph after onnx2jax's passes as an ONNX file (onnxruntime runs it too)",
    )
    p_opt.add_argument("model")
    p_opt.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p_opt.add_argument(
        "--passes", default="default", help="graph passes: default, or a,b,... by name"
    )
    p_opt.set_defaults(func=cmd_optimize)
    _add_bench(sub)
    _add_serve(sub)
    _add_generate(sub)
    _add_quantize(sub)
    _add_convert(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (Onnx2JaxError, OSError) as e:  # OSError: an unreadable model, an unwritable --json
        print(f"onnx2jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
