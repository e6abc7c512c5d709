"""Evaluation videos.

With ``eval.video_episodes = N > 0`` the first N episodes (seeds ``seed .. seed+N-1``) are rendered offscreen
(MuJoCo ``Renderer``; headless through EGL -- ``MUJOCO_GL=egl``, set by the CLI -- or OSMesa) and written as H.264
mp4 files (imageio-ffmpeg's bundled ffmpeg) plus a PNG of the last frame (the report's poster image). Rendering is
the costly part on a CPU (Mesa's software rasteriser): shadows, reflections and multisampling are switched off, which
takes a 320x240 frame from ~250 ms to ~30 ms here, and only every ``video_frame_skip``-th env step is drawn. If
offscreen rendering is unavailable the evaluation still runs and a warning says why there is no video.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gymnasium
import numpy as np

from rlft.data.obs import Obs


class FrameRecorder(gymnasium.Wrapper):
    """Renders the wrapped MuJoCo env offscreen after reset and every ``frame_skip``-th step while recording.

    Sits below ``ChunkExecutor`` so every inner step of a chunk can be drawn. Works with any env whose ``unwrapped``
    exposes MuJoCo ``model``/``data`` (OGBench, gymnasium's MuJoCo envs); the camera is MuJoCo's default free camera
    (what OGBench's own ``render()`` shows). An env with cameras (``Obs`` observations) records the policy's own
    camera frames instead, upscaled to about ``height``. Passive (no cost) while not recording.
    """

    def __init__(self, env: gymnasium.Env, width: int = 320, height: int = 240, frame_skip: int = 2):
        super().__init__(env)
        self.width, self.height, self.frame_skip = int(width), int(height), max(1, int(frame_skip))
        self.frames: list[np.ndarray] | None = None
        self._renderer = None
        self._model = None
        self._camera = None
        self._t = 0
        self._last_obs = None

    def start(self) -> None:
        """Record from now on (call right after reset: the current state is the first frame)."""
        self.frames, self._t = [], 0
        self._capture()

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self._last_obs = out[0]
        return out

    def stop(self) -> list[np.ndarray]:
        frames, self.frames = self.frames or [], None
        return frames

    def step(self, action):
        out = self.env.step(action)
        self._last_obs = out[0]
        if self.frames is not None:
            self._t += 1
            if self._t % self.frame_skip == 0 or out[2] or out[3]:
                self._capture()
        return out

    def _capture(self) -> None:
        if isinstance(self._last_obs, Obs):  # an env with cameras: the video is what the policy sees
            frames = [np.asarray(v)[-1] for v in self._last_obs.images.values()]
            frame = np.concatenate(frames, 1)
            k = max(1, self.height // frame.shape[0])  # nearest-neighbour upscaling to about the video height
            self.frames.append(np.repeat(np.repeat(frame, k, 0), k, 1)[..., :3].copy())
            return
        import mujoco

        u = self.env.unwrapped
        model, data = u.model, u.data
        if self._renderer is None or self._model is not model:
            if self._renderer is not None:
                self._renderer.close()
            vis = model.vis
            vis.global_.offwidth = max(int(vis.global_.offwidth), self.width)
            vis.global_.offheight = max(int(vis.global_.offheight), self.height)
            vis.quality.offsamples = 0  # no multisampling (software rasteriser: ~2x faster)
            self._renderer = mujoco.Renderer(model, self.height, self.width)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False  # shadows: ~5x slower on llvmpipe
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._camera = mujoco.MjvCamera()
            mujoco.mjv_defaultFreeCamera(model, self._camera)
            self._model = model
        self._renderer.update_scene(data, self._camera)
        self.frames.append(self._renderer.render().copy())

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


def write_video(path: str | Path, frames: list[np.ndarray], fps: float) -> Path:
    """Write RGB frames [H, W, 3] uint8 as an H.264 mp4 (yuv420p, plays in browsers), atomically."""
    import imageio_ffmpeg

    from rlft.utils import atomic_path

    h, w = frames[0].shape[:2]
    with atomic_path(path) as tmp:
        gen = imageio_ffmpeg.write_frames(
            str(tmp),
            (w, h),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=7,
            macro_block_size=16,
            ffmpeg_log_level="error",
            output_params=["-f", "mp4", "-movflags", "+faststart"],
        )
        gen.send(None)
        for f in frames:
            gen.send(np.ascontiguousarray(f))
        gen.close()
    return Path(path)


def write_png(path: str | Path, frame: np.ndarray) -> Path:
    from PIL import Image

    from rlft.utils import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")
    return Path(path)


@dataclasses.dataclass
class VideoSpec:
    """What to record: the first ``episodes`` seeds of an evaluation, rendered at ``width`` x ``height``."""

    episodes: int = 0
    width: int = 320
    height: int = 240
    frame_skip: int = 2
    fps: float = 10.0


VIDEO_HELP = (
    "install EGL + Mesa (apt-get install libegl1 libgl1-mesa-dri; MUJOCO_GL=egl) or OSMesa "
    "(libosmesa6; MUJOCO_GL=osmesa)"
)


def save_videos(
    videos: dict[int, list[np.ndarray]],
    success: dict[int, bool],
    video_dir: str | Path,
    prefix: str = "",
    fps: float = 10.0,
) -> list[Path]:
    """Write each recorded episode (``videos``: seed -> frames; ``success``: seed -> success_once) as
    ``<prefix>ep<k>_seed<seed>_<success|fail>.mp4`` plus a PNG of its last frame."""
    out = []
    for k, seed in enumerate(sorted(videos)):
        frames = videos[seed]
        if not frames:
            continue
        tag = "success" if success[seed] else "fail"
        stem = f"{prefix}ep{k:02d}_seed{seed}_{tag}"
        out.append(write_video(Path(video_dir) / f"{stem}.mp4", frames, fps))
        write_png(Path(video_dir) / f"{stem}.png", frames[-1])
    return out
