"""Online replay buffer of *macro transitions* (one executed action chunk each), as produced by a chunk executor.

Each entry is (obs, chunk, reward, next_obs, terminated, discount, k) with the meaning of ``ChunkBatch``: from ``obs``
the chunk [H, A] was executed open loop for k <= H steps (fewer if the episode ended inside the chunk),
``reward = sum_{i<k} gamma^i r_i``, ``discount = gamma^k``, ``terminated`` only for a true MDP end (never for a time
limit). Entries are stored *raw* (env units) in preallocated tensors (a ring buffer) and normalised when sampled with
the given ``Normalizer`` -- the offline dataset's, so offline and online data share one set of statistics.

Optionally (``exec_shape`` set) each entry also stores the env chunk that was actually executed when the stored
``chunk`` is not one (DSRL: the chunk is latent noise, the executed chunk its decoding by a frozen policy); it is
normalised with ``exec_normalizer`` and returned as ``ChunkBatch.exec_action``.

n-step targets (``n_step`` > 1; Mnih et al. 2016, Hessel et al. 2018 "Rainbow"; the residual off-policy recipe of
Ankile et al. 2025, "ResFiT", uses n = 3-5): ``sample`` returns each drawn entry j_0 joined with the entries that
followed it in the same env's episode, j_1 .. j_m (m < n; fewer where the episode ended or the next entry is not
collected yet):

    reward   = R_0 + D_0 R_1 + D_0 D_1 R_2 + ... + (D_0 ... D_{m-1}) R_m
    discount = D_0 D_1 ... D_m,    next_obs = next_obs of j_m,    terminated = terminated of j_m

with R_i, D_i = gamma^k_i the entries' own chunk rewards and discounts, so the TD target bootstraps from the state m+1
macro-steps later. The actions of j_1 .. j_m are the behaviour policy's, not the current one's (no off-policy
correction, as in Rainbow and ResFiT): a bias traded for faster value propagation. The buffer links each entry to
the same env's next entry at ``add`` (``stream`` says which env a row came from, ``done`` where its episode ended).
``ordered`` (on-policy rollouts) always returns single entries.

Camera observations (``image_shapes`` set: {camera: (To, H, W, C)}) are stored per entry for ``obs`` and
``next_obs`` as uint8 (never float: 64x64 RGB costs 12 KiB per frame, i.e. about 2.5 GB per 100k entries with history
1) and returned as ``ChunkBatch.images`` / ``next_images``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from rlft.data.batch import ChunkBatch
from rlft.data.dataset import randint
from rlft.data.normalize import Normalizer
from rlft.errors import CheckpointError, ConfigError, TrainingError

_FIELDS = ("obs", "chunk", "reward", "next_obs", "terminated", "discount", "k")


class ReplayBuffer:
    """Ring buffer of ``capacity`` macro transitions; ``add`` is batched (one row per vector-env sub-env)."""

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        act_horizon: int,
        action_dim: int,
        normalizer: Normalizer,
        device: str | torch.device = "cpu",
        exec_shape: tuple[int, int] | None = None,
        exec_normalizer: Normalizer | None = None,
        image_shapes: dict[str, tuple[int, ...]] | None = None,
        n_step: int = 1,
    ):
        if capacity < 1:
            raise ConfigError(f"replay capacity must be >= 1, got {capacity}")
        if isinstance(n_step, bool) or not isinstance(n_step, int) or n_step < 1:
            raise ConfigError(f"n_step must be an integer >= 1 (1 = one macro-step targets), got {n_step!r}")
        self.n_step = n_step
        if tuple(normalizer.obs_mean.shape) != (obs_dim,) or tuple(normalizer.act_low.shape) != (action_dim,):
            raise ConfigError(
                f"replay buffer: normalizer is for obs_dim={normalizer.obs_mean.shape[0]}, "
                f"action_dim={normalizer.act_low.shape[0]} but the buffer has obs_dim={obs_dim}, "
                f"action_dim={action_dim}"
            )
        self.capacity = int(capacity)
        self.obs_dim, self.act_horizon, self.action_dim = int(obs_dim), int(act_horizon), int(action_dim)
        self.normalizer = normalizer
        self.device = torch.device(device)
        C, O, H, A, dev = self.capacity, self.obs_dim, self.act_horizon, self.action_dim, self.device
        self.obs = torch.zeros(C, O, device=dev)
        self.chunk = torch.zeros(C, H, A, device=dev)
        self.reward = torch.zeros(C, device=dev)
        self.next_obs = torch.zeros(C, O, device=dev)
        self.terminated = torch.zeros(C, device=dev)
        self.discount = torch.zeros(C, device=dev)
        self.k = torch.zeros(C, dtype=torch.long, device=dev)
        if (exec_shape is None) != (exec_normalizer is None):
            raise ConfigError("replay buffer: exec_shape and exec_normalizer go together")
        self.exec_normalizer = exec_normalizer
        self.exec_chunk = None if exec_shape is None else torch.zeros(C, *exec_shape, device=dev)
        self._fields = _FIELDS + (("exec_chunk",) if exec_shape is not None else ())
        self.image_shapes = {c: tuple(int(d) for d in sh) for c, sh in (image_shapes or {}).items()}
        self.images = {c: torch.zeros(C, *sh, dtype=torch.uint8, device=dev) for c, sh in self.image_shapes.items()}
        self.next_images = {c: torch.zeros_like(v) for c, v in self.images.items()}
        self.succ = torch.full((C,), -1, dtype=torch.long, device=dev)  # slot of the same env's next entry, -1: none
        self._open: dict[int, int] = {}  # env stream -> slot of its last entry, while that episode goes on
        self._arange_h = torch.arange(H, device=dev)
        self.ptr = 0  # next slot to write
        self.size = 0
        self.num_added = 0  # total ever added (including overwritten entries)

    def __len__(self) -> int:
        return self.size

    def _as(self, name: str, x, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
        t = torch.as_tensor(x if torch.is_tensor(x) else np.asarray(x), device=self.device)
        t = t.to(dtype)
        if tuple(t.shape) != shape:
            raise TrainingError(f"replay buffer add: {name} has shape {tuple(t.shape)}, expected {shape}")
        return t

    @torch.no_grad()
    def add(
        self,
        obs_raw,
        chunk_raw,
        reward,
        next_obs_raw,
        terminated,
        discount,
        k,
        exec_chunk=None,
        images=None,
        next_images=None,
        stream=None,
        done=None,
    ) -> None:
        """Add N macro transitions: obs [N,O], chunk [N,H,A], reward/terminated/discount/k [N] (numpy or torch);
        ``exec_chunk`` [N, *exec_shape] the executed env chunks, required iff the buffer was built with exec_shape;
        ``images`` / ``next_images`` {camera: [N, To, H, W, C] uint8}, required iff it was built with image_shapes.
        ``stream`` [N] the env each row came from (default 0 .. N-1) and ``done`` [N] whether its episode ended there
        (terminated or truncated; default ``terminated``) link each row to its env's previous one for n-step
        targets (read only when ``n_step`` > 1)."""
        N = int(np.shape(reward)[0]) if not torch.is_tensor(reward) else int(reward.shape[0])
        if N == 0:
            return
        O, H, A = self.obs_dim, self.act_horizon, self.action_dim
        vals = {
            "obs": self._as("obs", obs_raw, (N, O)),
            "chunk": self._as("chunk", chunk_raw, (N, H, A)),
            "reward": self._as("reward", reward, (N,)),
            "next_obs": self._as("next_obs", next_obs_raw, (N, O)),
            "terminated": self._as("terminated", terminated, (N,)),
            "discount": self._as("discount", discount, (N,)),
            "k": self._as("k", k, (N,), torch.long),
        }
        if (exec_chunk is None) != (self.exec_chunk is None):
            raise TrainingError("replay buffer add: exec_chunk must be given iff the buffer stores executed chunks")
        if exec_chunk is not None:
            vals["exec_chunk"] = self._as("exec_chunk", exec_chunk, (N, *self.exec_chunk.shape[1:]))
        frames = self._check_images(images, next_images, N)
        streams, dones = self._streams(stream, done, vals["terminated"], N)
        if self.device.type == "cpu":  # a cheap check here; on accelerators it would force a sync per add
            self._check_values(vals)
        if N > self.capacity:  # only the newest `capacity` survive
            vals = {n: v[N - self.capacity :] for n, v in vals.items()}
            frames = [(store, v[N - self.capacity :]) for store, v in frames]
            for s in streams[: N - self.capacity]:  # rows that never get a slot end their stream's chain here
                self._open.pop(s, None)
            streams, dones = streams[N - self.capacity :], dones[N - self.capacity :]
            self.num_added += N - self.capacity
            N = self.capacity
        idx = (self.ptr + torch.arange(N, device=self.device)) % self.capacity
        self._link(idx, streams, dones)
        for name, v in vals.items():
            getattr(self, name).index_copy_(0, idx, v)
        for store, v in frames:
            store.index_copy_(0, idx, v)
        self.ptr = (self.ptr + N) % self.capacity
        self.size = min(self.size + N, self.capacity)
        self.num_added += N

    def _check_values(self, vals: dict[str, torch.Tensor]) -> None:
        """Refuse NaN/inf in the float fields of an ``add`` and k outside [1, H]."""
        for name in ("obs", "chunk", "reward", "next_obs", "discount", *self._fields[len(_FIELDS) :]):
            if not torch.isfinite(vals[name]).all():
                raise TrainingError(f"replay buffer add: {name} contains NaN/inf")
        if ((vals["k"] < 1) | (vals["k"] > self.act_horizon)).any():
            raise TrainingError(f"replay buffer add: k must be in [1, {self.act_horizon}], got {vals['k'].tolist()}")

    def _streams(self, stream, done, terminated: torch.Tensor, N: int) -> tuple[list[int], list[bool]]:
        """``stream`` and ``done`` of an ``add`` as Python lists (checked: one per row, distinct streams); empty with
        ``n_step`` 1, whose entries are never linked (nothing added to the env loop's path)."""
        if self.n_step == 1:
            return [], []
        streams = list(range(N)) if stream is None else [int(x) for x in np.asarray(stream).reshape(-1)]
        dones = terminated.bool().tolist()
        if done is not None:
            dones = [bool(x) or t for x, t in zip(np.asarray(done).reshape(-1), dones)]
        if len(streams) != N or len(dones) != N or len(set(streams)) != N:
            raise TrainingError(f"replay buffer add: stream and done need one entry per row ({N}), distinct streams")
        return streams, dones

    def _link(self, idx: torch.Tensor, streams: list[int], dones: list[bool]) -> None:
        """Point each stream's open entry at the slot its new row goes to (``succ``); the new rows start unlinked."""
        if self.n_step == 1:
            return
        slots = idx.tolist()
        taken = set(slots)
        self._open = {s: j for s, j in self._open.items() if j not in taken}  # overwritten before it was followed
        self.succ[idx] = -1
        for s, j, d in zip(streams, slots, dones):
            if s in self._open:
                self.succ[self._open.pop(s)] = j
            if not d:
                self._open[s] = j

    def end_episodes(self) -> None:
        """Unlink every open episode (the envs start new ones: a resumed run with several envs)."""
        self._open = {}

    def _check_images(self, images, next_images, N: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(store, frames) pairs of the cameras' uint8 frames to add; refuses missing cameras and other shapes."""
        if not self.image_shapes:
            if images is not None or next_images is not None:
                raise TrainingError("replay buffer add: camera images given to a buffer built without image_shapes")
            return []
        out = []
        for name, given, stores in (("images", images, self.images), ("next_images", next_images, self.next_images)):
            if given is None or set(given) != set(self.image_shapes):
                raise TrainingError(
                    f"replay buffer add: {name} must hold the cameras {sorted(self.image_shapes)}, got "
                    f"{None if given is None else sorted(given)}"
                )
            for cam, store in stores.items():
                t = torch.as_tensor(given[cam] if torch.is_tensor(given[cam]) else np.asarray(given[cam]))
                if t.dtype != torch.uint8 or tuple(t.shape) != (N, *self.image_shapes[cam]):
                    raise TrainingError(
                        f"replay buffer add: {name}[{cam!r}] must be uint8 {(N, *self.image_shapes[cam])}, got "
                        f"{t.dtype} {tuple(t.shape)}"
                    )
                out.append((store, t.to(self.device)))
        return out

    @torch.no_grad()
    def get(self, idx: torch.Tensor) -> ChunkBatch:
        """Normalised ``ChunkBatch`` of the entries at slots ``idx``."""
        nz = self.normalizer
        k = self.k.index_select(0, idx)
        return ChunkBatch(
            obs=nz.normalize_obs(self.obs.index_select(0, idx)),
            action=nz.normalize_action(self.chunk.index_select(0, idx)),
            reward=self.reward.index_select(0, idx),
            next_obs=nz.normalize_obs(self.next_obs.index_select(0, idx)),
            terminated=self.terminated.index_select(0, idx),
            discount=self.discount.index_select(0, idx),
            valid_mask=(self._arange_h[None, :] < k[:, None]).float(),
            is_offline=torch.zeros(idx.shape[0], device=idx.device),
            exec_action=None
            if self.exec_chunk is None
            else self.exec_normalizer.normalize_action(self.exec_chunk.index_select(0, idx)),
            images={c: v.index_select(0, idx) for c, v in self.images.items()} or None,
            next_images={c: v.index_select(0, idx) for c, v in self.next_images.items()} or None,
        )

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ChunkBatch:
        """``batch_size`` entries drawn uniformly (with replacement) from what is stored, each joined with up to
        ``n_step - 1`` following entries of its episode (module docstring)."""
        if self.size == 0:
            raise TrainingError("replay buffer is empty: collect online data before sampling")
        idx = randint(self.size, batch_size, generator, self.device)
        return self.get(idx) if self.n_step == 1 else self.n_step_batch(idx)

    @torch.no_grad()
    def n_step_batch(self, idx: torch.Tensor) -> ChunkBatch:
        """``get(idx)`` with the n-step reward, discount, next observation and termination (module docstring)."""
        first = self.get(idx)
        reward, discount, last = first.reward.clone(), first.discount.clone(), idx.clone()
        for _ in range(self.n_step - 1):
            nxt = self.succ.index_select(0, last)
            go = nxt >= 0  # an entry with a successor neither terminated nor ended its episode
            nxt = torch.where(go, nxt, last)
            reward = reward + torch.where(go, discount * self.reward.index_select(0, nxt), 0.0)
            discount = torch.where(go, discount * self.discount.index_select(0, nxt), discount)
            last = nxt
        return dataclasses.replace(
            first,
            reward=reward,
            discount=discount,
            next_obs=self.normalizer.normalize_obs(self.next_obs.index_select(0, last)),
            terminated=self.terminated.index_select(0, last),
            next_images={c: v.index_select(0, last) for c, v in self.next_images.items()} or None,
        )

    def ordered(self) -> ChunkBatch:
        """Every stored entry, oldest first (an on-policy rollout in collection order)."""
        return self.get(self._chronological())

    def clear(self) -> None:
        """Forget every entry (``num_added`` keeps counting)."""
        self.ptr = self.size = 0
        self.succ.fill_(-1)
        self._open = {}

    def _chronological(self) -> torch.Tensor:
        """Slots of the stored entries, oldest first."""
        start = (self.ptr - self.size) % self.capacity
        return (start + torch.arange(self.size, device=self.device)) % self.capacity

    def state_dict(self) -> dict:
        """Stored entries (raw, oldest first) as numpy arrays, plus counters; loadable into any capacity."""
        order = self._chronological()
        out = {name: getattr(self, name).index_select(0, order).cpu().numpy() for name in self._fields}
        for prefix, stores in (("images", self.images), ("next_images", self.next_images)):
            for cam, v in stores.items():
                out[f"{prefix}/{cam}"] = v.index_select(0, order).cpu().numpy()
        out["num_added"] = np.array(self.num_added, dtype=np.int64)
        # n-step links, position-independent: how many entries later (oldest first) each entry's successor sits (0:
        # none), and the (stream, position) of the episodes still open
        pos = torch.full((self.capacity,), -1, dtype=torch.long, device=self.device)
        pos[order] = torch.arange(self.size, device=self.device)
        succ = self.succ.index_select(0, order)
        out["succ_offset"] = torch.where(succ >= 0, pos[succ.clamp(min=0)] - pos[order], 0).cpu().numpy()
        out["open_streams"] = np.array([[s, int(pos[j])] for s, j in self._open.items()], np.int64).reshape(-1, 2)
        # where the oldest entry sits: a buffer of the same capacity restores the same layout, so sampled indices
        # (and therefore a resumed run) are those of the uninterrupted run, wrapped around or not
        out["start"] = np.array([(self.ptr - self.size) % self.capacity, self.capacity], dtype=np.int64)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict`` (a smaller capacity keeps the newest entries)."""
        missing = [n for n in (*self._fields, "num_added") if n not in state]
        if missing:
            raise CheckpointError(f"replay buffer state lacks {missing}")
        O, H, A = self.obs_dim, self.act_horizon, self.action_dim
        n = int(np.shape(state["reward"])[0])
        expect = {"obs": (n, O), "chunk": (n, H, A), "next_obs": (n, O)}
        for name, shape in expect.items():
            if tuple(np.shape(state[name])) != shape:
                raise CheckpointError(
                    f"replay buffer state: {name} has shape {tuple(np.shape(state[name]))}, expected {shape}"
                )
        self.ptr = self.size = 0
        if "start" in state and int(np.asarray(state["start"])[1]) == self.capacity and n <= self.capacity:
            self.ptr = int(np.asarray(state["start"])[0])
        cams = {p: {c: state.get(f"{p}/{c}") for c in self.image_shapes} for p in ("images", "next_images")}
        if any(v is None for d in cams.values() for v in d.values()):
            raise CheckpointError(f"replay buffer state lacks the frames of cameras {sorted(self.image_shapes)}")
        self.add(
            *(state[name] for name in _FIELDS),
            exec_chunk=state.get("exec_chunk") if self.exec_chunk is not None else None,
            images=cams["images"] or None,
            next_images=cams["next_images"] or None,
        )
        self.num_added = int(np.asarray(state["num_added"]).reshape(-1)[0])
        self._load_links(state, n)

    def _load_links(self, state: dict, n: int) -> None:
        """Restore the n-step links of ``state_dict`` (of its newest ``len(self)`` entries); a state without them
        (written before n-step targets existed) leaves every entry unlinked."""
        self._open = {}
        self.succ.fill_(-1)
        if "succ_offset" not in state:
            return
        order, drop = self._chronological(), n - self.size  # the state's first `drop` entries did not fit
        off = torch.as_tensor(np.asarray(state["succ_offset"], np.int64)[drop:], device=self.device)
        target = torch.arange(self.size, device=self.device) + off
        ok = (off > 0) & (target < self.size)
        self.succ[order[ok]] = order[target[ok]]
        for s, p in np.asarray(state["open_streams"], np.int64).reshape(-1, 2):
            if p >= drop:
                self._open[int(s)] = int(order[p - drop])
