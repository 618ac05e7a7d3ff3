"""``Model.tune``: time the compiler option sets of ``_compiler.candidates`` on real inputs, keep
the fastest for the model's program."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import jax

from ._compiler import candidates


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
    (each at least ``seconds`` or 3 calls), and keep the fastest on the model's program."""
    prog = model._program
    if prog.stages is not None or prog.string_outputs:
        return TuneReport(next(iter(candidates())))  # no single program to compile
    lowered, _ = model.lower(*args, **kwargs)
    options = candidates(convolutions="convolution" in lowered.as_text())
    if len(options) < 2:
        return TuneReport(next(iter(options)))  # nothing to choose
    jitted = {}
    for name, opts in options.items():
        prog.tuned_options.clear()
        prog.tuned_options.update(opts)
        prog.jits.main = None
        jax.block_until_ready(model(*args, **kwargs))  # compiles this variant
        jitted[name] = prog.jits.main
    times: dict[str, list[float]] = {name: [] for name in options}
    for _ in range(rounds):
        for name, fn in jitted.items():
            prog.jits.main = fn
            runs, end = [], time.perf_counter() + seconds
            while len(runs) < 3 or time.perf_counter() < end:
                t0 = time.perf_counter()
                jax.block_until_ready(model(*args, **kwargs))
                runs.append(time.perf_counter() - t0)
            times[name].append(statistics.median(runs))
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    chosen = min(ms, key=ms.get)
    prog.tuned_options.clear()
    prog.tuned_options.update(options[chosen])
    prog.jits.main = jitted[chosen]
    return TuneReport(chosen, ms)
