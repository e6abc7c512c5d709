"""Hand-computed checks of the flow-actor offline RL losses: CPQL (rlft/algos/cpql.py), AWCP (rlft/algos/awcp.py)
and AW-ShortCut-Flow (rlft/algos/aw_shortcut.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rlft.algos import ALGORITHMS
from rlft.algos.awcp import normalized_advantage_weights
from rlft.algos.cpql import cpql_actor_loss
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.policies.config import PolicyConfig

torch.set_num_threads(1)
T = torch.tensor
OBS, ACT, H, B = 5, 2, 3, 16


def small(name: str, **fields):
    cls = ALGORITHMS[name]
    cfg = cls.Config()
    policy = dataclasses.replace(
        cfg.policy,
        hidden_dims=(32, 32),
        time_embed_dim=8,
        shortcut=dataclasses.replace(cfg.policy.shortcut, max_steps=8),
    )
    cfg = dataclasses.replace(cfg, policy=policy, critic_hidden_dims=(32, 32), **fields)
    torch.manual_seed(0)
    return cls(cfg, OBS, ACT, H)


def batch(seed: int = 1) -> ChunkBatch:
    return ChunkBatch.random(B, OBS, H, ACT, generator=torch.Generator().manual_seed(seed))


# ================================================================ CPQL
def test_cpql_actor_loss_normalised_by_the_other_critic():
    q_pi = T([[1.0, 3.0], [-2.0, 4.0]], requires_grad=True)  # N = 2 critics, B = 2
    bc = T(0.5)
    # i = 0: scale = mean |Q_1| = (2 + 4) / 2 = 3; L_q = -mean(Q_0) / 3 = -2 / 3; loss = 0.5 + 2 * (-2/3)
    loss, info = cpql_actor_loss(bc, q_pi, bc_coef=1.0, eta=2.0, q_index=0, normalize=True)
    assert loss.item() == pytest.approx(0.5 - 4.0 / 3.0)
    assert info["q_loss"].item() == pytest.approx(-2.0 / 3.0)
    assert info["actor_q"].item() == pytest.approx(1.5)
    assert info["actor_lam"].item() == pytest.approx(2.0 / 3.0)
    loss.backward()
    # the normaliser is detached: only Q_0 gets gradient, -eta / (B * scale) = -1/3 per element
    assert q_pi.grad.tolist() == [pytest.approx([-1 / 3, -1 / 3]), [0.0, 0.0]]
    # i = 1: scale = mean |Q_0| = (1 + 3) / 2 = 2; L_q = -mean(Q_1) / 2 = -1 / 2; bc_coef 0.5 -> 0.25 + 2 * (-0.5)
    loss, _ = cpql_actor_loss(bc, q_pi, bc_coef=0.5, eta=2.0, q_index=1, normalize=True)
    assert loss.item() == pytest.approx(0.25 - 1.0)


def test_cpql_actor_loss_unnormalised_uses_min_over_critics():
    q_pi = T([[1.0, 3.0], [-2.0, 4.0]])
    # min over members = [-2, 3] -> mean 0.5 -> L_q = -0.5
    loss, info = cpql_actor_loss(T(0.5), q_pi, bc_coef=1.0, eta=2.0, normalize=False)
    assert loss.item() == pytest.approx(0.5 - 1.0)
    assert info["q_loss"].item() == pytest.approx(-0.5)
    assert info["actor_lam"].item() == pytest.approx(2.0)
    # a single critic normalises by itself
    loss, _ = cpql_actor_loss(T(0.0), T([[2.0, -4.0]]), bc_coef=1.0, eta=1.0, q_index=0, normalize=True)
    assert loss.item() == pytest.approx(1.0 / 3.0)  # -(-1) / 3


def test_cpql_q_term_moves_the_policy_up_a_fixed_critic():
    # bc_coef = 0 and a frozen critic (lr 0): the only force on the policy is the Q gradient through the one-step
    # consistency sampler, so Q(s, pi(s)) must rise
    algo = small("cpql", bc_coef=0.0, eta=1.0, critic_lr=0.0, actor_lr=1e-3, q_normalize=False)
    b = batch(2)
    z = torch.zeros(B, H, ACT)

    def q_of_policy() -> float:
        with torch.no_grad():
            return algo.critic(b.obs, algo.policy.sample(b.obs, noise=z)).mean().item()

    before = q_of_policy()
    for step in range(15):
        torch.manual_seed(step)
        m = algo.update(b)
    assert q_of_policy() > before + 1e-3
    assert {"actor/bc_loss", "actor/actor_q", "actor/actor_lam", "critic/q_mean", "critic/td_target_mean"} <= set(m)


def test_cpql_config_validation():
    with pytest.raises(ConfigError, match="cpql.eta"):
        ALGORITHMS["cpql"].Config(eta=-1.0)
    with pytest.raises(ConfigError, match="cpql.grad_clip"):
        ALGORITHMS["cpql"].Config(grad_clip=0.0)


# ================================================================ AWCP / AW-ShortCut weights
def test_normalized_weights_by_hand():
    adv = T([0.0, math.log(2.0), math.log(4.0)])
    # exp(A) = [1, 2, 4], mean 7/3 -> w = [3/7, 6/7, 12/7]
    w, info = normalized_advantage_weights(adv, beta=1.0, max_weight=20.0)
    assert w.tolist() == pytest.approx([3 / 7, 6 / 7, 12 / 7])
    assert info["awr_weights_mean"].item() == pytest.approx(1.0)
    assert info["awr_weights_max"].item() == pytest.approx(12 / 7)
    assert info["awr_advantage_mean"].item() == pytest.approx(math.log(8.0) / 3)
    # eff_num = (sum w)^2 / sum w^2 / B = 9 / ((9 + 36 + 144) / 49) / 3 = 7/9
    assert info["eff_num"].item() == pytest.approx(7 / 9)
    # clipping after normalisation: 12/7 -> 1.5, the mean drops below 1
    w, info = normalized_advantage_weights(adv, beta=1.0, max_weight=1.5)
    assert w.tolist() == pytest.approx([3 / 7, 6 / 7, 1.5])
    assert info["awr_weights_mean"].item() == pytest.approx((9 / 7 + 1.5) / 3)


def test_normalized_weights_shift_invariant_and_overflow_free():
    adv = T([0.3, -1.0, 2.0, 0.0])
    w, _ = normalized_advantage_weights(adv, beta=3.0, max_weight=100.0)
    w_shift, _ = normalized_advantage_weights(adv + 1000.0, beta=3.0, max_weight=100.0)  # exp(3000) would overflow
    assert torch.isfinite(w_shift).all()
    torch.testing.assert_close(w, w_shift)
    # beta = 0 or equal advantages: uniform weights, full effective sample size
    w, info = normalized_advantage_weights(adv, beta=0.0, max_weight=100.0)
    assert w.tolist() == [1.0] * 4 and info["eff_num"].item() == pytest.approx(1.0)
    # one dominant sample: all the mass on it (4 = B) until the clip; eff_num -> 1/B
    w, info = normalized_advantage_weights(T([50.0, 0.0, 0.0, 0.0]), beta=1.0, max_weight=100.0)
    assert w.tolist() == pytest.approx([4.0, 0.0, 0.0, 0.0], abs=1e-6)
    assert info["eff_num"].item() == pytest.approx(0.25)


@pytest.mark.parametrize("name", ["awcp", "aw_shortcut"])
def test_actor_loss_is_the_policy_bc_loss_with_normalised_advantage_weights(name):
    algo = small(name, beta=2.0, max_weight=3.0)
    b = batch(3)
    b.valid_mask[0, 1:] = 0.0  # a padded chunk
    # the reference, from the networks as they are before the update (the actor step uses the target critics and
    # the pre-step V; value and critic steps draw no random numbers, so the policy loss sees the same noise)
    with torch.no_grad():
        adv = algo.target_critic(b.obs, b.action).min(dim=0).values - algo.value(b.obs)
        w = (torch.exp(2.0 * adv) / torch.exp(2.0 * adv).mean()).clamp(max=3.0)
        torch.manual_seed(7)
        expected, pol_info = algo.policy.bc_loss(b.obs, b.action, b.valid_mask, weights=w)
    torch.manual_seed(7)
    m = algo.update(b)
    assert m["actor/actor_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert m["actor/awr_weights_max"] == pytest.approx(w.max().item(), rel=1e-5)
    assert m["actor/eff_num"] == pytest.approx((w.sum() ** 2 / (w**2).sum() / B).item(), rel=1e-5)
    assert m["actor/bc_loss"] == pytest.approx(pol_info["bc_loss"].item(), rel=1e-5)
    extra = "consistency_loss" if name == "awcp" else "shortcut_loss"
    assert {"critic/value_loss", "critic/v_mean", "critic/q_mean", "actor/awr_advantage_mean", f"actor/{extra}"} <= set(
        m
    )


@pytest.mark.parametrize("name", ["awcp", "aw_shortcut"])
def test_no_q_gradient_reaches_the_policy(name):
    # the actor loss depends on the critics only through detached weights: a policy gradient computed the way the
    # update does leaves the critic and value networks without gradients
    algo = small(name)
    b = batch(4)
    with torch.no_grad():
        adv = algo.target_critic(b.obs, b.action).min(dim=0).values - algo.value(b.obs)
    w, _ = normalized_advantage_weights(adv, 3.0, 20.0)
    loss, _ = algo.policy.bc_loss(b.obs, b.action, b.valid_mask, weights=w)
    loss.backward()
    assert all(p.grad is None for p in algo.critic.parameters())
    assert all(p.grad is None for p in algo.value.parameters())
    assert any(p.grad is not None for p in algo.policy.parameters())


def test_aw_shortcut_defaults_and_validation():
    cfg = ALGORITHMS["aw_shortcut"].Config()
    assert cfg.policy.kind == "shortcut" and ALGORITHMS["awcp"].Config().policy.kind == "consistency"
    with pytest.raises(ConfigError, match="aw_shortcut.max_weight"):
        ALGORITHMS["aw_shortcut"].Config(max_weight=0.5)
    with pytest.raises(ConfigError, match="awcp.expectile"):
        ALGORITHMS["awcp"].Config(expectile=1.0)
    with pytest.raises(ConfigError):  # a consistency policy is not a shortcut policy
        ALGORITHMS["aw_shortcut"](dataclasses.replace(cfg, policy=PolicyConfig(kind="consistency")), OBS, ACT, H)
