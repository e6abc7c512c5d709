"""Offline chunk sampling: a list of ``Episode`` -> uniformly sampled ``ChunkBatch`` es.

Every transition index t of every episode (t in [0, T-1]) is a valid chunk start. For a start t in an episode of T
transitions and action horizon H:

* ``k``          = min(H, T - t, steps up to and including the first terminal step at or after t)
                   (in valid data only the last transition can be terminal, so this is min(H, T - t))
* ``action``     = a[t : t+H], past the k executed steps padded with the last valid action a[t+k-1]
* ``valid_mask`` = [i < k for i in range(H)]
* ``reward``     = sum_{i<k} gamma^i r[t+i]
* ``next_obs``   = o[t+k]
* ``discount``   = gamma^k
* ``terminated`` = terminated[t+k-1]  (= any(terminated[t:t+k]), since a chunk stops at a terminal step)
* ``mc_return``  = the Monte-Carlo discounted return-to-go from t, sum_{i>=0} gamma^i r[t+i] to the episode's end
                   (``discounted_return_to_go``; Cal-QL's reference value)

A chunk cut short by the episode's end (k < H) without termination is a time-limit/data cut: it bootstraps from
o[T] with gamma^k. With an observation history of ``obs_horizon`` To > 1, ``obs`` is [o_{t-To+1}, ..., o_t]
flattened (oldest first), with indices < 0 replaced by o_0; ``next_obs`` is the same window ending at t+k.

Everything is precomputed once into flat tensors (index tables into the concatenated, already normalised
observation/action arrays); ``sample`` is a handful of vectorised ``index_select`` calls.
Observations and actions are normalised at construction with ``ChunkDataset.normalizer`` (built from the dataset's
statistics unless one is given, e.g. the policy's), so changing that normaliser's statistics afterwards does not
re-normalise the stored arrays.

This module knows nothing about environments or algorithms.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from rlft.data.batch import ChunkBatch
from rlft.data.episodes import Episode
from rlft.data.normalize import Normalizer
from rlft.errors import ConfigError, DatasetError


def discounted_return_to_go(rewards: np.ndarray, terminated: np.ndarray, last: np.ndarray, gamma: float) -> np.ndarray:
    """Monte-Carlo return-to-go of every transition of concatenated episodes: ``G_j = r_j + gamma * G_{j+1}``.

    ``rewards``, ``terminated``, ``last`` [N] (``last`` marks each episode's final transition). The recursion stops
    at a terminal transition (``G_j = r_j``). At the final transition of an episode that did *not* terminate (a time
    limit or a data cut) the future is unknown; it is filled by assuming the last reward repeats forever,
    ``G_j = r_j / (1 - gamma)`` (``r_j`` if gamma = 1). For an episode that keeps the failure reward to its time limit
    this is exactly the value Cal-QL's reference code assigns to failed sparse-reward episodes (``r_neg / (1 -
    gamma)``); without it the truncated sum would overstate the value of the states just before the time limit
    (a 200-step OGBench failure would look like -39.5 instead of -100 at t = 150 with gamma = 0.99).

    Vectorised as a log-depth scan over the flat arrays (O(N log T) work for episodes of at most T transitions).
    """
    r = np.asarray(rewards, dtype=np.float64)
    stop = np.asarray(terminated, dtype=bool) | np.asarray(last, dtype=bool)
    open_end = np.asarray(last, dtype=bool) & ~np.asarray(terminated, dtype=bool)
    g = r.copy()
    if gamma < 1.0:
        g[open_end] = r[open_end] / (1.0 - gamma)
    c = np.where(stop, 0.0, float(gamma))  # c_j: factor carrying G_{j+d} into G_j (0 across an episode end)
    d = 1
    while d < len(g) and c.any():  # after the pass with offset d, g_j sums 2d steps ahead and c_j = prod of 2d c's
        g_new, c_new = g.copy(), np.zeros_like(c)
        g_new[:-d] += c[:-d] * g[d:]
        c_new[:-d] = c[:-d] * c[d:]
        g, c, d = g_new, c_new, 2 * d
    return g


def randint(high: int, size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``size`` uniform indices in [0, high) drawn with ``generator`` (on its device) and moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(high, (size,), generator=generator, device=gen_device).to(device)


@dataclasses.dataclass
class DatasetStats:
    """Statistics of a set of episodes (per *single* observation dimension; use ``tile`` for a history)."""

    obs_mean: np.ndarray  # [O] float32
    obs_std: np.ndarray  # [O] float32 (population std; the Normalizer adds eps)
    act_low: np.ndarray  # [A] float32
    act_high: np.ndarray  # [A] float32
    num_episodes: int
    num_transitions: int
    success_rate: float  # fraction of episodes with success at any step
    mean_return: float  # mean undiscounted episode return

    @property
    def obs_dim(self) -> int:
        return int(self.obs_mean.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.act_low.shape[0])

    @staticmethod
    def from_episodes(
        episodes: Sequence[Episode], act_low: np.ndarray | None = None, act_high: np.ndarray | None = None
    ) -> "DatasetStats":
        """Compute the statistics of ``episodes``.

        Observation mean/std are over every observation row (o_0..o_T of each episode). The action range is the
        env's box when ``act_low``/``act_high`` are given (recommended when it is known), otherwise the per-dimension
        min/max of the data; a dimension whose data range is (near) zero is widened to +-1 around its value so the
        action map stays invertible.
        """
        episodes = [e for e in episodes if len(e) > 0]
        if not episodes:
            raise DatasetError("dataset has no episodes with at least one transition")
        obs = np.concatenate([np.asarray(e.obs, dtype=np.float64) for e in episodes], 0)
        acts = np.concatenate([np.asarray(e.actions, dtype=np.float64) for e in episodes], 0)
        if act_low is None or act_high is None:
            lo, hi = acts.min(0), acts.max(0)
            flat = (hi - lo) < 1e-6
            lo = np.where(flat, lo - 1.0, lo)
            hi = np.where(flat, hi + 1.0, hi)
        else:
            lo = np.broadcast_to(np.asarray(act_low, dtype=np.float64), acts.shape[1:])
            hi = np.broadcast_to(np.asarray(act_high, dtype=np.float64), acts.shape[1:])
            if np.any(hi <= lo):
                raise DatasetError(f"action bounds: high must exceed low in every dimension (low={lo}, high={hi})")
        return DatasetStats(
            obs_mean=obs.mean(0).astype(np.float32),
            obs_std=obs.std(0).astype(np.float32),
            act_low=lo.astype(np.float32),
            act_high=hi.astype(np.float32),
            num_episodes=len(episodes),
            num_transitions=int(acts.shape[0]),
            success_rate=float(np.mean([e.success_once for e in episodes])),
            mean_return=float(np.mean([float(np.sum(e.rewards, dtype=np.float64)) for e in episodes])),
        )

    def tile(self, obs_horizon: int) -> "DatasetStats":
        """Statistics of the flattened history [o_{t-To+1}, ..., o_t]: obs mean/std repeated ``obs_horizon`` times."""
        if obs_horizon < 1:
            raise ConfigError(f"obs_horizon must be >= 1, got {obs_horizon}")
        return dataclasses.replace(
            self, obs_mean=np.tile(self.obs_mean, obs_horizon), obs_std=np.tile(self.obs_std, obs_horizon)
        )

    def normalizer(self, obs_horizon: int = 1, eps: float = 1e-2) -> Normalizer:
        """A ``Normalizer`` for observations with ``obs_horizon`` frames of history."""
        s = self.tile(obs_horizon)
        n = Normalizer(s.obs_dim, s.action_dim, eps=eps)
        return n.set_stats(s.obs_mean, s.obs_std, s.act_low, s.act_high)

    def as_dict(self) -> dict:
        """JSON-friendly view (lists and numbers)."""
        return {
            f.name: (v.tolist() if isinstance(v, np.ndarray) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }


def _check_chunk_args(act_horizon: int, obs_horizon: int, gamma: float) -> None:
    """Raise ``ConfigError`` for a horizon below 1 or a discount outside (0, 1]."""
    if act_horizon < 1:
        raise ConfigError(f"act_horizon must be >= 1, got {act_horizon}")
    if obs_horizon < 1:
        raise ConfigError(f"obs_horizon must be >= 1, got {obs_horizon}")
    if not 0.0 < gamma <= 1.0:
        raise ConfigError(f"gamma must be in (0, 1], got {gamma}")


def _nonempty_episodes(episodes: Sequence[Episode]) -> tuple[list[Episode], int, int]:
    """Validate the episodes; return (the non-empty ones, obs dim O, action dim A), all of the same dims."""
    for i, e in enumerate(episodes):
        e.validate(f"episode {i}")
    eps = [e for e in episodes if len(e) > 0]
    if not eps:
        raise DatasetError("dataset has no episodes with at least one transition")
    O, A = eps[0].obs.shape[1], eps[0].actions.shape[1]
    for i, e in enumerate(episodes):
        if len(e) > 0 and (e.obs.shape[1] != O or e.actions.shape[1] != A):
            raise DatasetError(
                f"episode {i}: obs/action dims {e.obs.shape[1]}/{e.actions.shape[1]} differ from the first "
                f"episode's {O}/{A}"
            )
    return eps, O, A


class _ChunkIndex(NamedTuple):
    """Per-start numpy tables of a ``ChunkDataset`` (one row per transition = chunk start; N rows)."""

    N: int  # number of chunk starts
    lengths: np.ndarray  # [E] transitions per episode
    ep: np.ndarray  # [N] episode of each start
    s: np.ndarray  # [N] global transition index of each start
    t: np.ndarray  # [N] time index within its episode
    rew: np.ndarray  # [N] flat rewards (float64)
    term: np.ndarray  # [N] flat terminated flags
    k: np.ndarray  # [N] steps executed per start
    valid: np.ndarray  # [N, H] step i < k
    chunk_rew: np.ndarray  # [N] discounted reward of the chunk
    act_idx: np.ndarray  # [N, H] rows of the flat actions
    obs_idx: np.ndarray  # [N, To] rows of the flat observations (window ending at t)
    next_obs_idx: np.ndarray  # [N, To] rows of the flat observations (window ending at t+k)


def _row_weights(eps: list[Episode]) -> torch.Tensor | None:
    """Every row's ``row_weight`` signal (``Episode.signals``), or None when no episode has one."""
    has = [bool(e.signals and "row_weight" in e.signals) for e in eps]
    if not any(has):
        return None
    if not all(has):
        raise DatasetError(f"signals/row_weight: episode {has.index(False)} has none, others do; weigh all or none")
    w = np.concatenate([e.signals["row_weight"] for e in eps]).astype(np.float32)
    if (w < 0).any() or not w.sum() > 0:
        raise DatasetError("signals/row_weight: weights must be >= 0 and not all 0")
    return torch.from_numpy(w)


def _chunk_index(eps: list[Episode], H: int, To: int, gamma: float) -> _ChunkIndex:
    """Flat arrays and per-start index tables (numpy, vectorised over all starts); see the module docstring."""
    lengths = np.array([len(e) for e in eps], dtype=np.int64)
    N = int(lengths.sum())
    ep = np.repeat(np.arange(len(eps)), lengths)  # episode of each start
    s = np.arange(N)  # global transition index of each start
    t = s - (np.cumsum(lengths) - lengths)[ep]  # time index within its episode
    obs_base = (np.cumsum(lengths + 1) - (lengths + 1))[ep]  # row of o_0 of its episode in the flat obs

    rew = np.concatenate([np.asarray(e.rewards, dtype=np.float64) for e in eps])
    term = np.concatenate([np.asarray(e.terminated, dtype=bool) for e in eps])
    stop = term | (t == lengths[ep] - 1)  # a chunk ends at a terminal step or the episode's last step
    next_stop = np.minimum.accumulate(np.where(stop, s, N)[::-1])[::-1]
    k = np.minimum(H, next_stop - s + 1)

    i = np.arange(H)
    valid = i[None, :] < k[:, None]  # [N, H]
    rew_pad = np.concatenate([rew, np.zeros(H)])
    chunk_rew = np.sum(np.where(valid, rew_pad[s[:, None] + i[None, :]], 0.0) * gamma ** i[None, :], 1)
    act_idx = s[:, None] + np.minimum(i[None, :], k[:, None] - 1)  # pad with the last valid action
    back = np.arange(To - 1, -1, -1)[None, :]  # To-1, ..., 0 (oldest first)
    obs_idx = obs_base[:, None] + np.maximum(t[:, None] - back, 0)
    next_obs_idx = obs_base[:, None] + np.maximum((t + k)[:, None] - back, 0)
    return _ChunkIndex(N, lengths, ep, s, t, rew, term, k, valid, chunk_rew, act_idx, obs_idx, next_obs_idx)


class ChunkDataset:
    """Precomputed chunk transitions of a list of episodes; ``sample`` draws starts uniformly.

    Args:
        episodes: the episodes (``Episode.validate`` is called on each; empty episodes are skipped).
        act_horizon: H, the action-chunk length.
        gamma: per-step discount (chunk discount is gamma^k).
        obs_horizon: number of stacked observations To (1 = no history).
        normalizer: a ``Normalizer`` over To*O observation dims and A action dims; built from ``stats`` if None.
        device: where the precomputed tensors live (batches come out on it).
        act_low / act_high: the env's action box, used for the action statistics when no normalizer is given.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        act_horizon: int,
        gamma: float,
        obs_horizon: int = 1,
        normalizer: Normalizer | None = None,
        device: str | torch.device = "cpu",
        act_low: np.ndarray | None = None,
        act_high: np.ndarray | None = None,
        planned_targets: bool = False,
    ):
        _check_chunk_args(act_horizon, obs_horizon, gamma)
        eps, O, A = _nonempty_episodes(episodes)
        H, To = int(act_horizon), int(obs_horizon)
        self._H, self._To, self._O, self._A = H, To, O, A
        self.gamma = float(gamma)
        self.device = torch.device(device)
        self.stats = DatasetStats.from_episodes(eps, act_low=act_low, act_high=act_high)
        if normalizer is None:
            normalizer = self.stats.normalizer(To)
        elif tuple(normalizer.obs_mean.shape) != (To * O,) or tuple(normalizer.act_low.shape) != (A,):
            raise DatasetError(
                f"normalizer is for obs_dim={normalizer.obs_mean.shape[0]}, action_dim={normalizer.act_low.shape[0]} "
                f"but the dataset has obs_dim={To * O} (obs_horizon {To} x {O}) and action_dim={A}"
            )
        self.normalizer = normalizer

        ix = _chunk_index(eps, H, To, self.gamma)
        self._store_normalized_arrays(eps)
        self._store_images(eps)
        self._store_index_tables(ix)
        self._weight = _row_weights(eps)
        if self._weight is not None:
            self._weight = self._weight.to(self.device)
        self._planned = self._normalized_plans(eps) if planned_targets else None

    def _normalized_plans(self, eps: list[Episode]) -> torch.Tensor:
        """[N, H, A]: the first H actions of the plan an expert made at every step (``signals/planned_actions``),
        normalised like the actions."""
        H = self._H
        for i, e in enumerate(eps):
            plan = (e.signals or {}).get("planned_actions")
            if plan is None or plan.ndim != 3 or plan.shape[1] < H or plan.shape[2] != self._A:
                raise DatasetError(
                    f"episode {i}: chunk_targets 'planned' needs signals/planned_actions [T, >= {H}, {self._A}] "
                    f"(collect with rlft collect --mode mpc), got {None if plan is None else plan.shape}"
                )
        plans = torch.from_numpy(np.concatenate([e.signals["planned_actions"][:, :H] for e in eps]).astype(np.float32))
        return self.normalizer.normalize_action(plans.to(self.normalizer.act_low.device)).to(self.device)

    def _store_images(self, eps: list[Episode]) -> None:
        """Camera frames, row-aligned with the flat observations, as uint8 on the device (never float: an encoder
        converts the sampled ones)."""
        self._images: dict[str, torch.Tensor] = {}
        if eps[0].images:
            for cam in eps[0].images:
                frames = np.concatenate([e.images[cam] for e in eps])  # [M, H, W, C]
                self._images[cam] = torch.from_numpy(frames).to(self.device)

    def _store_normalized_arrays(self, eps: list[Episode]) -> None:
        """Concatenate the episodes' observations and actions, normalise them once and store them on the device."""
        O, To = self._O, self._To
        obs_flat = np.concatenate([np.asarray(e.obs, dtype=np.float32) for e in eps])
        act_flat = np.concatenate([np.asarray(e.actions, dtype=np.float32) for e in eps])
        dev = self.device
        with torch.no_grad():
            nz = self.normalizer
            mean, std = nz.obs_mean.detach().cpu(), nz.obs_std.detach().cpu()
            lo, hi = nz.act_low.detach().cpu(), nz.act_high.detach().cpu()
            if To > 1 and not (torch.equal(mean, mean[:O].repeat(To)) and torch.equal(std, std[:O].repeat(To))):
                raise DatasetError(
                    "normalizer: obs statistics must be the single-frame statistics tiled obs_horizon times "
                    "(DatasetStats.tile)"
                )
            # same maps as Normalizer.normalize_obs / normalize_action, applied once to the flat arrays
            self._obs = ((torch.from_numpy(obs_flat) - mean[:O]) / (std[:O] + nz.eps)).to(dev)  # [M, O]
            self._act = (2.0 * (torch.from_numpy(act_flat) - lo) / (hi - lo) - 1.0).to(dev)  # [N, A]

    def _store_index_tables(self, ix: _ChunkIndex) -> None:
        """Move the per-start index tables to the device and pack the per-start scalars into one table."""
        dev = self.device
        self._act_idx = torch.from_numpy(ix.act_idx.reshape(-1)).to(dev)  # [N*H]
        self._obs_idx = torch.from_numpy(ix.obs_idx.reshape(-1)).to(dev)  # [N*To]
        self._next_obs_idx = torch.from_numpy(ix.next_obs_idx.reshape(-1)).to(dev)  # [N*To]
        # reward, discount, terminated, mc_return packed in one table: one gather per batch
        s, t, k, term = ix.s, ix.t, ix.k, ix.term
        mc_return = discounted_return_to_go(ix.rew, term, t == ix.lengths[ix.ep] - 1, self.gamma)
        scal = np.stack(
            [ix.chunk_rew, self.gamma ** k.astype(np.float64), term[s + k - 1].astype(np.float64), mc_return], 1
        )
        self._scalars = torch.from_numpy(scal.astype(np.float32)).to(dev)  # [N, 4]
        self._mask = torch.from_numpy(ix.valid.astype(np.float32)).to(dev)  # [N, H]
        self.k = torch.from_numpy(k).to(dev)  # [N] steps executed per start
        self.episode_index = ix.ep  # numpy [N]: episode of each start (diagnostics, splits)
        self.start_t = t  # numpy [N]: time index of each start
        self._N = ix.N

    # ---- properties ----
    @property
    def obs_dim(self) -> int:
        """Flattened observation dim (includes the history): obs_horizon * single-frame dim."""
        return self._To * self._O

    @property
    def action_dim(self) -> int:
        return self._A

    @property
    def act_horizon(self) -> int:
        return self._H

    @property
    def obs_horizon(self) -> int:
        return self._To

    def __len__(self) -> int:
        """Number of chunk starts (= number of transitions)."""
        return self._N

    # ---- sampling ----
    def get(self, idx: torch.Tensor) -> ChunkBatch:
        """The chunks starting at global transition indices ``idx`` (long tensor [B] on ``self.device``)."""
        B, H, To, O = idx.shape[0], self._H, self._To, self._O
        rows = idx if To == 1 else (idx[:, None] * To + torch.arange(To, device=idx.device)).reshape(-1)
        obs_rows, next_rows = self._obs_idx.index_select(0, rows), self._next_obs_idx.index_select(0, rows)
        obs = self._obs.index_select(0, obs_rows).reshape(B, To * O)
        next_obs = self._obs.index_select(0, next_rows).reshape(B, To * O)
        if self._planned is not None:  # the expert's own chunk at the start: complete, whatever the episode did
            action, mask = self._planned.index_select(0, idx), torch.ones(B, H, device=idx.device)
        else:
            arows = (idx[:, None] * H + torch.arange(H, device=idx.device)).reshape(-1)
            action = self._act.index_select(0, self._act_idx.index_select(0, arows)).reshape(B, H, self._A)
            mask = self._mask.index_select(0, idx)
        sc = self._scalars.index_select(0, idx)
        return ChunkBatch(
            obs=obs,
            action=action,
            reward=sc[:, 0],
            next_obs=next_obs,
            terminated=sc[:, 2],
            discount=sc[:, 1],
            valid_mask=mask,
            is_offline=torch.ones(idx.shape[0], device=idx.device),
            mc_return=sc[:, 3],
            images=self._frames(obs_rows, B),
            next_images=self._frames(next_rows, B),
            weight=None if self._weight is None else self._weight.index_select(0, idx),
        )

    def _frames(self, rows: torch.Tensor, B: int) -> dict[str, torch.Tensor] | None:
        """The cameras' uint8 frames at flat observation ``rows`` (B * To of them), as [B, To, H, W, C]."""
        if not self._images:
            return None
        return {c: v.index_select(0, rows).reshape(B, self._To, *v.shape[1:]) for c, v in self._images.items()}

    @property
    def image_shapes(self) -> dict[str, tuple[int, ...]]:
        """{camera: (H, W, C)} of the dataset's frames; empty for state-only data."""
        return {c: tuple(v.shape[1:]) for c, v in self._images.items()}

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ChunkBatch:
        """``batch_size`` chunks with starts drawn uniformly (with replacement) over all transitions."""
        return self.get(randint(self._N, batch_size, generator, self.device))

    def all_starts(self) -> ChunkBatch:
        """Every chunk, in order of (episode, t) -- for validation losses on small datasets."""
        return self.get(torch.arange(self._N, device=self.device))

    def iter_batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[ChunkBatch]:
        """One pass over all starts in batches (the last may be smaller); shuffled with ``generator`` if asked."""
        if shuffle:
            gen_device = generator.device if generator is not None else self.device
            order = torch.randperm(self._N, generator=generator, device=gen_device).to(self.device)
        else:
            order = torch.arange(self._N, device=self.device)
        for a in range(0, self._N, batch_size):
            yield self.get(order[a : a + batch_size])
