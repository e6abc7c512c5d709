"""The one batch type every algorithm consumes.

A ``ChunkBatch`` holds B *macro transitions*: from ``obs`` an action chunk of H steps was executed open loop (or would
have been, for padded dataset chunks), k <= H steps were actually taken before the chunk or the episode ended, and

* ``reward``     = sum_{i<k} gamma^i r_i                (discounted reward inside the chunk)
* ``discount``   = gamma^k                              (bootstrap factor for the value at ``next_obs``)
* ``terminated`` = 1 if the episode terminated inside the chunk (no bootstrap); time-limit truncation is NOT
  termination: we bootstrap through it.
* ``valid_mask`` [B, H] = 1 for the k executed steps, 0 for padding past the episode's end (padded actions never
  enter a BC loss).
* ``is_offline`` [B] = 1 for rows drawn from the offline dataset (so a BC anchor can use only those), 0 for rows from
  the online replay buffer.
* ``mc_return`` [B] = Monte-Carlo discounted return-to-go from the chunk's start, sum_{i>=0} gamma^i r_{t+i} over the
  rest of the episode (``ChunkDataset``: see ``discounted_return_to_go`` for episodes cut by a time limit); Cal-QL's
  reference value. ``-inf`` where unknown (the default when not given, e.g. online replay rows), so a lower bound
  ``max(Q, mc_return)`` is then no bound at all.
* ``exec_action`` [B, H, A'] (optional, None by default): the env action chunk that was actually executed when
  ``action`` is not one -- e.g. DSRL's latent noise chunk, decoded by a frozen policy into an env chunk. ``None``
  means ``action`` itself is the executed chunk (``ChunkBatch.executed_action`` returns whichever applies).

TD target convention (pinned here, used by every critic): ``y = reward + discount * (1 - terminated) * V(next_obs)``
-- see ``ChunkBatch.bootstrap``.

* ``images`` / ``next_images`` ({camera: [B, To, H, W, C] uint8}, optional, None by default): the camera frames of
  ``obs`` / ``next_obs`` (To = the observation history), kept as uint8 until an image encoder
  (``rlft.nets.encoders``) turns them into float features on the device; ``obs`` is then the state part.

Observations and actions are already *normalised* (see ``rlft.data.normalize``): obs by dataset mean/std, actions
scaled to [-1, 1]. ``obs`` is [B, obs_dim] where obs_dim already includes any observation history (flattened).
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class ChunkBatch:
    obs: torch.Tensor  # [B, O]
    action: torch.Tensor  # [B, H, A]
    reward: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, O]
    terminated: torch.Tensor  # [B] float 0/1
    discount: torch.Tensor  # [B] gamma^k
    valid_mask: torch.Tensor  # [B, H] float 0/1
    is_offline: torch.Tensor  # [B] float 1 for rows from the offline dataset, 0 for online replay rows
    exec_action: torch.Tensor | None = None  # [B, H, A'] executed env chunk when ``action`` is a latent; None otherwise
    mc_return: torch.Tensor | None = None  # [B] discounted return-to-go from the chunk start; None -> -inf (unknown)
    images: dict[str, torch.Tensor] | None = None  # {camera: [B, To, H, W, C] uint8} frames of obs; None: state only
    next_images: dict[str, torch.Tensor] | None = None  # {camera: [B, To, H, W, C] uint8} frames of next_obs
    weight: torch.Tensor | None = None  # [B] weight of each row in the algorithms that take one (BC); None: all 1

    def __post_init__(self) -> None:
        if self.mc_return is None:
            self.mc_return = torch.full_like(self.reward, float("-inf"))

    @property
    def batch_size(self) -> int:
        return self.obs.shape[0]

    @property
    def bootstrap(self) -> torch.Tensor:
        """Multiplier of the next-state value in the TD target: gamma^k * (1 - terminated)."""
        return self.discount * (1.0 - self.terminated)

    @property
    def executed_action(self) -> torch.Tensor:
        """The env action chunk that was executed: ``exec_action`` if set, else ``action``."""
        return self.action if self.exec_action is None else self.exec_action

    def to(self, device: torch.device | str) -> "ChunkBatch":
        return ChunkBatch(
            **{f.name: _map(getattr(self, f.name), lambda t: t.to(device)) for f in dataclasses.fields(self)}
        )

    @staticmethod
    def cat(batches: list["ChunkBatch"]) -> "ChunkBatch":
        """Concatenate along the batch; if only some batches carry ``exec_action``, the others contribute their
        ``action`` (which for them is the executed chunk)."""
        out = {}
        for f in dataclasses.fields(ChunkBatch):
            if f.name == "exec_action":
                if all(b.exec_action is None for b in batches):
                    out[f.name] = None
                else:
                    out[f.name] = torch.cat([b.executed_action for b in batches], 0)
            elif f.name == "weight":
                if all(b.weight is None for b in batches):
                    out[f.name] = None
                else:  # rows without a weight (e.g. online replay rows) weigh 1
                    out[f.name] = torch.cat(
                        [b.weight if b.weight is not None else torch.ones_like(b.reward) for b in batches]
                    )
            elif f.name in ("images", "next_images"):
                parts = [getattr(b, f.name) for b in batches]
                if any(p is None for p in parts):
                    if any(p is not None for p in parts):
                        raise ValueError("ChunkBatch.cat: some batches carry camera images and some do not")
                    out[f.name] = None
                else:
                    out[f.name] = {c: torch.cat([p[c] for p in parts], 0) for c in parts[0]}
            else:
                out[f.name] = torch.cat([getattr(b, f.name) for b in batches], 0)
        return ChunkBatch(**out)

    @staticmethod
    def random(
        batch_size: int, obs_dim: int, act_horizon: int, action_dim: int, gamma: float = 0.99, generator=None
    ) -> "ChunkBatch":
        """A random but well-formed batch (for contract tests and throughput benchmarks)."""
        g = generator
        B, H = batch_size, act_horizon
        k = torch.randint(1, H + 1, (B,), generator=g)
        mask = (torch.arange(H)[None, :] < k[:, None]).float()
        return ChunkBatch(
            obs=torch.randn(B, obs_dim, generator=g),
            action=torch.rand(B, H, action_dim, generator=g) * 1.8 - 0.9,
            reward=-torch.rand(B, generator=g) * H,
            next_obs=torch.randn(B, obs_dim, generator=g),
            terminated=(torch.rand(B, generator=g) < 0.1).float(),
            discount=gamma ** k.float(),
            valid_mask=mask,
            is_offline=torch.ones(B),
            mc_return=-torch.rand(B, generator=g) * 50.0,  # drawn last: the other fields are as before
        )


def _map(x, fn):
    """``fn`` on a tensor, on each tensor of a {camera: tensor} dict; None stays None."""
    if x is None:
        return None
    return {k: fn(v) for k, v in x.items()} if isinstance(x, dict) else fn(x)
