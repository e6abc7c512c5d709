"""Camera observations end to end: the encoders and their augmentation, the OGBench pixel env (real renderer), a
policy with an image encoder (save/load, act), every algorithm on image batches, and a CI-sized pipeline from pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlft.algos import ALGORITHMS
from rlft.data.batch import ChunkBatch
from rlft.data.obs import Obs
from rlft.errors import ConfigError
from rlft.nets.encoders import EncoderSpec, ImageEncoder, random_shift
from rlft.policies import build_policy, load_policy
from rlft.policies.config import PolicyConfig

VISUAL = "visual-cube-single-singletask-v0"


def test_random_shift_keeps_the_shape_moves_whole_pixels_and_repeats_under_a_seed():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = random_shift(x, 2, torch.Generator().manual_seed(0))
    b = random_shift(x, 2, torch.Generator().manual_seed(0))
    c = random_shift(x, 2, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_shift(x, 0), x)
    # every output pixel is an input pixel of the same image and channel (an integer shift with edge replication)
    for i in range(2):
        for ch in range(3):
            assert set(a[i, ch].flatten().tolist()) <= set(x[i, ch].flatten().tolist())
    # the centre of the padded image is reachable: some offset reproduces the input exactly
    shifts = [random_shift(x[:1], 1, torch.Generator().manual_seed(s)) for s in range(40)]
    assert any(torch.equal(s, x[:1]) for s in shifts)


@pytest.mark.parametrize("kind", ["conv", "resnet18"])
def test_encoder_maps_uint8_history_frames_to_features(kind):
    spec = EncoderSpec({"front": (2, 32, 32, 3), "wrist": (2, 16, 16, 3)}, state_dim=5, kind=kind, feature_dim=8)
    enc = ImageEncoder(spec)
    imgs = {c: torch.randint(0, 256, (3, *s), dtype=torch.uint8) for c, s in spec.image_shapes.items()}
    f = enc(imgs, augment=True, generator=torch.Generator().manual_seed(0))
    assert f.shape == (3, spec.out_dim) == (3, 16) and torch.isfinite(f).all()
    assert torch.equal(enc(imgs), enc(imgs))  # no augmentation at evaluation: deterministic
    with pytest.raises(ConfigError, match="wrist"):
        enc({"front": imgs["front"]})
    with pytest.raises(ConfigError, match="uint8"):
        enc({**imgs, "front": imgs["front"].float()})


def test_pixel_env_gives_proprio_and_frames_like_the_state_env():
    from rlft.envs import env_info, make_env

    env = make_env(VISUAL, obs_horizon=2)
    state_env = make_env("cube-single-singletask-v0")
    try:
        obs, _ = env.reset(seed=3)
        s, _ = state_env.reset(seed=3)
        assert isinstance(obs, Obs) and obs.state.shape == (38,) and obs.images["front"].shape == (2, 64, 64, 3)
        assert obs.images["front"].dtype == np.uint8 and obs.images["front"].std() > 0  # a real render
        np.testing.assert_allclose(obs.state[19:], s[:19], atol=1e-5)  # the state task's proprio dims, no cubes
        info = env_info(env)
        assert info["obs_dim"] == 38 and info["image_shapes"] == {"front": [2, 64, 64, 3]}
        a = np.zeros(5, np.float32)
        obs2, *_ = env.step(a)
        assert np.array_equal(obs2.images["front"][0], obs.images["front"][1])  # the history shifts by one frame
    finally:
        env.close()
        state_env.close()


def _policy_with_encoder(kind="flow"):
    spec = EncoderSpec({"front": (1, 16, 16, 3)}, state_dim=4, feature_dim=6)
    cfg = PolicyConfig(kind=kind, hidden_dims=(16,), flow_steps=2, time_embed_dim=8)
    return build_policy(cfg, 4 + spec.out_dim, 2, 3).attach_encoder(spec)


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_policy_with_an_encoder_acts_on_obs_and_round_trips(tmp_path, kind):
    torch.manual_seed(0)
    p = _policy_with_encoder(kind)
    p.normalizer.set_stats(np.zeros(4), np.ones(4) * 2, -np.ones(2), np.ones(2))
    obs = Obs(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32),
              {"front": np.random.default_rng(1).integers(0, 256, (5, 1, 16, 16, 3), dtype=np.uint8)})  # fmt: skip
    a = p.act(obs)
    assert a.shape == (5, 3, 2)
    single = p.act(Obs(obs.state[0], {"front": obs.images["front"][0]}))
    torch.testing.assert_close(single, a[0])
    p.save(tmp_path / "p.safetensors")
    q = load_policy(tmp_path / "p.safetensors")
    assert q.encoder is not None and q.encoder.spec == p.encoder.spec
    torch.testing.assert_close(q.act(obs), a)
    with pytest.raises(Exception, match="Obs"):
        q.act(obs.state)


@pytest.mark.parametrize("freeze", [False, True], ids=["own_rule", "freeze_encoder"])
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_updates_on_image_batches(name, freeze):
    """The contract on camera batches: ``featurize`` turns frames into features and the update stays finite; the
    encoder moves exactly when the algorithm trains it (end to end or through its critic) and the config does not
    freeze it (``freeze_encoder``)."""
    cls = ALGORITHMS[name]
    if cls.uses_base_policy:  # DSRL acts through a frozen base policy: a stage with cameras refuses it, naming why
        from types import SimpleNamespace

        from rlft.train.adapters import make_adapter

        cfg = SimpleNamespace(env=SimpleNamespace(env_id=VISUAL, act_horizon=3), base_mode="noise")
        info = {"obs_dim": 4, "action_dim": 2, "image_shapes": {"front": [1, 16, 16, 3]}}
        base = build_policy(PolicyConfig(kind="flow", hidden_dims=(16,)), 4, 2, 3)
        with pytest.raises(ConfigError, match="has cameras"):
            make_adapter(cfg, base, info, lambda: None, {})
        return
    torch.manual_seed(0)
    kind = cls.supported_policies[0]
    spec = EncoderSpec({"front": (1, 16, 16, 3)}, state_dim=4, feature_dim=6)
    pcfg = PolicyConfig(kind=kind, hidden_dims=(16,), flow_steps=2, time_embed_dim=8)
    policy = build_policy(pcfg, 4 + spec.out_dim, 2, 3).attach_encoder(spec)
    cfg = cls.Config(policy=pcfg, freeze_encoder=freeze)
    for f in ("critic_hidden_dims", "value_hidden_dims"):
        if hasattr(cfg, f):
            setattr(cfg, f, (16,))
    if not cls.supports_images:
        with pytest.raises(ConfigError, match="camera observations are not supported yet"):
            cls(cfg, 4 + spec.out_dim, 2, cfg.data_horizon(3), policy=policy)
        return
    algo = cls(cfg, 4 + spec.out_dim, 2, cfg.data_horizon(3), policy=policy)
    g = torch.Generator().manual_seed(0)
    b = ChunkBatch.random(8, 4, cfg.data_horizon(3), 2, generator=g)
    b.images = {"front": torch.randint(0, 256, (8, 1, 16, 16, 3), dtype=torch.uint8, generator=g)}
    b.next_images = {"front": torch.randint(0, 256, (8, 1, 16, 16, 3), dtype=torch.uint8, generator=g)}
    before = [p.detach().clone() for p in algo.policy.encoder.parameters()]
    fb = algo.featurize(b)
    assert fb.obs.shape == (8, 4 + spec.out_dim) and fb.images is None
    assert not fb.next_obs.requires_grad
    metrics = algo.update(fb)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    moved = any(not torch.equal(a, p) for a, p in zip(before, algo.policy.encoder.parameters()))
    assert algo.encoder_rule == ("frozen" if freeze else cls.encoder_training)
    assert moved == (algo.encoder_rule != "frozen"), (name, moved)


@pytest.mark.slow
def test_ci_sized_pipeline_from_pixels(tmp_path):
    """configs/pipeline_visual.yaml end to end on the real OGBench renderer, shrunk: pixel demos and play data are
    collected (frames + proprioception, uint8 in the file), flow BC trains the conv encoder, offline and online IQL
    run on its features (online: frames in the replay), every stage is evaluated from the camera, and the deployed
    policy loads and acts outside the pipeline."""
    import json

    from rlft.cli import main
    from rlft.data.h5io import read_episodes

    argv = ["pipeline", "--config", "configs/pipeline_visual.yaml", "--budget-scale", "0.002", "--eval.num-episodes",
            "2", "--eval.video-episodes", "0", "--out-dir", str(tmp_path), "--name", "v", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "v"
    summary = json.loads((run / "pipeline_summary.json").read_text())
    stages = [r["stage"] for r in summary["stages"]]
    assert {"bc", "offline", "online"} <= set(stages), stages
    eps, meta = read_episodes(run / "data" / "dataset.h5")
    assert eps[0].images["front"].dtype == np.uint8 and eps[0].obs.shape[1] == 19
    deployed = load_policy(run / "deploy" / "policy.safetensors")
    assert deployed.encoder is not None
    from rlft.envs import make_env

    env = make_env(VISUAL)
    try:
        obs, _ = env.reset(seed=0)
        assert deployed.act(obs).shape == (5, 5)
    finally:
        env.close()


def test_evaluation_video_of_a_camera_env_is_the_policys_own_camera():
    from rlft.envs import make_env
    from rlft.video import FrameRecorder

    env = FrameRecorder(make_env(VISUAL), width=320, height=128, frame_skip=1)
    try:
        obs, _ = env.reset(seed=1)
        env.start()
        obs2, *_ = env.step(np.zeros(5, np.float32))
        frames = env.stop()
        assert len(frames) == 2 and frames[0].shape == (128, 128, 3)  # 64x64 upscaled 2x (nearest)
        assert np.array_equal(frames[0][::2, ::2], obs.images["front"][-1])
        assert np.array_equal(frames[1][::2, ::2], obs2.images["front"][-1])
    finally:
        env.close()


def test_a_dataset_whose_cameras_differ_from_the_envs_is_refused_naming_file_and_camera(tmp_path):
    import h5py

    from rlft.cli import main

    base = ["train", "bc", "--env.env-id", VISUAL, "--steps", "1", "--eval.num-episodes", "0",
            "--run.out-dir", str(tmp_path)]  # fmt: skip
    state = tmp_path / "state.h5"
    assert main(["collect", "--env-id", VISUAL.removeprefix("visual-"), "--mode", "demos", "--num-episodes", "1",
                 "--num-workers", "1", "--out", str(state)]) == 0  # fmt: skip
    # a state-only file (28-dim state) for the camera env: refused before training, naming the file
    assert main([*base, "--dataset", str(state)]) == 2
    pix = tmp_path / "pix.h5"
    assert main(["collect", "--env-id", VISUAL, "--mode", "demos", "--num-episodes", "1", "--num-workers", "1",
                 "--out", str(pix)]) == 0  # fmt: skip
    with h5py.File(pix, "a") as f:  # the same frames under another camera name
        for k in [k for k in f if k.startswith("traj")]:
            f.move(f"{k}/obs/sensor_data/front", f"{k}/obs/sensor_data/wrist")
    from pytest import raises

    from rlft.cli import parse_train_args
    from rlft.errors import ConfigError
    from rlft.train.runner import run_train

    cfg = parse_train_args(None, [*base[1:], "--dataset", str(pix)])
    with raises(ConfigError, match=r"pix\.h5: camera 'front': the file has no such camera .* has frames \(64, 64, 3\)"):
        run_train(cfg)
