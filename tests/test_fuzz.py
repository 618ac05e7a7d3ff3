"""Mutation fuzzing (tests/fuzz_models.py): malformed models and inputs raise Onnx2JaxError only.

Every case runs in a worker subprocess with a timeout and an address-space limit; a case fails
on a foreign exception, a crash, a hang or running out of memory, and the failure message names
the case's seed, index and mutations, with the command that reproduces it.
"""

from __future__ import annotations

import fuzz_models
import pytest


def _check(report: fuzz_models.Report) -> None:
    print(report.summary())
    assert not report.bad, f"{report.summary()}\n{report.describe_failures()}"
    # The cases must reach every layer, not just the protobuf parser.
    assert report.counts["ok"] > report.cases // 10
    for kind in ("ModelLoadError", "InputError", "NodeError"):
        assert report.errors_by_type[kind] > 0, kind


def test_fuzz_seeds_are_valid(tmp_path):
    """Unmutated, every seed model loads and runs."""
    for name, make in fuzz_models.SEEDS.items():
        seed = make()
        case = fuzz_models.Case(
            0,
            0,
            name,
            ["unmutated"],
            seed.model.SerializeToString(),
            seed.files,
            (),
            seed.feeds,
            "path",
            False,
        )
        assert fuzz_models.run_case(case, str(tmp_path), reraise=True) == {"outcome": "ok"}, name


def test_fuzz_cases_are_deterministic():
    a, b = fuzz_models.make_case(3, 17), fuzz_models.make_case(3, 17)
    assert a.describe() == b.describe() and a.data == b.data


def test_fuzz_default():
    """120 cases (about 7 s on one core); the 10,000-case run is under -m slow."""
    _check(fuzz_models.run(cases=120, seed=fuzz_models.DEFAULT_SEED, workers=1))


@pytest.mark.slow
def test_fuzz_10000():
    """Ten thousand cases on two workers (about 20 minutes on two cores)."""
    _check(fuzz_models.run(cases=10_000, seed=fuzz_models.DEFAULT_SEED + 1, workers=2))
