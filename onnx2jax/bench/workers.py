"""The worker process protocol: the parent's ``Worker`` handle and the worker's ``serve`` loop.

A worker imports only its engine. It must not import the ``onnx2jax`` package (whose
``__init__`` imports JAX), so it loads this folder as a stand-alone package named
``_onnx2jax_bench`` without running its ``__init__``: modules here import each other
relatively, and only the onnx2jax adapter imports ``onnx2jax``, by absolute name.

Requests are JSON lines on the worker's stdin; each gets one JSON line back on a private copy of
its stdout (whatever the libraries print goes to stderr, which is a log file).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE = "_onnx2jax_bench"
_BOOT = (
    f"import importlib, sys, types; p = types.ModuleType({_PACKAGE!r}); "
    "p.__path__ = [sys.argv[1]]; sys.modules[p.__name__] = p; "
    "importlib.import_module(p.__name__ + '.workers').serve()"
)


class WorkerError(RuntimeError):
    """A worker process failed, timed out or answered with an error."""


# Every engine's process runs with transparent huge pages for the memory glibc's malloc maps
# (glibc >= 2.35; ignored elsewhere). XLA allocates each call's temporaries afresh, and at 4 KiB
# pages their first touch costs a page fault each: MobileNetV2 at batch 8 took 19,000 faults
# and 84 ms a call, 250 and 58 ms with huge pages (benchmarks/NOTES.md 14). onnxruntime's
# arena keeps its memory, but gets the same setting so no engine is favoured. README says how
# to deploy with it; a GLIBC_TUNABLES that mentions the setting already is left as it is.
MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
        env["GLIBC_TUNABLES"] = f"{tunables}:{MALLOC_TUNABLE}" if tunables else MALLOC_TUNABLE
    return env


class Worker:
    """One engine process; requests and answers are JSON lines."""

    def __init__(self, tmp: str, label: str):
        self.log_path = os.path.join(tmp, f"{label}.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, HERE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            env=worker_env(),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, timeout_s: float, **req: Any) -> dict:
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(f"worker exited early; {self._log_tail()}") from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            self.close()
            raise WorkerError(f"no answer to {req['cmd']!r} within {timeout_s:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            tail = self._log_tail()
            self.close()
            code = self.proc.returncode
            why = " (killed: out of memory?)" if code in (-9, 137) else ""
            raise WorkerError(f"worker died during {req['cmd']!r}, exit code {code}{why}; {tail}")
        resp = json.loads(line)
        if not resp.get("ok"):
            raise WorkerError(resp.get("error", "unknown error"))
        return resp

    def _log_tail(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, errors="replace") as f:
            text = f.read()[-1500:]
        return f"log tail: {text.strip()}" if text.strip() else "no log output"

    def close(self) -> None:
        if self._log.closed:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------


def timed_runs(run: Callable[[], Any], n: int | None = None, seconds: float = 0.0) -> list[float]:
    """Per-run wall times: ``n`` runs, or at least one and until ``seconds`` have passed."""
    times: list[float] = []
    gc.collect()
    gc.disable()  # a collection inside a timed run would land on one engine only
    try:
        start = time.perf_counter()
        while (
            (len(times) < n)
            if n is not None
            else (not times or time.perf_counter() - start < seconds)
        ):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return times


def serve() -> None:
    """The worker loop: one JSON request per stdin line, one JSON answer per line.

    Commands: ``init`` (start the engine of ``req['engine']``), ``warmup`` (run for
    ``seconds``), ``run`` (``n`` timed runs), ``finish`` (report peak RSS and exit), ``peak``
    (time a matmul and exit).
    """
    from .engines import matmul_peak, start
    from .record import rss_mb

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter on stdout goes to the log, not into the protocol
    engine = None
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        try:
            if cmd == "init":
                engine = start(req)
                resp = {"info": engine.info}
            elif cmd == "warmup":
                resp = {"times": timed_runs(engine.run, seconds=req["seconds"])}
            elif cmd == "run":
                resp = {"times": timed_runs(engine.run, n=req["n"])}
            elif cmd == "peak":
                resp = matmul_peak(req)
            elif cmd == "finish":
                resp = {"peak_rss_mb": rss_mb()}
            else:
                raise ValueError(f"unknown command {cmd!r}")
            resp["ok"] = True
        except BaseException as e:  # noqa: BLE001  (reported to the parent, which decides)
            traceback.print_exc()
            msg = str(e).split("\nStack backtrace:")[0]  # tract appends a Rust backtrace
            resp = {"ok": False, "error": f"{type(e).__name__}: {msg}"}
        proto.write(json.dumps(resp) + "\n")
        proto.flush()
        if cmd in ("finish", "peak") or not resp["ok"]:
            break
