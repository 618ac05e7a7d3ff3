"""Run every ONNX node (or model) case through onnx2jax and draft its expectations by cause.

Usage::

    python tests/tools/update_expectations.py             # report only
    python tests/tools/update_expectations.py --write     # also rewrite tests/node_expectations.py
    python tests/tools/update_expectations.py -k resize   # only cases whose name contains "resize"
    python tests/tools/update_expectations.py --suite model --write   # tests/model_expectations.py

``--suite node`` (the default) is ``tests/test_onnx_node_suite.py``; ``--suite model`` is
``tests/test_onnx_model_suite.py`` (onnx's simple, pytorch-converted, pytorch-operator and real
model cases that are available locally). Cases run in worker processes (``--jobs``, default 2)
without pytest; each case runs exactly as its test runs it (same ``run_case``). A case that hangs past
``--timeout`` or crashes its worker is recorded as such and the worker is replaced. Only failing
cases are ever written; the draft is for a human to review (reasons, issue links) before
committing. Prints the pass count, failures by cause, a per-op histogram and the slowest cases.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_T_START = time.perf_counter()

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)
# As tests/conftest.py does, so results (and compilation cache entries) match the pytest run.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
)

import test_onnx_model_suite as model_suite  # noqa: E402
import test_onnx_node_suite as node_suite  # noqa: E402
from failure_cause import FAMILIES, cause_of, ops_of  # noqa: E402


@dataclass(frozen=True)
class Suite:
    """One conformance test module: its cases, how a case is read, where its expectations live."""

    name: str  # the --suite value
    title: str  # as the pass count line in tests/conftest.py names it
    heading: str  # the first line of the drafted expectations module
    module: Any  # the test module: run_case, EXPECTED_FAILURES
    load: Callable[[], Sequence[Any]]  # the cases it runs, in a stable order
    materialize: Callable[[Any], Any]  # a listed case -> one with model and data_sets

    @property
    def expectations(self) -> str:
        return os.path.join(TESTS, f"{self.name}_expectations.py")


SUITES = {
    "node": Suite(
        "node",
        "ONNX node suite",
        "Expected failures of the ONNX node suite (tests/test_onnx_node_suite.py), grouped by cause.",
        node_suite,
        node_suite.load_cases,
        lambda c: c,
    ),
    # load_cases() also returns the cases whose data is not here (a download); they never run.
    "model": Suite(
        "model",
        "ONNX model suites",
        "Expected failures of the ONNX model suites (tests/test_onnx_model_suite.py), by cause.",
        model_suite,
        lambda: model_suite.load_cases()[0],
        model_suite.materialize,
    ),
}
SUITE = SUITES["node"]  # main() sets it before any worker forks


@dataclass
class Result:
    name: str
    passed: bool
    cause: str = ""
    op: str = ""
    detail: str = ""
    seconds: float = 0.0
    jitted: bool = True  # False: passed, but ran eagerly (string outputs)


def classify(case) -> Result:
    """Run one case; on failure name its cause (a group of the expectations file) and op."""
    t0 = time.perf_counter()
    case = SUITE.materialize(case)
    ops = ops_of(case.model)
    main_op = ops[0] if len(set(ops)) == 1 else ""
    try:
        jitted = SUITE.module.run_case(case)
        return Result(case.name, True, op=main_op, seconds=time.perf_counter() - t0, jitted=jitted)
    except Exception as e:
        cause, op, detail = cause_of(case.model, e)
    return Result(case.name, False, cause, op, detail, time.perf_counter() - t0)


# -- workers -------------------------------------------------------------------------------------


def setup_jax(cache_dir: str | None) -> None:
    import jax

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _worker(conn, cache_dir: str | None) -> None:
    """Run the case indices the parent sends, one at a time, until it sends None."""
    import warnings

    warnings.simplefilter("ignore")
    setup_jax(cache_dir)
    import onnx2jax.backend  # noqa: F401  (import time is not any case's time)

    cases = SUITE.load()
    while True:
        i = conn.recv()
        if i is None:
            return
        conn.send(classify(cases[i]))


class _Worker:
    """A worker process with its own pipe, so killing it cannot jam a queue shared with others."""

    def __init__(self, ctx, cache_dir: str | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, cache_dir), daemon=True)
        self.proc.start()
        child.close()
        self.case: int | None = None
        self.started = 0.0

    def give(self, i: int | None) -> None:
        self.case, self.started = i, time.time()
        self.conn.send(i)

    def stop(self, grace: float = 0.0) -> None:
        self.proc.join(grace)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_all(indices: list[int], jobs: int, timeout: float, cache_dir: str | None) -> list[Result]:
    cases = SUITE.load()  # before forking: workers inherit the cases (jax is not imported)
    if jobs <= 0:  # in this process, for debugging
        setup_jax(cache_dir)
        return [classify(cases[i]) for i in indices]
    ctx = mp.get_context("fork")
    todo = collections.deque(indices)
    done: dict[int, Result] = {}
    workers: list[_Worker] = []

    def feed(w: _Worker) -> None:
        if todo:
            w.give(todo.popleft())
        else:
            w.give(None)
            w.stop(grace=10.0)
            workers.remove(w)

    for _ in range(min(jobs, len(todo))):
        w = _Worker(ctx, cache_dir)
        workers.append(w)
        feed(w)
    last_report = time.time()
    while workers:
        ready = mp.connection.wait([w.conn for w in workers], timeout=1.0)
        for w in list(workers):
            lost = None
            if w.conn in ready:
                try:
                    result = w.conn.recv()
                except (EOFError, OSError):
                    lost = ("crash", f"worker died (exit code {w.proc.exitcode})")
                else:
                    done[w.case] = result
                    feed(w)
                    continue
            elif time.time() - w.started > timeout:
                lost = ("timeout", f"over {timeout:.0f} s")
            if lost is not None:
                i = w.case
                w.stop()
                workers.remove(w)
                done[i] = Result(
                    cases[i].name, False, lost[0], "", lost[1], time.time() - w.started
                )
                if todo:
                    w = _Worker(ctx, cache_dir)
                    workers.append(w)
                    feed(w)
        if time.time() - last_report > 30:
            print(f"  ... {len(done)}/{len(indices)} cases", file=sys.stderr, flush=True)
            last_report = time.time()
    return [done[i] for i in indices]


# -- the draft -----------------------------------------------------------------------------------


def _group(cause: str) -> str:
    family = cause.split(":")[0]
    return family if family in FAMILIES else cause


def _group_order(group: str) -> tuple[int, str]:
    if group in FAMILIES:
        return list(FAMILIES).index(group), group
    return (99 if group.startswith("not implemented") else 50), group


def _header(group: str, n: int) -> str:
    if group in FAMILIES:
        title = FAMILIES[group]
    elif group.startswith("not implemented: "):
        title = f"Not implemented yet: {group[len('not implemented: ') :]}"
    else:
        title = f"{group[0].upper()}{group[1:]}"
    text = f"{title}: {n} case{'s' if n != 1 else ''}"
    return "\n".join(textwrap.wrap(text, 100, initial_indent="    # ", subsequent_indent="    # "))


def _suite_option() -> str:
    return "" if SUITE.name == "node" else f"--suite {SUITE.name} "


def draft(failures: list[Result]) -> str:
    groups: dict[str, list[Result]] = collections.defaultdict(list)
    for r in failures:
        groups[_group(r.cause)].append(r)
    lines = [
        f'"""{SUITE.heading}',
        "",
        "Each entry is ``case name: cause``; the suite marks them ``xfail(strict=True)``, so a case that",
        "starts passing fails until its entry is removed: this list can only shrink. A listed case that",
        "fails for another cause (``tests/failure_cause.py``) fails too. Draft a new one",
        f"with ``python tests/tools/update_expectations.py {_suite_option()}--write`` and review it by hand.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "EXPECTED_FAILURES: dict[str, str] = {",
    ]
    for group in sorted(groups, key=_group_order):
        members = sorted(groups[group], key=lambda r: r.name)
        lines.append(_header(group, len(members)))
        for r in members:
            lines.append(f"    {json.dumps(r.name)}: {json.dumps(r.cause)},")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    global SUITE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="node",
        help="which suite: node (default) or model; --write rewrites tests/<suite>_expectations.py",
    )
    ap.add_argument(
        "--jobs", "-j", type=int, default=2, help="worker processes (0: in this process)"
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    ap.add_argument("-k", dest="pattern", default="", help="only cases whose name contains this")
    ap.add_argument("--write", action="store_true", help="rewrite the suite's expectations module")
    ap.add_argument("--output", help="write the draft to this file instead")
    ap.add_argument(
        "--cache-dir",
        default=os.path.join(ROOT, ".jax_cache"),
        help="JAX persistent compilation cache ('' to disable)",
    )
    ap.add_argument("--details", action="store_true", help="print each failure's message")
    args = ap.parse_args(argv)
    SUITE = SUITES[args.suite]

    cases = SUITE.load()  # already loaded by the import (the suites parametrize over them)
    t_load = time.perf_counter() - _T_START
    indices = [i for i, c in enumerate(cases) if args.pattern in c.name]
    if SUITE is SUITES["model"]:
        for u in model_suite.load_cases()[1]:
            print(f"not available: {u.kind} {u.name}: {u.reason}", file=sys.stderr)
    print(
        f"{len(cases)} {SUITE.name} cases imported and loaded in {t_load:.1f} s; running {len(indices)} "
        f"with {args.jobs} worker(s)",
        file=sys.stderr,
        flush=True,
    )
    t1 = time.perf_counter()
    results = run_all(indices, args.jobs, args.timeout, args.cache_dir or None)
    wall = time.perf_counter() - t1

    failures = [r for r in results if not r.passed]
    jitted = sum(r.passed and r.jitted for r in results)
    eager = sum(r.passed and not r.jitted for r in results)
    by_cause = collections.Counter(r.cause for r in failures)
    by_op = collections.Counter(r.op or "(several ops)" for r in failures)

    print(f"\nFailures by cause ({len(by_cause)} causes):")
    for cause, n in by_cause.most_common():
        print(f"  {n:5d}  {cause}")
    print("\nFailures by op:")
    for op, n in by_op.most_common():
        print(f"  {n:5d}  {op}")
    print("\nSlowest cases:")
    for r in sorted(results, key=lambda r: -r.seconds)[:10]:
        print(f"  {r.seconds:6.2f} s  {r.name}{'' if r.passed else '  (fails: ' + r.cause + ')'}")
    if args.details:
        print("\nDetails:")
        for r in failures:
            print(f"  {r.name}: [{r.cause}] {r.detail}")

    if not args.pattern:
        # Stale entries: expected failures that now pass (they would fail the strict xfail).
        now_pass = sorted(
            r.name for r in results if r.passed and r.name in SUITE.module.EXPECTED_FAILURES
        )
        if now_pass:
            print(
                f"\n{len(now_pass)} listed expected failures now pass: {', '.join(now_pass[:30])}"
                + (" ..." if len(now_pass) > 30 else "")
            )
    text = draft(failures)
    target = args.output or (SUITE.expectations if args.write else None)
    if target and args.pattern:
        print("\nnot writing a draft from a -k subset", file=sys.stderr)
    elif target:
        with open(target, "w") as f:
            f.write(text)
        print(f"\nwrote {len(failures)} expected failures to {os.path.relpath(target, ROOT)}")
    total_cpu = sum(r.seconds for r in results)
    print(
        f"\n{SUITE.title}: {jitted} of {len(results)} cases pass through the jit path "
        f"({eager} more pass eagerly: string outputs; {len(failures)} fail); "
        f"{wall:.0f} s wall with {args.jobs} worker(s), "
        f"{total_cpu:.0f} s summed over cases, {t_load:.1f} s to import and load the cases"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
