"""``Model.tune``: time the compiler option sets of ``_compiler.candidates`` on real inputs, keep
the fastest for the model's program, and remember the choice for later processes.

The choice is stored beside the compiled programs in JAX's compilation cache folder (onnx2jax's
per-user one unless the user chose another; ``ONNX2JAX_CACHE_DIR=off`` turns both off), one
small JSON file per program and machine: ``onnx2jax-tune/<fingerprint>.json``. ``load`` reads
it, so a model tuned once starts with its choice in every later process on that machine.
The fingerprint covers the traced graph (after the passes), the params' shapes and dtypes, the
jax version, the backend and the CPU; a changed model, upgrade or machine starts untuned.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ._compiler import candidates
from ._ir import Graph

_RECORDS = "onnx2jax-tune"
_SMALL = 4096  # bytes: constants up to this size count by value (shapes, axes), larger by shape
# Another choice replaces the default only when faster by this much: on the VMs here the speed
# moves by more than the choices differ, and a flip within noise can cost (the Whisper encoder
# at batch 8 picked YNNPACK convolutions, 7% slower than the default in a longer A/B:
# benchmarks/NOTES.md 28).
MARGIN = 0.03


@dataclass
class TuneReport:
    """What ``Model.tune`` measured: median ms per call for each option set, and the choice."""

    chosen: str
    ms: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        rows = ", ".join(f"{k} {v:.2f} ms" for k, v in self.ms.items())
        return f"chose {self.chosen!r} ({rows})"


def tune(model, args: tuple, kwargs: dict[str, Any], *, rounds: int = 3, seconds: float = 0.3):
    """Compile ``model(*args, **kwargs)`` once per option set, time them in interleaved rounds
    (each at least ``seconds`` or 3 calls), and keep the fastest on the model's program (the
    default unless another is ``MARGIN`` faster)."""
    prog = model._program
    if prog.stages is not None or prog.string_outputs:
        return TuneReport(next(iter(candidates())))  # no single program to compile
    lowered, _ = model.lower(*args, **kwargs)
    options = candidates(convolutions="convolution" in lowered.as_text())
    if len(options) < 2:
        return TuneReport(next(iter(options)))  # nothing to choose
    jitted = {}
    for name, opts in options.items():
        prog.jits.main_options.clear()
        prog.jits.main_options.update(opts)
        prog.jits.main = None
        jax.block_until_ready(model(*args, **kwargs))  # compiles this variant
        jitted[name] = prog.jits.main

    def run(name: str) -> None:
        prog.jits.main = jitted[name]
        jax.block_until_ready(model(*args, **kwargs))

    ms = time_choices(run, list(jitted), rounds=rounds, seconds=seconds)
    chosen = choose(ms, next(iter(options)))
    prog.jits.main_options.clear()
    prog.jits.main_options.update(options[chosen])
    prog.jits.main = jitted[chosen]
    report = TuneReport(chosen, ms)
    _remember(fingerprint(prog, model.params), report)
    return report


def choose(ms: dict[str, float], default: str, margin: float = MARGIN) -> str:
    """The fastest choice in ``ms``, unless it beats ``default`` by less than ``margin``."""
    best = min(ms, key=ms.get)
    return best if ms[best] < ms[default] * (1 - margin) else default


def time_choices(
    run: Callable[[str], Any], names: list[str], *, rounds: int, seconds: float
) -> dict[str, float]:
    """Median ms of ``run(name)`` per name: interleaved rounds, each at least ``seconds`` or 3
    calls per name, in alternating order, so drift on a shared machine hits every choice
    alike."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runs, end = [], time.perf_counter() + seconds
            while len(runs) < 3 or time.perf_counter() < end:
                t0 = time.perf_counter()
                run(name)
                runs.append(time.perf_counter() - t0)
            times[name].append(statistics.median(runs))
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def recall(prog, params) -> str | None:
    """Apply the choice a ``tune`` of this program recorded on this machine, if any (at load).

    Returns its name. A record naming a choice this process does not offer is ignored."""
    folder = _records_dir()
    if folder is None or not os.path.isdir(folder):
        return None  # nothing tuned on this machine yet: skip the fingerprint
    try:
        with open(os.path.join(folder, fingerprint(prog, params) + ".json")) as f:
            chosen = json.load(f)["chosen"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    options = candidates()
    if chosen not in options or chosen == next(iter(options)):
        return None
    prog.jits.main_options.update(options[chosen])
    return chosen


def _remember(key: str, report: TuneReport) -> None:
    folder = _records_dir()
    if folder is None:
        return
    try:  # written whole, then renamed: processes sharing the folder never read half a record
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"chosen": report.chosen, "ms": report.ms}, f)
        os.replace(tmp, os.path.join(folder, key + ".json"))
    except OSError:
        pass  # a read-only cache folder: the choice holds for this process only


def _records_dir() -> str | None:
    folder = jax.config.jax_compilation_cache_dir
    if not folder or "://" in folder:  # none, or a remote store: keep choices in memory
        return None
    return os.path.join(folder, _RECORDS)


def fingerprint(prog, params) -> str:
    """What the choice depends on: the program as traced, the params' shapes and dtypes, the
    jax version, backend and CPU (not the weights' values)."""
    h = hashlib.sha256()
    h.update(
        repr((jax.__version__, jax.default_backend(), _cpu(), prog.x64, prog.precision)).encode()
    )
    _hash_graph(h, prog.plan.graph, frozenset(params))
    for name in sorted(params):
        p = params[name]
        h.update(repr((name, tuple(p.shape), str(p.dtype))).encode())
    return h.hexdigest()[:32]


def _hash_graph(h, graph: Graph, params: frozenset[str] = frozenset()) -> None:
    h.update(repr([(s.name, str(s.dtype), s.shape) for s in graph.inputs]).encode())
    for name, arr in graph.initializers.items():
        h.update(name.encode())
        if name in params:  # by shape: the weights' values do not change the program
            h.update(repr((arr.shape, str(arr.dtype))).encode())
        else:
            _hash_value(h, arr)
    for node in graph.nodes:
        h.update(repr((node.op_type, node.domain, node.inputs, node.outputs)).encode())
        for key in sorted(node.attrs):
            h.update(key.encode())
            _hash_value(h, node.attrs[key])


def _hash_value(h, value) -> None:
    if isinstance(value, Graph):
        _hash_graph(h, value)
    elif isinstance(value, np.ndarray):
        h.update(repr((value.shape, str(value.dtype))).encode())
        if value.nbytes <= _SMALL and value.dtype != object:
            h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        for v in value:
            _hash_value(h, v)
    else:
        h.update(repr(value).encode())


@functools.cache
def _cpu() -> str:
    """The CPU's model name and flags (AVX-512 or not changes the best kernels), else the
    architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(
                line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line
            )
        return " ".join(info.get(k, "").strip() for k in ("model name", "flags"))
    except OSError:
        return platform.machine() + " " + platform.processor()
