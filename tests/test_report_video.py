"""Evaluation videos: offscreen MuJoCo rendering of the real OGBench env (EGL + Mesa on the CPU; `.ci/run` installs
the system libraries), mp4 files from ``rlft train --eval.video-episodes N``, and the report embedding them."""

from __future__ import annotations

import os
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from test_report import check_html

from rlft.cli import main
from rlft.envs import make_env
from rlft.report.build import build_report
from rlft.video import FrameRecorder, write_video

os.environ.setdefault("MUJOCO_GL", "egl")
ENV = "cube-single-singletask-v0"


def _decode(path: Path) -> np.ndarray:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    return np.stack(frames)


def test_frame_recorder_renders_the_real_env_and_writes_a_playable_mp4(tmp_path):
    env = FrameRecorder(make_env(ENV), width=160, height=112, frame_skip=2)
    env.reset(seed=0)
    env.start()
    rng = np.random.default_rng(0)
    for _ in range(10):
        env.step(rng.uniform(-1, 1, size=env.action_space.shape).astype(np.float32))
    frames = env.stop()
    env.close()
    assert len(frames) == 1 + 10 // 2 and frames[0].shape == (112, 160, 3) and frames[0].dtype == np.uint8
    assert frames[0].std() > 10  # a rendered scene, not a blank buffer
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 0.1  # the arm moved
    out = write_video(tmp_path / "v.mp4", frames, fps=10)
    dec = _decode(out)
    assert dec.shape == (len(frames), 112, 160, 3)
    assert np.abs(dec.astype(int) - np.stack(frames).astype(int)).mean() < 8  # lossy, but the same pictures


def test_train_records_eval_videos_and_the_report_embeds_them(tmp_path, capsys):
    d = tmp_path / "data.h5"
    assert (
        main(
            [
                "collect",
                "--env-id",
                ENV,
                "--mode",
                "demos",
                "--num-episodes",
                "1",
                "--num-workers",
                "1",
                "--out",
                str(d),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--config",
                "configs/bc.yaml",
                "--dataset",
                str(d),
                "--steps",
                "5",
                "--batch-size",
                "16",
                "--policy.hidden-dims",
                "16",
                "16",
                "--env.max-episode-steps",
                "20",
                "--eval.num-episodes",
                "3",
                "--eval.video-episodes",
                "2",
                "--eval.video-width",
                "160",
                "--eval.video-height",
                "112",
                "--run.no-tensorboard",
                "--run.out-dir",
                str(tmp_path),
                "--run.name",
                "bc",
            ]
        )
        == 0
    )
    vids = sorted((tmp_path / "bc" / "videos").glob("*.mp4"))
    # the first 2 of the 3 episodes, named by step, episode, seed and outcome; 20 steps at skip 2 -> 11 frames
    assert [v.name.split("_seed")[0] for v in vids] == ["step0000005_ep00", "step0000005_ep01"]
    assert all(v.with_suffix(".png").is_file() for v in vids)
    assert _decode(vids[0]).shape == (11, 112, 160, 3)
    assert "no evaluation video" not in capsys.readouterr().err

    res = build_report([tmp_path / "bc"], tmp_path / "rep")
    c = check_html(res.index)  # well-formed; every src/poster file exists (copied under media/)
    assert c.tags["video"] == 2 and c.tags["source"] == 2
    html = res.index.read_text()
    assert "media/bc/step0000005_ep00_seed100000_" in html and "poster='media/bc/" in html


def test_rendering_failure_keeps_evaluating_and_says_why(tmp_path, capsys, monkeypatch):
    """No GL context (e.g. the EGL libraries missing): the evaluation still returns its numbers, with one warning."""
    import mujoco

    from rlft.policies import build_policy
    from rlft.policies.config import PolicyConfig
    from rlft.rollout import Evaluator, evaluate_policy
    from rlft.video import VideoSpec

    def no_gl(*a, **k):
        raise RuntimeError("cannot initialize EGL (test)")

    monkeypatch.setattr(mujoco, "Renderer", no_gl)
    policy = build_policy(PolicyConfig(kind="gaussian", hidden_dims=(16,)), 28, 5, 5)
    policy.normalizer.set_stats(np.zeros(28), np.ones(28), -np.ones(5), np.ones(5))
    video = VideoSpec(episodes=1)
    ev = Evaluator(ENV, max_episode_steps=10, n_parallel=1, video=video)
    capsys.readouterr()
    for _ in range(2):
        summary, results = evaluate_policy(
            policy, ENV, 2, 0, max_episode_steps=10, evaluator=ev, video=video, video_dir=tmp_path / "videos"
        )
        assert summary["eval/num_episodes"] == 2 and len(results) == 2
    ev.close()
    err = capsys.readouterr().err
    assert err.count("no evaluation video") == 1 and "cannot initialize EGL" in err and "libegl1" in err
    assert not (tmp_path / "videos").exists()


def test_video_config_is_validated():
    from rlft.errors import ConfigError
    from rlft.train.config import EvalConfig

    assert EvalConfig().video_spec() is None
    assert EvalConfig(video_episodes=2, video_frame_skip=4).video_spec().fps == 5.0
    with pytest.raises(ConfigError, match="eval.video_episodes"):
        EvalConfig(video_episodes=-1)
    with pytest.raises(ConfigError, match="eval.video_frame_skip"):
        EvalConfig(video_episodes=1, video_frame_skip=0)
