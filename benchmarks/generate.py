"""Generation benchmark: onnx2jax.Generator vs onnxruntime's past-concat loop (and onnxruntime-genai).

Builds a GPT-2-style decoder from a transformers config with seeded random weights, exports it
with torch's legacy exporter (past inputs, present outputs; cached in benchmarks/zoo/cache/),
and on that one graph measures, each engine in its own process (peak memory per engine):

- tokens/s of ``Generator.generate`` (one jitted while_loop) and of onnxruntime's usual loop
  (numpy feeds, the past concatenated by the graph and fed back), batch 1 and 4, 128 and 512
  new tokens, greedy, an 8-token prompt;
- the naive loop (onnxruntime recomputing the whole sequence every token, no cache);
- per-token time against position for both engines (onnx2jax: ``gen.step`` called from Python,
  one token at a time; onnxruntime: each step of its loop);
- with ``--genai`` (needs ``pip install onnxruntime-genai``): onnxruntime-genai's own loop on a
  Llama-style model that its model builder makes from a local random-weight checkpoint, and
  onnx2jax on the same ONNX file.

Writes benchmarks/results/generate.json, generate.md and generate_per_token.png (a CSV when
matplotlib is missing). Both engines get the same threads (``--threads``, default 2).

    python benchmarks/generate.py                    # the measurement (minutes; quiet machine)
    python benchmarks/generate.py --tokens 16 --batch 1 --naive-tokens 8   # a quick check
    python benchmarks/generate.py --profile   # per-step time by cache size, both engines

Each engine's generation is timed GENERATE_REPEATS times (default 3; the fastest counts), the
naive loop once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / "zoo" / "cache" / "generate"
RESULTS = HERE / "results"
PROMPT_LEN = 8
# Timed runs per engine and setting; the fastest counts (a shared machine's load only slows).
REPEATS = int(os.environ.get("GENERATE_REPEATS", "3"))


# -- models --------------------------------------------------------------------------------------


def gpt2_path(layers: int, width: int, vocab: int) -> Path:
    """The GPT-2 decode-step export (built once, then read from the cache)."""
    path = CACHE / f"gpt2-L{layers}-E{width}-V{vocab}.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        sys.path.insert(0, str(HERE / "zoo"))
        from decoders import export_gpt2  # the decode-step export the tests use too

        export_gpt2(path, n_layer=layers, n_embd=width, vocab=vocab)
    return path


def llama_genai_dir(layers: int, width: int, vocab: int, precision: str = "fp32") -> Path:
    """A Llama-style model built by onnxruntime-genai's model builder from a local checkpoint
    with seeded random weights (and a word-level tokenizer: the builder saves one)."""
    out = CACHE / f"llama-genai-L{layers}-E{width}-V{vocab}-{precision}"
    if (out / "model.onnx").exists():
        return out
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    ckpt = CACHE / f"llama-ckpt-L{layers}-E{width}-V{vocab}"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=width * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(ckpt)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", eos_token="t2")
    fast.save_pretrained(ckpt)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o",
           str(out), "-p", precision, "-e", "cpu", "-c", str(CACHE / "hf")]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


# -- workers: one engine, one process ------------------------------------------------------------


def _ort_session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _ort_feeds(sess, ids, plen, past):
    b, t = ids.shape
    names = {i.name for i in sess.get_inputs()}
    feeds = {"input_ids": ids.astype(np.int64)}
    if "attention_mask" in names:
        feeds["attention_mask"] = np.ones((b, plen + t), np.int64)
    if "position_ids" in names:
        feeds["position_ids"] = np.broadcast_to(np.arange(plen, plen + t), (b, t)).astype(np.int64)
    feeds.update(past)
    return feeds


def _empty_past(sess, batch):
    past = {}
    for i in sess.get_inputs():
        if i.name.startswith("past"):
            shape = [batch if d == i.shape[0] else 0 if isinstance(d, str) else d for d in i.shape]
            past[i.name] = np.zeros(shape, np.float32)
    return past


def ort_loop(path, batch, n, threads, per_token=False):
    """onnxruntime the usual way: numpy feeds, the grown present fed back as the next past."""
    sess = _ort_session(path, threads)
    outs = [o.name for o in sess.get_outputs()]
    pasts = [i.name for i in sess.get_inputs() if i.name.startswith("past")]
    prompt = np.tile(np.arange(1, PROMPT_LEN + 1), (batch, 1))

    def run():
        times, tokens = [], []
        t0 = time.perf_counter()
        res = sess.run(None, _ort_feeds(sess, prompt, 0, _empty_past(sess, batch)))
        plen = PROMPT_LEN
        for _ in range(n):
            got = dict(zip(outs, res, strict=True))
            tok = got["logits"][:, -1].argmax(-1)
            tokens.append(tok)
            past = {p: got[p.replace("past_key_values", "present")] for p in pasts}
            s = time.perf_counter()
            res = sess.run(None, _ort_feeds(sess, tok[:, None], plen, past))
            times.append(time.perf_counter() - s)
            plen += 1
        return time.perf_counter() - t0, np.stack(tokens, 1), times

    # warm-up: onnxruntime's first runs allocate and pick kernels
    sess.run(None, _ort_feeds(sess, prompt, 0, _empty_past(sess, batch)))
    before = _rss_mib()
    total, tokens, times = min((run() for _ in range(REPEATS)), key=lambda r: r[0])
    return {"seconds": total, "tokens": tokens.tolist(), "step_times": times,
            "rss_growth_mib": _rss_mib() - before}  # fmt: skip


def ort_naive(path, batch, n, threads):
    """The loop without a cache: the whole sequence recomputed every token (empty past)."""
    sess = _ort_session(path, threads)
    seq = np.tile(np.arange(1, PROMPT_LEN + 1), (batch, 1))
    sess.run(None, _ort_feeds(sess, seq, 0, _empty_past(sess, batch)))  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        logits = sess.run(["logits"], _ort_feeds(sess, seq, 0, _empty_past(sess, batch)))[0]
        seq = np.concatenate([seq, logits[:, -1].argmax(-1)[:, None]], 1)
    return {"seconds": time.perf_counter() - t0, "tokens": seq[:, PROMPT_LEN:].tolist()}


def onnx2jax_generate(path, batch, n, threads, per_token=False):
    """``Generator.generate`` (after a compile run), and per-token times of ``gen.step``."""
    import jax

    import onnx2jax

    gen = onnx2jax.Generator(path)
    prompt = np.tile(np.arange(1, PROMPT_LEN + 1), (batch, 1))
    t0 = time.perf_counter()
    gen.generate(prompt, n)
    compile_s = time.perf_counter() - t0
    before = _rss_mib()
    total = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        tokens = gen.generate(prompt, n)
        total = min(total, time.perf_counter() - t0)
    out = {"seconds": total, "tokens": tokens.tolist(), "compile_seconds": compile_s,
           "rss_growth_mib": _rss_mib() - before}  # fmt: skip
    capacity = onnx2jax.generate.bucket(onnx2jax.generate.bucket(PROMPT_LEN) + n)
    cache = gen.init_cache(batch, capacity)
    out["cache_bytes"] = int(sum(v.nbytes for v in cache.values()))
    out["capacity"], out["rewritten"] = capacity, gen.rewritten
    if per_token:  # the step from Python: per-call dispatch included
        _, cache = gen.step(gen.params, cache, prompt, np.zeros(batch, np.int32))
        tok = np.ones((batch, 1), np.int32)
        # compile the one-token step first, on a throwaway cache (the step donates it)
        warm = gen.step(gen.params, gen.init_cache(batch, capacity), tok, np.zeros(batch, np.int32))
        jax.block_until_ready(warm)
        times = []
        for p in range(PROMPT_LEN, PROMPT_LEN + n):
            s = time.perf_counter()
            logits, cache = gen.step(gen.params, cache, tok, np.full(batch, p, np.int32))
            jax.block_until_ready(logits)
            times.append(time.perf_counter() - s)
        out["step_times"] = times
    return out


def genai_loop(model_dir, batch, n, threads):
    """onnxruntime-genai's generator loop (in-place shared-buffer cache), greedy."""
    import onnxruntime_genai as og

    # The same intra-op threads as the other engines, through the model's genai_config.json.
    cfg_path = Path(model_dir) / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    cfg["model"]["decoder"]["session_options"]["inter_op_num_threads"] = 1
    cfg_path.write_text(json.dumps(cfg, indent=4))
    config = og.Config(str(model_dir))
    config.clear_providers()
    model = og.Model(config)
    prompt = np.tile(np.arange(1, PROMPT_LEN + 1), (batch, 1)).astype(np.int32)

    def run(steps):
        params = og.GeneratorParams(model)
        params.set_search_options(
            max_length=PROMPT_LEN + steps, min_length=PROMPT_LEN + steps, do_sample=False,
            batch_size=batch,
        )  # fmt: skip
        g = og.Generator(model, params)
        t0 = time.perf_counter()
        g.append_tokens(prompt)
        while not g.is_done():
            g.generate_next_token()
        seconds = time.perf_counter() - t0
        seqs = [[int(x) for x in g.get_sequence(b)][PROMPT_LEN:] for b in range(batch)]
        return seconds, seqs

    run(min(n, 8))  # warm-up
    seconds, tokens = min((run(n) for _ in range(REPEATS)), key=lambda r: r[0])
    return {"seconds": seconds, "tokens": tokens}


def profile_step(path, batch, n, threads, **_):
    """Per-step CPU and wall time of ``gen.step`` (one token) by cache size, onnxruntime's
    step at the same past lengths, and the LM-head product alone (``[batch, K] x [K, vocab]``):
    the measurements behind docs/generate.md's batch-4 profile. CPU time as well as wall:
    on a shared machine wall time is mostly other people's load (onnxruntime's CPU time
    includes its thread pool's spin-waiting, so read its wall time on a quiet machine)."""
    import jax
    import jax.numpy as jnp

    import onnx2jax

    gen = onnx2jax.Generator(path)
    sess = _ort_session(path, threads)
    tok = np.ones((batch, 1), np.int32)
    out = {"step_ms": {}, "ort_step_ms": {}}

    def clock(fn, reps=50):
        for _ in range(5):
            fn()
        c, w = time.process_time(), time.perf_counter()
        for _ in range(reps):
            fn()
        return {"cpu": (time.process_time() - c) / reps * 1e3,
                "wall": (time.perf_counter() - w) / reps * 1e3}  # fmt: skip

    for cap in (32, 256, 768):
        state = {"cache": gen.init_cache(batch, cap)}
        pos = np.full(batch, min(cap, 64) - 2, np.int32)

        def ours(state=state, pos=pos):
            logits, state["cache"] = gen.step(gen.params, state["cache"], tok, pos)
            jax.block_until_ready(logits)

        out["step_ms"][cap] = clock(ours)
        past = {i.name: np.zeros((batch, i.shape[1], cap - 1, i.shape[3]), np.float32)
                for i in sess.get_inputs() if i.name.startswith("past")}  # fmt: skip
        feeds = _ort_feeds(sess, tok, cap - 1, past)
        out["ort_step_ms"][cap] = clock(lambda feeds=feeds: sess.run(None, feeds))
    # The LM head alone, in both weight layouts ([K, N] as exported, [N, K] as the
    # matmul_weights pass lays it out): the largest 2-D parameter.
    head = max((v for v in gen.params.values() if v.ndim == 2), key=lambda v: v.size)
    kn = head if head.shape[0] < head.shape[1] else head.T
    x = jnp.ones((batch, kn.shape[0]), jnp.float32)
    opts = onnx2jax.compiler_options()
    for name, w, f in (
        ("kn", kn, lambda x, w: x @ w),
        ("nk", jnp.asarray(kn.T), lambda x, w: x @ w.T),
    ):
        mm = jax.jit(f, compiler_options=opts)
        out[f"lm_head_{name}_ms"] = clock(
            lambda mm=mm, w=w: jax.block_until_ready(mm(x, w)), reps=200
        )
    out["lm_head_kn_shape"] = list(kn.shape)
    out["step_ops_us"] = _op_breakdown(gen, batch, 32)
    return out


def _op_breakdown(gen, batch: int, capacity: int, steps: int = 30) -> dict[str, float]:
    """Microseconds per step of each compiled op of ``gen.step`` (XLA's thunks, from a
    ``jax.profiler`` Perfetto trace), the largest first."""
    import collections
    import gzip
    import tempfile

    import jax

    cache = gen.init_cache(batch, capacity)
    tok, pos = np.ones((batch, 1), np.int32), np.full(batch, capacity // 2, np.int32)
    for _ in range(5):
        logits, cache = gen.step(gen.params, cache, tok, pos)
    jax.block_until_ready(logits)
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(steps):
            logits, cache = gen.step(gen.params, cache, tok, pos)
            jax.block_until_ready(logits)
        jax.profiler.stop_trace()
        files = sorted(Path(tmp).rglob("*.trace.json.gz"))
        if not files:
            return {}
        trace = json.load(gzip.open(files[-1]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total = collections.Counter()
    for e in events:
        name = e.get("name", "")
        # XLA's op thunks: fusions, dots, copies, scatters (not the Python/runtime frames)
        if e.get("ph") == "X" and not name.startswith(("$", "Thunk", "Pjit", "Common", "Parse")):
            total[name] += e.get("dur", 0) / steps
    return {k: round(v, 1) for k, v in total.most_common(25)}


ENGINES = {
    "profile": profile_step,
    "onnx2jax": onnx2jax_generate,
    "onnxruntime": ort_loop,
    "naive": ort_naive,
    "genai": genai_loop,
}


def _rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec
    from the parent, which may have imported torch for the export)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict) -> None:
    fn = ENGINES[spec["engine"]]
    kw = {"per_token": True} if spec.get("per_token") else {}
    out = fn(spec["model"], spec["batch"], spec["tokens"], spec["threads"], **kw)
    out["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(out))


def measure(spec: dict, threads: int) -> dict:
    env = dict(os.environ)
    # XLA's CPU thread pool gets the same threads as onnxruntime's intra-op pool.
    flags = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1][len("RESULT ") :])


# -- the run and its report ----------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--tokens", default="128,512")
    ap.add_argument("--naive-tokens", type=int, default=128, help="tokens of the naive loop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--genai", action="store_true", help="also onnxruntime-genai on a Llama")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--profile", action="store_true", help="per-step times by cache size only")
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    batches = [int(b) for b in args.batch.split(",")]
    lengths = [int(n) for n in args.tokens.split(",")]
    model = str(gpt2_path(args.layers, args.width, args.vocab))
    if args.profile:
        for b in batches:
            spec = {"engine": "profile", "model": model, "batch": b, "tokens": 0,
                    "threads": args.threads}  # fmt: skip
            print(
                f"batch {b}, load {os.getloadavg()[0]:.2f}:",
                json.dumps(measure(spec, args.threads)),
            )
        return 0
    record = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "load_start": os.getloadavg(),
        "model": {
            "path": os.path.relpath(model, HERE.parent),
            "family": "gpt2",
            "layers": args.layers,
            "width": args.width,
            "vocab": args.vocab,
        },  # fmt: skip
        "prompt_len": PROMPT_LEN,
        "threads": args.threads,
        "runs": [],
    }
    for n in lengths:
        for b in batches:
            row = {"family": "gpt2", "batch": b, "new_tokens": n}
            longest = n == max(lengths) and b == batches[0]
            for engine in ("onnx2jax", "onnxruntime"):
                spec = {"engine": engine, "model": model, "batch": b, "tokens": n,
                        "threads": args.threads, "per_token": longest}  # fmt: skip
                row[engine] = measure(spec, args.threads)
                print(engine, b, n, _summary(row[engine], b, n), flush=True)
            if n == min(lengths):
                k = min(args.naive_tokens, n)
                spec = {"engine": "naive", "model": model, "batch": b, "tokens": k,
                        "threads": args.threads}  # fmt: skip
                row["naive"] = measure(spec, args.threads)
                row["naive"]["new_tokens"] = k
                print("naive", b, k, _summary(row["naive"], b, k), flush=True)
            _agree(row)
            record["runs"].append(row)
    if args.genai:
        record["genai"] = _genai_runs(args, batches, lengths)
    record["load_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "generate.md").write_text(render(record))
    _chart(record, out)
    print((out / "generate.md").read_text())
    return 0


def _genai_runs(args, batches, lengths) -> list[dict]:
    try:
        model_dir = llama_genai_dir(args.layers, args.width, args.vocab)
    except Exception as e:  # noqa: BLE001 - reported, not fatal: the GPT-2 rows stand alone
        return [{"error": f"model builder failed: {e}"}]
    rows = []
    for n in lengths:
        for b in batches:
            row = {"family": "llama-genai", "batch": b, "new_tokens": n}
            for engine, model in (
                ("onnx2jax", str(model_dir / "model.onnx")),
                ("genai", str(model_dir)),
            ):
                spec = {"engine": engine, "model": model, "batch": b, "tokens": n,
                        "threads": args.threads}  # fmt: skip
                row[engine] = measure(spec, args.threads)
                print(engine, b, n, _summary(row[engine], b, n), flush=True)
            a, g = row["onnx2jax"].get("tokens"), row["genai"].get("tokens")
            if a is not None and g is not None:
                row["same_tokens"] = a == g
            rows.append(row)
    return rows


def _tps(res: dict, batch: int, n: int) -> float | None:
    return None if "seconds" not in res else batch * n / res["seconds"]


def _summary(res: dict, batch: int, n: int) -> str:
    if "error" in res:
        return "ERROR " + res["error"].strip().splitlines()[-1][:200]
    return f"{_tps(res, batch, n):,.0f} tokens/s, peak RSS {res['peak_rss_mib']:,.0f} MiB"


def _agree(row: dict) -> None:
    """Whether onnx2jax's greedy tokens equal onnxruntime's loop (random weights: near-ties are
    possible, so a mismatch is reported, not fatal; the tests check agreement per prefix)."""
    a, b = row["onnx2jax"].get("tokens"), row["onnxruntime"].get("tokens")
    if a is not None and b is not None:
        row["same_tokens"] = a == b


def render(rec: dict) -> str:
    m = rec["model"]
    load = f"{rec['load_start'][0]:.2f} -> {rec['load_end'][0]:.2f}"
    lines = [
        "# Generation: onnx2jax.Generator vs onnxruntime's loop",
        "",
        f"Generated by `benchmarks/generate.py` (do not edit). GPT-2 ({m['layers']} layers x "
        f"{m['width']}, vocabulary {m['vocab']}, random weights, torch legacy export), "
        f"{rec['prompt_len']}-token prompt, greedy, {rec['threads']} threads per engine, "
        f"{rec['machine']['cores']} cores, 1-minute load {load}.",
        "",
        "| batch | new tokens | onnx2jax tok/s | onnxruntime loop tok/s | ratio | naive loop tok/s "
        "| vs naive | same tokens | peak RSS onnx2jax / ort (MiB) | RSS growth in the timed run "
        "onnx2jax / ort (MiB) | cache (MiB) | onnx2jax compile (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec["runs"]:
        b, n = r["batch"], r["new_tokens"]
        ours, theirs = _tps(r["onnx2jax"], b, n), _tps(r["onnxruntime"], b, n)
        naive = r.get("naive", {})
        naive_tps = _tps(naive, b, naive.get("new_tokens", n)) if naive else None
        lines.append(
            f"| {b} | {n} | {_f(ours)} | {_f(theirs)} | {_ratio(ours, theirs)} | "
            f"{_f(naive_tps)} | {_ratio(ours, naive_tps)} | {r.get('same_tokens', '-')} | "
            f"{_f(r['onnx2jax'].get('peak_rss_mib'))} / {_f(r['onnxruntime'].get('peak_rss_mib'))}"
            f" | {_f(r['onnx2jax'].get('rss_growth_mib'), 1)} / "
            f"{_f(r['onnxruntime'].get('rss_growth_mib'), 1)}"
            f" | {_f(r['onnx2jax'].get('cache_bytes', 0) / 2**20, 1)} | "
            f"{_f(r['onnx2jax'].get('compile_seconds'), 1)} |"
        )
    errors = [
        f"- {r['family']} batch {r['batch']} {e}: {r[e]['error'].strip().splitlines()[-1]}"
        for r in rec["runs"] + rec.get("genai", [])
        if "batch" in r
        for e in ("onnx2jax", "onnxruntime", "naive", "genai")
        if isinstance(r.get(e), dict) and "error" in r[e]
    ]
    if rec.get("genai"):
        lines += ["", "## onnxruntime-genai (Llama-style, its model builder, fp32)", ""]
        lines += [
            "| batch | new tokens | onnx2jax tok/s | onnxruntime-genai tok/s | ratio "
            "| same tokens | peak RSS onnx2jax / genai (MiB) |"
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for r in rec["genai"]:
            if "batch" not in r:
                lines.append(f"\n{r.get('error')}")
                continue
            b, n = r["batch"], r["new_tokens"]
            ours, theirs = _tps(r["onnx2jax"], b, n), _tps(r["genai"], b, n)
            lines.append(
                f"| {b} | {n} | {_f(ours)} | {_f(theirs)} | {_ratio(ours, theirs)} | "
                f"{r.get('same_tokens', '-')} | {_f(r['onnx2jax'].get('peak_rss_mib'))} / "
                f"{_f(r['genai'].get('peak_rss_mib'))} |"
            )
    if errors:
        lines += ["", "Errors:", *errors]
    lines += [
        "",
        "The naive loop recomputes the whole sequence every token (onnxruntime, no cache), at "
        "the shorter length. Per-token time vs position: `generate_per_token.png` (onnx2jax's "
        "`gen.step` called from Python, one token at a time, against each step of "
        "onnxruntime's loop). Peak RSS is the engine process's, compile included.",
        "",
    ]
    return "\n".join(lines)


def _f(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def _chart(rec: dict, out: Path) -> None:
    rows = [r for r in rec["runs"] if "step_times" in r["onnx2jax"]]
    if not rows:
        return
    r = rows[0]
    series = {e: r[e].get("step_times") for e in ("onnx2jax", "onnxruntime")}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        with open(out / "generate_per_token.csv", "w") as f:
            f.write("position,onnx2jax_ms,onnxruntime_ms\n")
            for i, (a, b) in enumerate(zip(*series.values(), strict=False)):
                f.write(f"{PROMPT_LEN + i},{a * 1e3:.4f},{b * 1e3:.4f}\n")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, times in series.items():
        if times:
            pos = np.arange(PROMPT_LEN, PROMPT_LEN + len(times))
            ax.plot(pos, np.asarray(times) * 1e3, label=name, lw=0.8)
    ax.set_xlabel("position")
    ax.set_ylabel("ms per token")
    ax.set_title(f"GPT-2 decode step, batch {r['batch']}: time per token vs position")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "generate_per_token.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
