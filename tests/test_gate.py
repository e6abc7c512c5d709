"""The pipeline's deploy gate: Wilson and Newcombe intervals by hand, and its choice on stage results measured with
rlft (docs/notebook/benchmarks.md), including the ManiSkill pipeline whose online stage regressed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlft.train.gate import difference_interval, gate, wilson_interval
from rlft.train.pipeline import deploy, results_markdown


def test_wilson_interval_by_hand():
    # p = 0.5, n = 100, z = 1.96: centre (0.5 + 0.0192) / 1.0384, half 1.96 * sqrt(0.0025 + 0.0000960) / 1.0384
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(0, 20)  # stays inside [0, 1] at the edge, unlike the normal interval
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(20, 20)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_newcombe_difference_interval_by_hand():
    # Newcombe (1998), method 10, his example (e): 56/70 vs 48/80 -> [0.0524, 0.3339]
    lo, hi = difference_interval(56, 70, 48, 80)
    assert lo == pytest.approx(0.0524, abs=1e-3) and hi == pytest.approx(0.3339, abs=1e-3)


def _rows(*stages):
    return [{"stage": s, "algo": s, "successes": k, "episodes": n, "success_once": k / n} for s, k, n in stages]


def test_gate_on_measured_stage_results():
    # ManiSkill LiftPegUpright, seed 0 (docs/notebook/benchmarks.md §5, 50 episodes): BC 0.68 -> offline IQL 0.82 -> online
    # IQL 0.14: the online stage regressed from both and the offline policy ships; the regression is reported
    # against the best earlier stage (the largest drop)
    g = gate(_rows(("bc", 34, 50), ("offline", 41, 50), ("online", 7, 50)))
    assert g["deployed"] == "offline"
    assert [(r["stage"], r["from"]) for r in g["regressions"]] == [("online", "offline")]
    assert g["regressions"][0]["diff"] == pytest.approx(7 / 50 - 41 / 50)
    assert g["regressions"][0]["interval"][1] < 0
    # OGBench default, seed 0 (docs/notebook/benchmarks.md §2): 0.36 -> 0.34 -> 0.96: the online stage ships, offline's dip
    # is inside the interval (no regression)
    g = gate(_rows(("bc", 18, 50), ("offline", 17, 50), ("online", 48, 50)))
    assert g["deployed"] == "online" and g["regressions"] == []
    # 100-episode results of 2026-12-02 (docs/notebook/benchmarks.md §12): the default pipeline, seed 0 (BC 0.40, IQL 0.21,
    # online IQL 0.87: offline regressed from BC, online ships) and LiftPegUpright with online IQL, seed 0 (0.67,
    # 0.77, 0.21: online regressed, offline ships)
    g = gate(_rows(("bc", 40, 100), ("offline", 21, 100), ("online", 87, 100)))
    assert g["deployed"] == "online" and [(r["stage"], r["from"]) for r in g["regressions"]] == [("offline", "bc")]
    g = gate(_rows(("bc", 67, 100), ("offline", 77, 100), ("online", 21, 100)))
    assert g["deployed"] == "offline" and [(r["stage"], r["from"]) for r in g["regressions"]] == [("online", "offline")]
    # 2026-12-05 (docs/notebook/benchmarks.md §17), the 100-demo default, seed 0: BC 0.70, IQL 0.42, online 0.94; online
    # ships over BC too (0.94 vs 0.70 is beyond the interval), and offline's drop from BC is reported
    g = gate(_rows(("bc", 70, 100), ("offline", 42, 100), ("online", 94, 100)))
    assert g["deployed"] == "online" and [(r["stage"], r["from"]) for r in g["regressions"]] == [("offline", "bc")]
    assert g["regressions"][0]["interval"] == pytest.approx((-0.40, -0.14), abs=0.006)  # as the pipeline printed
    # 2026-12-05 (docs/notebook/benchmarks.md §19), LiftPegUpright with the residual bound 0.5 x std + EMA, seed 0:
    # BC 0.64, IQL 0.69, residual 0.91: online ships, no regression
    g = gate(_rows(("bc", 64, 100), ("offline", 69, 100), ("online", 91, 100)))
    assert g["deployed"] == "online" and g["regressions"] == []
    # 2026-12-07 (docs/notebook/benchmarks.md §35), PickCube with two self-imitation rounds, seed 0: BC 0.12, IQL 0.30,
    # round 1 BC 0.42 / IQL 0.61, round 2 BC 0.31 / IQL 0.67: round 2's IQL ships; round 2's BC stage, below round
    # 1's IQL stage beyond the interval, is reported (as the pipeline printed) and never deployed
    g = gate(
        _rows(("bc", 12, 100), ("offline", 30, 100), ("si1_bc", 42, 100), ("si1", 61, 100))
        + _rows(("si2_bc", 31, 100), ("si2", 67, 100))
    )
    assert g["deployed"] == "si2" and [(r["stage"], r["from"]) for r in g["regressions"]] == [("si2_bc", "si1")]
    assert g["regressions"][0]["interval"] == pytest.approx((-0.42, -0.16), abs=0.006)
    # a tie goes to the later (more trained) stage; an unevaluated stage takes no part
    g = gate(_rows(("bc", 30, 100), ("offline", 30, 100)) + [{"stage": "x", "episodes": 0}])
    assert g["deployed"] == "offline" and "x" not in g["intervals"]


def test_deploy_copies_the_chosen_policy_and_says_where_it_came_from(tmp_path):
    from rlft.policies import build_policy, load_policy
    from rlft.policies.config import PolicyConfig

    rows = _rows(("bc", 64, 100), ("offline", 65, 100), ("online", 20, 100))
    for r in rows:
        p = build_policy(PolicyConfig(kind="gaussian", hidden_dims=(8,)), 4, 2, 3)
        r["policy"] = str(tmp_path / f"{r['stage']}.safetensors")
        p.save(r["policy"])
        r.update(success_at_end=r["success_once"], **{"return": 0.0, "wall_s": 1.0})
    decision = deploy(rows, tmp_path / "run")
    assert decision["deployed"] == "offline" and [r["deployed"] for r in rows] == [False, True, False]
    meta = json.loads((tmp_path / "run" / "deploy" / "deploy.json").read_text())
    assert meta["stage"] == "offline" and meta["source"].endswith("offline.safetensors")
    assert meta["regressions"][0]["stage"] == "online"
    a, b = load_policy(tmp_path / "run" / "deploy" / "policy.safetensors"), load_policy(rows[1]["policy"])
    x = np.zeros((1, 4), np.float32)
    assert np.array_equal(a.act(x).numpy(), b.act(x).numpy())
    md = results_markdown(
        {
            "env_id": "e",
            "seed": 0,
            "stages": rows,
            "wall_s": 3.0,
            "run_dir": "r",
            "deployed": decision["deployed"],
            "deployed_policy": decision["policy"],
            "regressions": decision["regressions"],
        }
    )
    assert "| offline | offline | 0.65 | [0.55, 0.74] |" in md and "Regression: online is below" in md


def test_mean_interval_over_seeds_by_hand():
    """Student-t over 3 seeds: mean 0.8033, s = 0.11547, half = t(0.975, 2) * s / sqrt(3) = 4.303 * 0.066667."""
    from rlft.train.gate import mean_interval

    mean, lo, hi = mean_interval([0.87, 0.67, 0.87])
    assert mean == pytest.approx(0.803333, abs=1e-6)
    assert (lo, hi) == (pytest.approx(0.803333 - 0.286865, abs=1e-5), pytest.approx(0.803333 + 0.286865, abs=1e-5))
    assert mean_interval([0.87, 0.67, 0.87], (0.0, 1.0))[2] == 1.0  # a success rate's interval stays in [0, 1]
    assert mean_interval([0.5]) is None
