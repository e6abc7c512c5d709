"""Hand-computed checks of the Gaussian-actor offline RL losses (AWAC, CQL, Cal-QL, TD3+BC, AWR, offline SAC) and of
``mc_return`` (the Monte-Carlo return-to-go Cal-QL bounds with), on tiny tensors; plus tiny known-answer problems."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlft.algos import ALGORITHMS
from rlft.data.batch import ChunkBatch
from rlft.policies.config import PolicyConfig

torch.set_num_threads(1)  # small ops: more threads only add OpenMP overhead on a shared 2-core machine
T = torch.tensor


def _batch(n: int, obs_dim: int, horizon: int, gen: torch.Generator, action=None, reward=None) -> ChunkBatch:
    """A terminated one-step batch (y = r): obs random, actions given or uniform in [-0.9, 0.9]."""
    if action is None:
        action = torch.rand(n, horizon, 1, generator=gen) * 1.8 - 0.9
    return ChunkBatch(
        obs=torch.randn(n, obs_dim, generator=gen),
        action=action,
        reward=reward if reward is not None else torch.zeros(n),
        next_obs=torch.randn(n, obs_dim, generator=gen),
        terminated=torch.ones(n),
        discount=torch.full((n,), 0.99),
        valid_mask=torch.ones(n, horizon),
        is_offline=torch.ones(n),
    )


def _two_action_batch(n: int, gen: torch.Generator, obs_dim: int = 3, horizon: int = 2) -> ChunkBatch:
    """Half the chunks take a = +0.5 (reward 0), half a = -0.5 (reward -1): BC averages them to ~0."""
    a = torch.where(torch.rand(n, 1, 1, generator=gen) < 0.5, 0.5, -0.5).expand(-1, horizon, 1).contiguous()
    return _batch(n, obs_dim, horizon, gen, action=a, reward=-(a - 0.5).abs().mean((1, 2)))


def _small(name: str, kind: str = "gaussian", **kw):
    cls = ALGORITHMS[name]
    cfg = cls.Config(policy=PolicyConfig(kind=kind, hidden_dims=(32, 32), flow_steps=3), **kw)
    for f in ("critic_hidden_dims", "value_hidden_dims"):
        if hasattr(cfg, f):
            setattr(cfg, f, (32, 32))
    return cls(cfg, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------------
# TD3+BC
# ---------------------------------------------------------------------------------------------------------------
def test_td3bc_target_smoothing_clips_noise_then_action():
    from rlft.algos.td3bc import smoothed_target_action

    a = T([0.9, -0.2, 0.0])
    # eps = clip(0.2 * [1, -5, 0.1], -0.5, 0.5) = [0.2, -0.5, 0.02]; then clip(a + eps, -1, 1)
    out = smoothed_target_action(a, T([1.0, -5.0, 0.1]), noise_std=0.2, noise_clip=0.5)
    assert out.tolist() == pytest.approx([1.0, -0.7, 0.02])


def test_td3bc_masked_mse_ignores_padded_steps():
    from rlft.algos.td3bc import masked_mse

    pred = T([[[1.0], [5.0]], [[2.0], [0.0]]])  # B=2, H=2, A=1
    mask = T([[1.0, 0.0], [1.0, 1.0]])
    # sample 0: only step 0 counts -> 1^2 / 1 = 1 ; sample 1: (4 + 0) / 2 = 2 ; mean 1.5
    assert masked_mse(pred, torch.zeros_like(pred), mask).item() == pytest.approx(1.5)


def test_td3bc_actor_loss_lambda_and_gradient():
    from rlft.algos.td3bc import td3bc_actor_loss

    q = T([2.0, -4.0], requires_grad=True)
    pi = T([[[0.5]], [[0.0]]], requires_grad=True)  # B=2, H=1, A=1
    data = T([[[0.0]], [[1.0]]])
    loss, info = td3bc_actor_loss(q, pi, data, torch.ones(2, 1), alpha=2.5)
    lam = 2.5 / 3.0  # alpha / mean|Q| = 2.5 / ((2 + 4) / 2)
    bc = (0.25 + 1.0) / 2
    assert info["actor_lam"].item() == pytest.approx(lam)
    assert info["bc_loss"].item() == pytest.approx(bc)
    assert info["actor_q"].item() == pytest.approx(-1.0)
    assert loss.item() == pytest.approx(-lam * -1.0 + bc)
    loss.backward()
    assert q.grad.tolist() == pytest.approx([-lam / 2, -lam / 2])  # lambda is a constant (detached)
    assert pi.grad.flatten().tolist() == pytest.approx([2 * 0.5 / 2, 2 * -1.0 / 2])


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_td3bc_deterministic_actor_is_differentiable(kind):
    torch.manual_seed(0)
    algo = _small("td3bc", kind)
    a = algo.policy.sample(torch.randn(4, 3), deterministic=True)
    a.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.policy.parameters())


def test_td3bc_delays_actor_and_target_updates():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    algo = _small("td3bc", policy_delay=2)
    m0 = algo.update(_batch(16, 3, 2, gen))  # update 0: critic + actor + targets
    assert "actor/actor_lam" in m0 and "critic/critic_loss" in m0
    targets = [p.clone() for p in algo.target_critic.parameters()]
    actor = [p.clone() for p in algo.policy.parameters()]
    m1 = algo.update(_batch(16, 3, 2, gen))  # update 1: critic only
    assert not any(k.startswith("actor/") for k in m1)
    assert all(torch.equal(a, b) for a, b in zip(targets, algo.target_critic.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(actor, algo.policy.parameters()))
    m2 = algo.update(_batch(16, 3, 2, gen))
    assert "actor/actor_lam" in m2
    assert not all(torch.equal(a, b) for a, b in zip(targets, algo.target_critic.parameters()))


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_td3bc_prefers_the_better_dataset_action(kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    algo = _small("td3bc", kind, alpha=10.0, policy_delay=1, critic_lr=3e-3, actor_lr=3e-3)
    for _ in range(120):
        m = algo.update(_two_action_batch(64, gen))
    a = algo.policy.sample(torch.randn(64, 3, generator=gen), deterministic=True)
    assert a.mean().item() > 0.2, a.mean().item()  # BC alone gives ~0
    assert m["actor/actor_lam"] > 0


# ---------------------------------------------------------------------------------------------------------------
# AWR
# ---------------------------------------------------------------------------------------------------------------
def test_awr_return_target_td_and_mc_with_fallback():
    from rlft.algos.awr import awr_return_target

    reward, boot, next_v = T([1.0, 2.0]), T([0.5, 0.0]), T([4.0, 10.0])
    mc = T([float("-inf"), 7.0])
    assert awr_return_target(reward, boot, next_v, mc, "td").tolist() == pytest.approx([3.0, 2.0])
    # 'mc': the Monte-Carlo return where known, the TD target where it is -inf (unknown)
    assert awr_return_target(reward, boot, next_v, mc, "mc").tolist() == pytest.approx([3.0, 7.0])


def test_awr_value_loss_and_weights():
    from rlft.algos.awr import awr_value_loss, awr_weights

    loss, info = awr_value_loss(T([1.0, 2.0]), T([3.0, 2.0]))  # ((1-3)^2 + 0) / 2
    assert loss.item() == pytest.approx(2.0)
    assert info["v_mean"].item() == pytest.approx(1.5) and info["td_target_mean"].item() == pytest.approx(2.5)
    w, info = awr_weights(T([0.0, 1.0, 100.0, -1.0]), temperature=2.0, max_weight=20.0)
    expect = [1.0, math.exp(0.5), 20.0, math.exp(-0.5)]
    assert w.tolist() == pytest.approx(expect)
    assert info["awr_weights_mean"].item() == pytest.approx(sum(expect) / 4)
    assert info["awr_weights_max"].item() == pytest.approx(20.0)
    assert info["awr_advantage_mean"].item() == pytest.approx(25.0)


def test_awr_mc_value_target_regresses_on_mc_return():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    algo = _small("awr", value_target="mc", value_lr=3e-3)
    for _ in range(150):
        b = _batch(64, 3, 2, gen)
        b.mc_return = torch.full((64,), -3.0)  # reward 0 and termination would give a TD target of 0
        m = algo.update(b)
    assert m["critic/v_mean"] == pytest.approx(-3.0, abs=0.3)
    assert m["critic/td_target_mean"] == pytest.approx(-3.0)


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_awr_prefers_the_better_dataset_action(kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    algo = _small("awr", kind, temperature=0.2, value_lr=3e-3, actor_lr=3e-3)
    for _ in range(120):
        m = algo.update(_two_action_batch(64, gen))
    a = algo.policy.sample(torch.randn(64, 3, generator=gen), deterministic=True)
    assert a.mean().item() > 0.3, a.mean().item()
    assert m["actor/awr_weights_max"] > 1.0 > m["critic/v_mean"] > -1.0


# ---------------------------------------------------------------------------------------------------------------
# AWAC
# ---------------------------------------------------------------------------------------------------------------
def test_awac_advantage_uses_min_over_critics_and_mean_over_samples():
    from rlft.algos.awac import awac_advantage

    q_data = T([[1.0, 5.0], [2.0, 3.0]])  # N=2, B=2 -> min [1, 3]
    q_pi = T([[[0.0, 2.0], [4.0, 4.0]], [[1.0, 1.0], [2.0, 6.0]]])  # [N=2, B=2, M=2] -> min [[0, 1], [2, 4]]
    # V = mean over samples of the min: [0.5, 3]; A = [1 - 0.5, 3 - 3]
    assert awac_advantage(q_data, q_pi).tolist() == pytest.approx([0.5, 0.0])


def test_awac_weights_softmax_and_exp():
    from rlft.algos.awac import awac_weights

    adv = T([0.0, math.log(3.0)])
    # softmax over the batch times B: exp([0, log 3]) / 4 * 2 = [0.5, 1.5]
    w, info = awac_weights(adv, lam=1.0, max_weight=100.0, normalize="softmax")
    assert w.tolist() == pytest.approx([0.5, 1.5])
    assert info["awr_weights_mean"].item() == pytest.approx(1.0)
    assert info["awr_advantage_mean"].item() == pytest.approx(math.log(3.0) / 2)
    w, _ = awac_weights(adv, lam=1.0, max_weight=1.2, normalize="softmax")  # clipped after normalising
    assert w.tolist() == pytest.approx([0.5, 1.2])
    w, info = awac_weights(T([2.0, -2.0, 1e4]), lam=2.0, max_weight=10.0, normalize="exp")
    assert w.tolist() == pytest.approx([math.e, math.exp(-1.0), 10.0])
    assert info["awr_weights_max"].item() == pytest.approx(10.0)


def test_awac_entropy_term_needs_a_gaussian():
    from rlft.errors import ConfigError

    with pytest.raises(ConfigError, match="entropy_coef"):
        _small("awac", "flow", entropy_coef=0.1)
    torch.manual_seed(0)
    m = _small("awac", "gaussian", entropy_coef=0.1).update(_batch(16, 3, 2, torch.Generator().manual_seed(0)))
    assert math.isfinite(m["critic/critic_loss"])


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_awac_prefers_the_better_dataset_action(kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    algo = _small("awac", kind, lam=0.1, critic_lr=3e-3, actor_lr=3e-3)
    for _ in range(120):
        m = algo.update(_two_action_batch(64, gen))
    a = algo.policy.sample(torch.randn(64, 3, generator=gen), deterministic=True)
    assert a.mean().item() > 0.3, a.mean().item()
    assert m["actor/awr_weights_max"] > 1.0


# ---------------------------------------------------------------------------------------------------------------
# CQL / Cal-QL
# ---------------------------------------------------------------------------------------------------------------
def _gap_inputs():
    # N=1 critic, B=1 state, M=1 sample per proposal, D=2 chunk dims (uniform density 1/4)
    return dict(
        q_rand=T([[[1.0]]]),
        q_pi=T([[[2.0]]]),
        q_next_pi=T([[[0.0]]]),
        log_prob_pi=T([[0.5]]),
        log_prob_next_pi=T([[-1.0]]),
        q_data=T([[1.5]]),
        log_density_rand=-math.log(4.0),
    )


def test_cql_gap_importance_sampled_logsumexp():
    from rlft.algos.cql import cql_gap

    gap, info = cql_gap(**_gap_inputs())
    # c = [1 + log 4, 0 - (-1), 2 - 0.5] = [1 + log 4, 1, 1.5]; gap = log(4e + e + e^1.5) - 1.5
    lse = math.log(4 * math.e + math.e + math.exp(1.5))
    assert gap.tolist() == pytest.approx([lse - 1.5])
    assert info["cql_lse_mean"].item() == pytest.approx(lse)
    assert info["cql_q_rand_mean"].item() == 1.0 and info["cql_q_pi_mean"].item() == 2.0
    assert "calql_bound_rate" not in info
    # temperature T: T * lse(c / T)
    gap2, _ = cql_gap(**_gap_inputs(), temperature=2.0)
    lse2 = 2.0 * math.log(math.exp((1 + math.log(4.0)) / 2) + math.exp(0.5) + math.exp(0.75))
    assert gap2.item() == pytest.approx(lse2 - 1.5)


def test_cql_gap_gradient_pushes_sampled_values_down_and_data_up():
    from rlft.algos.cql import cql_gap

    inp = _gap_inputs()
    for k in ("q_rand", "q_pi", "q_next_pi", "q_data"):
        inp[k] = inp[k].clone().requires_grad_(True)
    gap, _ = cql_gap(**inp)
    gap.sum().backward()
    c = torch.tensor([1 + math.log(4.0), 1.0, 1.5])
    p = torch.softmax(c, 0)  # d lse / d c
    assert inp["q_rand"].grad.item() == pytest.approx(p[0].item())
    assert inp["q_next_pi"].grad.item() == pytest.approx(p[1].item())
    assert inp["q_pi"].grad.item() == pytest.approx(p[2].item())
    assert inp["q_data"].grad.item() == pytest.approx(-1.0)


def test_calql_bound_applies_to_policy_values_before_the_correction():
    from rlft.algos.cql import cql_gap

    gap, info = cql_gap(**_gap_inputs(), lower_bound=T([3.0]))
    # q_pi 2 -> 3 and q_next 0 -> 3, the uniform sample is not bounded: c = [1 + log 4, 3 + 1, 3 - 0.5]
    lse = math.log(4 * math.e + math.exp(4.0) + math.exp(2.5))
    assert gap.item() == pytest.approx(lse - 1.5)
    assert info["calql_bound_rate"].item() == pytest.approx(1.0)
    assert info["cql_q_pi_mean"].item() == pytest.approx(2.0)  # logged before the bound
    gap_half, info = cql_gap(**_gap_inputs(), lower_bound=T([1.0]))  # raises q_next (0) only
    assert info["calql_bound_rate"].item() == pytest.approx(0.5)
    assert gap_half.item() == pytest.approx(math.log(4 * math.e + math.exp(2.0) + math.exp(1.5)) - 1.5)
    # an unknown reference value (-inf) is no bound at all
    g_inf, _ = cql_gap(**_gap_inputs(), lower_bound=T([float("-inf")]))
    assert g_inf.item() == pytest.approx(cql_gap(**_gap_inputs())[0].item())


def test_cql_penalty_fixed_and_lagrange():
    from rlft.algos.cql import cql_penalty

    gap = T([1.0, 2.0])
    pen, a_loss = cql_penalty(gap, cql_alpha=5.0)
    assert pen.item() == pytest.approx(15.0) and a_loss is None
    alpha_prime = T(2.0, requires_grad=True)
    pen, a_loss = cql_penalty(gap, 5.0, alpha_prime, threshold=4.0)
    # excess = 5 * [1, 2] - 4 = [1, 6]; penalty = 2 * (1 + 6); multiplier loss = -mean(2 * [1, 6])
    assert pen.item() == pytest.approx(14.0)
    assert a_loss.item() == pytest.approx(-7.0)
    a_loss.backward()
    assert alpha_prime.grad.item() == pytest.approx(-3.5)  # descent raises alpha' while the gap exceeds tau


@pytest.mark.parametrize("threshold, should", [(1e3, "fall"), (-1e3, "rise")])
def test_cql_lagrange_multiplier_direction(threshold, should):
    torch.manual_seed(0)
    algo = _small("cql", lagrange=True, lagrange_threshold=threshold, lagrange_lr=0.1)
    before = algo.log_alpha_prime.item()
    m = algo.update(_batch(16, 3, 2, torch.Generator().manual_seed(0)))
    assert (algo.log_alpha_prime.item() > before) == (should == "rise")
    assert m["critic/cql_alpha"] == pytest.approx(5.0)  # 5 * alpha' (alpha' = 1 before the step)
    assert "critic/cql_alpha_loss" in m


def test_calql_equals_cql_without_reference_values():
    # rows with no Monte-Carlo return (-inf: online replay) leave Cal-QL exactly CQL
    gen = torch.Generator().manual_seed(0)
    b = _batch(16, 3, 2, gen)
    assert torch.isinf(b.mc_return).all()  # the ChunkBatch default
    out = {}
    for name in ("cql", "calql"):
        torch.manual_seed(0)
        algo = _small(name)
        torch.manual_seed(1)
        out[name] = algo.update(b)
    assert out["calql"].pop("critic/calql_bound_rate") == 0.0
    assert out["calql"] == out["cql"]


def test_cql_pushes_off_data_values_down_and_calql_bounds_the_push_at_the_mc_return():
    # every data chunk is a = +0.5 with reward 0 and a terminal end (true Q = 0 on the data, MC return 0)
    def run(name):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        algo = _small(name, cql_alpha=5.0, cql_num_samples=4, critic_lr=3e-3, actor_lr=3e-3, init_temperature=1.0)
        for _ in range(80):
            b = _batch(32, 3, 2, gen, action=torch.full((32, 2, 1), 0.5))
            b.mc_return = torch.zeros(32)
            m = algo.update(b)
        return algo, m

    cql, m_cql = run("cql")
    obs = torch.randn(64, 3)
    with torch.no_grad():
        q_data = cql.critic(obs, torch.full((64, 2, 1), 0.5)).mean()
        q_rand = cql.critic(obs, torch.rand(64, 2, 1) * 2 - 1).mean()
    assert q_rand < q_data - 0.5, (q_rand, q_data)  # pushed down off the data
    _, m_calql = run("calql")
    # Cal-QL: below the reference value 0 the bound stops the push-down, so the policy's values stay much higher
    # (measured: about -0.8 vs -3.3 for CQL)
    assert m_calql["critic/calql_bound_rate"] > 0.2
    assert m_calql["critic/cql_q_pi_mean"] > m_cql["critic/cql_q_pi_mean"] + 1.5


# ---------------------------------------------------------------------------------------------------------------
# mc_return (ChunkDataset / ChunkBatch)
# ---------------------------------------------------------------------------------------------------------------
def test_discounted_return_to_go_by_hand():
    from rlft.data.dataset import discounted_return_to_go

    # episode A (time limit): r = [1, 2, 4], gamma 0.5 -> tail 4 / (1 - 0.5) = 8; G = [1 + .5*6, 2 + .5*8, 8]
    # episode B (terminal):   r = [-1, 0]             -> G = [-1 + .5*0, 0]
    r = np.array([1, 2, 4, -1, 0], float)
    term = np.array([0, 0, 0, 0, 1], bool)
    last = np.array([0, 0, 1, 0, 1], bool)
    assert discounted_return_to_go(r, term, last, 0.5).tolist() == pytest.approx([4.0, 6.0, 8.0, -1.0, 0.0])
    # a constant failure reward to the time limit gives r / (1 - gamma) everywhere (Cal-QL's sparse-failure value)
    g = discounted_return_to_go(-np.ones(6), np.zeros(6, bool), np.eye(6, dtype=bool)[5], 0.9)
    assert g.tolist() == pytest.approx([-10.0] * 6)
    # gamma = 1: no tail (it would be infinite)
    assert discounted_return_to_go(r, term, last, 1.0).tolist() == pytest.approx([7.0, 6.0, 4.0, -1.0, 0.0])


def test_chunk_dataset_mc_return_and_batch_default():
    from rlft.data.dataset import ChunkDataset
    from rlft.data.episodes import Episode
    from rlft.data.normalize import Normalizer

    def ep(rewards, terminated):
        n = len(rewards)
        return Episode(
            obs=np.zeros((n + 1, 2), np.float32),
            actions=np.zeros((n, 1), np.float32),
            rewards=np.asarray(rewards, np.float32),
            terminated=np.asarray(terminated, bool),
            truncated=np.asarray([False] * (n - 1) + [not terminated[-1]], bool),
            success=np.zeros(n, bool),
        )

    ds = ChunkDataset(
        [ep([1, 2, 4], [0, 0, 0]), ep([-1, 0], [0, 1])], act_horizon=2, gamma=0.5, normalizer=Normalizer(2, 1, eps=0.0)
    )
    offline = ds.all_starts()
    assert offline.mc_return.tolist() == pytest.approx([4.0, 6.0, 8.0, -1.0, 0.0])  # from each chunk's start
    # a batch built without mc_return (e.g. online replay rows) has -inf: "unknown", no Cal-QL bound
    online = ChunkBatch(
        obs=torch.zeros(2, 2),
        action=torch.zeros(2, 2, 1),
        reward=torch.zeros(2),
        next_obs=torch.zeros(2, 2),
        terminated=torch.zeros(2),
        discount=torch.ones(2),
        valid_mask=torch.ones(2, 2),
        is_offline=torch.zeros(2),
    )
    assert torch.isneginf(online.mc_return).all()
    mixed = ChunkBatch.cat([offline, online]).to("cpu")
    assert mixed.mc_return.shape == (7,) and torch.isneginf(mixed.mc_return[5:]).all()
    rb = ChunkBatch.random(8, 3, 2, 1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(rb.mc_return).all()


def test_td3bc_lambda_seed_form():
    from rlft.algos.td3bc import td3bc_actor_loss

    q = T([2.0, -4.0])
    pi = torch.zeros(2, 1, 1)
    _, info = td3bc_actor_loss(q, pi, pi, torch.ones(2, 1), alpha=2.5, lam_form="bounded")
    assert info["actor_lam"].item() == pytest.approx(2.5 / (2.5 + 3.0))  # 'seed' form: alpha / (alpha + mean|Q|)
    _, info = td3bc_actor_loss(T([100.0]), pi[:1], pi[:1], torch.ones(1, 1), alpha=2.5, lam_form="bounded")
    assert info["actor_lam"].item() == pytest.approx(2.5 / 102.5)  # Q ~ 100 -> lambda ~ 0.02: nearly pure BC


# ---------------------------------------------------------------------------------------------------------------
# offline SAC (sac_offline, docs/algorithms/sac_offline.md)
# ---------------------------------------------------------------------------------------------------------------
def test_sac_offline_pure_pieces():
    from rlft.algos.sac_offline import entropy_bonus, weighted_nll_loss

    nll = T([2.0, 4.0], requires_grad=True)
    loss = weighted_nll_loss(nll, T([0.5, 3.0]))
    assert loss.item() == pytest.approx((1.0 + 12.0) / 2)
    loss.backward()
    assert nll.grad.tolist() == pytest.approx([0.25, 1.5])
    bonus, info = entropy_bonus(T([10.0, 30.0]), 0.1)  # alpha * mean log pi
    assert bonus.item() == pytest.approx(2.0)
    assert info["entropy"].item() == pytest.approx(-20.0)


SEED_METRICS = {
    "sac": {"actor/actor_q", "actor/bc_loss"},
    "td3bc": {"actor/actor_q", "actor/actor_lam", "actor/bc_loss"},
    "awr": {"actor/awr_weights_mean", "actor/awr_weights_max", "actor/awr_advantage_mean", "actor/bc_loss"},
    "iql": {
        "actor/iql_weights_mean",
        "actor/iql_weights_max",
        "actor/iql_advantage_mean",
        "actor/bc_loss",
        "critic/value_loss",
        "critic/v_mean",
    },
}
TEMPERATURE_METRICS = {"alpha/temperature", "alpha/temperature_loss", "alpha/target_entropy", "actor/entropy"}


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
@pytest.mark.parametrize("loss_type", ["sac", "td3bc", "awr", "iql"])
def test_sac_offline_every_actor_loss_with_both_actors(loss_type, kind):
    torch.manual_seed(0)
    algo = _small("sac_offline", kind, actor_loss_type=loss_type)
    before = [p.detach().clone() for p in algo.policy.parameters()]
    m = algo.update(_batch(16, 3, 2, torch.Generator().manual_seed(0)))
    base = {"critic/critic_loss", "critic/q_mean", "critic/q_std", "critic/td_target_mean", "actor/actor_loss"}
    assert base | SEED_METRICS[loss_type] <= set(m)
    if kind == "gaussian":
        assert TEMPERATURE_METRICS <= set(m)
        assert m["alpha/target_entropy"] == pytest.approx(-2.0)  # None = SAC's auto -H*A (H=2, A=1)
    else:  # no tractable entropy: no temperature, no alpha metrics
        assert not any(k.startswith("alpha/") for k in m) and not hasattr(algo, "temperature")
    assert all(math.isfinite(v) for v in m.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.policy.parameters()))


def test_sac_offline_flow_sac_loss_backpropagates_q_through_the_euler_sampler():
    torch.manual_seed(0)
    algo = _small("sac_offline", "flow", flow_bc_coef=0.0)  # pure Q maximisation: only the sampler carries gradient
    before = [p.detach().clone() for p in algo.policy.parameters()]
    algo.update(_batch(16, 3, 2, torch.Generator().manual_seed(0)))
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.policy.parameters()))


def test_sac_offline_target_entropy_and_temperature_feedback():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = _small("sac_offline", target_entropy=-0.5).update(_batch(16, 3, 2, gen))
    assert m["alpha/target_entropy"] == pytest.approx(-0.5)
    # the temperature's positive feedback loop: a target above what the actor's entropy reaches keeps raising alpha
    # under the iql loss
    torch.manual_seed(0)
    algo = _small("sac_offline", actor_loss_type="iql", target_entropy=20.0, temperature_lr=1e-2)
    temps = [algo.update(_batch(16, 3, 2, gen))["alpha/temperature"] for _ in range(20)]
    assert temps[-1] > temps[0] * 1.1 and all(b >= a for a, b in zip(temps, temps[1:]))
    algo = _small("sac_offline", actor_loss_type="iql", target_entropy=20.0, learn_temperature=False)
    assert algo.update(_batch(16, 3, 2, gen))["alpha/temperature"] == pytest.approx(1.0)


def test_sac_offline_value_backup_and_config_errors():
    from rlft.errors import ConfigError

    with pytest.raises(ConfigError, match="critic_backup"):
        _small("sac_offline", actor_loss_type="awr", critic_backup="value")
    with pytest.raises(ConfigError, match="actor_loss_type"):
        _small("sac_offline", actor_loss_type="bc")
    torch.manual_seed(0)
    algo = _small("sac_offline", actor_loss_type="iql", critic_backup="value")
    last = [m for m in algo.value.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        for p in algo.value.parameters():
            p.zero_()
        last.bias.fill_(-4.0)  # V(s) = -4 everywhere
    b = _batch(4, 3, 2, torch.Generator().manual_seed(0))
    b.terminated = T([0.0, 0.0, 1.0, 0.0])
    b.reward = T([1.0, 0.0, 2.0, -1.0])
    with torch.no_grad():
        y = algo._critic_target(b, 0.0)
    assert y.tolist() == pytest.approx([1.0 - 0.99 * 4, -0.99 * 4, 2.0, -1.0 - 0.99 * 4])


@pytest.mark.parametrize("loss_type, kind", [("iql", "gaussian"), ("awr", "flow")])
def test_sac_offline_weighted_losses_prefer_the_better_dataset_action(loss_type, kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    algo = _small(
        "sac_offline",
        kind,
        actor_loss_type=loss_type,
        critic_lr=3e-3,
        actor_lr=3e-3,
        value_lr=3e-3,
        temperature_lr=3e-3,
    )
    for _ in range(150):
        algo.update(_two_action_batch(64, gen))
    a = algo.policy.sample(torch.randn(64, 3, generator=gen), deterministic=True)
    assert a.mean().item() > 0.2, a.mean().item()
