"""``rlft sweep``: grid expansion, validation up front, and a real two-run sweep on the OGBench env."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlft.cli import main
from rlft.errors import ConfigError
from rlft.train.sweep import SweepConfig, collect_env_id, expand, load_sweep_config, run_name, set_dotted

ROOT = Path(__file__).resolve().parent.parent


def test_set_dotted_creates_nested_copy():
    d = {"algo_cfg": {"beta": 1}}
    out = set_dotted(d, "algo_cfg.policy.kind", "flow")
    assert out == {"algo_cfg": {"beta": 1, "policy": {"kind": "flow"}}}
    assert d == {"algo_cfg": {"beta": 1}}  # the input is untouched


def test_set_dotted_indexes_lists_and_names_a_bad_index():
    d = {"stages": [{"name": "bc"}, {"name": "offline", "overrides": {}}]}
    out = set_dotted(d, "stages.1.overrides.algo_cfg.beta", 3.0)
    assert out["stages"][1] == {"name": "offline", "overrides": {"algo_cfg": {"beta": 3.0}}}
    assert out["stages"][0] == {"name": "bc"} and d["stages"][1]["overrides"] == {}
    with pytest.raises(ConfigError, match=r"stages\.2\.steps: '2' is not an index of a list of 2"):
        set_dotted(d, "stages.2.steps", 1)


def test_pipeline_base_resolves_stage_paths_and_seed():
    cfg = SweepConfig(base=str(ROOT / "configs" / "pipeline.yaml"), grid={"stages.2.overrides.steps": [100]}, seeds=[4])
    ((name, _, _, d),) = expand(cfg)
    assert name == "steps=100,s4" and d["seed"] == 4 and d["stages"][2]["overrides"]["steps"] == 100
    assert all(Path(st["config"]).is_absolute() and Path(st["config"]).is_file() for st in d["stages"])


def test_expand_is_grid_times_seeds_and_names_are_unique():
    cfg = SweepConfig(
        base=str(ROOT / "configs" / "offline_iql.yaml"),
        grid={"algo_cfg.beta": [1.0, 3.0], "algo_cfg.expectile": [0.7, 0.9]},
        seeds=[0, 1],
    )
    runs = expand(cfg)
    assert len(runs) == 8
    assert len({r[0] for r in runs}) == 8
    name, point, seed, d = runs[-1]
    assert point == {"algo_cfg.beta": 3.0, "algo_cfg.expectile": 0.9} and seed == 1
    assert d["algo_cfg"]["beta"] == 3.0 and d["algo_cfg"]["expectile"] == 0.9 and d["run"]["seed"] == 1
    assert name == run_name(point, seed) == "beta=3.0,expectile=0.9,s1"


def test_unknown_grid_field_fails_before_any_run():
    cfg = SweepConfig(base=str(ROOT / "configs" / "offline_iql.yaml"), grid={"algo_cfg.betta": [1.0]})
    with pytest.raises(ConfigError, match="betta"):
        expand(cfg)


def test_bad_grid_shape_is_refused(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"base": "x.yaml", "grid": {"algo_cfg.beta": 3}}))
    with pytest.raises(ConfigError, match="grid"):
        load_sweep_config(p)


def test_sweep_cli_runs_grid_and_writes_results(tmp_path):
    sweep = {
        "base": str(ROOT / "configs" / "bc.yaml"),
        "grid": {"algo_cfg.policy.kind": ["gaussian", "flow"]},
        "seeds": [0, 1],
        "overrides": {"steps": 30, "eval": {"num_episodes": 2, "parallel_envs": 2}, "run": {"log_every": 10}},
        "collect": {"mode": "demos", "num_episodes": 2, "num_workers": 1, "progress": False},
        "out_dir": str(tmp_path),
        "name": "sw",
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", "--config", str(p)]) == 0
    res = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert {r["run"] for r in res["runs"]} == {f"kind={k},s{s}" for k in ("gaussian", "flow") for s in (0, 1)}
    for r in res["runs"]:  # four Ray Tune trials on a local Ray instance, each an ordinary run directory
        assert r["status"] == "done" and r["attempts"] == 1 and r["node_id"]
        assert 0.0 <= r["success_once"] <= 1.0 and r["updates_per_s"] > 0
        assert (tmp_path / "sw" / r["run"] / "checkpoints" / "policy_final.safetensors").is_file()
        assert (tmp_path / "sw" / r["run"] / "trial.log").is_file()
        cfg = yaml.safe_load((tmp_path / "sw" / r["run"] / "config.yaml").read_text())
        assert cfg["run"]["wandb_group"] == "sw"  # W&B: one run per trial, grouped by sweep
    for m in res["means"]:  # per grid point: the mean over the two seeds and its interval
        runs = [r for r in res["runs"] if r["point"] == m["point"]]
        assert m["seeds"] == [0, 1] and m["success_once"] == pytest.approx(sum(r["success_once"] for r in runs) / 2)
        lo, hi = m["success_once_interval"]
        assert lo <= m["success_once"] <= hi
    md = (tmp_path / "sw" / "results.md").read_text()
    assert "95% interval" in md and md.count("| done |") == 4
    # a second call resumes: every run is done already, nothing is re-run
    mtime = (tmp_path / "sw" / "kind=flow,s0" / "summary.json").stat().st_mtime
    assert main(["sweep", "--config", str(p)]) == 0
    assert (tmp_path / "sw" / "kind=flow,s0" / "summary.json").stat().st_mtime == mtime
    assert json.loads((tmp_path / "sw" / "results.json").read_text())["runs"] == res["runs"]


def test_grid_over_base_configs_runs_each_algorithm_file():
    cfg = SweepConfig(
        base=str(ROOT / "configs" / "bc.yaml"), grid={"base": ["offline_iql.yaml", "bc.yaml"], "steps": [7]}, seeds=[3]
    )
    runs = expand(cfg)
    assert [r[0] for r in runs] == ["base=offline_iql,steps=7,s3", "base=bc,steps=7,s3"]
    assert runs[0][3]["algo"] == "iql" and runs[1][3]["algo"] == "bc"
    assert all(r[3]["steps"] == 7 and r[3]["run"]["seed"] == 3 for r in runs)


def test_base_overrides_apply_to_their_config_only():
    cfg = SweepConfig(
        base=str(ROOT / "configs" / "bc.yaml"),
        grid={"base": ["offline_iql.yaml", "bc.yaml"]},
        base_overrides={"offline_iql.yaml": {"algo_cfg": {"beta": 7.0}}},
    )
    iql, bc = (r[3] for r in expand(cfg))
    assert iql["algo_cfg"]["beta"] == 7.0 and "beta" not in bc.get("algo_cfg", {})
    with pytest.raises(ConfigError, match="base_overrides"):
        SweepConfig(base="x.yaml", grid={"base": ["a.yaml"]}, base_overrides={"b.yaml": {}})


def test_collection_env_is_the_one_the_runs_use():
    """The dataset a sweep collects is for the env its runs resolve to (overrides win over the base config's env);
    runs on several envs cannot share one collection."""
    base = str(ROOT / "configs" / "offline_iql.yaml")  # its env is cube-single
    cfg = SweepConfig(base=base, grid={"steps": [5]}, overrides={"env": {"env_id": "cube-double-singletask-v0"}})
    assert collect_env_id(cfg, expand(cfg)) == "cube-double-singletask-v0"
    assert (
        collect_env_id(SweepConfig(base=base, grid={"steps": [5]}), expand(SweepConfig(base=base, grid={"steps": [5]})))
        == "cube-single-singletask-v0"
    )
    two = SweepConfig(base=base, grid={"env.env_id": ["cube-single-singletask-v0", "cube-double-singletask-v0"]})
    with pytest.raises(ConfigError, match="several envs"):
        collect_env_id(two, expand(two))
