"""The README's two commands stay true: the test command is exactly what CI runs, and the main command runs the
pipeline with the shipped default config."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"^TEST_CMD='(.*)'$", ci, flags=re.M).group(1)
    assert _bash_blocks()[1].strip() == test_cmd


def test_readme_main_command_runs_the_default_pipeline():
    first = _bash_blocks()[0].strip()
    assert first.endswith("rlft pipeline") and "pip install -q torch==2.13.0" in first
    assert (ROOT / "configs" / "pipeline.yaml").is_file()
