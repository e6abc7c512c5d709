"""Episodes -> ChunkBatch: chunk discounting, padding/masking, obs history, normalisation, replay ring, mixing.

Expected values are computed by hand from tiny episodes written out below (gamma = 0.5 keeps the arithmetic exact).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlft.data.batch import ChunkBatch
from rlft.data.dataset import ChunkDataset, DatasetStats
from rlft.data.episodes import Episode
from rlft.data.mixer import MixedSampler
from rlft.data.normalize import Normalizer
from rlft.data.replay import ReplayBuffer
from rlft.errors import CheckpointError, ConfigError, DatasetError, TrainingError

torch.set_num_threads(1)
F, T_ = False, True


def _ep(obs, actions, rewards, terminated, truncated, success=None) -> Episode:
    n = len(rewards)
    return Episode(
        obs=np.asarray(obs, np.float32),
        actions=np.asarray(actions, np.float32),
        rewards=np.asarray(rewards, np.float32),
        terminated=np.asarray(terminated, bool),
        truncated=np.asarray(truncated, bool),
        success=np.asarray(success if success is not None else [F] * n, bool),
    )


def episode_truncated() -> Episode:
    """T=3, ends by a time limit (bootstrap through it)."""
    return _ep(
        obs=[[0, 0], [1, 10], [2, 20], [3, 30]],
        actions=[[0.1], [0.2], [0.3]],
        rewards=[1, 2, 4],
        terminated=[F, F, F],
        truncated=[F, F, T_],
    )


def episode_terminal() -> Episode:
    """T=2, ends in a true terminal state (success)."""
    return _ep(
        obs=[[100, 0], [101, 1], [102, 2]],
        actions=[[-0.1], [-0.2]],
        rewards=[-1, 0],
        terminated=[F, T_],
        truncated=[F, F],
        success=[F, T_],
    )


def identity_normalizer(obs_dim: int = 2, action_dim: int = 1) -> Normalizer:
    return Normalizer(obs_dim, action_dim, eps=0.0)  # mean 0, std 1, box [-1, 1]: the identity


def _np(batch: ChunkBatch) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in vars(batch).items() if v is not None}  # exec_action: None for dataset rows


def test_chunks_truncated_and_terminal_ends_h2():
    eps = [episode_truncated(), episode_terminal()]
    ds = ChunkDataset(eps, act_horizon=2, gamma=0.5, normalizer=identity_normalizer())
    assert len(ds) == 5 and ds.obs_dim == 2 and ds.action_dim == 1 and ds.act_horizon == 2
    b = _np(ds.all_starts())
    # starts: (A,0) (A,1) (A,2) (B,0) (B,1)
    np.testing.assert_allclose(b["reward"], [1 + 0.5 * 2, 2 + 0.5 * 4, 4, -1 + 0.5 * 0, 0])
    np.testing.assert_allclose(b["discount"], [0.25, 0.25, 0.5, 0.25, 0.5])
    np.testing.assert_array_equal(b["terminated"], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(b["valid_mask"], [[1, 1], [1, 1], [1, 0], [1, 1], [1, 0]])
    np.testing.assert_allclose(b["obs"], [[0, 0], [1, 10], [2, 20], [100, 0], [101, 1]])
    np.testing.assert_allclose(b["next_obs"], [[2, 20], [3, 30], [3, 30], [102, 2], [102, 2]])
    # padding repeats the last valid action (and is masked)
    expected_actions = [[0.1, 0.2], [0.2, 0.3], [0.3, 0.3], [-0.1, -0.2], [-0.2, -0.2]]
    np.testing.assert_allclose(b["action"][..., 0], expected_actions, atol=1e-6)
    np.testing.assert_array_equal(ds.k.numpy(), [2, 2, 1, 2, 1])
    # TD convention: truncated end bootstraps with gamma^k, terminal end does not bootstrap
    np.testing.assert_allclose(ds.all_starts().bootstrap.numpy(), [0.25, 0.25, 0.5, 0, 0])


def test_chunk_shorter_than_horizon_at_terminal_h3():
    ds = ChunkDataset([episode_terminal()], act_horizon=3, gamma=0.5, normalizer=identity_normalizer())
    b = _np(ds.all_starts())
    np.testing.assert_allclose(b["reward"], [-1, 0])
    np.testing.assert_allclose(b["discount"], [0.25, 0.5])
    np.testing.assert_array_equal(b["terminated"], [1, 1])
    np.testing.assert_array_equal(b["valid_mask"], [[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(b["action"][..., 0], [[-0.1, -0.2, -0.2], [-0.2, -0.2, -0.2]], atol=1e-6)


def test_h1_is_plain_one_step_td():
    ds = ChunkDataset([episode_truncated()], act_horizon=1, gamma=0.9, normalizer=identity_normalizer())
    b = _np(ds.all_starts())
    np.testing.assert_allclose(b["reward"], [1, 2, 4])
    np.testing.assert_allclose(b["discount"], [0.9, 0.9, 0.9], rtol=1e-6)
    np.testing.assert_allclose(b["next_obs"], [[1, 10], [2, 20], [3, 30]])
    np.testing.assert_array_equal(b["valid_mask"], [[1], [1], [1]])


def test_chunk_stops_at_a_terminal_step_inside_the_episode():
    # malformed data (terminal before the end): a chunk must not run through the terminal step
    ep = _ep([[0, 0], [1, 1], [2, 2], [3, 3]], [[0.1], [0.2], [0.3]], [1, 2, 4], [F, T_, F], [F, F, T_])
    b = _np(ChunkDataset([ep], act_horizon=3, gamma=0.5, normalizer=identity_normalizer()).all_starts())
    np.testing.assert_allclose(b["reward"], [1 + 0.5 * 2, 2, 4])
    np.testing.assert_array_equal(b["terminated"], [1, 1, 0])
    np.testing.assert_array_equal(b["valid_mask"], [[1, 1, 0], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(b["next_obs"], [[2, 2], [2, 2], [3, 3]])


def test_obs_history_repeats_first_observation():
    ds = ChunkDataset(
        [episode_truncated(), episode_terminal()],
        act_horizon=2,
        gamma=0.5,
        obs_horizon=3,
        normalizer=identity_normalizer(obs_dim=6),
    )
    assert ds.obs_dim == 6 and ds.obs_horizon == 3
    b = _np(ds.all_starts())
    np.testing.assert_allclose(
        b["obs"],
        [
            [0, 0, 0, 0, 0, 0],  # [o0, o0, o0]
            [0, 0, 0, 0, 1, 10],  # [o0, o0, o1]
            [0, 0, 1, 10, 2, 20],  # [o0, o1, o2]
            [100, 0, 100, 0, 100, 0],  # episode B starts fresh: no leakage from episode A
            [100, 0, 100, 0, 101, 1],
        ],
    )
    np.testing.assert_allclose(
        b["next_obs"],
        [
            [0, 0, 1, 10, 2, 20],  # window ending at t+k = 2
            [1, 10, 2, 20, 3, 30],  # ending at 3
            [1, 10, 2, 20, 3, 30],  # t=2, k=1 -> ending at 3
            [100, 0, 101, 1, 102, 2],
            [100, 0, 101, 1, 102, 2],
        ],
    )


def test_stats_and_normalisation_round_trip():
    eps = [episode_truncated(), episode_terminal()]
    st = DatasetStats.from_episodes(eps)
    all_obs = np.concatenate([e.obs for e in eps])
    np.testing.assert_allclose(st.obs_mean, all_obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st.obs_std, all_obs.std(0), rtol=1e-6)
    np.testing.assert_allclose(st.act_low, [-0.2]) and np.testing.assert_allclose(st.act_high, [0.3])
    assert (st.num_episodes, st.num_transitions) == (2, 5)
    assert st.success_rate == 0.5 and st.mean_return == pytest.approx((7 + -1) / 2)
    tiled = st.tile(2)
    np.testing.assert_allclose(tiled.obs_mean, np.tile(st.obs_mean, 2))
    assert st.as_dict()["num_transitions"] == 5

    ds = ChunkDataset(eps, act_horizon=2, gamma=0.5)  # normaliser built from the stats
    nz = ds.normalizer
    np.testing.assert_allclose(nz.obs_mean.numpy(), st.obs_mean)
    b = ds.all_starts()
    raw_obs = torch.tensor([[0, 0], [1, 10], [2, 20], [100, 0], [101, 1]], dtype=torch.float32)
    torch.testing.assert_close(b.obs, nz.normalize_obs(raw_obs))
    torch.testing.assert_close(b.obs * (nz.obs_std + nz.eps) + nz.obs_mean, raw_obs, atol=1e-4, rtol=1e-5)
    raw_act = torch.tensor([[0.1, 0.2], [0.2, 0.3], [0.3, 0.3], [-0.1, -0.2], [-0.2, -0.2]])[..., None]
    torch.testing.assert_close(nz.unnormalize_action(b.action), raw_act)
    assert b.action.min().item() == pytest.approx(-1.0) and b.action.max().item() == pytest.approx(1.0)
    # the env box, when given, defines the action map instead of the data range
    ds_box = ChunkDataset(eps, act_horizon=2, gamma=0.5, act_low=np.array([-1.0]), act_high=np.array([1.0]))
    torch.testing.assert_close(ds_box.all_starts().action, raw_act)


def test_constant_action_dimension_stays_invertible():
    ep = _ep([[0], [1], [2]], [[0.5, 1.0], [0.5, -1.0]], [0, 0], [F, F], [F, T_])
    st = DatasetStats.from_episodes([ep])
    np.testing.assert_allclose(st.act_low, [-0.5, -1.0]) and np.testing.assert_allclose(st.act_high, [1.5, 1.0])
    assert torch.isfinite(ChunkDataset([ep], 2, 0.9).all_starts().action).all()


def test_bad_inputs_raise_named_errors():
    with pytest.raises(DatasetError, match="episode 1/obs"):
        ChunkDataset([episode_truncated(), _ep([[0, 0]], [[0.1]], [0], [F], [T_])], 2, 0.9)
    with pytest.raises(DatasetError, match="differ"):
        ChunkDataset([episode_truncated(), _ep([[0], [1]], [[0.1]], [0], [F], [T_])], 2, 0.9)
    with pytest.raises(DatasetError, match="normalizer"):
        ChunkDataset([episode_truncated()], 2, 0.9, obs_horizon=2, normalizer=identity_normalizer())
    with pytest.raises(ConfigError, match="act_horizon"):
        ChunkDataset([episode_truncated()], 0, 0.9)
    with pytest.raises(DatasetError, match="no episodes"):
        ChunkDataset([], 2, 0.9)


def test_sampling_deterministic_under_generator_and_uniform():
    ds = ChunkDataset([episode_truncated(), episode_terminal()], act_horizon=2, gamma=0.5)
    b1 = ds.sample(64, torch.Generator().manual_seed(3))
    b2 = ds.sample(64, torch.Generator().manual_seed(3))
    b3 = ds.sample(64, torch.Generator().manual_seed(4))
    for name in vars(b1):
        torch.testing.assert_close(getattr(b1, name), getattr(b2, name))
    assert not torch.equal(b1.obs, b3.obs)
    # every sampled row is one of the 5 precomputed chunks, and all 5 starts occur
    allc = ds.all_starts()
    match = (b1.obs[:, None, :] == allc.obs[None]).all(-1) & (b1.reward[:, None] == allc.reward[None])
    assert (match.sum(1) == 1).all() and match.any(0).all()
    sizes = [b.batch_size for b in ds.iter_batches(2)]
    assert sizes == [2, 2, 1]


# ---------------- replay buffer ----------------


def _rb(capacity=3, normalizer=None) -> ReplayBuffer:
    nz = identity_normalizer() if normalizer is None else normalizer
    return ReplayBuffer(capacity, obs_dim=2, act_horizon=2, action_dim=1, normalizer=nz)


def _add(rb: ReplayBuffer, ids: list[int], k=None):
    n = len(ids)
    ids_a = np.asarray(ids, np.float32)
    rb.add(
        obs_raw=np.stack([ids_a, -ids_a], 1),
        chunk_raw=np.full((n, 2, 1), 0.5, np.float32),
        reward=ids_a,
        next_obs_raw=np.stack([ids_a + 1, -ids_a - 1], 1),
        terminated=np.zeros(n, bool),
        discount=np.full(n, 0.25, np.float32),
        k=np.asarray(k if k is not None else [2] * n),
    )


def test_replay_ring_buffer_wraps_around():
    rb = _rb(capacity=3)
    _add(rb, [0, 1])
    assert len(rb) == 2 and rb.ptr == 2
    _add(rb, [2, 3])  # 2 -> slot 2, 3 -> slot 0 (overwrites 0)
    assert len(rb) == 3 and rb.ptr == 1 and rb.num_added == 4
    np.testing.assert_array_equal(rb.reward.numpy(), [3, 1, 2])
    np.testing.assert_array_equal(rb.state_dict()["reward"], [1, 2, 3])  # oldest first
    _add(rb, [4, 5, 6, 7, 8])  # more than capacity at once: the newest 3 survive
    np.testing.assert_array_equal(rb.state_dict()["reward"], [6, 7, 8])
    assert rb.num_added == 9 and len(rb) == 3
    got = set(rb.sample(50, torch.Generator().manual_seed(0)).reward.tolist())
    assert got == {6.0, 7.0, 8.0}


def test_replay_sample_normalises_and_masks():
    nz = Normalizer(2, 1, eps=0.0).set_stats([1.0, -1.0], [2.0, 4.0], [0.0], [1.0])
    rb = _rb(capacity=4, normalizer=nz)
    _add(rb, [3, 5], k=[2, 1])
    b = rb.get(torch.arange(2))
    torch.testing.assert_close(b.obs, torch.tensor([[1.0, -0.5], [2.0, -1.0]]))  # ([3,-3]-[1,-1])/[2,4]
    torch.testing.assert_close(b.next_obs, torch.tensor([[1.5, -0.75], [2.5, -1.25]]))
    torch.testing.assert_close(b.action, torch.zeros(2, 2, 1))  # 0.5 in box [0, 1] -> 0
    torch.testing.assert_close(b.valid_mask, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(b.discount, torch.tensor([0.25, 0.25]))


def test_replay_state_dict_round_trip_and_errors():
    rb = _rb(capacity=3)
    _add(rb, [0, 1, 2, 3])
    state = rb.state_dict()
    rb2 = _rb(capacity=3)
    rb2.load_state_dict(state)
    assert len(rb2) == 3 and rb2.num_added == 4
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(rb.sample(8, g1).reward.sort().values, rb2.sample(8, g2).reward.sort().values)
    small = _rb(capacity=2)
    small.load_state_dict(state)
    np.testing.assert_array_equal(small.state_dict()["reward"], [2, 3])
    with pytest.raises(CheckpointError, match="obs"):
        ReplayBuffer(3, 3, 2, 1, identity_normalizer(3)).load_state_dict(state)
    with pytest.raises(TrainingError, match="empty"):
        _rb().sample(4)
    with pytest.raises(TrainingError, match="chunk"):
        _rb().add(np.zeros((1, 2)), np.zeros((1, 3, 1)), [0], np.zeros((1, 2)), [0], [1], [1])
    with pytest.raises(TrainingError, match="NaN"):
        _rb().add(np.full((1, 2), np.nan), np.zeros((1, 2, 1)), [0], np.zeros((1, 2)), [0], [1], [1])


def _nrb(capacity: int, n_step: int = 3) -> ReplayBuffer:
    return ReplayBuffer(
        capacity, obs_dim=2, act_horizon=2, action_dim=1, normalizer=identity_normalizer(), n_step=n_step
    )


def _add_rows(rb: ReplayBuffer, rows: list[tuple]) -> None:
    """rows of (stream, reward, terminated, done); obs = (reward, 0), next_obs = (reward, 1), discount 0.5."""
    r = np.array([row[1] for row in rows], np.float32)
    rb.add(
        np.stack([r, 0 * r], 1),
        np.zeros((len(rows), 2, 1), np.float32),
        r,
        np.stack([r, 1 + 0 * r], 1),
        np.array([row[2] for row in rows], np.float32),
        np.full(len(rows), 0.5, np.float32),
        np.full(len(rows), 2),
        stream=[row[0] for row in rows],
        done=[row[3] for row in rows],
    )


def test_replay_n_step_targets_follow_each_envs_episode():
    rb = _nrb(capacity=10)
    _add_rows(rb, [(0, 1, 0, 0), (1, 10, 0, 0)])  # slots 0, 1
    _add_rows(rb, [(0, 2, 0, 1), (1, 20, 0, 0)])  # slots 2, 3: stream 0's episode is cut by a time limit
    _add_rows(rb, [(0, 3, 0, 0), (1, 30, 1, 1)])  # slots 4, 5: stream 0 starts anew, stream 1 terminates
    _add_rows(rb, [(1, 40, 0, 0)])  # slot 6: stream 1 starts anew
    _add_rows(rb, [(0, 4, 0, 0)])  # slot 7
    b = rb.n_step_batch(torch.arange(8))
    # 1 + .5*2 (the time limit ends the chain); 10 + .5*20 + .25*30; 2; 20 + .5*30 (termination ends it); 3 + .5*4
    torch.testing.assert_close(b.reward, torch.tensor([2.0, 27.5, 2.0, 35.0, 5.0, 30.0, 40.0, 4.0]))
    torch.testing.assert_close(b.discount, torch.tensor([0.25, 0.125, 0.5, 0.25, 0.25, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(b.terminated, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(b.next_obs[:, 0], torch.tensor([2.0, 30.0, 2.0, 30.0, 4.0, 30.0, 40.0, 4.0]))
    torch.testing.assert_close(b.obs[:, 0], torch.tensor([1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 40.0, 4.0]))
    one = rb.get(torch.arange(8))
    torch.testing.assert_close(b.action, one.action)
    torch.testing.assert_close(b.valid_mask, one.valid_mask)
    _add_rows(rb, [(0, 5, 0, 0)])  # stream 0's open chain grows: 3 + .5*4 + .25*5
    torch.testing.assert_close(rb.n_step_batch(torch.tensor([4])).reward, torch.tensor([6.25]))
    drawn = rb.sample(64, torch.Generator().manual_seed(0))
    assert set(drawn.reward.tolist()) <= {2.0, 27.5, 35.0, 6.25, 30.0, 40.0, 6.5, 5.0}


def test_replay_n_step_links_survive_wrap_around_and_state_round_trip():
    rb = _nrb(capacity=3)
    for r in range(1, 6):
        _add_rows(rb, [(0, r, 0, 0)])  # slots hold 4, 5, 3: the chain 3 -> 4 -> 5 wraps around
    torch.testing.assert_close(rb.n_step_batch(torch.tensor([2, 0, 1])).reward, torch.tensor([6.25, 6.5, 5.0]))
    same, small = _nrb(capacity=3), _nrb(capacity=2)
    same.load_state_dict(rb.state_dict())
    small.load_state_dict(rb.state_dict())  # keeps 4 and 5, still linked
    for other in (same, small):
        other_b, b = other.n_step_batch(other._chronological()), rb.n_step_batch(rb._chronological())
        torch.testing.assert_close(other_b.reward, b.reward[-len(other) :])
    for buf in (rb, same, small):  # the open episode goes on after a resume
        _add_rows(buf, [(0, 6, 0, 0)])
    torch.testing.assert_close(same.n_step_batch(same._chronological()).reward, torch.tensor([8.0, 8.0, 6.0]))
    torch.testing.assert_close(rb.n_step_batch(rb._chronological()).reward, torch.tensor([8.0, 8.0, 6.0]))
    torch.testing.assert_close(small.n_step_batch(small._chronological()).reward, torch.tensor([8.0, 6.0]))
    state = rb.state_dict()
    del state["succ_offset"], state["open_streams"]  # a checkpoint from before n-step targets: nothing linked
    old = _nrb(capacity=3)
    old.load_state_dict(state)
    torch.testing.assert_close(old.n_step_batch(old._chronological()).reward, torch.tensor([4.0, 5.0, 6.0]))
    rb.end_episodes()  # several envs resumed: every env starts a new episode
    _add_rows(rb, [(0, 7, 0, 0)])
    assert rb.n_step_batch(rb._chronological()).reward[-2:].tolist() == [6.0, 7.0]
    with pytest.raises(ConfigError, match="n_step"):
        _nrb(capacity=3, n_step=0)
    with pytest.raises(TrainingError, match="distinct streams"):
        _add_rows(rb, [(0, 1, 0, 0), (0, 2, 0, 0)])


# ---------------- mixer ----------------


def _mixer(ratio: float, n_online: int = 3) -> MixedSampler:
    ds = ChunkDataset([episode_truncated(), episode_terminal()], 2, 0.5, normalizer=identity_normalizer())
    rb = _rb(capacity=10)
    if n_online:
        _add(rb, [1000 + i for i in range(n_online)])  # online rewards >= 1000, offline rewards < 10
    return MixedSampler(ds, rb, ratio)


@pytest.mark.parametrize("ratio,batch,n_off", [(0.5, 256, 128), (0.5, 7, 4), (0.25, 10, 2), (0.0, 16, 0), (1.0, 9, 9)])
def test_mixer_fractions_exact(ratio, batch, n_off):
    b = _mixer(ratio).sample(batch, torch.Generator().manual_seed(0))
    assert b.batch_size == batch
    is_online = b.reward >= 1000
    assert int((~is_online).sum()) == n_off == round(ratio * batch)
    assert not is_online[:n_off].any() and is_online[n_off:].all()  # offline rows first


def test_mixer_empty_online_and_errors():
    b = _mixer(0.5, n_online=0).sample(12)
    assert b.batch_size == 12 and (b.reward < 1000).all()
    with pytest.raises(ConfigError, match="offline dataset"):
        MixedSampler(None, _rb(), 0.5)
    with pytest.raises(ConfigError, match="offline_ratio"):
        MixedSampler(None, _rb(), 1.5)
    with pytest.raises(TrainingError, match="empty"):
        MixedSampler(None, _rb(), 0.0).sample(4)
    online_only = MixedSampler(None, _rb(), 0.0)
    _add(online_only.online, [1000])
    assert (online_only.sample(5).reward == 1000).all()


def test_mixer_deterministic_under_generator():
    m = _mixer(0.5)
    b1, b2 = m.sample(32, torch.Generator().manual_seed(7)), m.sample(32, torch.Generator().manual_seed(7))
    for name in vars(b1):
        torch.testing.assert_close(getattr(b1, name), getattr(b2, name))
