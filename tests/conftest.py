"""Test-suite setup: one torch thread (2 OpenMP threads next to another busy process can be ~100x slower on a
shared 2-core machine) and headless MuJoCo."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)
