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


MAX_FUNCTION_LINES = 60


def test_no_function_in_rlft_is_60_lines_or_longer():
    """A function a reader can take in at once: every function and method in ``rlft/`` (docstring included,
    decorators not) is shorter than 60 lines; a longer one is split into named steps."""
    import ast

    long = []
    for path in sorted((ROOT / "rlft").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n >= MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions of 60 lines or more:\n" + "\n".join(long)
