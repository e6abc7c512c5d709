"""Online replay buffer of *macro transitions* (one executed action chunk each), as produced by a chunk executor.

Each entry is (obs, chunk, reward, next_obs, terminated, discount, k) with the meaning of ``ChunkBatch``: from ``obs``
the chunk [H, A] was executed open loop for k <= H steps (fewer if the episode ended inside the chunk),
``reward = sum_{i<k} gamma^i r_i``, ``discount = gamma^k``, ``terminated`` only for a true MDP end (never for a time
limit). Entries are stored *raw* (env units) in preallocated tensors (a ring buffer) and normalised when sampled with
the given ``Normalizer`` -- the offline dataset's, so offline and online data share one set of statistics.

Optionally (``exec_shape`` set) each entry also stores the env chunk that was actually executed when the stored
``chunk`` is not one (DSRL: the chunk is latent noise, the executed chunk its decoding by a frozen policy); it is
normalised with ``exec_normalizer`` and returned as ``ChunkBatch.exec_action``.

Camera observations (``image_shapes`` set: {camera: (To, H, W, C)}) are stored per entry for ``obs`` and
``next_obs`` as uint8 (never float: 64x64 RGB costs 12 KiB per frame, i.e. about 2.5 GB per 100k entries with history
1) and returned as ``ChunkBatch.images`` / ``next_images``.
"""

from __future__ import annotations

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
    ):
        if capacity < 1:
            raise ConfigError(f"replay capacity must be >= 1, got {capacity}")
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
    ) -> None:
        """Add N macro transitions: obs [N,O], chunk [N,H,A], reward/terminated/discount/k [N] (numpy or torch);
        ``exec_chunk`` [N, *exec_shape] the executed env chunks, required iff the buffer was built with exec_shape;
        ``images`` / ``next_images`` {camera: [N, To, H, W, C] uint8}, required iff it was built with image_shapes."""
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
        if self.device.type == "cpu":  # a cheap check here; on accelerators it would force a sync per add
            for name in ("obs", "chunk", "reward", "next_obs", "discount", *self._fields[len(_FIELDS) :]):
                if not torch.isfinite(vals[name]).all():
                    raise TrainingError(f"replay buffer add: {name} contains NaN/inf")
            if ((vals["k"] < 1) | (vals["k"] > H)).any():
                raise TrainingError(f"replay buffer add: k must be in [1, {H}], got {vals['k'].tolist()}")
        if N > self.capacity:  # only the newest `capacity` survive
            vals = {n: v[N - self.capacity :] for n, v in vals.items()}
            frames = [(store, v[N - self.capacity :]) for store, v in frames]
            self.num_added += N - self.capacity
            N = self.capacity
        idx = (self.ptr + torch.arange(N, device=self.device)) % self.capacity
        for name, v in vals.items():
            getattr(self, name).index_copy_(0, idx, v)
        for store, v in frames:
            store.index_copy_(0, idx, v)
        self.ptr = (self.ptr + N) % self.capacity
        self.size = min(self.size + N, self.capacity)
        self.num_added += N

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
        """``batch_size`` entries drawn uniformly (with replacement) from what is stored."""
        if self.size == 0:
            raise TrainingError("replay buffer is empty: collect online data before sampling")
        return self.get(randint(self.size, batch_size, generator, self.device))

    def ordered(self) -> ChunkBatch:
        """Every stored entry, oldest first (an on-policy rollout in collection order)."""
        return self.get(self._chronological())

    def clear(self) -> None:
        """Forget every entry (``num_added`` keeps counting)."""
        self.ptr = self.size = 0

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
