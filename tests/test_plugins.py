"""An algorithm from outside rlft: one file and one YAML (examples/filtered_bc.*), no edit anywhere else. It passes
the contract test, trains through ``rlft train``, and its loss weights are checked by hand."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlft.algos import import_plugins
from rlft.cli import main
from rlft.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "filtered_bc.py"


def test_the_contract_test_covers_a_plugin():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-o",
            "addopts=",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_algos_contract.py",
            "--plugin",
            str(EXAMPLE),
            "-k",
            "filtered_bc",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", r.stdout).group(1))
    assert passed >= 5 * 3  # five policy kinds x (update, determinism, state round trip)


def test_top_fraction_weights_by_hand():
    import_plugins([str(EXAMPLE)])
    from rlft.algos import ALGORITHMS

    weights = sys.modules[ALGORITHMS["filtered_bc"].__module__].top_fraction_weights
    g = torch.tensor([-10.0, -2.0, -5.0, -1.0, -float("inf"), -7.0, -3.0, -4.0])
    # finite returns sorted: -10 -7 -5 -4 -3 -2 -1 (7 values); the 0.75 quantile (linear) is at index 4.5: -2.5
    assert weights(g, 0.25).tolist() == [0, 1, 0, 1, 0, 0, 0, 0]
    assert weights(g, 1.0).tolist() == [1, 1, 1, 1, 0, 1, 1, 1]  # the unknown return is never kept
    assert weights(torch.full((3,), -float("inf")), 0.25).tolist() == [1, 1, 1]  # no known return: plain BC


def test_a_plugin_trains_from_its_yaml(tmp_path):
    data = tmp_path / "demos.h5"
    assert (
        main(
            [
                "collect",
                "--env-id",
                "cube-single-singletask-v0",
                "--num-episodes",
                "2",
                "--num-workers",
                "1",
                "--out",
                str(data),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--config",
                str(ROOT / "examples" / "filtered_bc.yaml"),
                "--dataset",
                str(data),
                "--steps",
                "20",
                "--eval.num-episodes",
                "1",
                "--run.out-dir",
                str(tmp_path),
                "--run.name",
                "pbc",
                "--run.log-every",
                "10",
            ]
        )
        == 0
    )
    run = tmp_path / "pbc"
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == [str(EXAMPLE)]  # resumable from anywhere
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("actor/kept_fraction", 1.0) < 1.0 for r in recs)
    assert (run / "checkpoints" / "policy_final.safetensors").is_file()


def test_a_missing_plugin_is_named(tmp_path):
    with pytest.raises(ConfigError, match="plugins: file not found: nope.py"):
        import_plugins(["nope.py"], str(tmp_path))
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="broken.py failed to import: RuntimeError: boom"):
        import_plugins([str(bad)])
