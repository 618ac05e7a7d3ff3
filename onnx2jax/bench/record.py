"""What a benchmark record holds besides timings: the machine, its load, memory high-water
marks, summary statistics, output differences and ratios.

Standard library and numpy only: worker processes import this module too.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

# 2: per-batch "load" (load average before and after the timed runs, the wait for a quiet
# machine, other processes' CPU use and steal time during the runs, the verdict); the options'
# max_load / quiet_wait / block_seconds; openvino as an engine.
SCHEMA = 2

# CPU features that decide which kernels the engines can use (AVX-512 and VNNI matter most for
# matmuls and INT8), in the order they are printed.
CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
)
VERSIONED = (
    "jax",
    "jaxlib",
    "onnx",
    "onnxruntime",
    "numpy",
    "jaxonnxruntime",
    "tract",
    "openvino",
)
# The default --max-load: a quarter of a busy core per core of the machine (0.5 on 2 cores).
LOAD_PER_CORE = 0.25
# Shorter timed windows are too coarse for the kernel's CPU accounting (10 ms ticks) to say how
# much of the machine other processes used.
MIN_CPU_WINDOW_S = 1.0


def default_threads() -> int:
    """The cores this process may run on (what XLA's CPU thread pool would size itself to)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_max_load() -> float:
    """The load average below which the machine counts as quiet: 0.25 per logical core."""
    return LOAD_PER_CORE * (os.cpu_count() or 1)


def machine_info() -> dict[str, Any]:
    """CPU model and flags, core counts, library versions and the load average, for the record."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = [f for f in CPU_FLAGS if f in have]
                    break
    versions = {}
    for mod in VERSIONED:
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[mod] = version(mod)
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": default_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average": load_average(),
        "glibc_tunables": _worker_tunables(),
    }


def _worker_tunables() -> str:
    from .workers import worker_env  # the setting every engine's process ran with

    return worker_env().get("GLIBC_TUNABLES", "")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def wait_for_quiet(
    max_load: float, max_wait_s: float, log: Callable[[str], None], poll_s: float = 5.0
) -> dict[str, Any]:
    """Wait up to ``max_wait_s`` for the 1-minute load average to fall below ``max_load``.

    The kernel updates the average every 5 s, hence the poll. Returns the first and last load
    seen, the seconds waited and whether it fell below (``quiet_before``; True where the OS has
    no load average, with ``load_1m_start`` None).
    """
    t0 = time.monotonic()
    first = load = (load_average() or [None])[0]
    if load is not None and load >= max_load and max_wait_s > 0:
        log(f"  load average {load:.2f} >= {max_load:.2f}: waiting up to {max_wait_s:.0f} s")
        while load >= max_load and time.monotonic() - t0 < max_wait_s:
            time.sleep(min(poll_s, max(0.0, max_wait_s - (time.monotonic() - t0))))
            load = load_average()[0]
    return {
        "max_load": max_load,
        "load_1m_start": first,
        "waited_s": time.monotonic() - t0,
        "load_1m_end_of_wait": load,
        "quiet_before": load is None or load < max_load,
    }


def _proc_stat_cpu() -> tuple[int, int] | None:
    """(busy, steal) clock ticks of the whole machine since boot, from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    return busy, fields[7] if len(fields) > 7 else 0


def _proc_ticks(pids: Iterable[int]) -> int:
    """User + system clock ticks used so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/stat") as f:
                # The command name (field 2) may hold spaces: split after its closing bracket.
                rest = f.read().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])  # utime, stime (fields 14, 15)
    return total


def settle(pid: int, window_s: float = 0.005, limit_s: float = 0.5) -> None:
    """Wait until process ``pid`` stops using CPU, so the next engine's runs start on an idle
    machine. onnxruntime's intra-op threads spin for ~40 ms after a run (one core busy:
    benchmarks/NOTES.md 15), which a fixed 20 ms pause left overlapping the next engine's
    first runs, XLA's then at half the cores. Idle: under 10% of a core over ``window_s``."""
    end = time.perf_counter() + limit_s
    last = _cpu_ns(pid)
    while last is not None and time.perf_counter() < end:
        time.sleep(window_s)
        now = _cpu_ns(pid)
        if now is None or now - last < 0.1 * window_s * 1e9:
            return
        last = now
    if last is None:  # no /proc (not Linux): a pause long enough for onnxruntime's spin
        time.sleep(0.05)


def _cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of ``pid`` in ns (/proc/PID/task/*/schedstat), None if unknown.
    ``_proc_ticks`` counts in 10 ms clock ticks, too coarse for ``settle``'s 5 ms windows."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total
    except (OSError, ValueError, IndexError):
        return None


class CpuWindow:
    """How much CPU other processes (and the hypervisor: steal time) took while ours ran.

    ``start(pids)`` before the timed runs, ``stop()`` after; the answer is in cores (busy
    clock ticks of the machine minus those of ``pids`` and this process, over the wall time),
    the unit of the load average. Linux only; elsewhere ``stop()`` returns None fields.
    """

    def __init__(self) -> None:
        self._start: tuple[float, tuple[int, int] | None, int] | None = None
        self._pids: list[int] = []

    def start(self, pids: Iterable[int]) -> None:
        self._pids = [os.getpid(), *pids]
        self._start = (time.monotonic(), _proc_stat_cpu(), _proc_ticks(self._pids))

    def stop(self) -> dict[str, Any]:
        t1, cpu1, own1 = time.monotonic(), _proc_stat_cpu(), _proc_ticks(self._pids)
        t0, cpu0, own0 = self._start or (t1, None, own1)
        out: dict[str, Any] = {"timed_s": t1 - t0, "others_cores": None, "steal_cores": None}
        if cpu0 and cpu1 and t1 > t0:
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            others = (cpu1[0] - cpu0[0]) - (own1 - own0)
            out["others_cores"] = max(0.0, others / hz / (t1 - t0))
            out["steal_cores"] = (cpu1[1] - cpu0[1]) / hz / (t1 - t0)
        return out


def verdict(load: dict[str, Any]) -> bool:
    """Whether a batch was measured on a quiet machine (the rule in benchmarks/README.md): the
    1-minute load average fell below ``max_load`` before the timed runs (within the wait), and,
    where the timed runs lasted at least ``MIN_CPU_WINDOW_S``, other processes plus steal time
    used less than ``max_load`` cores on average during them."""
    if not load.get("quiet_before", True):
        return False
    others = load.get("others_cores")
    if others is None or load.get("timed_s", 0.0) < MIN_CPU_WINDOW_S:
        return True
    return others + (load.get("steal_cores") or 0.0) < load["max_load"]


def format_load(load: dict[str, Any] | None) -> str:
    """One line on how busy the machine was around a batch's timed runs."""
    if not load:
        return "load: not recorded"
    others = load.get("others_cores")
    return (
        f"machine {'quiet' if load.get('quiet') else 'BUSY (ratios unreliable)'}: 1-min load "
        f"average {fmt(load.get('load_1m_before'), '.2f')} before the timed runs (threshold "
        f"{fmt(load.get('max_load'), '.2f')}, waited {fmt(load.get('waited_s'), '.0f', ' s')}"
        f"), other processes {fmt(others, '.2f')} cores and steal "
        f"{fmt(load.get('steal_cores'), '.2f')} during them ({fmt(load.get('timed_s'), '.1f')}"
        " s)"
    )


def fmt(v: Any, spec: str, unit: str = "") -> str:
    """``v`` formatted, or "-" for None."""
    return "-" if v is None else f"{v:{spec}}{unit}"


def rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux: ``VmHWM`` from ``/proc/self/status``, the high-water mark of this process image.
    Not ``getrusage``'s ``ru_maxrss``: Linux carries that across ``execve``, so a worker would
    inherit the high-water mark of the parent it was forked from (the parent has JAX loaded).
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10


def stats(times: list[float], batch: int) -> dict[str, Any]:
    """Median, p90, mean, min and max of per-run wall times (ms) and the throughput."""
    med = statistics.median(times)
    return {
        "runs": len(times),
        "median_ms": med * 1e3,
        "p90_ms": float(np.percentile(times, 90)) * 1e3,
        "mean_ms": statistics.fmean(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "items_per_s": batch / med,
    }


def compare_outputs(ref: list, got: list) -> dict[str, Any]:
    """Largest absolute difference over the numeric outputs, and relative to the largest |ref|."""
    worst_abs, scale = 0.0, 0.0
    for r, g in zip(ref, got, strict=False):
        if (
            not (isinstance(r, np.ndarray) and isinstance(g, np.ndarray))
            or r.dtype.kind not in "fiub"
        ):
            continue
        if r.shape != g.shape:
            return {"error": f"shape {g.shape} vs {r.shape}"}
        if r.size:
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            worst_abs = max(worst_abs, float(np.max(np.abs(r64 - g64))))
            scale = max(scale, float(np.max(np.abs(r64))))
    return {"max_abs_diff": worst_abs, "max_rel_diff": worst_abs / scale if scale else worst_abs}


def ratios(res: dict) -> dict[str, Any]:
    """onnx2jax / other for each other engine: > 1 means onnx2jax takes longer (or more memory);
    for throughput > 1 means onnx2jax serves more items per second."""
    a = res.get("onnx2jax") or {}
    out = {}
    for engine, b in res.items():
        if engine == "onnx2jax" or not a.get("ok") or not b.get("ok"):
            continue

        def ratio(x, y):
            return x / y if x and y else None

        out[f"onnx2jax/{engine}"] = {
            "median": ratio(a.get("median_ms"), b.get("median_ms")),
            "p90": ratio(a.get("p90_ms"), b.get("p90_ms")),
            "throughput": ratio(a.get("items_per_s"), b.get("items_per_s")),
            "compile_cold": ratio(a.get("compile_cold_s"), b.get("compile_cold_s")),
            # Other engines have no compilation cache: their only (cold) time is the reference.
            "compile_warm": ratio(
                a.get("compile_warm_s"), b.get("compile_warm_s") or b.get("compile_cold_s")
            ),
            "peak_rss": ratio(a.get("peak_rss_mb"), b.get("peak_rss_mb")),
        }
    return out
