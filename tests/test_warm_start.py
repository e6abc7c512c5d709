"""Warm-starting one algorithm's networks from another's state (the pipeline's critic hand-off)."""

from __future__ import annotations

import pytest
import torch

from rlft.algos import get_algorithm
from rlft.data.batch import ChunkBatch
from rlft.nets.ensemble import CriticEnsemble

O, A, H = 6, 2, 3


def _algo(name, **cfg):
    cls = get_algorithm(name)
    torch.manual_seed(0)
    return cls(cls.Config(**cfg), O, A, H)


@pytest.mark.parametrize("impl", ["loop", "batched"])
def test_load_cycled_fills_a_larger_ensemble_member_by_member(impl):
    torch.manual_seed(0)
    small = CriticEnsemble(O, H * A, num_critics=2, hidden_dims=(16,), impl=impl)
    big = CriticEnsemble(O, H * A, num_critics=5, hidden_dims=(16,), impl=impl)
    assert big.load_cycled(small.state_dict())
    obs, act = torch.randn(4, O), torch.randn(4, H, A)
    qs, qb = small(obs, act), big(obs, act)
    for i in range(5):
        torch.testing.assert_close(qb[i], qs[i % 2])
    other = CriticEnsemble(O, H * A, num_critics=2, hidden_dims=(32,), impl=impl)
    before = {k: v.clone() for k, v in big.state_dict().items()}
    assert not big.load_cycled(other.state_dict())  # incompatible widths: nothing changes
    assert all(torch.equal(before[k], v) for k, v in big.state_dict().items())


def test_sac_warm_starts_critics_from_iql_but_not_the_policy():
    iql = _algo("iql", critic_hidden_dims=(32, 32))
    batch = ChunkBatch.random(16, O, H, A, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        iql.update(batch)
    sac = _algo("sac", num_critics=4, critic_subset=2, critic_hidden_dims=(32, 32))
    policy_before = {k: v.clone() for k, v in sac.policy.state_dict().items()}
    loaded = sac.load_pretrained(iql.state_dict())
    assert set(loaded) == {"critic", "target_critic"}
    q_iql = iql.critic(batch.obs, batch.action)
    q_sac = sac.critic(batch.obs, batch.action)
    for i in range(4):
        torch.testing.assert_close(q_sac[i], q_iql[i % 2])
    assert all(torch.equal(policy_before[k], v) for k, v in sac.policy.state_dict().items())


def _online_update(algo, batch, env_step):
    """The updates the online loop runs after collecting ``env_step`` env steps (one replay row stands in)."""
    return [algo.update(b) for b in algo.online_batches([batch], lambda: batch, env_step)]


def test_sac_actor_warmup_freezes_actor_and_explore_scale_shrinks_noise():
    sac = _algo("sac", num_critics=2, utd_ratio=1, warmup_steps=1, actor_warmup_steps=2, explore_noise_scale=0.0)
    batch = ChunkBatch.random(16, O, H, A, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in sac.policy.state_dict().items()}
    assert _online_update(sac, batch, 0) == []  # before warmup_steps: no update at all
    for step in (1, 2):
        (m,) = _online_update(sac, batch, step)
        assert "actor/actor_loss" not in m and "critic/critic_loss" in m
    assert all(torch.equal(before[k], v) for k, v in sac.policy.state_dict().items())
    assert "actor/actor_loss" in _online_update(sac, batch, 3)[0]
    obs = torch.randn(O)
    # scale 0 -> the tanh of the mean, i.e. the deterministic action
    torch.testing.assert_close(sac.explore(obs), sac.policy.act(obs, deterministic=True))


@pytest.mark.parametrize("utd", [1, 3])
def test_sac_actor_warmup_counts_env_steps_whatever_the_update_rate(utd):
    sac = _algo("sac", num_critics=2, utd_ratio=utd, warmup_steps=5, actor_warmup_steps=4, actor_update_every=1)
    batch = ChunkBatch.random(16, O, H, A, generator=torch.Generator().manual_seed(2))
    moved = [any("actor/actor_loss" in m for m in _online_update(sac, batch, step)) for step in range(12)]
    assert moved == [False] * 9 + [True] * 3  # the actor's first update at env step 5 + 4, at UTD 1 as at UTD 3
    assert sac.num_updates == 7 * utd


def test_sac_offline_updates_have_no_actor_warmup():
    sac = _algo("sac", num_critics=2, actor_warmup_steps=100, actor_update_every=1)
    batch = ChunkBatch.random(16, O, H, A, generator=torch.Generator().manual_seed(2))
    assert "actor/actor_loss" in sac.update(batch)


@pytest.mark.parametrize("name", ["cql", "calql"])
def test_cql_actor_warmup_freezes_actor_and_temperature(name):
    algo = _algo(name, warmup_steps=0, actor_warmup_steps=2, cql_num_samples=2, critic_hidden_dims=(16,))
    batch = ChunkBatch.random(16, O, H, A, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in algo.policy.state_dict().items()}
    critic_before = {k: v.clone() for k, v in algo.critic.state_dict().items()}
    alpha = float(algo.temperature.alpha)
    for step in range(2):
        for m in _online_update(algo, batch, step):
            assert "actor/actor_loss" not in m and "critic/cql_penalty" in m
    assert all(torch.equal(before[k], v) for k, v in algo.policy.state_dict().items())
    assert float(algo.temperature.alpha) == alpha
    assert not all(torch.equal(critic_before[k], v) for k, v in algo.critic.state_dict().items())
    assert "actor/actor_loss" in _online_update(algo, batch, 2)[0]
    assert not all(torch.equal(before[k], v) for k, v in algo.policy.state_dict().items())


def test_sac_bc_anchor_uses_offline_rows_only():
    sac = _algo("sac", num_critics=2, bc_coef=1.0, actor_update_every=1)
    batch = ChunkBatch.random(16, O, H, A, generator=torch.Generator().manual_seed(3))
    batch.is_offline = torch.zeros(16)
    assert sac.update(batch)["actor/bc_loss"] == 0.0
    batch.is_offline = torch.ones(16)
    assert sac.update(batch)["actor/bc_loss"] != 0.0
