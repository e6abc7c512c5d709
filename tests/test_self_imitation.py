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
        f"  - {{name: si2_bc, config: {CFG_DIR}/bc.yaml, rollout_episodes: 2, rollout_only_success: false,\n"
        f"     rollouts_into_dataset: {str(into_dataset).lower()}, overrides: {{steps: 5}}}}\n"
    )
    assert main(["pipeline", "--config", str(cfg), "--out-dir", str(tmp_path), "--name", "p", "--quiet"]) == 0
    return json.loads((tmp_path / "p" / "pipeline_summary.json").read_text())


def _stage_dataset(run_dir, stage: str) -> str:
    return yaml.safe_load((run_dir / stage / "config.yaml").read_text())["dataset"]


def test_rollouts_join_the_dataset_for_this_and_later_stages(tmp_path):
    res = _run(tmp_path, into_dataset=True)
    run = tmp_path / "p"
    names = ["collect", "bc", "si_bc data", "si_bc", "si_offline", "si2_bc data", "si2_bc"]
    assert [r["stage"] for r in res["stages"]] == names
    demos, dmeta = read_episodes(run / "data" / "source0-demos.h5")
    rollouts, rmeta = read_episodes(run / "data" / "si_bc-rollouts.h5")
    grown, gmeta = read_episodes(run / "data" / "si_bc-dataset.h5")
    assert len(demos) == 2 and len(rollouts) == 3 and len(grown) == 5
    # the grown dataset is the demos, then the rollouts, unchanged, each with its reset seed and source
    for a, b in zip(grown, [*demos, *rollouts]):
        assert (a.obs == b.obs).all() and (a.actions == b.actions).all() and (a.rewards == b.rewards).all()
    assert [m["episodes"] for m in gmeta["source"]["merged_from"]] == [2, 3]
    seeds = [e["episode_seed"] for e in dmeta["episodes"] + rmeta["episodes"]]
    assert [e["episode_seed"] for e in gmeta["episodes"]] == seeds
    assert [e["source_index"] for e in gmeta["episodes"]] == [0, 0, 1, 1, 1]
    # the rollouts start from other initial states than the demos (their own reset seeds)
    assert not set(seeds[:2]) & set(seeds[2:])
    # the stage that collected them and every later stage train on it; the stage before does not
    grown_path = str(run / "data" / "si_bc-dataset.h5")
    assert _stage_dataset(run, "bc").endswith("source0-demos.h5")
    assert _stage_dataset(run, "si_bc") == grown_path and _stage_dataset(run, "si_offline") == grown_path
    assert [r.get("dataset") for r in res["stages"] if r["stage"] in ("si_bc", "si_offline")] == [grown_path] * 2
    # the collecting stage starts fresh, the next continues from it
    assert yaml.safe_load((run / "si_bc" / "config.yaml").read_text())["init_policy"] is None
    assert yaml.safe_load((run / "si_offline" / "config.yaml").read_text())["init_policy"].endswith(
        "si_bc/checkpoints/policy_final.safetensors"
    )
    # a second round rolls out the stage before it and grows the grown dataset, demos once
    rollouts2, r2meta = read_episodes(run / "data" / "si2_bc-rollouts.h5")
    grown2, g2meta = read_episodes(run / "data" / "si2_bc-dataset.h5")
    assert r2meta["source"]["policy"].endswith("si_offline/checkpoints/policy_final.safetensors")
    assert len(grown2) == 7 and [e["source_index"] for e in g2meta["episodes"]] == [0] * 5 + [1] * 2
    assert [e["episode_seed"] for e in g2meta["episodes"]][:5] == seeds
    assert not set(seeds) & {e["episode_seed"] for e in r2meta["episodes"]}
    # the table row counts every env step the rollouts took
    row = res["stages"][2]
    assert row["env_steps"] == rmeta["source"]["env_steps"] == sum(len(e) for e in rollouts)
    assert (row["algo"], row["kept"], row["attempts"]) == ("rollouts of bc", 3, 3)
    table = (run / "results.md").read_text()
    assert f"| si_bc data | rollouts of bc: 3 of 3 kept, {row['env_steps']} env steps |" in table
    assert res["dataset"].endswith("source0-demos.h5")
    assert res["final_dataset"] == str(run / "data" / "si2_bc-dataset.h5")


def test_rollouts_alone_leave_the_dataset_to_later_stages(tmp_path):
    res = _run(tmp_path, into_dataset=False)
    run = tmp_path / "p"
    assert _stage_dataset(run, "si_bc").endswith("si_bc-rollouts.h5")
    assert _stage_dataset(run, "si_offline").endswith("source0-demos.h5")
    assert _stage_dataset(run, "si2_bc").endswith("si2_bc-rollouts.h5")
    assert not (run / "data" / "si_bc-dataset.h5").exists()
    assert res["dataset"] == res["final_dataset"] and res["dataset"].endswith("source0-demos.h5")


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
    with pytest.raises(NoSuccessError, match=r"stages\[1\] \(si_bc\): no successful rollout of bc's policy in 13 "):
        run_pipeline(load_pipeline_config(cfg))
    run = tmp_path / "p"
    assert not (run / "data" / "si_bc-rollouts.h5").exists() and not (run / "si_bc").exists()
    assert not (run / "pipeline_summary.json").exists()


def test_the_attempts_a_collection_counts():
    from rlft.collect.common import attempts_counted

    attempts = dict.fromkeys(range(8), False) | {1: True, 4: True, 5: True}
    # enough kept: the attempts up to the last kept one (6 and 7 ran in the same parallel round)
    assert attempts_counted(attempts, [1, 4], 2) == [0, 1, 2, 3, 4]
    # too few kept: every attempt ran for nothing more, so all count
    assert attempts_counted(attempts, [1, 4, 5], 4) == list(range(8))


def test_flags_without_rollouts_and_a_non_h5_dataset_are_refused(tmp_path):
    import pytest

    from rlft.errors import ConfigError
    from rlft.train.pipeline import PipelineConfig, StageSpec, _parse_stages

    bc = f"{CFG_DIR}/bc.yaml"
    with pytest.raises(ConfigError, match=r"stages\[si\].*set rollout_episodes > 0"):
        StageSpec(name="si", config=bc, rollouts_into_dataset=True)
    with pytest.raises(ConfigError, match=r"stages\[si\].*set rollout_episodes > 0"):
        StageSpec(name="si", config=bc, rollout_only_success=False)
    with pytest.raises(ConfigError, match=r"stages\[si\].rollout_episodes: >= 0, got -1"):
        StageSpec(name="si", config=bc, rollout_episodes=-1)
    stages = [StageSpec(name="bc", config=bc), StageSpec("si", bc, rollout_episodes=2, rollouts_into_dataset=True)]
    with pytest.raises(ConfigError, match=r"dataset: stage si appends .*data.npz is not"):
        _parse_stages(PipelineConfig(stages=stages, dataset=str(tmp_path / "data.npz")))


def test_datasets_of_two_environments_are_not_merged(tmp_path):
    import numpy as np
    import pytest

    from rlft.data.episodes import Episode
    from rlft.data.h5io import merge_datasets, write_episodes
    from rlft.errors import DatasetError

    T = 4
    ep = Episode(
        obs=np.zeros((T + 1, 3), np.float32),
        actions=np.zeros((T, 2), np.float32),
        rewards=-np.ones(T, np.float32),
        terminated=np.zeros(T, bool),
        truncated=np.arange(T) == T - 1,
        success=np.zeros(T, bool),
    )
    a = write_episodes(tmp_path / "a.h5", [ep], {"env_id": "PickCube-v1", "max_episode_steps": 100})
    b = write_episodes(tmp_path / "b.h5", [ep, ep], {"env_id": "PushCube-v1", "max_episode_steps": 100})
    with pytest.raises(DatasetError, match=r"b.h5: env_id 'PushCube-v1', but .*a.h5 has 'PickCube-v1'"):
        merge_datasets([a, b], tmp_path / "ab.h5")
    assert not (tmp_path / "ab.h5").exists()
    merged, meta = read_episodes(merge_datasets([a, a], tmp_path / "aa.h5"))
    assert len(merged) == 2 and [e["source_index"] for e in meta["episodes"]] == [0, 1]
