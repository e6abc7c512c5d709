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
    assert first.endswith("rlft pipeline") and first.startswith("bash scripts/setup.sh ")
    assert (ROOT / "configs" / "pipeline.yaml").is_file()


def test_setup_script_installs_system_packages_and_the_cpu_torch_wheel():
    """Both README commands start with scripts/setup.sh, which installs the system packages itself (the Vulkan
    driver with the maniskill extra) and pins the CPU torch wheel; .ci/run adds nothing to the README's command."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'pip" install -q torch==2.13.0' in setup and "apt-get install" in setup
    assert "mesa-vulkan-drivers" in setup and "libegl1" in setup
    second = _bash_blocks()[1].strip()
    assert second.startswith("bash scripts/setup.sh test,maniskill ")
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert not any("apt-get" in ln or "pip " in ln for ln in ci)


def test_setup_script_without_root_says_what_to_run(tmp_path):
    """Not root and no sudo: the script names the missing packages and the exact command, and stops (exit 1)."""
    import os
    import subprocess

    fake = tmp_path / "bin"
    fake.mkdir()
    for name, body in {"id": "echo 1000", "dpkg": "exit 1"}.items():  # a non-root user on a bare machine
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:/usr/bin:/bin")
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), "maniskill"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 1
    assert "missing system packages" in r.stderr and "mesa-vulkan-drivers" in r.stderr
    assert "apt-get install -y" in r.stderr
