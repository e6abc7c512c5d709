"""Smoke runs of every CLI entry point with the real OGBench env on tiny budgets, plus user-error handling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from rlft.cli import main

os.environ.setdefault("MUJOCO_GL", "egl")
ENV = "cube-single-singletask-v0"
TINY_EVAL = ["--eval.num-episodes", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "demos.h5"
    rc = main(
        [
            "collect",
            "--env-id",
            ENV,
            "--mode",
            "demos",
            "--num-episodes",
            "4",
            "--num-workers",
            "1",
            "--action-noise",
            "0.1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and out.is_file() and out.with_suffix(".json").is_file()
    return out


def _train(tmp_path, name, *args) -> dict:
    rc = main(["train", *args, "--run.out-dir", str(tmp_path), "--run.name", name, "--run.log-every", "10", *TINY_EVAL])
    assert rc == 0
    return json.loads((tmp_path / name / "summary.json").read_text())


def test_train_bc_iql_sac_eval_chain(tmp_path, dataset, capsys):
    s = _train(tmp_path, "bc", "--config", "configs/bc.yaml", "--dataset", str(dataset), "--steps", "30")
    bc_policy = tmp_path / "bc" / "checkpoints" / "policy_final.safetensors"
    assert bc_policy.is_file() and (tmp_path / "bc" / "config.yaml").is_file()
    assert 0.0 <= s["final"]["eval/success_once"] <= 1.0 and s["final"]["eval/num_episodes"] == 2
    recs = [json.loads(x) for x in (tmp_path / "bc" / "metrics.jsonl").read_text().splitlines()]
    assert any("actor/bc_loss" in r for r in recs) and any("eval/success_once" in r for r in recs)

    _train(
        tmp_path,
        "iql",
        "--config",
        "configs/offline_iql.yaml",
        "--dataset",
        str(dataset),
        "--steps",
        "30",
        "--init-policy",
        str(bc_policy),
    )
    iql_policy = tmp_path / "iql" / "checkpoints" / "policy_final.safetensors"
    recs = [json.loads(x) for x in (tmp_path / "iql" / "metrics.jsonl").read_text().splitlines()]
    assert any("critic/value_loss" in r for r in recs) and any("actor/iql_weights_mean" in r for r in recs)

    s = _train(
        tmp_path,
        "sac",
        "--config",
        "configs/online_sac.yaml",
        "--dataset",
        str(dataset),
        "--steps",
        "120",
        "--init-policy",
        str(iql_policy),
        "--warmup-steps",
        "50",
        "--utd-ratio",
        "1",
        "--num-critics",
        "4",
        "--eval.every",
        "59",
    )
    assert s["steps"] >= 120
    recs = [json.loads(x) for x in (tmp_path / "sac" / "metrics.jsonl").read_text().splitlines()]
    assert any("alpha/temperature" in r for r in recs)
    # a periodic evaluation that lands on the last step (steps advance by chunks) is the final one: not run twice
    final_evals = [r for r in recs if "eval/success_once" in r and r["step"] == s["steps"]]
    assert len(final_evals) == 1

    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--policy", str(iql_policy), "--num-episodes", "2", "--out", str(out_json)]) == 0
    ev = json.loads(out_json.read_text())
    assert len(ev["episodes"]) == 2 and "eval/success_at_end" in ev["summary"]


def test_policy_ema_is_what_is_saved_and_resumes(tmp_path, dataset):
    from rlft.policies import load_policy

    _train(
        tmp_path, "e", "--config", "configs/bc.yaml", "--dataset", str(dataset), "--steps", "20", "--policy-ema", "0.99"
    )
    state = torch.load(tmp_path / "e" / "checkpoints" / "state.pt", weights_only=False)
    assert state["policy_ema"]["num_updates"] == 20
    saved = load_policy(tmp_path / "e" / "checkpoints" / "policy_final.safetensors").state_dict()
    live, avg = state["algo"]["policy"], state["policy_ema"]["policy"]
    name = next(k for k in saved if k.endswith("weight") and live[k].ndim == 2)
    assert torch.equal(saved[name], avg[name]) and not torch.equal(saved[name], live[name])
    s = _train(
        tmp_path,
        "e",
        "--config",
        "configs/bc.yaml",
        "--dataset",
        str(dataset),
        "--steps",
        "30",
        "--policy-ema",
        "0.99",
        "--run.resume",
    )
    assert s["steps"] == 30
    state = torch.load(tmp_path / "e" / "checkpoints" / "state.pt", weights_only=False)
    assert state["policy_ema"]["num_updates"] == 30


def test_resume_continues_to_more_steps(tmp_path, dataset):
    _train(tmp_path, "r", "--config", "configs/bc.yaml", "--dataset", str(dataset), "--steps", "20")
    s = _train(tmp_path, "r", "--config", "configs/bc.yaml", "--dataset", str(dataset), "--steps", "40", "--run.resume")
    assert s["steps"] == 40
    state = torch.load(tmp_path / "r" / "checkpoints" / "state.pt", weights_only=False)
    assert state["step"] == 40 and state["algo"]["num_updates"] == 40


@pytest.mark.parametrize("config,videos", [("configs/pipeline.yaml", 1), ("configs/pipeline_gaussian.yaml", 0)])
def test_pipeline_smoke(tmp_path, config, videos):
    rc = main(
        [
            "pipeline",
            "--config",
            config,
            "--out-dir",
            str(tmp_path),
            "--name",
            "p",
            "--budget-scale",
            "0.005",
            "--collect.num-workers",
            "1",
            "--eval.num-episodes",
            "2",
            "--eval.video-episodes",
            str(videos),
            "--quiet",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "p" / "pipeline_summary.json").read_text())
    assert [r["stage"] for r in res["stages"]] == ["collect", "bc", "offline", "online"]
    assert res["stages"][0]["algo"] == "expert (1 demos + 1 play)"
    assert (tmp_path / "p" / "results.md").read_text().count("|") > 10
    assert Path(res["final_policy"]).is_file()
    for stage in ("bc", "offline", "online"):  # every evaluation of every trained stage records when asked
        assert (len(list((tmp_path / "p" / stage).glob("videos/*.mp4"))) > 0) == (videos > 0)
    assert res["deployed"] in ("bc", "offline", "online") and Path(res["deployed_policy"]).is_file()
    assert json.loads((tmp_path / "p" / "deploy" / "deploy.json").read_text())["stage"] == res["deployed"]


def test_pipeline_merges_demos_and_play_sources(tmp_path):
    root = Path(__file__).resolve().parent.parent / "configs"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "env: {env_id: cube-single-singletask-v0, act_horizon: 5}\n"
        "collect: {mode: demos, num_episodes: 2, num_workers: 1}\n"
        "also_collect:\n  - {mode: play, num_episodes: 1, max_episode_steps: 60, num_workers: 1}\n"
        "eval: {num_episodes: 2}\n"
        f"stages:\n  - {{name: bc, config: {root / 'bc.yaml'}, overrides: {{steps: 5}}}}\n"
    )
    assert main(["pipeline", "--config", str(cfg), "--out-dir", str(tmp_path), "--name", "m", "--quiet"]) == 0
    from rlft.data.h5io import read_episodes

    res = json.loads((tmp_path / "m" / "pipeline_summary.json").read_text())
    episodes, meta = read_episodes(res["dataset"])
    assert [len(e) for e in episodes][-1] == 60 and len(episodes) == 3
    assert [m["episodes"] for m in meta["source"]["merged_from"]] == [2, 1]
    assert res["stages"][0]["algo"] == "expert (2 demos + 1 play)"


# ---------------- user errors: one clear message naming the thing at fault, exit code 2 ----------------


def _err(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_unknown_config_field_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: iql\nalgo_cfg:\n  expectil: 0.9\n")
    err = _err(capsys, ["train", "--config", str(bad)])
    assert "expectil" in err and "bad.yaml" in err


def test_unknown_algorithm_and_env(tmp_path, capsys, dataset):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: nope\n")
    assert "nope" in _err(capsys, ["train", "--config", str(bad)])
    err = _err(
        capsys,
        [
            "train",
            "--config",
            "configs/bc.yaml",
            "--dataset",
            str(dataset),
            "--env.env-id",
            "cube-singel-singletask-v0",
            "--run.out-dir",
            str(tmp_path),
        ],
    )
    assert "cube-singel-singletask-v0" in err


def test_missing_and_corrupt_dataset(tmp_path, capsys):
    err = _err(
        capsys,
        [
            "train",
            "--config",
            "configs/bc.yaml",
            "--dataset",
            str(tmp_path / "none.h5"),
            "--run.out-dir",
            str(tmp_path),
        ],
    )
    assert "none.h5" in err
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    assert "junk.h5" in _err(
        capsys, ["train", "--config", "configs/bc.yaml", "--dataset", str(junk), "--run.out-dir", str(tmp_path)]
    )


def test_checkpoint_dims_must_match_env(tmp_path, capsys, dataset):
    _train(
        tmp_path,
        "h3",
        "--config",
        "configs/bc.yaml",
        "--dataset",
        str(dataset),
        "--steps",
        "5",
        "--env.act-horizon",
        "3",
    )
    pol = tmp_path / "h3" / "checkpoints" / "policy_final.safetensors"
    err = _err(
        capsys,
        [
            "train",
            "--config",
            "configs/offline_iql.yaml",
            "--dataset",
            str(dataset),
            "--init-policy",
            str(pol),
            "--run.out-dir",
            str(tmp_path),
            "--run.name",
            "x",
        ],
    )
    assert "policy_final.safetensors" in err and "act_horizon" in err
    assert not (tmp_path / "x").exists()
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    assert "corrupt.safetensors" in _err(capsys, ["eval", "--policy", str(corrupt), "--env-id", ENV])


def test_existing_run_is_not_overwritten(tmp_path, capsys, dataset):
    _train(tmp_path, "once", "--config", "configs/bc.yaml", "--dataset", str(dataset), "--steps", "5")
    err = _err(
        capsys,
        [
            "train",
            "--config",
            "configs/bc.yaml",
            "--dataset",
            str(dataset),
            "--steps",
            "5",
            "--run.out-dir",
            str(tmp_path),
            "--run.name",
            "once",
        ],
    )
    assert "once" in err and "resume" in err


def test_train_without_evaluation(tmp_path, dataset, capsys):
    """eval.num_episodes 0 runs no evaluation: no eval metrics (nothing NaN for the diagnosis to flag), no final eval
    in the summary, and the final policy doubles as policy_best; a negative count is refused."""
    rc = main(
        [
            "train",
            "--config",
            "configs/bc.yaml",
            "--dataset",
            str(dataset),
            "--steps",
            "20",
            "--eval.every",
            "10",
            "--eval.num-episodes",
            "0",
            "--run.out-dir",
            str(tmp_path),
            "--run.name",
            "noeval",
            "--run.log-every",
            "10",
        ]
    )
    assert rc == 0
    s = json.loads((tmp_path / "noeval" / "summary.json").read_text())
    assert s["final"] is None and s["steps"] == 20
    recs = [json.loads(x) for x in (tmp_path / "noeval" / "metrics.jsonl").read_text().splitlines()]
    assert recs and not any(k.startswith("eval/") for r in recs for k in r)
    assert (tmp_path / "noeval" / "checkpoints" / "policy_best.safetensors").is_file()
    assert "warning" not in capsys.readouterr().err
    rc = main(
        [
            "train",
            "--config",
            "configs/bc.yaml",
            "--dataset",
            str(dataset),
            "--eval.num-episodes",
            "-1",
            "--run.out-dir",
            str(tmp_path),
            "--run.name",
            "neg",
        ]
    )
    assert rc != 0 and "eval.num_episodes" in capsys.readouterr().err and not (tmp_path / "neg").exists()
