"""Datasets are checked against the run before training (issue 16, item 3) and a killed ``rlft collect`` leaves no
worker processes and no temporaries behind (issue 16, item 8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import h5py
import numpy as np
import psutil
import pytest

from rlft.collect import CollectConfig, run_collect
from rlft.data.episodes import Episode
from rlft.data.h5io import load_dataset, sidecar_path, write_episodes
from rlft.data.ogbench_npz import write_ogbench_npz
from rlft.envs import env_info, make_env
from rlft.envs.datasets import load_dataset_for_env
from rlft.errors import DatasetError
from rlft.train.config import train_config_from_dict
from rlft.train.runner import Trainer
from rlft.utils import _HOST, atomic_write_text, remove_stale_temps

SINGLE = "cube-single-singletask-v0"
BOX = {"env_id": SINGLE, "action_low": [-1.0] * 5, "action_high": [1.0] * 5}  # cube-single's env_info, in short


def _episodes(n: int = 3, T: int = 12, obs_dim: int = 28, act_dim: int = 5, scale: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        Episode(
            obs=rng.normal(size=(T + 1, obs_dim)).astype(np.float32),
            actions=(scale * rng.uniform(-1, 1, (T, act_dim))).astype(np.float32),
            rewards=-np.ones(T, np.float32),
            terminated=np.zeros(T, bool),
            truncated=np.arange(T) == T - 1,
            success=np.zeros(T, bool),
        )
        for _ in range(n)
    ]


def _write(path, episodes=None, env_id=SINGLE, **info):
    return write_episodes(
        path, episodes if episodes is not None else _episodes(), {"env_id": env_id, "max_episode_steps": 200, **info}
    )


def _trainer(tmp_path, data, **over):
    cfg = {
        "algo": "bc",
        "dataset": str(data),
        "env": {"env_id": SINGLE, "act_horizon": 3},
        "algo_cfg": {"policy": {"hidden_dims": [16]}},
        "run": {"out_dir": str(tmp_path)},
        **over,
    }
    return Trainer(train_config_from_dict(cfg, "test"), run_dir=tmp_path / "run", quiet=True)


# ------------------------------------------------------------------------------- item 3a: actions outside the box
def test_actions_far_outside_the_box_are_refused_naming_file_field_range_and_box(tmp_path):
    data = _write(tmp_path / "d.h5", _episodes(scale=40.0))
    with pytest.raises(DatasetError) as e:
        _trainer(tmp_path, data)
    msg = str(e.value)
    assert str(data) in msg and "'actions'" in msg and SINGLE in msg
    assert "vs [-1, 1]" in msg and "dim 0: [-3" in msg and "clip_dataset_actions" in msg


def test_clip_dataset_actions_clips_into_the_box(tmp_path):
    data = _write(tmp_path / "d.h5", _episodes(scale=40.0))
    eps, meta = load_dataset_for_env(data, BOX, clip_actions=True)
    acts = np.concatenate([ep.actions for ep in eps])
    assert acts.min() == -1.0 and acts.max() == 1.0 and 0.9 < meta["clipped_actions"] < 1.0
    tr = _trainer(tmp_path, data, clip_dataset_actions=True)
    assert tr.dataset is not None


def test_actions_on_the_box_edge_are_accepted_unchanged(tmp_path):
    eps = _episodes()
    eps[0].actions[0] = 1.0
    eps[1].actions[0] = -1.0
    eps[2].actions[0, 0] = 1.0 + 1e-4  # float rounding of a saturated action
    data = _write(tmp_path / "d.h5", eps)
    got, meta = load_dataset_for_env(data, BOX)
    np.testing.assert_array_equal(np.concatenate([e.actions for e in got]), np.concatenate([e.actions for e in eps]))
    assert "clipped_actions" not in meta


# ------------------------------------------------------------------------------------ item 3b: the recorded env id
def test_dataset_of_another_env_is_refused_naming_the_file_and_both_ids(tmp_path):
    data = _write(tmp_path / "d.h5", env_id="cube-double-singletask-v0")
    with pytest.raises(DatasetError) as e:
        _trainer(tmp_path, data)
    msg = str(e.value)
    assert str(sidecar_path(data)) in msg and "'cube-double-singletask-v0'" in msg and repr(SINGLE) in msg
    assert "not a known" not in msg
    sidecar_path(data).unlink()  # without the sidecar the h5's own attributes say the same
    with pytest.raises(DatasetError, match=f"^{data}: env_info.env_id is 'cube-double-singletask-v0'"):
        load_dataset_for_env(data, BOX)


def test_dataset_with_an_unknown_env_id_is_refused(tmp_path):
    data = _write(tmp_path / "d.h5", env_id="cube-singel-singletask-v0")
    with pytest.raises(
        DatasetError, match=f"'cube-singel-singletask-v0', not a known environment id, but this run's env is '{SINGLE}'"
    ):
        load_dataset_for_env(data, BOX)


def test_same_task_under_another_name_and_other_run_settings_are_accepted(tmp_path):
    # cube's default single task is task 2: the two ids name one env
    load_dataset_for_env(_write(tmp_path / "a.h5", env_id="cube-single-singletask-task2-v0"), BOX)
    with pytest.raises(DatasetError, match="task1"):
        load_dataset_for_env(_write(tmp_path / "b.h5", env_id="cube-single-singletask-task1-v0"), BOX)
    # a ManiSkill demo file (as rlft.collect writes it: its own time limit in env_kwargs)
    ms = {"env_id": "LiftPegUpright-v1", "action_low": [-1.0] * 7, "action_high": [1.0] * 7}
    load_dataset_for_env(
        _write(
            tmp_path / "m.h5",
            _episodes(obs_dim=25, act_dim=7),
            env_id="LiftPegUpright-v1",
            env_kwargs={"control_mode": "pd_ee_delta_pose", "max_episode_steps": 100},
        ),
        ms,
    )
    # an OGBench npz records no env: it loads
    write_ogbench_npz(tmp_path / "o.npz", _episodes(), layout="transitions")
    assert load_dataset_for_env(tmp_path / "o.npz", BOX)[1]["env_info"]["env_id"] is None
    # our own collection, trained with another time limit and stacked observations
    out = run_collect(
        CollectConfig(
            env_id=SINGLE,
            mode="play",
            num_episodes=1,
            max_episode_steps=20,
            num_workers=1,
            out=str(tmp_path / "c.h5"),
            progress=False,
        )
    )
    run_env = make_env(SINGLE, obs_horizon=2, max_episode_steps=50)
    load_dataset_for_env(out, env_info(run_env))
    run_env.close()
    tr = _trainer(tmp_path, out, env={"env_id": SINGLE, "act_horizon": 3, "obs_horizon": 2, "max_episode_steps": 50})
    assert tr.dataset is not None


# ------------------------------------------------------------------------- item 3c: episodes of different dims
@pytest.mark.parametrize("key, dim", [("actions", 4), ("obs", 30)])
def test_episodes_of_different_dims_are_refused_naming_file_episode_and_field(tmp_path, key, dim):
    data = _write(tmp_path / "d.h5")
    with h5py.File(data, "a") as f:
        shape = f[f"traj_1/{key}"].shape
        del f[f"traj_1/{key}"]
        f["traj_1"].create_dataset(key, data=np.zeros((shape[0], dim), np.float32))
    with pytest.raises(DatasetError, match=f"^{data}:traj_1/{key}: episode 1 has {dim}-dim"):
        load_dataset(data)
    with pytest.raises(DatasetError, match=f"{data}:traj_1/{key}"):
        _trainer(tmp_path, data)


def test_episodes_of_different_dims_are_not_written(tmp_path):
    eps = _episodes() + _episodes(n=1, act_dim=4)
    with pytest.raises(DatasetError, match="episode 3/actions: episode 3 has 4-dim actions"):
        _write(tmp_path / "d.h5", eps)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- item 8: leftovers
def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".d.h5.tmp-{_HOST}-{dead}-abc123"
    live = tmp_path / f".d.h5.tmp-{_HOST}-{alive}-abc123"  # a writer still at work
    other_host = tmp_path / f".d.h5.tmp-{'0' * 8 if _HOST != '0' * 8 else '1' * 8}-{dead}-abc123"  # shared FS
    other_file = tmp_path / f".e.h5.tmp-{_HOST}-{dead}-abc123"
    not_ours = tmp_path / ".d.h5.tmp-abc123"
    for p in (stale, live, other_host, other_file, not_ours):
        p.write_text("half written")
    atomic_write_text(tmp_path / "d.h5", "new")  # the next write of d.h5 removes its dead writer's leftovers
    assert (tmp_path / "d.h5").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["d.h5", live.name, other_host.name, other_file.name, not_ours.name]
    )
    assert remove_stale_temps(tmp_path) == [other_file]  # the whole folder: every dead writer of this host


def _collect_workers(parent: psutil.Process, n: int, timeout: float = 120.0) -> list[psutil.Process]:
    """The ``n`` pool workers of a running collect, once each has built its environment (MuJoCo loaded)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert parent.is_running(), "the collect ended before its workers started"
        ready = []
        for c in parent.children():
            try:
                if any("mujoco" in m.path for m in c.memory_maps()):
                    ready.append(c)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if len(ready) >= n:
            return ready
        time.sleep(0.2)
    raise AssertionError(f"the collect's {n} workers did not start within {timeout}s")


def _still_running(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``procs`` still running (zombies count as ended: a dead orphan may wait for its reaper) after
    ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.05)


def test_killed_collect_takes_its_workers_along_and_a_rerun_leaves_no_temporaries(tmp_path):
    out = tmp_path / "d.h5"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlft.collect",
            "--env-id",
            SINGLE,
            "--num-episodes",
            "50",
            "--num-workers",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        workers = _collect_workers(psutil.Process(proc.pid), 2)
        time.sleep(0.5)  # mid-episode
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    alive = _still_running(workers, timeout=2.0)
    for w in alive:
        w.kill()
    assert not alive, f"{len(alive)} collect worker(s) outlived the killed collect by 2 s"
    # what a collect killed while writing its files leaves: temporaries named after its pid
    for name in ("d.h5", "d.json"):
        (tmp_path / f".{name}.tmp-{_HOST}-{proc.pid}-x1y2z3").write_text("half written")
    run_collect(CollectConfig(env_id=SINGLE, num_episodes=1, num_workers=1, out=str(out), progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "d.json"]
