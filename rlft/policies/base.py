"""The deployable artifact: a policy over action chunks, saved with its normalisation statistics.

Two APIs:

* **Deployment** (``act``): raw env observations in, raw env actions out, shape [B, H, A] (one chunk per obs). Used by
  evaluation, online collection and anything outside training.
* **Training** (normalised space, used by algorithms): ``sample(obs_n, noise=None, deterministic=False)`` returns a
  normalised chunk in [-1, 1]; ``bc_loss(obs_n, action_n, valid_mask, weights=None)`` returns ``(loss, info)`` -- a
  (weighted) negative log-likelihood for the Gaussian policy, a (weighted) flow-matching loss for the flow policy.
  Algorithms such as BC, IQL and AWR only use ``bc_loss`` and so work with any policy; SAC additionally needs
  ``rsample_log_prob`` which only stochastic policies with a tractable density implement.

Saving: ``save(path)`` writes ``path`` (safetensors weights + metadata with the class and constructor kwargs);
``rlft.policies.load_policy(path)`` rebuilds it. Checkpoints therefore need no config to be loaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlft.data.normalize import Normalizer
from rlft.errors import CheckpointError

POLICY_CLASSES: dict[str, type["Policy"]] = {}


def register_policy(cls):
    POLICY_CLASSES[cls.__name__] = cls
    return cls


class Policy(nn.Module):
    """Base class. Subclasses implement ``sample`` and ``bc_loss`` and store constructor kwargs in ``self.kwargs``."""

    #: whether ``rsample_log_prob``/``log_prob`` exist (reparameterised density, needed by SAC-style actor losses)
    has_log_prob: bool = False
    #: the policy holds parts that only the algorithm that built it knows how to train (best-of-N's critics, FQL's
    #: one-step actor): only algorithms that list the class in ``Algorithm.continues`` start from it
    needs_own_trainer: bool = False

    def __init__(self, obs_dim: int, action_dim: int, act_horizon: int, **kwargs: Any):
        super().__init__()
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.act_horizon = act_horizon
        self.kwargs = dict(obs_dim=obs_dim, action_dim=action_dim, act_horizon=act_horizon, **kwargs)
        self.normalizer = Normalizer(obs_dim, action_dim)
        self.encoder: nn.Module | None = None  # the image encoder (``attach_encoder``); None: state observations

    # ---- training API (normalised space) ----
    def sample(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        raise NotImplementedError

    def bc_loss(
        self, obs_n: torch.Tensor, action_n: torch.Tensor, valid_mask: torch.Tensor, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def rsample_log_prob(self, obs_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no tractable log-probability (use a Gaussian policy)")

    @property
    def chunk_shape(self) -> tuple[int, int]:
        return (self.act_horizon, self.action_dim)

    # ---- camera observations ----

    def attach_encoder(self, spec) -> "Policy":
        """Give the policy an image encoder (``rlft.nets.encoders.EncoderSpec``): it then takes ``Obs(state, images)``,
        normalises the state (``spec.state_dim`` dims) and feeds ``concat(state, encoder(images))`` to its networks,
        which must have been built for ``obs_dim = spec.state_dim + spec.out_dim``. Saved and loaded with the policy."""
        from rlft.nets.encoders import ImageEncoder

        if spec.state_dim + spec.out_dim != self.obs_dim:
            raise CheckpointError(
                f"encoder: the policy's networks take {self.obs_dim} inputs, the encoder gives state {spec.state_dim} "
                f"+ features {spec.out_dim}"
            )
        self.encoder = ImageEncoder(spec).to(self.normalizer.obs_mean.device)
        self.normalizer = Normalizer(spec.state_dim, self.action_dim).to(self.normalizer.obs_mean.device)
        return self

    def features(self, obs_n: torch.Tensor, images: dict | None, augment: bool = False, generator=None) -> torch.Tensor:
        """The networks' input: the normalised state, followed by the encoder's features when there are cameras."""
        if self.encoder is None:
            return obs_n
        return torch.cat([obs_n, self.encoder(images, augment=augment, generator=generator)], -1)

    # ---- deployment API (raw env space) ----
    @torch.no_grad()
    def act(self, obs, noise: torch.Tensor | None = None, deterministic: bool = True) -> torch.Tensor:
        """Raw obs [B, O] (or [O]) -> raw env action chunk [B, H, A] (or [H, A]). A policy with an image encoder takes
        ``rlft.data.obs.Obs(state [B, S], images {camera: [B, To, H, W, C] uint8})`` (or unbatched)."""
        device = self.normalizer.obs_mean.device
        images = None
        if self.encoder is not None:
            if not hasattr(obs, "images"):
                raise CheckpointError("this policy sees camera images: pass an Obs(state, images) observation")
            obs, images = obs.state, obs.images
        obs_t = torch.as_tensor(
            np.asarray(obs) if not torch.is_tensor(obs) else obs, dtype=torch.float32, device=device
        )
        single = obs_t.ndim == 1
        if single:
            obs_t = obs_t[None]
            if noise is not None and noise.ndim == 2:
                noise = noise[None]
        want = self.normalizer.obs_mean.shape[0]
        if obs_t.shape[-1] != want:
            raise CheckpointError(
                f"policy expects observations of dim {want}, got {obs_t.shape[-1]} (policy/env mismatch)"
            )
        if images is not None:
            images = {c: torch.as_tensor(np.asarray(v), device=device) for c, v in images.items()}
            images = {c: v[None] if single else v for c, v in images.items()}
        a = self.act_tensor(obs_t, images, noise, deterministic)
        return a[0] if single else a

    def act_tensor(
        self, obs: torch.Tensor, images: dict | None = None, noise: torch.Tensor | None = None, deterministic=True
    ) -> torch.Tensor:
        """The tensor core of ``act``: raw obs [B, O] (and frames {camera: [B, To, H, W, C] uint8}) -> raw chunk
        [B, H, A], with no numpy or checks in between (``rlft export`` traces it)."""
        x = self.features(self.normalizer.normalize_obs(obs), images)
        a = self.sample(x, noise=noise, deterministic=deterministic)
        return self.normalizer.unnormalize_action(a.clamp(-1.0, 1.0))

    def executor(self, env, gamma: float):
        """The env that ``act`` drives, built on ``env`` (an observation-history env from ``make_env``): by default a
        ``ChunkExecutor`` running each chunk open loop. Composites that act at another level override it (the
        residual policy closes the loop at every step); evaluation and rollouts always go through it."""
        from rlft.envs.wrappers import ChunkExecutor

        return ChunkExecutor(env, self.act_horizon, gamma)

    # ---- persistence ----
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        from rlft.utils import atomic_path

        meta = {"class": type(self).__name__, "kwargs": json.dumps(self.kwargs), "extra": json.dumps(extra or {})}
        if self.encoder is not None:
            meta["encoder"] = json.dumps(dataclasses.asdict(self.encoder.spec))
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            from rlft.errors import TrainingError

            raise TrainingError(
                f"{path}: not written -- {len(bad)} of the policy's tensors are not finite (first: "
                f"{bad[0]}); training diverged (lower the learning rates or check the data)"
            )
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=meta)


def load_policy(path: str | Path, map_location: str | torch.device = "cpu") -> Policy:
    """Rebuild a policy saved with ``Policy.save``; a missing/corrupt file raises CheckpointError naming it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    import rlft.policies  # noqa: F401  (registers the classes)

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"policy checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path), device=str(map_location))
    except Exception as e:  # safetensors raises several types on corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors policy checkpoint ({e})") from None
    policy = build_from_metadata(meta, path)
    if "encoder" in meta:
        from rlft.nets.encoders import EncoderSpec

        try:
            policy.attach_encoder(EncoderSpec(**json.loads(meta["encoder"])))
        except (TypeError, ValueError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: the policy metadata 'encoder' is damaged ({e})") from None
    try:
        policy.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not match {meta['class']}({meta['kwargs']}): {str(e).splitlines()[0]}"
        ) from None
    return policy.to(map_location)


def build_from_metadata(meta: dict, path: str | Path) -> "Policy":
    """The policy a file's metadata describes, checked before anything is built: ``class`` a registered policy
    class, ``kwargs`` a JSON object whose keys are that class's constructor arguments (all required ones present).
    Anything else -- a crafted or damaged file -- is refused with one ``CheckpointError`` naming the file."""
    import inspect

    cls_name = meta.get("class")
    if cls_name not in POLICY_CLASSES:
        raise CheckpointError(f"{path}: unknown policy class {cls_name!r}; known: {sorted(POLICY_CLASSES)}")
    cls = POLICY_CLASSES[cls_name]
    try:
        kwargs = json.loads(meta.get("kwargs", ""))
    except (json.JSONDecodeError, TypeError):
        raise CheckpointError(f"{path}: the policy metadata 'kwargs' is not valid JSON") from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(
            f"{path}: the policy metadata 'kwargs' must be a JSON object, got {type(kwargs).__name__}"
        )
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    unknown = sorted(set(kwargs) - set(params))
    missing = sorted(
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in kwargs
    )
    if unknown or missing:
        raise CheckpointError(
            f"{path}: the policy metadata does not describe a {cls_name}"
            f"{f' (unknown arguments {unknown})' if unknown else ''}"
            f"{f' (missing arguments {missing})' if missing else ''}"
        )
    try:
        return cls(**kwargs)
    except CheckpointError as e:  # a composite's inner policy class
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # a wrong type or value inside the metadata (also of a composite's inner policies)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: the policy metadata does not build a {cls_name} ({msg})") from None


def policy_extra(path: str | Path) -> dict:
    """The ``extra`` metadata dict saved with a policy (env id, stage, ...); a damaged one raises CheckpointError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            extra = json.loads((f.metadata() or {}).get("extra", "{}"))
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable policy checkpoint or its 'extra' metadata is damaged "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: the policy metadata 'extra' must be a JSON object")
    return extra
