"""Try the inputs a careless or hostile user gives rlft and tabulate what each gets (docs/results.md, "Trust").

Each case runs the real ``rlft`` command line in a subprocess (one tiny OGBench cube-single dataset and run made
here first) and is judged by its exit status and output:

* ``refused``: exit status 2 and one ``error:`` line that names the thing at fault (the case's ``names``), no
  traceback, and nothing left that the case forbids (a run directory, a marker file);
* ``handled``: the command did what a careful user expects (the case's own check passed);
* anything else is a failure and is printed with the command's last output lines.

    python scripts/bad_inputs.py [--workdir DIR]      # prints a markdown table; exit status 1 if any case fails
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ENV = "cube-single-singletask-v0"
TINY = [
    "--env.max-episode-steps",
    "30",
    "--eval.num-episodes",
    "1",
    "--eval.parallel-envs",
    "1",
    "--run.no-tensorboard",
    "--run.log-every",
    "10",
]


def rlft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(
        [sys.executable, "-m", "rlft.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900
    )


class Payload:
    """Unpickling this creates a marker file; a refused load never does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary one)")
    w = Path(ap.parse_args().workdir or tempfile.mkdtemp(prefix="rlft-bad-inputs-")).resolve()
    w.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    cfg = repo / "configs"
    from rlft.data.h5io import read_episodes, write_episodes

    data = w / "demos.h5"
    if not data.exists():
        assert (
            rlft(
                "collect", "--env-id", ENV, "--num-episodes", "3", "--num-workers", "1", "--out", str(data), cwd=w
            ).returncode
            == 0
        )
    eps, meta = read_episodes(data)
    info = meta["env_info"]

    def variant(name: str, change) -> Path:
        out = w / f"{name}.h5"
        new = [change(e) for e in eps] if callable(change) else eps
        write_episodes(out, new, {**info, **(change if isinstance(change, dict) else {})})
        return out

    import dataclasses

    wide = variant("wide", lambda e: dataclasses.replace(e, actions=e.actions * 40.0))
    unknown_env = variant("unknown_env", {"env_id": "cube-sixteen-v9"})
    other_env = variant("other_env", {"env_id": "puzzle-3x3-singletask-v0"})
    mixed = w / "mixed.h5"
    if not mixed.exists():
        import h5py

        write_episodes(mixed, eps, info)
        with h5py.File(mixed, "a") as f:  # a colleague's file: the second episode has one action dimension more
            a = f["traj_1/actions"][()]
            del f["traj_1/actions"]
            f["traj_1/actions"] = np.concatenate([a, np.zeros((len(a), 1), a.dtype)], axis=1)
    iql = ["train", "--config", str(cfg / "offline_iql.yaml"), "--run.out-dir", str(w / "runs")]
    ok = rlft(*iql, "--dataset", str(data), "--steps", "20", "--run.name", "good", *TINY, cwd=w)
    assert ok.returncode == 0, ok.stderr
    good = w / "runs" / "good"
    crafted = w / "runs" / "crafted"
    if not crafted.exists():
        import shutil

        import torch

        shutil.copytree(good, crafted)
        torch.save(
            {"algo": {}, "step": 0, "best": 0.0, "x": Payload(str(w / "PAYLOAD-RAN"))},
            crafted / "checkpoints" / "state.pt",
        )
    from safetensors.torch import save_file

    bad_policies = {
        "kwargs not JSON": {"class": "GaussianPolicy", "kwargs": "{oops"},
        "kwargs a list": {"class": "GaussianPolicy", "kwargs": "[]"},
        "unknown constructor argument": {
            "class": "GaussianPolicy",
            "kwargs": '{"obs_dim": 28, "action_dim": 5, "act_horizon": 5, "x": 1}',
        },
        "missing kwargs": {"class": "GaussianPolicy"},
        "unknown class": {"class": "Evil", "kwargs": "{}"},
    }
    for k, meta_ in bad_policies.items():
        save_file(
            {"w": torch_zeros()},
            str(w / f"{k.replace(' ', '_')}.safetensors"),
            metadata={**meta_, "extra": json.dumps({"env_id": ENV})},
        )

    # (what was tried, command args, expected: 'refused' + words the error names, or a check function)
    cases = [
        (
            "batch_size -5",
            [*iql, "--dataset", str(data), "--batch-size", "-5", "--run.name", "b1", *TINY],
            ["batch_size"],
            "b1",
        ),
        (
            "batch_size 0",
            [*iql, "--dataset", str(data), "--batch-size", "0", "--run.name", "b2", *TINY],
            ["batch_size"],
            "b2",
        ),
        ("--steps -5", [*iql, "--dataset", str(data), "--steps", "-5", "--run.name", "b3", *TINY], ["steps"], "b3"),
        (
            "offline_ratio 1.5",
            [*iql, "--dataset", str(data), "--offline-ratio", "1.5", "--run.name", "b4", *TINY],
            ["offline_ratio"],
            "b4",
        ),
        (
            "rlft eval --num-episodes 0",
            ["eval", "--policy", str(good / "checkpoints/policy_final.safetensors"), "--num-episodes", "0"],
            ["num_episodes"],
            None,
        ),
        (
            "rlft eval --num-episodes -1",
            ["eval", "--policy", str(good / "checkpoints/policy_final.safetensors"), "--num-episodes", "-1"],
            ["num_episodes"],
            None,
        ),
        (
            "actions 40x outside the action box",
            [*iql, "--dataset", str(wide), "--run.name", "b5", *TINY],
            [str(wide), "actions"],
            "b5",
        ),
        (
            "sidecar with an env id that does not exist",
            [*iql, "--dataset", str(unknown_env), "--run.name", "b6", *TINY],
            ["unknown_env", "cube-sixteen-v9"],
            "b6",
        ),
        (
            "sidecar of another env",
            [*iql, "--dataset", str(other_env), "--run.name", "b7", *TINY],
            ["puzzle-3x3-singletask-v0"],
            "b7",
        ),
        (
            "episodes with different action dims",
            [*iql, "--dataset", str(mixed), "--run.name", "b8", *TINY],
            [str(mixed), "actions"],
            "b8",
        ),
        (
            "resume with another critic lr",
            [
                *iql,
                "--dataset",
                str(data),
                "--steps",
                "40",
                "--run.name",
                "good",
                "--critic-lr",
                "1e-9",
                "--run.resume",
                *TINY,
            ],
            ["algo_cfg.critic_lr"],
            None,
        ),
        (
            "crafted state.pt (pickle payload), --run.resume",
            [*iql, "--dataset", str(data), "--steps", "40", "--run.name", "crafted", "--run.resume", *TINY],
            ["state.pt"],
            None,
        ),
        (
            "crafted state.pt (pickle payload), --init-critic",
            [
                "train",
                "--config",
                str(cfg / "online_iql.yaml"),
                "--dataset",
                str(data),
                "--run.out-dir",
                str(w / "runs"),
                "--init-critic",
                str(crafted / "checkpoints/state.pt"),
                "--run.name",
                "b9",
                *TINY,
            ],
            ["init_critic"],
            "b9",
        ),
        *[
            (
                f"policy metadata: {k}",
                ["eval", "--policy", str(w / f"{k.replace(' ', '_')}.safetensors")],
                [f"{k.replace(' ', '_')}.safetensors"],
                None,
            )
            for k in bad_policies
        ],
        ("run name ../../x", [*iql, "--dataset", str(data), "--run.name", "../../x", *TINY], ["run.name"], None),
        ("absolute run name", [*iql, "--dataset", str(data), "--run.name", str(w / "abs"), *TINY], ["run.name"], None),
        (
            "run name a[/b]c (rich markup)",
            [*iql, "--dataset", str(data), "--run.name", "a[/b]c", *TINY],
            ["run.name"],
            None,
        ),
        (
            "critic lr 1e6, a checkpoint every step",
            [
                *iql,
                "--dataset",
                str(data),
                "--steps",
                "200",
                "--run.name",
                "lr1e6",
                "--critic-lr",
                "1e6",
                "--value-lr",
                "1e6",
                "--run.checkpoint-every",
                "1",
                *TINY,
            ],
            ["diverged"],
            None,
        ),
        (
            "critic lr 1e3 with --run.stop-on-divergence",
            [
                *iql,
                "--dataset",
                str(data),
                "--steps",
                "300",
                "--run.name",
                "lr1e3",
                "--critic-lr",
                "1e3",
                "--value-lr",
                "1e3",
                "--run.stop-on-divergence",
                *TINY,
            ],
            ["q_out_of_range"],
            None,
        ),
    ]
    handled = [
        (
            "critic lr 1e3 (finite blow-up)",
            [
                *iql,
                "--dataset",
                str(data),
                "--steps",
                "300",
                "--run.name",
                "w1e3",
                "--critic-lr",
                "1e3",
                "--value-lr",
                "1e3",
                *TINY,
            ],
            lambda r: r.returncode == 0 and "q_out_of_range" in r.stderr,
            "trains, with a live q_out_of_range error line",
        ),
        (
            "actor lr 10",
            [*iql, "--dataset", str(data), "--steps", "300", "--run.name", "alr10", "--actor-lr", "10", *TINY],
            lambda r: "loss_explosion" in r.stderr or "diverged" in r.stderr,
            "a live loss_explosion line (or stops as diverged)",
        ),
        (
            "run name iql[lr=3e-4] (rich markup)",
            [*iql, "--dataset", str(data), "--steps", "5", "--run.name", "iql[lr=3e-4]", *TINY],
            lambda r: (
                r.returncode == 0 and json.loads(r.stdout[r.stdout.index("{") :])["run_dir"].endswith("iql[lr=3e-4]")
            ),
            "trains; prints the real path",
        ),
        (
            "actions 40x outside, --clip-dataset-actions",
            [*iql, "--dataset", str(wide), "--steps", "5", "--clip-dataset-actions", "--run.name", "clip", *TINY],
            lambda r: r.returncode == 0,
            "trains on the clipped actions",
        ),
    ]

    rows, failures = [], 0
    for what, args, names, forbidden in cases:
        r = rlft(*args, cwd=w)
        err = r.stderr.strip().splitlines()
        line = next((ln for ln in err if ln.startswith("error:")), "")
        good_refusal = (
            r.returncode == 2
            and line
            and all(n in r.stderr for n in names)
            and "Traceback" not in r.stderr
            and not (w / "PAYLOAD-RAN").exists()
            and (forbidden is None or not (w / "runs" / forbidden).exists())
        )
        failures += not good_refusal
        rows.append(
            (
                what,
                "refused" if good_refusal else f"NOT refused clearly (exit {r.returncode})",
                line[len("error: ") :][:160] if line else " / ".join(err[-2:])[:160],
            )
        )
    for what, args, check, expect in handled:
        r = rlft(*args, cwd=w)
        ok_ = bool(check(r))
        failures += not ok_
        rows.append((what, "handled" if ok_ else f"NOT handled (exit {r.returncode})", expect))
    print("| bad input | outcome | what the user gets |\n|---|---|---|")
    for what, outcome, msg in rows:
        print(f"| {what} | {outcome} | {msg.replace('|', '/')} |")
    n_ref = sum(o == "refused" for _, o, _ in rows)
    print(
        f"\n{n_ref} of {len(cases)} bad inputs refused with one clear line; "
        f"{sum(o == 'handled' for _, o, _ in rows)} of {len(handled)} handled cases as expected; "
        f"payload ran: {(w / 'PAYLOAD-RAN').exists()}"
    )
    return 1 if failures else 0


def torch_zeros():
    import torch

    return torch.zeros(1)


if __name__ == "__main__":
    sys.exit(main())
