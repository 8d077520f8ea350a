"""ruff's lint and format checks over the whole tree, as CI runs them (the rules: pyproject's [tool.ruff])."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff() -> list[str]:
    if (
        shutil.which("ruff") is None
        and subprocess.run(
            [sys.executable, "-m", "ruff", "--version"], capture_output=True, check=False
        ).returncode
    ):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("ruff is not installed; CI installs it with the test extra", pytrace=False)
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return [sys.executable, "-m", "ruff"]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(args: list[str]) -> None:
    res = subprocess.run([*_ruff(), *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"ruff {' '.join(args)} found problems:\n{res.stdout}{res.stderr}"
