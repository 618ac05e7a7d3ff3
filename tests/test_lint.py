"""Lint and format are part of the test command, so CI keeps the code ruff-clean."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.parametrize(
    "args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"]
)
def test_ruff(args):
    # The environment's own ruff first: the venv may be used without being activated.
    beside_python = os.path.dirname(sys.executable)
    ruff = shutil.which("ruff", path=os.pathsep.join([beside_python, os.environ.get("PATH", "")]))
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    result = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
