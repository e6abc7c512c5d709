"""Datasets are checked against the run before training (issue 16, item 3) and a killed ``rlft collect`` leaves no
worker processes and no temporaries behind (issue 16, item 8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import psutil
import pytest

from rlft.collect import CollectConfig, run_collect
from rlft.utils import _HOST, atomic_write_text, remove_stale_temps

SINGLE = "cube-single-singletask-v0"


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
        ["d.h5", live.name, other_host.name, other_file.name, not_ours.name])
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
        [sys.executable, "-m", "rlft.collect", "--env-id", SINGLE, "--num-episodes", "50", "--num-workers", "2",
         "--out", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
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
