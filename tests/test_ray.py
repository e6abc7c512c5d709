"""Ray Tune as the engine of ``rlft sweep`` and ``rlft pipeline --seeds``, with real Ray: a two-node cluster on
loopback, a trial whose process is killed, an interrupted sweep resumed, and the per-seed pipeline table."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from rlft.cli import main
from rlft.train.sweep import SweepConfig

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
TINY = {"eval": {"num_episodes": 2, "parallel_envs": 2}, "run": {"log_every": 10, "tensorboard": False}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("data") / "demos.h5"
    args = ["collect", "--mode", "demos", "--num-episodes", "2", "--num-workers", "1", "--out", str(out)]
    assert main(args) == 0
    return str(out)


def _sweep_file(tmp_path: Path, dataset: str, grid: dict, **extra) -> Path:
    d = {"base": str(ROOT / "configs" / "bc.yaml"), "grid": grid, "dataset": dataset, "overrides": {**TINY}}
    d.update(out_dir=str(tmp_path), name="sw", **extra)
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _driver(path: Path) -> subprocess.Popen:
    """The sweep as a user runs it: its own driver process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlft.cli", "sweep", "--config", str(path)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"the sweep ended before {path} appeared:\n{proc.stdout.read()}"
        assert time.time() - t0 < timeout, f"{path} did not appear in {timeout} s"
        time.sleep(0.1)


def test_killed_trial_process_is_retried(tmp_path, dataset):
    """SIGKILL the Ray worker running a trial: Tune retries it (``max_failures``) and the run finishes; trial.json
    records both attempts."""
    p = _sweep_file(tmp_path, dataset, {"steps": [400]}, ray={"max_failures": 1})
    proc = _driver(p)
    trial = tmp_path / "sw" / "steps=400,s0" / "trial.json"
    _wait_for(trial, proc)
    first = json.loads(trial.read_text())["attempts"][0]
    os.kill(first["pid"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    attempts = json.loads(trial.read_text())["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[1]["pid"] != first["pid"]
    (run,) = json.loads((tmp_path / "sw" / "results.json").read_text())["runs"]
    assert run["status"] == "done" and run["attempts"] == 2 and 0.0 <= run["success_once"] <= 1.0


def test_killed_trial_without_retries_is_reported(tmp_path, dataset):
    """With no retries left, a killed trial is reported -- in results.md and as a failed command -- not dropped."""
    p = _sweep_file(tmp_path, dataset, {"steps": [400]}, ray={"max_failures": 0})
    proc = _driver(p)
    trial = tmp_path / "sw" / "steps=400,s0" / "trial.json"
    _wait_for(trial, proc)
    os.kill(json.loads(trial.read_text())["attempts"][0]["pid"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "steps=400,s0" in out and "failed" in out
    (run,) = json.loads((tmp_path / "sw" / "results.json").read_text())["runs"]
    assert run["status"] == "failed" and run["error"]
    assert "failed" in (tmp_path / "sw" / "results.md").read_text()


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, dataset):
    """Ctrl-C (SIGINT) while the second of two runs trains; the same command again restores Tune's experiment: the
    finished run is not run again, the interrupted one completes."""
    p = _sweep_file(tmp_path, dataset, {"steps": [20, 1500]}, ray={"max_concurrent": 1})
    proc = _driver(p)
    done = tmp_path / "sw" / "steps=20,s0" / "summary.json"
    _wait_for(done, proc)
    _wait_for(tmp_path / "sw" / "steps=1500,s0" / "trial.json", proc)
    mtime = done.stat().st_mtime
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert not (tmp_path / "sw" / "steps=1500,s0" / "summary.json").exists()
    proc = _driver(p)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert done.stat().st_mtime == mtime
    assert len(json.loads((done.parent / "trial.json").read_text())["attempts"]) == 1
    runs = json.loads((tmp_path / "sw" / "results.json").read_text())["runs"]
    assert {r["run"]: r["status"] for r in runs} == {"steps=20,s0": "done", "steps=1500,s0": "done"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A head and a worker node (``ray start``, one CPU each) on 127.0.0.1; yields the head's address. Only the
    processes of this cluster (its own temp dir and port) are stopped afterwards. Ray's token authentication is
    off for this loopback cluster (a real one shares the head's token with every node)."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0", "OMP_NUM_THREADS": "1"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    head = [str(RAY), "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]
    try:
        subprocess.run(head + common, env=env, check=True, capture_output=True, timeout=120)
        worker = [str(RAY), "start", f"--address=127.0.0.1:{port}", *common]
        subprocess.run(worker, env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if temp in cmd or f"127.0.0.1:{port}" in cmd:
                proc.kill()


def test_sweep_runs_on_a_two_node_cluster(tmp_path, dataset, two_node_cluster):
    """``--address HOST:PORT``: the trials run on both nodes of an existing cluster (one CPU each, one trial each)
    and their results come back to the driver's table. The driver is its own process, as a user's would be (Ray
    keeps one authentication mode per process, and this one may already have started a local instance)."""
    p = _sweep_file(tmp_path, dataset, {"steps": [200, 201]})
    nodes_py = (
        "import json, ray; ray.init(address='%s'); print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", nodes_py % two_node_cluster], capture_output=True, text=True, check=True, timeout=120
    )
    nodes = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert len(nodes) == 2
    cmd = [sys.executable, "-m", "rlft.cli", "sweep", "--config", str(p), "--address", two_node_cluster]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    res = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert [r["status"] for r in res["runs"]] == ["done", "done"]
    assert {r["node_id"] for r in res["runs"]} == nodes
    assert all(0.0 <= m["success_once"] <= 1.0 for m in res["means"])


def test_pipeline_over_seeds_writes_the_table_over_seeds(tmp_path):
    """``rlft pipeline --seeds 0 1``: one whole pipeline per seed as Ray trials, then the per-stage table (mean,
    interval over seeds, per-seed values) that BENCHMARKS used to assemble by hand."""
    args = ["pipeline", "--config", str(ROOT / "configs" / "pipeline.yaml"), "--seeds", "0", "1"]
    args += ["--out-dir", str(tmp_path), "--name", "ps", "--budget-scale", "0.005", "--collect.num-workers", "1"]
    assert main([*args, "--eval.num-episodes", "2", "--eval.video-episodes", "0", "--quiet"]) == 0
    s = json.loads((tmp_path / "ps" / "seeds_summary.json").read_text())
    assert s["seeds"] == [0, 1]
    for seed in (0, 1):  # each seed is an ordinary pipeline run directory
        one = json.loads((tmp_path / "ps" / f"s{seed}" / "pipeline_summary.json").read_text())
        assert one["seed"] == seed and (tmp_path / "ps" / f"s{seed}" / "pipeline.log").is_file()
    stages = {r["stage"]: r for r in s["stages"]}
    assert list(stages) == ["collect", "bc", "offline", "online"]
    for st in ("bc", "offline", "online"):
        row = stages[st]
        assert set(row["per_seed"]) == {"0", "1"} or set(row["per_seed"]) == {0, 1}
        assert row["success_once"] == pytest.approx(sum(row["per_seed"].values()) / 2)
        assert row["interval"][0] <= row["success_once"] <= row["interval"][1]
    assert sum(len(r["deployed_in"]) for r in stages.values() if "deployed_in" in r) == 2  # one stage per seed
    md = (tmp_path / "ps" / "results.md").read_text()
    assert "95% interval over seeds" in md and "Deployed policy" in md
    for seed in (0, 1):  # W&B: every stage of every seed in the command's group
        stage_cfg = yaml.safe_load((tmp_path / "ps" / f"s{seed}" / "bc" / "config.yaml").read_text())
        assert stage_cfg["run"]["wandb_group"] == "ps"


def test_sweep_over_pipelines_from_a_relative_path(tmp_path, dataset, monkeypatch):
    """A sweep whose base is an ``rlft pipeline`` YAML: each trial is one whole pipeline (deploy gate included) and
    the table shows each deployed policy; a grid field may index a list (``stages.1...``). Relative paths mean what
    they mean in the folder the command runs from (Tune would otherwise move each trial into a folder of its
    own)."""
    monkeypatch.chdir(tmp_path)
    Path("demos.h5").write_bytes(Path(dataset).read_bytes())
    sweep = {
        "base": str(ROOT / "configs" / "pipeline.yaml"),
        "grid": {"stages.1.overrides.algo_cfg.beta": [1.0, 3.0]},
        "overrides": {
            "dataset": "demos.h5",
            "budget_scale": 0.005,
            "eval": {"num_episodes": 2, "video_episodes": 0},
            "quiet": True,
        },
        "name": "psw",
    }
    Path("sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["sweep", "--config", "sweep.yaml"]) == 0
    res = json.loads(Path("runs/psw/results.json").read_text())
    assert sorted(r["run"] for r in res["runs"]) == ["beta=1.0,s0", "beta=3.0,s0"]
    for r in res["runs"]:
        one = json.loads(Path(f"runs/psw/{r['run']}/pipeline_summary.json").read_text())
        assert r["status"] == "done" and r["deployed"] == one["deployed"]
        assert r["success_once"] == next(st["success_once"] for st in one["stages"] if st.get("deployed"))
        assert one["dataset"] == "demos.h5" and [st["stage"] for st in one["stages"]] == ["bc", "offline", "online"]
        offline = yaml.safe_load(Path(one["stages"][1]["run_dir"], "config.yaml").read_text())
        assert offline["algo_cfg"]["beta"] == float(r["run"].split(",")[0].split("=")[1])
        assert offline["run"]["wandb_group"] == "psw"  # W&B: one group per sweep


def test_optuna_search_with_asha(tmp_path, dataset):
    """``search: optuna`` proposes ``num_samples`` points from a range and a list through Tune's search interface;
    ASHA reads the runs' periodic evaluations. Every trial ends in the table, finished or stopped."""
    p = _sweep_file(
        tmp_path,
        dataset,
        {"algo_cfg.lr": {"low": 1e-4, "high": 1e-3, "log": True}, "algo_cfg.policy.kind": ["gaussian", "flow"]},
        search="optuna",
        num_samples=2,
        asha=True,
    )
    d = yaml.safe_load(p.read_text())
    d["overrides"].update(steps=40, eval={"num_episodes": 2, "parallel_envs": 2, "every": 20})
    p.write_text(yaml.safe_dump(d))
    assert main(["sweep", "--config", str(p)]) == 0
    runs = json.loads((tmp_path / "sw" / "results.json").read_text())["runs"]
    assert len(runs) == 2 and all(r["status"] in ("done", "stopped") for r in runs)
    assert any(r["status"] == "done" for r in runs)  # a trial that reaches its last step finishes, ASHA or not
    assert len({r["run"] for r in runs}) == 2  # sampled points may repeat: names carry Tune's trial id
    for r in runs:
        assert 1e-4 <= r["point"]["algo_cfg.lr"] <= 1e-3 and r["point"]["algo_cfg.policy.kind"] in ("gaussian", "flow")
        assert (tmp_path / "sw" / r["run"] / "metrics.jsonl").is_file()


def test_a_changed_config_is_not_resumed_silently(tmp_path):
    """Calling a sweep again under the same name restores Tune's experiment, which would run the old trials: a
    config that changed what runs is refused, one that changed only where or how many at a time is not."""
    from rlft.errors import ConfigError
    from rlft.train.trials import same_experiment

    cfg = SweepConfig(base="bc.yaml", grid={"steps": [5]})
    same_experiment(tmp_path / "sweep.yaml", cfg)
    cfg.ray.max_concurrent, cfg.ray.address = 4, "auto"
    same_experiment(tmp_path / "sweep.yaml", cfg)
    cfg.seeds = [0, 1]
    with pytest.raises(ConfigError, match=r"another config \(differs in \['seeds'\]\)"):
        same_experiment(tmp_path / "sweep.yaml", cfg)


def test_table_over_seeds_when_no_seed_finished(tmp_path):
    """Every seed failed: the table is still written (empty), so the error naming the failed seeds is what the user
    sees."""
    from rlft.train.multiseed import results_markdown, seeds_summary

    md = results_markdown(seeds_summary(tmp_path, []))
    assert "Deployed policy" in md and "Peak memory" in md
