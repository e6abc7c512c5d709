"""The code stays clean: ``ruff check`` (pyflakes, pycodestyle, import order, bugbear) and ``ruff format --check``
pass on the whole repository, with the settings in pyproject.toml. The README's test command runs them, so CI does."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args):
    r = subprocess.run([sys.executable, "-m", "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"ruff {' '.join(args)} . failed:\n{r.stdout[-4000:]}{r.stderr[-2000:]}"
