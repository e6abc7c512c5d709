"""Camera observations through the data path: h5 files (ours and ManiSkill's rgb layout), chunk sampling with an
observation history, and the replay buffer -- frames stay uint8 end to end and come back bit for bit."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from rlft.data.dataset import ChunkDataset
from rlft.data.episodes import Episode
from rlft.data.h5io import read_episodes, write_episodes
from rlft.data.normalize import Normalizer
from rlft.data.replay import ReplayBuffer
from rlft.errors import DatasetError, TrainingError

F, T_ = False, True


def identity_normalizer(obs_dim: int, action_dim: int) -> Normalizer:
    return Normalizer(obs_dim, action_dim, eps=0.0)  # mean 0, std 1, box [-1, 1]: the identity


def _episode(T: int, seed: int, cams=("front",), hw=(8, 6)) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        obs=rng.normal(size=(T + 1, 4)).astype(np.float32),
        actions=rng.uniform(-1, 1, (T, 2)).astype(np.float32),
        rewards=-np.ones(T, np.float32),
        terminated=np.zeros(T, bool),
        truncated=np.arange(T) == T - 1,
        success=np.zeros(T, bool),
        images={c: rng.integers(0, 256, (T + 1, *hw, 3), dtype=np.uint8) for c in cams},
    )


def test_h5_round_trip_keeps_uint8_frames_in_maniskills_dict_layout(tmp_path):
    eps = [_episode(5, 0, cams=("front", "wrist")), _episode(3, 1, cams=("front", "wrist"))]
    path = write_episodes(tmp_path / "img.h5", eps, {"env_id": "x", "max_episode_steps": 5})
    with h5py.File(path) as f:  # ManiSkill's layout: obs is a group, frames under sensor_data/<camera>/rgb
        rgb = f["traj_0/obs/sensor_data/front/rgb"]
        assert rgb.dtype == np.uint8 and rgb.shape == (6, 8, 6, 3) and rgb.compression == "gzip"
        assert f["traj_0/obs/state"].dtype == np.float32
    back, _ = read_episodes(path)
    for a, b in zip(eps, back):
        assert np.array_equal(a.obs, b.obs)
        assert set(b.images) == {"front", "wrist"}
        for c in a.images:
            assert b.images[c].dtype == np.uint8 and np.array_equal(a.images[c], b.images[c])


def _maniskill_rgb_file(path, T=4, depth=True):
    """A file written in exactly the layout of ManiSkill's ``trajectory.rgb.pd_ee_delta_pose.physx_cuda.h5``
    (mani_skill.utils.wrappers.RecordEpisode): dict observations, uint8 rgb, int16 depth, camera parameters."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        g = f.create_group("traj_0")
        o = g.create_group("obs")
        o["agent/qpos"] = rng.normal(size=(T + 1, 9)).astype(np.float32)
        o["agent/qvel"] = rng.normal(size=(T + 1, 9)).astype(np.float32)
        o["extra/is_grasped"] = np.array([F, F, T_, T_, T_][: T + 1])
        o["extra/tcp_pose"] = rng.normal(size=(T + 1, 7)).astype(np.float32)
        o.create_dataset("sensor_data/base_camera/rgb", data=rng.integers(0, 256, (T + 1, 16, 16, 3), dtype=np.uint8))
        if depth:
            o["sensor_data/base_camera/depth"] = rng.integers(0, 3000, (T + 1, 16, 16, 1)).astype(np.int16)
        o["sensor_param/base_camera/extrinsic_cv"] = np.zeros((T + 1, 3, 4), np.float32)
        o["sensor_param/base_camera/cam2world_gl"] = np.zeros((T + 1, 4, 4), np.float32)
        o["sensor_param/base_camera/intrinsic_cv"] = np.zeros((T + 1, 3, 3), np.float32)
        g["actions"] = rng.uniform(-1, 1, (T, 7)).astype(np.float32)
        g["rewards"] = -rng.uniform(0, 1, T).astype(np.float32)
        g["terminated"] = np.zeros(T, bool)
        g["truncated"] = np.arange(T) == T - 1
        g["success"] = np.zeros(T, bool)
        g["fail"] = np.zeros(T, bool)
        g["env_states/actors/peg"] = np.zeros((T + 1, 13), np.float32)
    meta = {
        "env_info": {
            "env_id": "LiftPegUpright-v1",
            "max_episode_steps": 50,
            "env_kwargs": {"obs_mode": "rgb", "control_mode": "pd_ee_delta_pose", "sim_backend": "physx_cuda"},
        },
        "episodes": [{"episode_id": 0, "episode_seed": 3, "elapsed_steps": T, "control_mode": "pd_ee_delta_pose"}],
    }
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_maniskill_rgb_layout_reads_as_state_plus_frames(tmp_path):
    path = _maniskill_rgb_file(tmp_path / "trajectory.rgb.pd_ee_delta_pose.physx_cuda.h5")
    (ep,), meta = read_episodes(path)
    with h5py.File(path) as f:
        o = f["traj_0/obs"]
        want = np.concatenate(
            [o["agent/qpos"][()], o["agent/qvel"][()], o["extra/is_grasped"][()][:, None], o["extra/tcp_pose"][()]], 1
        )
        rgb = o["sensor_data/base_camera/rgb"][()]
    # state = agent/* then extra/* in the file's order, booleans as 0/1 (ManiSkill's FlattenRGBDObservationWrapper)
    assert ep.obs.shape == (5, 9 + 9 + 1 + 7) and np.array_equal(ep.obs, want.astype(np.float32))
    assert list(ep.images) == ["base_camera"] and np.array_equal(ep.images["base_camera"], rgb)
    assert meta["env_info"]["env_kwargs"]["obs_mode"] == "rgb"


def test_bad_frames_are_refused_naming_file_and_camera(tmp_path):
    path = _maniskill_rgb_file(tmp_path / "bad.h5")
    with h5py.File(path, "a") as f:
        del f["traj_0/obs/sensor_data/base_camera/rgb"]
        f["traj_0/obs/sensor_data/base_camera/rgb"] = np.zeros((5, 16, 16, 3), np.float32)
    with pytest.raises(DatasetError, match=r"bad\.h5:traj_0/obs/sensor_data/base_camera/rgb: images must be uint8"):
        read_episodes(path)
    with h5py.File(path, "a") as f:
        del f["traj_0/obs/sensor_data/base_camera/rgb"]
        f["traj_0/obs/sensor_data/base_camera/rgb"] = np.zeros((4, 16, 16, 3), np.uint8)  # one frame short
    with pytest.raises(DatasetError, match=r"sensor_data/base_camera/rgb: expected shape \[5, H, W"):
        read_episodes(path)
    other = _episode(3, 0, cams=("front",), hw=(4, 4))
    with pytest.raises(DatasetError, match="same cameras and image sizes"):
        write_episodes(tmp_path / "mixed.h5", [_episode(3, 0), other], {"env_id": "x"})
    assert not (tmp_path / "mixed.h5").exists()


def test_chunk_dataset_gathers_the_frames_of_obs_and_next_obs_with_history():
    eps = [_episode(6, 0), _episode(4, 1)]
    ds = ChunkDataset(eps, act_horizon=3, gamma=0.9, obs_horizon=2)
    assert ds.image_shapes == {"front": (8, 6, 3)}
    b = ds.all_starts()
    assert b.images["front"].dtype == torch.uint8 and b.images["front"].shape == (10, 2, 8, 6, 3)
    frames = eps[0].images["front"]
    # start t=0 of episode 0: history (o_0, o_0) (padded with the first frame); next = (o_2, o_3) after 3 steps
    assert torch.equal(b.images["front"][0], torch.from_numpy(frames[[0, 0]]))
    assert torch.equal(b.next_images["front"][0], torch.from_numpy(frames[[2, 3]]))
    # start t=4 of episode 0: a 2-step chunk to the episode's end, next = (o_5, o_6)
    assert torch.equal(b.images["front"][4], torch.from_numpy(frames[[3, 4]]))
    assert torch.equal(b.next_images["front"][4], torch.from_numpy(frames[[5, 6]]))
    # second episode's first start
    assert torch.equal(b.images["front"][6], torch.from_numpy(eps[1].images["front"][[0, 0]]))
    state_only = ChunkDataset([Episode(**{**e.__dict__, "images": None}) for e in eps], 3, 0.9, obs_horizon=2)
    assert state_only.all_starts().images is None and state_only.image_shapes == {}
    assert torch.equal(state_only.all_starts().obs, b.obs)


def test_replay_stores_uint8_frames_and_round_trips_its_state():
    shapes = {"front": (2, 8, 6, 3)}
    rb = ReplayBuffer(3, obs_dim=4, act_horizon=2, action_dim=1, normalizer=identity_normalizer(4, 1),
                      image_shapes=shapes)  # fmt: skip
    assert rb.images["front"].dtype == torch.uint8
    rng = np.random.default_rng(0)

    def add(n):
        imgs = {"front": rng.integers(0, 256, (n, *shapes["front"]), dtype=np.uint8)}
        nxt = {"front": rng.integers(0, 256, (n, *shapes["front"]), dtype=np.uint8)}
        rb.add(np.zeros((n, 4)), np.zeros((n, 2, 1)), np.zeros(n), np.zeros((n, 4)), np.zeros(n), np.ones(n),
               np.ones(n, int), images=imgs, next_images=nxt)  # fmt: skip
        return imgs, nxt

    add(2)
    imgs, nxt = add(2)  # wraps around: slots 2, 0
    b = rb.get(torch.tensor([2, 0]))
    assert torch.equal(b.images["front"], torch.from_numpy(imgs["front"]))
    assert torch.equal(b.next_images["front"], torch.from_numpy(nxt["front"]))
    rb2 = ReplayBuffer(3, 4, 2, 1, identity_normalizer(4, 1), image_shapes=shapes)
    rb2.load_state_dict(rb.state_dict())
    for slots in (torch.arange(3),):
        assert torch.equal(rb2.get(slots).images["front"], rb.get(slots).images["front"])
    with pytest.raises(TrainingError, match=r"images\['front'\] must be uint8"):
        rb.add(np.zeros((1, 4)), np.zeros((1, 2, 1)), np.zeros(1), np.zeros((1, 4)), np.zeros(1), np.ones(1),
               np.ones(1, int), images={"front": np.zeros((1, 2, 8, 6, 3), np.float32)},
               next_images={"front": np.zeros((1, 2, 8, 6, 3), np.uint8)})  # fmt: skip
    with pytest.raises(TrainingError, match="cameras"):
        rb.add(np.zeros((1, 4)), np.zeros((1, 2, 1)), np.zeros(1), np.zeros((1, 4)), np.zeros(1), np.ones(1),
               np.ones(1, int))  # fmt: skip
