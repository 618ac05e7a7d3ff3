"""One adapter per engine: how it loads, compiles and runs a model inside a worker process.

Each adapter imports only its own engine, lazily (this module is imported by the parent too,
and an onnxruntime worker must never import JAX). ``Engine.__init__`` pins the process to the
requested cores, reads the pickled inputs, and lets the subclass fill ``info`` (import, load,
trace, compile and first-run times), ``run`` and ``first_outputs``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .flops import traced_flops
from .record import rss_mb


def pin(threads: int) -> None:
    """Restrict this process to ``threads`` cores before any engine starts its thread pool."""
    with contextlib.suppress(AttributeError, OSError):
        allowed = sorted(os.sched_getaffinity(0))
        if threads < len(allowed):
            os.sched_setaffinity(0, allowed[:threads])


def as_numpy(outs) -> list:
    res = []
    for o in outs:
        if hasattr(o, "to_numpy"):
            o = o.to_numpy()
        res.append(np.asarray(o) if hasattr(o, "shape") else o)
    return res


class Engine:
    """Loads a model, compiles it, runs it. ``info`` holds the timings of getting ready."""

    name: ClassVar[str]
    single_threaded: ClassVar[bool] = False  # runs on one thread whatever it is given
    run: Callable[[], Any]
    first_outputs: list

    def __init__(self, req: dict):
        pin(req["threads"])
        with open(req["inputs"], "rb") as f:
            self.inputs: dict[str, np.ndarray] = pickle.load(f)
        self.req = req
        self.info: dict[str, Any] = {}
        t0 = time.perf_counter()
        self.prepare()
        self.info["total_s"] = (
            time.perf_counter() - t0 - self.info.get("import_s", 0.0) - self.info.get("tune_s", 0.0)
        )
        if req.get("outputs"):
            with open(req["outputs"], "wb") as f:
                pickle.dump(self.first_outputs, f)

    def prepare(self) -> None:
        """Import the engine (``import_s``, ``import_rss_mb``), load and compile the model,
        set ``run`` and ``first_outputs`` (the first run, timed as ``first_run_s``)."""
        raise NotImplementedError

    def timed(self, key: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.info[key] = time.perf_counter() - t0
        return out

    def imported(self, t0: float) -> None:
        self.info["import_s"] = time.perf_counter() - t0
        self.info["import_rss_mb"] = rss_mb()


ADAPTERS: dict[str, type[Engine]] = {}


def adapter(cls: type[Engine]) -> type[Engine]:
    if cls.name in ADAPTERS:
        raise ValueError(f"engine {cls.name!r} registered twice")
    ADAPTERS[cls.name] = cls
    return cls


@adapter
class Onnx2Jax(Engine):
    """``onnx2jax.load``, then ``jax.jit(model.apply)`` lowered and compiled ahead of time; a
    run is one call on numpy inputs plus ``block_until_ready``. With ``tune``, ``Model.tune``
    then picks the kernel libraries and the program is compiled again with its choice.
    ``cache_dir`` points JAX's persistent compilation cache at that folder (cold: empty; warm:
    the one cold filled)."""

    name = "onnx2jax"

    def prepare(self) -> None:
        req = self.req
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
        self.imported(t0)
        self.info["device"] = str(jax.devices()[0].device_kind)
        model = self.timed("load_s", lambda: onnx2jax.load(req["path"]))
        static = {k: v for k, v in self.inputs.items() if k in model.value_inputs}
        dynamic = {k: v for k, v in self.inputs.items() if k not in model.value_inputs}
        if model.graph_breaks:
            fn = jax.jit(lambda params, ins: model.apply(params, **ins, **static))
            call_args = (model.params, dynamic)
            lowered = self.timed("trace_s", lambda: fn.lower(*call_args))
        else:
            # What model(...) runs: weights prepared once (the layout and BatchNorm passes'
            # param-only nodes), onnx2jax's compiler options; the prepare time counts in trace_s.
            lowered, call_args = self.timed("trace_s", lambda: model.lower(**self.inputs))
        compiled = self.timed("compile_s", lambda: lowered.compile())
        self.run = lambda: jax.block_until_ready(compiled(*call_args))
        self.first_outputs = as_numpy(self.timed("first_run_s", self.run))
        if req.get("cache_dir"):
            self.info["cache_entries_after"] = len(os.listdir(req["cache_dir"]))
        if req.get("tune") and not model.graph_breaks:
            # As a deployment would once at start-up; its time (tuning, then compiling the
            # choice) is ``tune_s``, kept out of ``total_s`` and so of the start-up columns.
            t_tune = time.perf_counter()
            report = model.tune(**self.inputs)
            self.info["tuned"] = report.chosen
            self.info["tune_ms"] = report.ms
            lowered, call_args = model.lower(**self.inputs)
            tuned = lowered.compile()
            self.run = lambda: jax.block_until_ready(tuned(*call_args))
            self.first_outputs = as_numpy(self.run())  # the outputs checked are the tuned ones
            self.info["tune_s"] = time.perf_counter() - t_tune
        if req.get("cost"):
            with contextlib.suppress(Exception):
                ca = compiled.cost_analysis()
                ca = ca[0] if isinstance(ca, (list, tuple)) else ca
                self.info["flops_xla"] = float(ca["flops"])
            try:
                self.info["flops_traced"] = traced_flops(model, dynamic, static)
            except Exception as e:  # internals moved: the parent falls back to shape inference
                self.info["flops_traced_error"] = f"{type(e).__name__}: {e}"[:300]


@adapter
class OnnxRuntime(Engine):
    """The reference: CPU provider, ``intra_op_num_threads = threads``, one inter-op thread,
    sequential execution, every graph optimization on; a run is ``sess.run(None, feeds)``."""

    name = "onnxruntime"

    def prepare(self) -> None:
        t0 = time.perf_counter()
        import onnxruntime as ort

        self.imported(t0)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.req["threads"]
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = self.timed(
            "load_s",
            lambda: ort.InferenceSession(self.req["path"], so, providers=["CPUExecutionProvider"]),
        )
        feed = {i.name: self.inputs[i.name] for i in sess.get_inputs()}
        self.run = lambda: sess.run(None, feed)
        self.first_outputs = as_numpy(self.timed("first_run_s", self.run))


@adapter
class JaxOnnxRuntime(Engine):
    """jaxonnxruntime (another ONNX -> JAX converter): ``call_onnx_model`` (which runs every node
    once, eagerly, to collect static facts), then the whole function under one ``jax.jit``."""

    name = "jaxonnxruntime"

    def prepare(self) -> None:
        t0 = time.perf_counter()
        import jax

        jax.config.update("jax_enable_compilation_cache", False)
        import onnx
        from jaxonnxruntime import call_onnx

        jax.devices()
        self.imported(t0)
        model = self.timed("load_s", lambda: onnx.load(self.req["path"]))
        init_names = {t.name for t in model.graph.initializer}
        ins = [self.inputs[i.name] for i in model.graph.input if i.name not in init_names]
        func, params = self.timed("trace_s", lambda: call_onnx.call_onnx_model(model, ins))
        fn = jax.jit(func)
        compiled = self.timed("compile_s", lambda: fn.lower(params, ins).compile())
        self.run = lambda: jax.block_until_ready(compiled(params, ins))
        self.first_outputs = as_numpy(self.timed("first_run_s", self.run))


@adapter
class Tract(Engine):
    """Sonos' tract through its Python bindings (one thread): concrete input facts (or, where
    that fails, the model's symbolic facts with the symbols bound), ``into_runnable()``."""

    name = "tract"
    single_threaded = True

    def prepare(self) -> None:
        req = self.req
        # tract's analysis of some exports (GPT-2 with symbolic dims) grew past 18 GiB and was
        # OOM-killed on a shared machine: cap its address space so it fails alone.
        with contextlib.suppress(ValueError, OSError):
            import resource

            cap = int(req.get("memory_cap_gb") or 8) * 2**30
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        t0 = time.perf_counter()
        import tract
        from tract.transform import SetSymbols

        self.imported(t0)
        inf = self.timed("load_s", lambda: tract.onnx().load(req["path"]))
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

        runnable = self.timed("compile_s", typed)
        self.run = lambda: [o.to_numpy() for o in runnable.run(ins)]
        self.first_outputs = self.timed("first_run_s", self.run)


@adapter
class OpenVino(Engine):
    """Intel's OpenVINO, CPU plugin: ``read_model`` on the ONNX file, the inputs reshaped to the
    benchmark's concrete shapes (as onnx2jax compiles for them; where that fails, the model's own
    shapes), ``compile_model`` for latency on ``threads`` threads and one stream, in float32 (on
    CPUs with AVX512_BF16 or AMX its default precision would be bfloat16); a run is one
    synchronous ``infer`` on numpy inputs, outputs copied out as numpy arrays."""

    name = "openvino"

    def prepare(self) -> None:
        t0 = time.perf_counter()
        import openvino as ov

        self.imported(t0)
        core = ov.Core()
        model = self.timed("load_s", lambda: core.read_model(self.req["path"]))
        names = [p.get_any_name() for p in model.inputs]
        try:
            model.reshape({n: ov.PartialShape(list(self.inputs[n].shape)) for n in names})
            self.info["openvino_shapes"] = "concrete"
        except Exception as e:
            self.info["openvino_shapes"] = f"model's own (reshape failed: {str(e)[:200]})"
        config = {
            "INFERENCE_NUM_THREADS": self.req["threads"],
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        compiled = self.timed("compile_s", lambda: core.compile_model(model, "CPU", config))
        self.info["openvino_config"] = {
            k: str(compiled.get_property(k)) for k in (*config, "EXECUTION_DEVICES")
        }
        request = compiled.create_infer_request()
        feed = {n: self.inputs[n] for n in names}
        self.run = lambda: request.infer(feed).to_tuple()
        self.first_outputs = as_numpy(self.timed("first_run_s", self.run))


ENGINES = tuple(ADAPTERS)  # onnx2jax first: `--compare` takes the others


def start(req: dict) -> Engine:
    """The adapter for ``req['engine']``, ready to run."""
    return ADAPTERS[req["engine"]](req)


def matmul_peak(req: dict) -> dict[str, Any]:
    """Best and median GFLOP/s of an n^3 float32 matmul (10 timed runs after 3 warm-ups) in
    XLA (``engine='xla'``) or onnxruntime."""
    pin(req["threads"])
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
