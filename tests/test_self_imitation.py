"""Self-imitation in ``rlft pipeline``: a stage's rollouts of the previous stage's policy join the dataset
(``rollouts_into_dataset``) for that stage and every later one."""

from __future__ import annotations

import json
import os

import yaml

from rlft.data.h5io import read_episodes

SINGLE = "cube-single-singletask-v0"
CFG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")


def _run(tmp_path, into_dataset: bool) -> dict:
    from rlft.cli import main

    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"env: {{env_id: {SINGLE}, act_horizon: 4, max_episode_steps: 20}}\n"
        "collect: {mode: demos, num_episodes: 2, num_workers: 1}\n"
        "eval: {num_episodes: 2, num_workers: 1}\n"
        "policy_kind: flow\n"
        "stages:\n"
        f"  - {{name: bc, config: {CFG_DIR}/bc.yaml, overrides: {{steps: 5}}}}\n"
        f"  - {{name: si_bc, config: {CFG_DIR}/bc.yaml, rollout_episodes: 3, rollout_only_success: false,\n"
        f"     rollouts_into_dataset: {str(into_dataset).lower()}, overrides: {{steps: 5}}}}\n"
        f"  - {{name: si_offline, config: {CFG_DIR}/offline_iql.yaml, overrides: {{steps: 5}}}}\n"
    )
    assert main(["pipeline", "--config", str(cfg), "--out-dir", str(tmp_path), "--name", "p", "--quiet"]) == 0
    return json.loads((tmp_path / "p" / "pipeline_summary.json").read_text())


def _stage_dataset(run_dir, stage: str) -> str:
    return yaml.safe_load((run_dir / stage / "config.yaml").read_text())["dataset"]


def test_rollouts_join_the_dataset_for_this_and_later_stages(tmp_path):
    res = _run(tmp_path, into_dataset=True)
    run = tmp_path / "p"
    assert [r["stage"] for r in res["stages"]] == ["collect", "bc", "si_bc data", "si_bc", "si_offline"]
    demos, _ = read_episodes(run / "data" / "source0-demos.h5")
    rollouts, rmeta = read_episodes(run / "data" / "si_bc-rollouts.h5")
    grown, gmeta = read_episodes(run / "data" / "si_bc-dataset.h5")
    assert len(demos) == 2 and len(rollouts) == 3 and len(grown) == 5
    # the grown dataset is the demos, then the rollouts, unchanged
    for a, b in zip(grown, [*demos, *rollouts]):
        assert (a.obs == b.obs).all() and (a.actions == b.actions).all() and (a.rewards == b.rewards).all()
    assert [m["episodes"] for m in gmeta["source"]["merged_from"]] == [2, 3]
    # the stage that collected them and every later stage train on it; the stage before does not
    grown_path = str(run / "data" / "si_bc-dataset.h5")
    assert _stage_dataset(run, "bc").endswith("source0-demos.h5")
    assert _stage_dataset(run, "si_bc") == grown_path and _stage_dataset(run, "si_offline") == grown_path
    # the collecting stage starts fresh, the next continues from it
    assert yaml.safe_load((run / "si_bc" / "config.yaml").read_text())["init_policy"] is None
    assert yaml.safe_load((run / "si_offline" / "config.yaml").read_text())["init_policy"].endswith(
        "si_bc/checkpoints/policy_final.safetensors"
    )
    # the rollouts start from other initial states than the demos (their own reset seeds)
    demo_seeds = {e["episode_seed"] for e in read_episodes(run / "data" / "source0-demos.h5")[1]["episodes"]}
    roll_seeds = {e["episode_seed"] for e in rmeta["episodes"]}
    assert not demo_seeds & roll_seeds
    # the table row counts every env step the rollouts took
    row = res["stages"][2]
    assert row["env_steps"] == rmeta["source"]["env_steps"] == sum(len(e) for e in rollouts)
    assert row["algo"] == f"rollouts of bc: 3 of 3 kept, {row['env_steps']} env steps"
    assert res["dataset"] == grown_path


def test_rollouts_alone_leave_the_dataset_to_later_stages(tmp_path):
    res = _run(tmp_path, into_dataset=False)
    run = tmp_path / "p"
    assert _stage_dataset(run, "si_bc").endswith("si_bc-rollouts.h5")
    assert _stage_dataset(run, "si_offline").endswith("source0-demos.h5")
    assert not (run / "data" / "si_bc-dataset.h5").exists()
    assert res["dataset"].endswith("source0-demos.h5")


def test_a_policy_without_successes_stops_the_pipeline_at_that_stage(tmp_path):
    import pytest

    from rlft.errors import NoSuccessError
    from rlft.train.pipeline import load_pipeline_config, run_pipeline

    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"env: {{env_id: {SINGLE}, act_horizon: 4, max_episode_steps: 10}}\n"
        "collect: {mode: demos, num_episodes: 2, num_workers: 1}\n"
        "eval: {num_episodes: 0, num_workers: 1}\n"
        "policy_kind: flow\n"
        f"out_dir: {tmp_path}\nname: p\nquiet: true\n"
        "stages:\n"
        f"  - {{name: bc, config: {CFG_DIR}/bc.yaml, overrides: {{steps: 2}}}}\n"
        f"  - {{name: si_bc, config: {CFG_DIR}/bc.yaml, rollout_episodes: 1, rollouts_into_dataset: true}}\n"
    )
    with pytest.raises(NoSuccessError, match=r"stages\[1\] \(si_bc\), rollouts of bc's policy: .* 13 attempts"):
        run_pipeline(load_pipeline_config(cfg))
    run = tmp_path / "p"
    assert not (run / "data" / "si_bc-rollouts.h5").exists() and not (run / "si_bc").exists()
    assert not (run / "pipeline_summary.json").exists()
