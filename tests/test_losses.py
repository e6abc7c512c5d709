"""Hand-computed checks of the shared loss functions (rlft/algos/losses.py) on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algos.losses import (
    action_anchor_loss,
    expectile_loss,
    iql_value_loss,
    iql_weights,
    metrics_to_floats,
    prefixed,
    sac_actor_loss,
    sac_critic_target,
    td_loss,
    td_target,
    temperature_loss,
)
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError

torch.set_num_threads(1)  # small ops: more threads only add OpenMP overhead on a shared 2-core machine
T = torch.tensor


def test_expectile_loss_weighs_positive_residuals_by_tau():
    # u = +2 -> 0.7 * 4 = 2.8 ; u = -1 -> 0.3 * 1 = 0.3 ; mean = 1.55
    assert expectile_loss(T([2.0, -1.0]), 0.7).item() == pytest.approx(1.55)
    # only negative residuals: weight 1 - tau
    assert expectile_loss(T([-2.0]), 0.9).item() == pytest.approx(0.1 * 4.0)
    # tau = 0.5 is half the MSE
    d = T([1.0, -3.0, 0.5])
    assert expectile_loss(d, 0.5).item() == pytest.approx(0.5 * d.square().mean().item())


def test_expectile_regression_converges_to_upper_expectile():
    # minimising over a scalar v: for tau > 0.5 the optimum lies above the mean of the samples
    q = T([0.0, 1.0, 2.0, 10.0])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(150):
        opt.zero_grad()
        expectile_loss(q - v, 0.9).backward()
        opt.step()
    # first-order condition: 0.9 * sum_{q>v}(q - v) = 0.1 * sum_{q<v}(v - q); with v in (2, 10):
    # 0.9 (10 - v) = 0.1 (3v - 3)  ->  9 - 0.9 v = 0.3 v - 0.3  ->  v = 9.3 / 1.2 = 7.75
    assert v.item() == pytest.approx(7.75, abs=1e-3)


def test_iql_value_loss_info():
    loss, info = iql_value_loss(T([1.0, 0.0]), T([0.0, 1.0]), 0.7)  # diffs +1, -1 -> (0.7 + 0.3) / 2
    assert loss.item() == pytest.approx(0.5)
    assert info["value_loss"].item() == pytest.approx(0.5)
    assert info["v_mean"].item() == pytest.approx(0.5)


def test_iql_weights_exp_and_clip():
    w = iql_weights(T([0.0, 1.0, -1.0, 10.0, 1e6]), beta=1.0, max_weight=100.0)
    assert w.tolist() == pytest.approx([1.0, math.e, math.exp(-1.0), 100.0, 100.0])
    assert torch.isfinite(w).all()
    assert iql_weights(T([0.5]), beta=3.0, max_weight=100.0).item() == pytest.approx(math.exp(1.5))


def test_td_loss_sums_members_and_reports_stats():
    q = T([[1.0, 2.0], [3.0, 0.0]], requires_grad=True)  # N=2, B=2
    y = T([2.0, 1.0])
    loss, info = td_loss(q, y)
    # member 0: ((1-2)^2 + (2-1)^2)/2 = 1 ; member 1: ((3-2)^2 + (0-1)^2)/2 = 1 ; sum = 2
    assert loss.item() == pytest.approx(2.0)
    assert info["q_mean"].item() == pytest.approx(1.5)
    assert info["q_std"].item() == pytest.approx(1.0)  # population std of (1,3) = 1 and of (2,0) = 1
    assert info["td_error"].item() == pytest.approx(1.0)
    assert info["td_target_mean"].item() == pytest.approx(1.5)
    loss.backward()
    assert q.grad.flatten().tolist() == pytest.approx([-1.0, 1.0, 1.0, -1.0])  # 2 (q - y) / B


def test_sac_critic_target_subset_min_entropy_and_bootstrap():
    next_q = T([[1.0, 5.0], [3.0, 2.0], [0.0, 7.0]])  # N=3, B=2
    logp = T([2.0, -2.0])
    reward = T([1.0, -1.0])
    # chunk of k=2 steps, gamma=0.9 -> discount 0.81; second transition terminated -> no bootstrap
    batch = ChunkBatch(
        obs=torch.zeros(2, 1),
        action=torch.zeros(2, 2, 1),
        reward=reward,
        next_obs=torch.zeros(2, 1),
        terminated=T([0.0, 1.0]),
        discount=T([0.81, 0.81]),
        valid_mask=torch.ones(2, 2),
        is_offline=torch.ones(2),
    )
    assert batch.bootstrap.tolist() == pytest.approx([0.81, 0.0])
    # subset {0, 1}: min = [1, 2]; soft value = min - 0.5 * logp = [0, 3]
    y = sac_critic_target(next_q, logp, reward, batch.bootstrap, 0.5, T([0, 1]))
    assert y.tolist() == pytest.approx([1.0 + 0.81 * 0.0, -1.0])
    # subset {1, 2}: min = [0, 2]; soft = [-1, 3]; y0 = 1 - 0.81
    y = sac_critic_target(next_q, logp, reward, T([0.81, 0.5]), 0.5, T([2, 1]))
    assert y.tolist() == pytest.approx([1.0 - 0.81, -1.0 + 0.5 * 3.0])
    # no subset = min over all members [0, 2]; alpha = 0 drops the entropy term
    y = sac_critic_target(next_q, logp, reward, T([1.0, 1.0]), 0.0, None)
    assert y.tolist() == pytest.approx([1.0, 1.0])


def test_sac_actor_loss_uses_mean_over_members():
    q_pi = T([[1.0, 2.0], [3.0, 4.0]])  # mean over members = [2, 3]
    logp = T([1.0, -1.0])
    loss, info = sac_actor_loss(q_pi, logp, 0.5)
    # mean(0.5 * [1, -1] - [2, 3]) = mean([-1.5, -3.5]) = -2.5
    assert loss.item() == pytest.approx(-2.5)
    assert info["actor_q"].item() == pytest.approx(2.5)
    assert info["entropy"].item() == pytest.approx(0.0)


def test_sac_actor_loss_with_min_over_members():
    q_pi = T([[1.0, 5.0], [3.0, 4.0]])  # min over members = [1, 4]
    loss, info = sac_actor_loss(q_pi, T([1.0, -1.0]), 0.5, agg="min")
    # mean(0.5 * [1, -1] - [1, 4]) = mean([-0.5, -4.5]) = -2.5
    assert loss.item() == pytest.approx(-2.5)
    assert info["actor_q"].item() == pytest.approx(2.5)
    with pytest.raises(ConfigError, match="q_agg"):
        sac_actor_loss(q_pi, T([1.0, -1.0]), 0.5, agg="max")


def test_action_anchor_loss_is_the_mean_squared_step_norm():
    mean_action = T([[[0.5, -0.5], [1.0, 0.0]], [[0.0, 0.0], [0.2, 0.0]]])  # [B=2, H=2, A=2]
    loss, info = action_anchor_loss(mean_action)
    # per step: 0.25 + 0.25 = 0.5, 1.0, 0.0, 0.04 -> mean over (b, h) = 1.54 / 4
    assert loss.item() == pytest.approx(1.54 / 4)
    assert info["action_anchor"].item() == pytest.approx(1.54 / 4)


@pytest.mark.parametrize("entropy, target, alpha_should", [(-10.0, -5.0, "rise"), (0.0, -5.0, "fall")])
def test_temperature_loss_sign(entropy, target, alpha_should):
    log_alpha = torch.zeros((), requires_grad=True)
    logp = torch.full((4,), -entropy)
    loss, info = temperature_loss(log_alpha, logp, target)
    # L = -log_alpha * (logp + target): value at log_alpha = 0 is 0; gradient = -(mean logp + target)
    assert loss.item() == pytest.approx(0.0)
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(entropy - target)
    opt = torch.optim.SGD([log_alpha], lr=0.1)
    opt.step()
    assert (log_alpha.item() > 0) == (alpha_should == "rise")
    assert info["temperature"].item() == pytest.approx(1.0)
    assert info["target_entropy"].item() == pytest.approx(target)


def test_chunk_discount_convention_in_iql_target():
    # a 3-step chunk with rewards r0, r1, r2 = -1, -1, 0 and gamma 0.9 stored as the discounted sum and gamma^3
    g = 0.9
    reward = T([-1.0 + g * -1.0 + g**2 * 0.0, -1.0])
    discount = T([g**3, g**1])  # second chunk was cut short after k=1 step by a time-limit truncation
    batch = ChunkBatch(
        obs=torch.zeros(2, 1),
        action=torch.zeros(2, 3, 1),
        reward=reward,
        next_obs=torch.zeros(2, 1),
        terminated=T([0.0, 0.0]),
        discount=discount,
        valid_mask=T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
        is_offline=torch.ones(2),
    )
    next_v = T([-5.0, -5.0])
    y = td_target(batch.reward, batch.bootstrap, next_v)
    assert y.tolist() == pytest.approx([-1.9 + 0.729 * -5.0, -1.0 + 0.9 * -5.0])  # truncation still bootstraps
    batch.terminated = T([1.0, 0.0])
    y = td_target(batch.reward, batch.bootstrap, next_v)
    assert y[0].item() == pytest.approx(-1.9)  # termination: no bootstrap


def test_metric_helpers():
    m = prefixed("critic", {"q_mean": T(1.5), "alpha/x": 2.0})
    assert set(m) == {"critic/q_mean", "alpha/x"}
    out = metrics_to_floats({"a": T(1.0), "b": 2, "c": T(3.0, dtype=torch.float64)})
    assert out == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert all(type(v) is float for v in out.values())


# ---------------------------------------------------------------------------------------------------------------
# the same losses inside their algorithms, on tiny problems with a known answer
# ---------------------------------------------------------------------------------------------------------------
def _bandit_batch(n: int, good: float, gen: torch.Generator, obs_dim: int = 3, horizon: int = 2) -> ChunkBatch:
    """One-step problem: reward = -sum (a - good)^2 over the chunk, always terminated (y = r)."""
    action = torch.rand(n, horizon, 1, generator=gen) * 1.8 - 0.9
    return ChunkBatch(
        obs=torch.randn(n, obs_dim, generator=gen),
        action=action,
        reward=-(action - good).square().sum((1, 2)),
        next_obs=torch.randn(n, obs_dim, generator=gen),
        terminated=torch.ones(n),
        discount=torch.full((n,), 0.99),
        valid_mask=torch.ones(n, horizon),
        is_offline=torch.ones(n),
    )


def _small(cls, **kw):
    from rlft.policies.config import PolicyConfig

    cfg = cls.Config(policy=PolicyConfig(hidden_dims=(32, 32)), critic_hidden_dims=(32, 32), **kw)
    return cls(cfg, 3, 1, 2)


def test_sac_finds_the_bandit_optimum():
    from rlft.algos import ALGORITHMS

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    sac = _small(ALGORITHMS["sac"], num_critics=4, critic_subset=2, actor_update_every=1, critic_lr=3e-3, actor_lr=3e-3)
    for _ in range(300):
        m = sac.update(_bandit_batch(128, 0.5, gen))
    a = sac.policy.sample(torch.randn(256, 3, generator=gen))  # the policy starts near a = 0
    assert abs(a.mean().item() - 0.5) < 0.2, a.mean().item()  # (a tiny critic after 300 steps: not exact)
    assert m["critic/td_error"] < 0.2


def test_sac_action_anchor_moves_the_optimum_towards_zero():
    # Q(a) = -sum_h (a_h - 0.5)^2 and the anchor adds lam * mean_h a_h^2 to the actor loss, so per step the actor
    # maximises -(a - 0.5)^2 - lam * a^2 / H: a* = 1 / (2 + 2 * lam / H) = 0.25 for lam = 2, H = 2 (0.5 without it).
    from rlft.algos import ALGORITHMS

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    sac = _small(
        ALGORITHMS["sac"],
        actor_update_every=1,
        critic_lr=3e-3,
        actor_lr=3e-3,
        learn_temperature=False,
        init_temperature=1e-3,
        action_anchor=2.0,
    )
    for _ in range(300):
        m = sac.update(_bandit_batch(128, 0.5, gen))
    a = sac.policy.sample(torch.randn(256, 3, generator=gen), deterministic=True)
    assert abs(a.mean().item() - 0.25) < 0.08, a.mean().item()
    assert m["actor/action_anchor"] == pytest.approx(a.pow(2).mean().item(), abs=0.05)
    with pytest.raises(ConfigError, match="action_anchor"):
        _small(ALGORITHMS["sac"], action_anchor=-1.0)


@pytest.mark.parametrize("agg", ["mean", "min"])
def test_sac_actor_objective_aggregates_the_critics_as_configured(agg):
    # one update, replayed by hand: the actor's Q is the mean (RLPD) or the min (SAC) over the two critics of the
    # critics after their step, at the action the pre-update policy samples after the target's next-state sample
    import copy

    from rlft.algos import ALGORITHMS

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    sac = _small(ALGORITHMS["sac"], num_critics=2, critic_subset=2, actor_update_every=1, actor_q_agg=agg)
    for _ in range(20):  # critics that disagree somewhat
        sac.update(_bandit_batch(64, 0.5, gen))
    batch = _bandit_batch(64, 0.5, gen)
    policy_before = copy.deepcopy(sac.policy)
    torch.manual_seed(1)
    m = sac.update(batch)
    torch.manual_seed(1)
    with torch.no_grad():
        policy_before.rsample_log_prob(batch.next_obs)  # the target's draw comes first
        action, _ = policy_before.rsample_log_prob(batch.obs)
        q = sac.critic(batch.obs, action)  # [2, B]
    expected = q.min(dim=0).values if agg == "min" else q.mean(dim=0)
    assert m["actor/actor_q"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert (q[0] - q[1]).abs().mean() > 1e-3  # the two aggregations differ on this batch


def test_iql_prefers_the_better_dataset_action():
    # data: half the chunks take a = +0.5 (reward 0), half a = -0.5 (reward -1); BC would average them to ~0
    from rlft.algos import ALGORITHMS

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    iql = _small(ALGORITHMS["iql"], expectile=0.7, beta=3.0, critic_lr=3e-3, value_lr=3e-3, actor_lr=3e-3)
    for _ in range(300):
        b = _bandit_batch(128, 0.5, gen)
        b.action = torch.where(torch.rand(128, 1, 1, generator=gen) < 0.5, 0.5, -0.5).expand(-1, 2, 1).contiguous()
        b.reward = -(b.action - 0.5).abs().mean((1, 2))
        m = iql.update(b)
    a = iql.policy.sample(torch.randn(64, 3, generator=gen), deterministic=True)
    assert a.mean().item() > 0.3, a.mean().item()
    assert m["critic/v_mean"] > -0.5  # the 0.7-expectile lies above the mean Q (-0.5)
    assert m["actor/iql_weights_max"] > 1.0  # positive advantages exist (the good action)


@pytest.mark.parametrize("impl", ["loop", "batched"])
def test_critic_subset_forward_equals_indexing_the_full_ensemble(impl):
    from rlft.nets.ensemble import CriticEnsemble

    torch.manual_seed(0)
    critic = CriticEnsemble(4, 6, num_critics=5, hidden_dims=(16, 16), layernorm=True, impl=impl)
    obs, act = torch.randn(7, 4), torch.randn(7, 3, 2)
    idx = T([3, 1])
    full = critic(obs, act)
    assert full.shape == (5, 7)
    torch.testing.assert_close(critic(obs, act, members=idx), full[idx])
    # and the pure target function's own subset indexing agrees with evaluating only the subset
    logp, r, boot = torch.randn(7), torch.randn(7), torch.rand(7)
    torch.testing.assert_close(
        sac_critic_target(full, logp, r, boot, 0.2, idx), sac_critic_target(full[idx], logp, r, boot, 0.2)
    )


def test_sac_target_entropy_rule():
    from rlft.algos import ALGORITHMS

    sac_cls = ALGORITHMS["sac"]
    dim = 2 * 1  # act_horizon 2 x action_dim 1 in _small
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = _small(sac_cls, target_entropy_from_policy=False).update(_bandit_batch(64, 0.5, gen))
    assert m["alpha/target_entropy"] == pytest.approx(-0.5 * dim)
    sac = _small(sac_cls, target_entropy_per_dim=-2.0, target_entropy_from_policy=False)
    m = sac.update(_bandit_batch(64, 0.5, gen))
    assert m["alpha/target_entropy"] == pytest.approx(-2.0 * dim)
    m = _small(sac_cls, target_entropy=-7.5).update(_bandit_batch(64, 0.5, gen))
    assert m["alpha/target_entropy"] == pytest.approx(-7.5)
    # default: capped by the starting policy's entropy, measured on the first update's batch
    sac = _small(sac_cls, target_entropy_per_dim=10.0)  # a cap no policy reaches -> the policy's entropy is used
    m = sac.update(_bandit_batch(64, 0.5, gen))
    assert m["alpha/target_entropy"] == pytest.approx(m["actor/entropy"], rel=1e-5)
    assert sac.temperature.target_entropy == pytest.approx(m["actor/entropy"], rel=1e-5)  # fixed from then on
    m2 = sac.update(_bandit_batch(64, 0.5, gen))
    assert m2.get("alpha/target_entropy", sac.temperature.target_entropy) == pytest.approx(m["alpha/target_entropy"])
