"""Dataset files (ManiSkill-layout h5 + sidecar, OGBench npz) and multi-process collection, on real collected data."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import h5py
import numpy as np
import pytest

from rlft.collect import CollectConfig, run_collect
from rlft.data.episodes import EPISODE_KEYS, Episode
from rlft.data.h5io import load_dataset, read_episodes, sidecar_path, write_episodes
from rlft.data.ogbench_npz import read_ogbench_npz, write_ogbench_npz
from rlft.envs import env_info, make_env
from rlft.envs.ogbench_env import ogbench_task_reward_fn
from rlft.envs.oracles import collect_demo_episode, collect_play_episode, make_oracle, make_play_env
from rlft.errors import ConfigError, DatasetError

SINGLE = "cube-single-singletask-v0"


@pytest.fixture(scope="module")
def real():
    """Two oracle demos and one short play episode of cube-single, plus the env's info."""
    env = make_env(SINGLE)
    oracle = make_oracle(env, "markov")
    rng = np.random.default_rng(0)
    demos = [collect_demo_episode(env, oracle, rng, action_noise=0.1, seed=s) for s in (1, 2)]
    penv = make_play_env(SINGLE, max_episode_steps=60)
    play = collect_play_episode(penv, make_oracle(penv, "plan"), rng, oracle_kind="plan", seed=3)
    return {"episodes": demos + [play], "play": play, "env_info": env_info(env)}


def _assert_same(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in EPISODE_KEYS:
            u, v = getattr(x, k), getattr(y, k)
            assert u.shape == v.shape and u.dtype == v.dtype, k
            np.testing.assert_array_equal(u, v, err_msg=k)


def _write(tmp_path, real, name="d.h5"):
    path = tmp_path / name
    write_episodes(
        path,
        real["episodes"],
        real["env_info"],
        extra={"mode": "test"},
        episode_info=[{"episode_seed": s} for s in (1, 2, 3)],
    )
    return path


def test_round_trip_exact_with_maniskill_sidecar(tmp_path, real):
    path = _write(tmp_path, real)
    eps, meta = read_episodes(path)
    _assert_same(real["episodes"], eps)
    side = json.loads(sidecar_path(path).read_text())
    assert side["env_info"]["env_id"] == SINGLE and side["env_info"]["max_episode_steps"] == 200
    assert "control_mode" in side["env_info"]["env_kwargs"]
    assert [e["episode_seed"] for e in side["episodes"]] == [1, 2, 3]
    assert side["episodes"][0]["reset_kwargs"] == {"seed": 1}
    assert [e["elapsed_steps"] for e in side["episodes"]] == [len(e) for e in real["episodes"]]
    assert side["source"]["mode"] == "test" and "rlft_version" in side["source"]
    assert meta["env_info"] == side["env_info"] and meta["path"] == str(path)
    with h5py.File(path) as f:
        assert sorted(f["traj_0"].keys()) == sorted(EPISODE_KEYS)
        assert f["traj_0/terminated"].dtype == bool and f["traj_0/obs"].dtype == np.float32


def test_meta_without_or_with_stale_sidecar(tmp_path, real):
    path = _write(tmp_path, real)
    sidecar_path(path).unlink()
    eps, meta = read_episodes(path)
    _assert_same(real["episodes"], eps)
    assert meta["env_info"]["env_id"] == SINGLE
    assert [e["episode_seed"] for e in meta["episodes"]] == [1, 2, 3]
    # a sidecar from another write (e.g. a run killed between the two renames) is not trusted
    sidecar_path(path).write_text(json.dumps({"env_info": {"env_id": "other"}, "episodes": [], "write_id": "x"}))
    _, meta = read_episodes(path)
    assert meta["env_info"]["env_id"] == SINGLE


def test_atomic_write_leaves_nothing_on_failure(tmp_path, real):
    path = tmp_path / "d.h5"
    bad_info = [{"episode_seed": 1}, {"episode_seed": "not-a-seed"}, {"episode_seed": 3}]
    with pytest.raises(ValueError):  # raised while the h5 is half written (second group)
        write_episodes(path, real["episodes"], real["env_info"], episode_info=bad_info)
    assert sorted(os.listdir(tmp_path)) == []
    # an existing dataset is left untouched by a failed overwrite
    _write(tmp_path, real)
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    with pytest.raises(ValueError):
        write_episodes(path, real["episodes"][:2] * 2, real["env_info"], episode_info=bad_info + [{}])
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == before


def _corrupt(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize(
    "how, expect",
    [
        (lambda f: f["traj_1"].__delitem__("rewards"), ["traj_1", "rewards"]),
        (lambda f: f["traj_1"].__delitem__("success"), ["traj_1", "success"]),
        (lambda f: f["traj_2"].__delitem__("truncated"), ["traj_2", "truncated"]),
        (
            lambda f: (f["traj_0"].__delitem__("rewards"), f["traj_0"].create_dataset("rewards", data=np.zeros(3))),
            ["traj_0", "rewards", "shape"],
        ),
        (
            lambda f: (
                f["traj_0"].__delitem__("actions"),
                f["traj_0"].create_dataset("actions", data=np.array([b"a"] * 3)),
            ),
            ["traj_0", "actions", "dtype"],
        ),
        (lambda f: f["traj_1/obs"].__setitem__((2, 3), np.nan), ["traj_1", "obs", "NaN"]),
        (
            lambda f: (f["traj_0"].__delitem__("obs"), f["traj_0"].create_group("obs").create_dataset("x", data=[1])),
            ["traj_0", "obs", "state"],
        ),
    ],
)
def test_bad_h5_raises_dataset_error_naming_key(tmp_path, real, how, expect):
    path = _write(tmp_path, real)
    _corrupt(path, how)
    with pytest.raises(DatasetError) as ei:
        read_episodes(path)
    for word in expect:
        assert word in str(ei.value)
    assert str(path) in str(ei.value)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_episodes(tmp_path / "nope.h5")
    garbage = tmp_path / "g.h5"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(DatasetError, match="HDF5"):
        read_episodes(garbage)
    empty = tmp_path / "e.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(DatasetError, match="traj_"):
        read_episodes(empty)
    with pytest.raises(DatasetError, match="format"):
        load_dataset(tmp_path / "x.csv")
    gnpz = tmp_path / "g.npz"
    gnpz.write_bytes(os.urandom(2000))
    with pytest.raises(DatasetError, match="npz"):
        load_dataset(gnpz)


def test_older_maniskill_keys(tmp_path, real):
    """``dones`` instead of terminated/truncated and ``info/success`` instead of ``success``."""
    path = _write(tmp_path, real)

    def legacy(f):
        for i in range(3):
            g = f[f"traj_{i}"]
            g.create_dataset("dones", data=g["terminated"][()])
            g.create_group("info").create_dataset("success", data=g["success"][()])
            for k in ("terminated", "truncated", "success"):
                del g[k]

    _corrupt(path, legacy)
    eps, _ = read_episodes(path)
    _assert_same(real["episodes"], eps)  # demos end terminated, the play episode ends truncated


def test_ogbench_npz_raw_layout_with_task_reward_fn(tmp_path, real):
    play = real["play"]
    path = write_ogbench_npz(tmp_path / "play.npz", [play, play], layout="raw")
    with np.load(path) as f:
        assert sorted(f.files) == ["actions", "observations", "terminals"]
        assert f["observations"].shape == (2 * (len(play) + 1), 28) and f["terminals"].sum() == 2
    with pytest.raises(DatasetError, match="reward_fn"):
        load_dataset(path)
    eps, meta = load_dataset(path, reward_fn=ogbench_task_reward_fn(SINGLE))
    assert meta["layout"] == "raw" and len(eps) == 2
    _assert_same([play, play], eps)  # obs, actions, task rewards/success recomputed from the states, flags


def test_ogbench_npz_transition_layout_round_trip(tmp_path, real):
    path = write_ogbench_npz(tmp_path / "t.npz", real["episodes"], layout="transitions")
    eps, meta = read_ogbench_npz(path)
    assert meta["layout"] == "transitions" and meta["reward_source"] == "file"
    _assert_same(real["episodes"], eps)


def test_bad_npz_raises_dataset_error_naming_key(tmp_path, real):
    ep = real["episodes"][0]
    good = dict(
        observations=ep.obs[:-1],
        next_observations=ep.obs[1:],
        actions=ep.actions,
        rewards=ep.rewards,
        masks=1.0 - ep.terminated,
        terminals=np.arange(len(ep)) == len(ep) - 1,
    )
    cases = {
        "rewards": dict(good, rewards=np.where(np.arange(len(ep)) == 3, np.nan, ep.rewards)),
        "terminals": dict(good, terminals=np.zeros(len(ep), bool)),
        "actions": dict(good, actions=ep.actions[:-1]),
        "observations": {k: v for k, v in good.items() if k != "observations"},
        "masks": dict(good, masks=np.array(["x"] * len(ep))),
    }
    for key, arrays in cases.items():
        p = tmp_path / f"{key}.npz"
        np.savez(p, **arrays)
        with pytest.raises(DatasetError) as ei:
            load_dataset(p)
        assert key in str(ei.value), (key, str(ei.value))
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "none.npz")


def test_run_collect_independent_of_worker_count(tmp_path):
    base = dict(env_id=SINGLE, mode="demos", num_episodes=3, action_noise=0.3, seed=4, progress=False)
    p1 = run_collect(CollectConfig(**base, num_workers=1, out=str(tmp_path / "w1.h5")))
    p2 = run_collect(CollectConfig(**base, num_workers=2, out=str(tmp_path / "w2.h5")))
    e1, m1 = read_episodes(p1)
    e2, m2 = read_episodes(p2)
    _assert_same(e1, e2)
    assert [e["episode_seed"] for e in m1["episodes"]] == [e["episode_seed"] for e in m2["episodes"]]
    assert all(e.success_once for e in e1) and m1["source"]["action_noise"] == 0.3


def test_run_collect_play_and_config_errors(tmp_path):
    out = run_collect(
        CollectConfig(
            env_id=SINGLE,
            mode="play",
            num_episodes=2,
            max_episode_steps=40,
            seed=0,
            num_workers=1,
            out=str(tmp_path / "play.h5"),
            progress=False,
        )
    )
    eps, meta = read_episodes(out)
    assert [len(e) for e in eps] == [40, 40]
    assert meta["source"]["oracle"] == "plan" and meta["env_info"]["env_kwargs"]["mode"] == "data_collection"
    assert all(not e.terminated.any() and e.truncated[-1] for e in eps)
    with pytest.raises(ConfigError, match="num_episodes"):
        run_collect(CollectConfig(num_episodes=0, out=str(tmp_path / "x.h5")))
    with pytest.raises(ConfigError, match="out"):
        run_collect(CollectConfig(num_episodes=1, out=str(tmp_path / "x.txt")))


def test_play_collection_does_not_depend_on_blas_threads(tmp_path):
    """The Plan oracle's numpy maths rounds differently with several OpenBLAS threads (actions differed by ~1e-8 and
    a 1000-step episode could diverge); collection pins one BLAS thread, so the caller's setting does not matter."""
    from threadpoolctl import threadpool_limits

    runs = []
    for n in (1, 4):
        with threadpool_limits(n):
            out = run_collect(
                CollectConfig(
                    env_id=SINGLE, mode="play", num_episodes=1, num_workers=1, seed=0, out=str(tmp_path / f"p{n}.h5")
                )
            )
        runs.append(read_episodes(out)[0][0].actions)
    assert np.array_equal(runs[0], runs[1])


# ------------------------------------------------------------------------------------------------------------
# mode 'policy': rollouts of a trained policy (the data of a distillation)
# ------------------------------------------------------------------------------------------------------------
def _saved_flow_policy(path, env_id=SINGLE, horizon=3):
    import torch

    from rlft.policies import build_policy
    from rlft.policies.config import PolicyConfig

    torch.manual_seed(0)
    p = build_policy(PolicyConfig(kind="flow", hidden_dims=(32, 32), flow_steps=3, time_embed_dim=8), 28, 5, horizon)
    p.normalizer.set_stats(np.zeros(28), np.ones(28), -np.ones(5), np.ones(5))
    p.save(path, extra={"env_id": env_id})
    return path


def test_collect_policy_rollouts_replay_step_for_step(tmp_path):
    """Each kept rollout is exactly what happened: resetting the env with the stored episode seed and stepping the
    stored actions reproduces every stored observation, reward, success flag and the time-limit cut."""
    pol = _saved_flow_policy(tmp_path / "p.safetensors")
    base = dict(
        mode="policy", policy=str(pol), num_episodes=2, only_success=False, max_episode_steps=30, seed=3, progress=False
    )
    out = run_collect(CollectConfig(**base, num_workers=1, out=str(tmp_path / "r.h5")))
    eps, meta = read_episodes(out)
    assert [len(e) for e in eps] == [30, 30]
    assert meta["source"]["mode"] == "policy" and meta["source"]["policy_class"] == "FlowPolicy"
    assert meta["env_info"]["obs_dim"] == 28 and meta["env_info"]["env_id"] == SINGLE
    env = make_env(SINGLE, max_episode_steps=30)
    for ep, info in zip(eps, meta["episodes"]):
        obs, _ = env.reset(seed=info["episode_seed"])
        np.testing.assert_array_equal(obs, ep.obs[0])
        for t in range(len(ep)):
            obs, r, term, trunc, step_info = env.step(ep.actions[t])
            np.testing.assert_array_equal(obs, ep.obs[t + 1])
            assert (r, bool(step_info["success"]), term, trunc) == (
                ep.rewards[t],
                ep.success[t],
                ep.terminated[t],
                ep.truncated[t],
            )
        assert trunc and not ep.terminated.any()
    env.close()
    # the same rollouts whatever the number of worker processes, up to the float rounding of batched policy queries
    # (a batch of 2 and two batches of 1 round differently: ~5e-7 here)
    eps2, meta2 = read_episodes(run_collect(CollectConfig(**base, num_workers=2, out=str(tmp_path / "r2.h5"))))
    assert [e["episode_seed"] for e in meta2["episodes"]] == [e["episode_seed"] for e in meta["episodes"]]
    for a, b in zip(eps, eps2):
        np.testing.assert_allclose(a.obs, b.obs, atol=1e-4)
        np.testing.assert_allclose(a.actions, b.actions, atol=1e-4)
        np.testing.assert_array_equal(a.success, b.success)


def test_collect_policy_config_errors_name_the_field(tmp_path):
    pol = str(_saved_flow_policy(tmp_path / "p.safetensors"))
    out = str(tmp_path / "x.h5")
    with pytest.raises(ConfigError, match="collect.policy"):
        run_collect(CollectConfig(mode="policy", out=out))
    with pytest.raises(ConfigError, match="collect.policy"):
        run_collect(CollectConfig(mode="demos", policy=pol, out=out))
    with pytest.raises(ConfigError, match="collect.action_noise"):
        run_collect(CollectConfig(mode="policy", policy=pol, action_noise=0.1, out=out))
    with pytest.raises(ConfigError, match="collect.env_id.*cube-single"):
        run_collect(CollectConfig(mode="policy", policy=pol, env_id="cube-double-singletask-v0", out=out))
    # an untrained policy never succeeds: with only_success the error says so and nothing is written
    from rlft.errors import RlftError

    with pytest.raises(RlftError, match="no successful rollout"):
        run_collect(
            CollectConfig(
                mode="policy",
                policy=pol,
                num_episodes=1,
                max_attempts_factor=0.0,
                max_episode_steps=6,
                num_workers=1,
                out=out,
                progress=False,
            )
        )
    assert not os.path.exists(out)
