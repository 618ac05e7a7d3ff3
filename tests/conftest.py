"""Test configuration: several CPU devices (for sharding/batching tests), the shared op checker,
JAX's persistent compilation cache, and the ONNX node and model suites' pass counts in the
summary."""

from __future__ import annotations

import os

# Must be set before JAX initialises its backends. The suite compiles thousands of small
# programs and runs each a few times: LLVM's backend optimizations (level 0) cost more than they
# save there (the op and conv tests ran 30% faster); what is compiled is the same XLA program.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
)
# YNNPACK (onnx2jax/_compiler.py) adds ~0.1 s to every compile that holds a dot or conv; the
# suite compiles thousands of tiny programs, so it runs without it, except where a test asks
# for it (tests/test_passes.py::test_real_resnet_exports_with_ynnpack).
os.environ.setdefault("ONNX2JAX_XLA_LIBRARY", "off")
# Most of the suite's time is XLA compiling thousands of tiny programs; JAX's "disable most
# optimizations" skips the costly HLO passes (about 10% off tests/test_ops_{conv,pool,image}.py).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import sys  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
# The zoo's model builders (benchmarks/zoo/decoders.py: decode-step exports the Generator tests use).
sys.path.insert(
    1,
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "zoo"),
)


def _enable_compilation_cache() -> None:
    """Keep compiled XLA programs in ``.jax_cache/`` (gitignored) across test runs.

    The node suite compiles about 1900 small programs; with a warm cache it runs several times
    faster. Entries are keyed by the program, compile options and jax version, so a stale entry
    is never used; the folder grows by a few MB per changed op (delete it to reclaim space;
    JAX's size limit is not set because its eviction rescans the whole folder on every write).
    ``ONNX2JAX_TEST_JAX_CACHE=0`` turns this off; ``JAX_COMPILATION_CACHE_DIR`` picks the folder.
    """
    if os.environ.get("ONNX2JAX_TEST_JAX_CACHE", "1") == "0":
        return
    import jax

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(root, ".jax_cache")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_enable_compilation_cache()


@pytest.fixture(autouse=True)
def _seed_module_rng(request):
    """Give each test its own data, the same however tests are split across workers.

    Many test modules draw from one module-level ``rng``; under ``pytest -n 2`` which tests ran
    before a test in the same worker decided its data, so a failure in CI could not be replayed.
    Reseeding from the test's id makes every test's data a function of its name alone.
    """
    module = request.node.module
    if isinstance(getattr(module, "rng", None), np.random.Generator):
        module.rng = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _slow_cases() -> frozenset[str]:
    path = os.path.join(os.path.dirname(__file__), "slow_cases.txt")
    with open(path) as fh:
        return frozenset(line.strip() for line in fh if line.strip() and not line.startswith("#"))


def pytest_collection_modifyitems(config, items):
    """Mark the cases listed in tests/slow_cases.txt slow; every test function must keep at least
    one case in the default run (else the list would silently drop a test from CI)."""
    import pytest

    listed = _slow_cases()
    kept: dict[str, int] = {}
    for item in items:
        function = item.nodeid.split("[")[0]
        if item.nodeid in listed:
            item.add_marker(pytest.mark.slow)
        elif not item.get_closest_marker("slow"):
            kept[function] = kept.get(function, 0) + 1
    dropped = {i.nodeid.split("[")[0] for i in items if i.nodeid in listed} - set(kept)
    if dropped and not any("::" in a for a in config.args):  # not when cases are picked by id
        raise pytest.UsageError(
            f"tests/slow_cases.txt moves every case of {sorted(dropped)} out of the default run; "
            "keep at least one case of each test function there"
        )


_NODE_SUITE = "test_onnx_node_suite.py::test_node["
_MODEL_SUITE = "test_onnx_model_suite.py::test_model["


def _count(terminalreporter, prefix: str) -> tuple[int, int, int, int, int]:
    """(jitted, eager, listed, ran, skipped) over the reports of the tests named ``prefix...``.

    Reads the reports, so it works under xdist too. ``listed``: passing cases still listed as
    expected failures; ``skipped``: skipped at setup (counted in ``ran``).
    """
    jitted = eager = listed = ran = skipped = 0
    for outcome, reports in terminalreporter.stats.items():
        for rep in reports:
            if prefix not in getattr(rep, "nodeid", ""):
                continue
            when = getattr(rep, "when", None)
            if not (when == "call" or (when == "setup" and outcome in ("skipped", "error"))):
                continue
            ran += 1
            skipped += when == "setup" and outcome == "skipped"
            ok = outcome in ("passed", "xpassed")
            if outcome == "failed" and "XPASS(strict)" in str(rep.longrepr):
                ok, listed = True, listed + 1  # passes, but is still an expected failure
            if ok and ("onnx2jax_path", "eager") in getattr(rep, "user_properties", ()):
                eager += 1
            elif ok:
                jitted += 1
    return jitted, eager, listed, ran, skipped


def _report(terminalreporter, suite, title: str, expectations: str) -> None:
    jitted, eager, listed, ran, skipped = _count(terminalreporter, suite)
    if not ran:
        return
    notes = []
    if eager:
        notes.append(f"{eager} more pass eagerly (string outputs)")
    if listed:
        notes.append(f"{listed} passing cases are still in tests/{expectations}")
    if skipped:
        notes.append(f"{skipped} skipped: model data not available here")
    note = f" ({'; '.join(notes)})" if notes else ""
    terminalreporter.write_sep("-", title)
    terminalreporter.write_line(
        f"{title}: {jitted} of {ran - skipped} cases pass through the jit path{note}"
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print how many ONNX node cases, and how many ONNX model cases, passed."""
    _report(terminalreporter, _NODE_SUITE, "ONNX node suite", "node_expectations.py")
    # The model suites (simple, pytorch-converted, pytorch-operator, real): cases whose data is
    # not on this machine are skipped and left out of the count.
    _report(terminalreporter, _MODEL_SUITE, "ONNX model suites", "model_expectations.py")
