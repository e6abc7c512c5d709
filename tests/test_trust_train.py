"""Trust in training runs (issue: "nothing lost, nothing executed, nothing accepted in silence"): numbers no run can
use are refused before anything is written; a checkpoint is never written from non-finite weights; finite blow-ups
(Q outside the range the rewards allow, a loss exploding) are flagged live and stop the run when asked; a resumed run
refuses changed hyper-parameters; a crafted ``state.pt`` never runs code."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from rlft.cli import main
from rlft.errors import TrainingError
from rlft.train.runner import Trainer, load_training_state, nonfinite_tensors

ENV = "cube-single-singletask-v0"
TINY_EVAL = [
    "--eval.num-episodes",
    "1",
    "--eval.parallel-envs",
    "1",
    "--env.max-episode-steps",
    "30",
    "--run.no-tensorboard",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "demos.h5"
    assert (
        main(
            [
                "collect",
                "--env-id",
                ENV,
                "--mode",
                "demos",
                "--num-episodes",
                "3",
                "--num-workers",
                "1",
                "--action-noise",
                "0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def _train(tmp_path, name, *args) -> int:
    return main(
        ["train", *args, "--run.out-dir", str(tmp_path), "--run.name", name, "--run.log-every", "10", *TINY_EVAL]
    )


@pytest.mark.parametrize(
    "args,field",
    [
        (["--batch-size", "-5"], "batch_size"),
        (["--batch-size", "0"], "batch_size"),
        (["--steps", "-5"], "steps"),
        (["--steps", "0"], "steps"),
        (["--offline-ratio", "1.5"], "offline_ratio"),
        (["--utd-ratio", "0"], "utd_ratio"),
        (["--policy-ema", "1.0"], "policy_ema"),
        (["--eval.every", "-1"], "eval.every"),
        (["--run.checkpoint-every", "-1"], "run.checkpoint_every"),
    ],
)
def test_bad_numbers_are_refused_naming_the_field_and_write_nothing(tmp_path, dataset, capsys, args, field):
    capsys.readouterr()
    rc = _train(tmp_path, "bad", "--config", "configs/offline_iql.yaml", "--dataset", str(dataset), *args)
    err = capsys.readouterr().err
    assert rc == 2 and field in err and "Traceback" not in err, err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("n", ["0", "-1"])
def test_eval_refuses_no_episodes(tmp_path, capsys, n):
    capsys.readouterr()
    assert main(["eval", "--policy", str(tmp_path / "p.safetensors"), "--num-episodes", n]) == 2
    assert "num_episodes must be >= 1" in capsys.readouterr().err


def _trainer(tmp_path, dataset, name, **over):
    from rlft.train.config import load_train_config

    cfg = load_train_config("configs/offline_iql.yaml")
    cfg.dataset, cfg.steps = str(dataset), 20
    cfg.env.max_episode_steps, cfg.eval.num_episodes, cfg.run.tensorboard = 30, 0, False
    cfg.run.out_dir, cfg.run.name = str(tmp_path), name
    for k, v in over.items():
        setattr(cfg.run, k, v)
    return Trainer(cfg, quiet=True)


def test_a_checkpoint_is_never_written_from_nonfinite_weights(tmp_path, dataset):
    t = _trainer(tmp_path, dataset, "poison")
    t.run()
    ckpt = tmp_path / "poison" / "checkpoints"
    before = (ckpt / "state.pt").read_bytes()
    with torch.no_grad():
        next(t.algo.critic.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(TrainingError, match=r"not finite .*critic.*state.pt keeps the last good checkpoint"):
        t.save_state()
    assert (ckpt / "state.pt").read_bytes() == before  # untouched, still the good one
    assert nonfinite_tensors(load_training_state(ckpt / "state.pt", "cpu")) == []
    with torch.no_grad():
        next(t.policy.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(TrainingError, match="not written"):
        t.policy.save(ckpt / "poisoned.safetensors")
    assert not (ckpt / "poisoned.safetensors").exists()


def test_a_diverging_run_with_a_checkpoint_every_step_keeps_a_finite_resumable_state(tmp_path, dataset, capsys):
    """The reported case: critic lr 1e6 and a checkpoint after every update. Whatever the run writes is finite."""
    capsys.readouterr()
    rc = _train(
        tmp_path,
        "div",
        "--config",
        "configs/offline_iql.yaml",
        "--dataset",
        str(dataset),
        "--steps",
        "200",
        "--critic-lr",
        "1e6",
        "--value-lr",
        "1e6",
        "--run.checkpoint-every",
        "1",
    )
    err = capsys.readouterr().err
    state = tmp_path / "div" / "checkpoints" / "state.pt"
    assert rc == 2 and "diverged" in err, err
    assert state.is_file() and nonfinite_tensors(load_training_state(state, "cpu")) == []


def test_finite_blowup_is_flagged_live_and_stops_when_asked(tmp_path, dataset, capsys):
    """Critic lr 1e3: Q runs far outside [-1/(1-gamma), 0] = [-100, 0] while every number stays finite."""
    args = [
        "--config",
        "configs/offline_iql.yaml",
        "--dataset",
        str(dataset),
        "--steps",
        "300",
        "--critic-lr",
        "1e3",
        "--value-lr",
        "1e3",
    ]
    capsys.readouterr()
    assert _train(tmp_path, "warn", *args) == 0
    err = capsys.readouterr().err
    assert "] q_out_of_range at step" in err, err
    summary = json.loads((tmp_path / "warn" / "summary.json").read_text())
    assert summary["reward_range"] == [-1.0, 0.0]

    rc = _train(tmp_path, "stop", *args, "--run.stop-on-divergence", "--run.checkpoint-every", "50")
    err = capsys.readouterr().err
    assert rc == 2 and "run.stop_on_divergence: q_out_of_range" in err, err
    assert not (tmp_path / "stop" / "summary.json").exists()
    assert not (tmp_path / "stop" / "checkpoints" / "policy_final.safetensors").exists()


def test_resume_refuses_changed_hyperparameters_but_may_run_longer(tmp_path, dataset, capsys):
    base = ["--config", "configs/offline_iql.yaml", "--dataset", str(dataset)]
    assert _train(tmp_path, "r", *base, "--steps", "20") == 0
    recorded = (tmp_path / "r" / "config.yaml").read_text()
    capsys.readouterr()
    assert _train(tmp_path, "r", *base, "--steps", "40", "--critic-lr", "1e-9", "--run.resume") == 2
    err = capsys.readouterr().err
    assert "algo_cfg.critic_lr: 0.0003 -> 1e-09" in err, err
    assert (tmp_path / "r" / "config.yaml").read_text() == recorded  # the record still tells the truth
    assert _train(tmp_path, "r", *base, "--steps", "40", "--run.resume") == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 40


class _Payload:
    """Unpickling this would create a marker file: the test asserts it never happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_state_pt_is_refused_and_never_runs(tmp_path, dataset, capsys):
    assert (
        _train(tmp_path, "c", "--config", "configs/offline_iql.yaml", "--dataset", str(dataset), "--steps", "10") == 0
    )
    marker = tmp_path / "payload-ran"
    crafted = tmp_path / "c" / "checkpoints" / "state.pt"
    torch.save({"algo": {}, "step": 0, "best": 0.0, "x": _Payload(marker)}, crafted, pickle_protocol=2)
    with open(tmp_path / "probe.pkl", "wb") as f:  # the payload is live: plain pickle would run it
        pickle.dump(_Payload(tmp_path / "probe-ran"), f)
    with open(tmp_path / "probe.pkl", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "probe-ran").exists()

    capsys.readouterr()
    assert (
        _train(
            tmp_path,
            "c",
            "--config",
            "configs/offline_iql.yaml",
            "--dataset",
            str(dataset),
            "--steps",
            "20",
            "--run.resume",
        )
        == 2
    )
    assert "not a readable rlft training state" in capsys.readouterr().err
    assert (
        _train(
            tmp_path,
            "w",
            "--config",
            "configs/online_iql.yaml",
            "--dataset",
            str(dataset),
            "--steps",
            "20",
            "--init-critic",
            str(crafted),
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "init_critic:" in err and "not a readable rlft training state" in err, err
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# kill -9 during an online run, then --run.resume: the same run, bit for bit
# ---------------------------------------------------------------------------------------------------------------
ONLINE = [
    "sac",
    "--mode",
    "online",
    "--steps",
    "600",
    "--env.max-episode-steps",
    "60",
    "--eval.num-episodes",
    "1",
    "--eval.parallel-envs",
    "1",
    "--eval.every",
    "200",
    "--run.no-tensorboard",
    "--run.log-every",
    "20",
    "--run.checkpoint-every",
    "25",
    "--batch-size",
    "32",
    "--critic-hidden-dims",
    "32",
    "32",
    "--policy.hidden-dims",
    "32",
    "32",
    "--num-critics",
    "4",
    "--utd-ratio",
    "2",
    "--warmup-steps",
    "50",
    "--offline-ratio",
    "0",
    "--replay-capacity",
    "60",
    "--n-step",
    "3",
]  # a replay that wraps around, with n-step targets (their links must survive the checkpoints too)


def _records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k != "time" and not k.startswith("time/")})
    return out


def test_online_run_killed_at_random_moments_resumes_bit_for_bit(tmp_path):
    import random
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    assert main(["train", *ONLINE, "--run.out-dir", str(tmp_path), "--run.name", "whole"]) == 0
    cmd = [sys.executable, "-m", "rlft.cli", "train", *ONLINE, "--run.out-dir", str(tmp_path), "--run.name", "cut"]
    state = tmp_path / "cut" / "checkpoints" / "state.pt"
    rng, kills = random.Random(0), 0
    for attempt in range(5):  # start (then resume) and kill -9 at a random moment after a checkpoint exists
        proc = subprocess.Popen(
            cmd + (["--run.resume"] if attempt else []), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        t0 = time.time()
        while not state.exists() and proc.poll() is None and time.time() - t0 < 120:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
    print(f"killed with SIGKILL {kills} times")  # (pytest -s shows it; docs/results.md quotes a run)
    assert kills >= 1
    if not (tmp_path / "cut" / "summary.json").exists():
        assert main(["train", *ONLINE, "--run.out-dir", str(tmp_path), "--run.name", "cut", "--run.resume"]) == 0
    a = load_file(str(tmp_path / "whole" / "checkpoints" / "policy_final.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "policy_final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _records(tmp_path / "cut") == _records(tmp_path / "whole")  # no step twice, the same numbers
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["final"]["eval/return"] == whole["final"]["eval/return"]
    times = [json.loads(ln)["time"] for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert times == sorted(times)  # the clock continues across the resumes, it does not restart at 0


@pytest.mark.parametrize(
    "meta,why",
    [
        ({"class": "GaussianPolicy", "kwargs": "{not json"}, "not valid JSON"),
        ({"class": "GaussianPolicy", "kwargs": "[1, 2]"}, "must be a JSON object"),
        ({"class": "GaussianPolicy"}, "not valid JSON"),
        ({"class": "Nope", "kwargs": "{}"}, "unknown policy class"),
        (
            {"class": "GaussianPolicy", "kwargs": '{"obs_dim": 3, "action_dim": 2, "act_horizon": 1, "evil": 1}'},
            "unknown arguments ['evil']",
        ),
        ({"class": "GaussianPolicy", "kwargs": '{"obs_dim": 3}'}, "missing arguments"),
        (
            {"class": "GaussianPolicy", "kwargs": '{"obs_dim": "x", "action_dim": 2, "act_horizon": 1}'},
            "does not build",
        ),
        (
            {
                "class": "ResidualPolicy",
                "kwargs": '{"obs_dim": 3, "action_dim": 2, "act_horizon": 1, "base_class": "X", '
                '"base_kwargs": {}, "residual_class": "Y", "residual_kwargs": {}, '
                '"bound": [1, 1]}',
            },
            "unknown policy class",
        ),
    ],
)
def test_crafted_policy_metadata_is_refused_in_one_line(tmp_path, capsys, meta, why):
    from safetensors.torch import save_file

    path = tmp_path / "p.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={**meta, "extra": json.dumps({"env_id": ENV})})
    capsys.readouterr()
    assert main(["eval", "--policy", str(path), "--num-episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert why in err and str(path) in err and "Traceback" not in err, err


@pytest.mark.parametrize("name", ["../../x", "/tmp/rlft-abs-run", "..", "a/b"])
def test_run_names_cannot_write_outside_out_dir(tmp_path, dataset, capsys, name):
    out = tmp_path / "deep" / "out"
    capsys.readouterr()
    rc = main(
        [
            "train",
            "--config",
            "configs/bc.yaml",
            "--dataset",
            str(dataset),
            "--steps",
            "5",
            "--run.out-dir",
            str(out),
            "--run.name",
            name,
            *TINY_EVAL,
        ]
    )
    assert rc == 2 and "run.name" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "x").exists() and not Path("/tmp/rlft-abs-run").exists()
    assert main(["pipeline", "--out-dir", str(out), "--name", name, "--budget-scale", "0.001"]) == 2


def test_markup_in_run_names_is_printed_as_text(tmp_path, dataset, capsys):
    """``a[/b]c`` (a MarkupError before) holds a '/', so it is refused like any nested name; bracketed names that
    are plain names train and print the real path."""
    assert (
        main(
            [
                "train",
                "--config",
                "configs/bc.yaml",
                "--dataset",
                str(dataset),
                "--run.out-dir",
                str(tmp_path),
                "--run.name",
                "a[/b]c",
            ]
        )
        == 2
    )
    assert "run.name" in capsys.readouterr().err
    for name in ("iql[lr=3e-4]", "x[bold]y"):
        capsys.readouterr()
        assert (
            main(
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
                    name,
                    *TINY_EVAL,
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        assert (tmp_path / name / "summary.json").is_file()
        assert json.loads(out[out.index("{") :])["run_dir"] == str(tmp_path / name)


def test_report_escapes_what_it_reads_from_summary_json(tmp_path, dataset):
    assert (
        main(
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
                "r",
                *TINY_EVAL,
            ]
        )
        == 0
    )
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    s["wall_s"], s["best_success_once"] = "<script>alert(1)</script>", "<img src=x onerror=alert(2)>"
    (tmp_path / "r" / "summary.json").write_text(json.dumps(s))
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "<script>alert(1)" not in page and "<img src=x" not in page and "&lt;script&gt;alert(1)" in page


def test_a_loss_exploding_within_the_first_log_interval_is_flagged_live(tmp_path, dataset, capsys):
    """Actor lr 10: the Gaussian NLL is ~1e10 by the first log point (10 updates), so the start is the first update's."""
    capsys.readouterr()
    assert (
        _train(
            tmp_path,
            "alr",
            "--config",
            "configs/offline_iql.yaml",
            "--dataset",
            str(dataset),
            "--steps",
            "60",
            "--actor-lr",
            "10",
        )
        == 0
    )
    assert "] loss_explosion at step" in capsys.readouterr().err


def test_a_moved_run_directory_resumes(tmp_path, dataset):
    import shutil

    base = ["--config", "configs/offline_iql.yaml", "--dataset", str(dataset)]
    assert _train(tmp_path, "m", *base, "--steps", "20") == 0
    shutil.move(str(tmp_path / "m"), str(tmp_path / "moved"))
    assert (
        main(
            [
                "train",
                *base,
                "--steps",
                "30",
                "--run.resume",
                "--run.out-dir",
                str(tmp_path),
                "--run.name",
                "moved",
                "--run.log-every",
                "10",
                *TINY_EVAL,
            ]
        )
        == 0
    )


def test_trainer_flushes_denormals_unless_told_not_to(tmp_path, dataset):
    """A denormal operand makes CPU float math ~100x slower; the trainer flushes them to zero by default."""

    def tiny() -> float:  # a product whose float32 result, 1e-39, is denormal
        return (torch.tensor([1e-30]) * 1e-9).item()

    try:
        _trainer(tmp_path, dataset, "flush")
        assert tiny() == 0.0
        _trainer(tmp_path, dataset, "keep", flush_denormal=False)
        assert tiny() > 0.0
    finally:
        torch.set_flush_denormal(False)
