"""Hand-computed checks of the chunked flow-actor methods (FQL, QC, DQC), their deployable policies
(``OneStepFlowPolicy``, ``BestOfNPolicy``), the policy hand-off rules and the runner's ``data_horizon`` hook."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algos import get_algorithm
from rlft.algos.base import PolicyConfig
from rlft.algos.fql import fql_actor_loss
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.policies import build_policy, load_policy
from rlft.policies.flow import FlowPolicy
from rlft.policies.onestep import OneStepFlowPolicy

torch.set_num_threads(1)  # small ops: more threads only add OpenMP overhead on a shared 2-core machine
T = torch.tensor
O, A, H = 5, 2, 3
SMALL_POLICY = PolicyConfig(kind="flow", hidden_dims=(16, 16), flow_steps=3, time_embed_dim=8)


def _algo(name: str, **cfg):
    cls = get_algorithm(name)
    small = {k: (16, 16) for k in ("critic_hidden_dims", "actor_hidden_dims") if k in cls.Config.__dataclass_fields__}
    torch.manual_seed(0)
    return cls(cls.Config(policy=SMALL_POLICY, **{**small, **cfg}), O, A, H)


def _batch(seed: int = 0, horizon: int = H, n: int = 8) -> ChunkBatch:
    return ChunkBatch.random(n, O, horizon, A, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# FQL
# ---------------------------------------------------------------------------------------------------------------
def test_fql_actor_loss_by_hand():
    # B = 2, chunk of 1 x 2: mu - f = [[1, 0], [0, -2]] -> distill = (1 + 0 + 0 + 4) / 4 = 1.25
    mu = T([[[1.0, 0.0]], [[0.0, -2.0]]], requires_grad=True)
    f = torch.zeros(2, 1, 2)
    q_pi = T([[-2.0, -4.0], [-4.0, -6.0]])  # N = 2 critics: per-sample mean q = [-3, -5], mean = -4
    loss, info = fql_actor_loss(q_pi, mu, f, alpha=10.0)
    assert loss.item() == pytest.approx(10.0 * 1.25 + 4.0)
    assert info["distill_loss"].item() == pytest.approx(1.25)
    assert info["actor_q"].item() == pytest.approx(-4.0)
    assert info["q_loss"].item() == pytest.approx(4.0)
    assert info["actor_lam"].item() == pytest.approx(1.0)
    loss.backward()  # d(alpha * distill)/dmu = alpha * 2 (mu - f) / 4
    assert mu.grad.flatten().tolist() == pytest.approx([5.0, 0.0, 0.0, -10.0])
    # normalised: lam = 1 / mean|q| = 1 / 4 -> q_loss = -(1/4) * (-4) = 1
    loss_n, info_n = fql_actor_loss(q_pi, mu.detach(), f, alpha=10.0, normalize_q_loss=True)
    assert info_n["actor_lam"].item() == pytest.approx(0.25)
    assert loss_n.item() == pytest.approx(12.5 + 1.0)


def test_fql_actor_q_gradient_reaches_the_action_only_through_the_mean_over_critics():
    a = T([[[0.5]]], requires_grad=True)
    q_pi = torch.stack([2.0 * a.sum().reshape(1), 4.0 * a.sum().reshape(1)])  # Q_1 = 2a, Q_2 = 4a -> mean 3a
    loss, _ = fql_actor_loss(q_pi, torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), alpha=0.0)
    loss.backward()
    assert a.grad.item() == pytest.approx(-3.0)


def test_onestep_policy_noise_conventions_and_save_load(tmp_path):
    torch.manual_seed(0)
    flow = build_policy(SMALL_POLICY, O, A, H)
    flow.normalizer.set_stats(torch.arange(O).float(), torch.ones(O) * 2, -2 * torch.ones(A), 2 * torch.ones(A))
    p = OneStepFlowPolicy.from_flow(flow, hidden_dims=(16,))
    assert torch.equal(p.normalizer.obs_mean, flow.normalizer.obs_mean)
    assert all(torch.equal(v, flow.state_dict()[k]) for k, v in p.flow.state_dict().items())
    obs = torch.randn(4, O)
    z = torch.randn(4, H, A)
    # deterministic = zero noise; explicit noise goes straight through mu; outputs clamped to [-1, 1]
    assert torch.equal(p.sample(obs, deterministic=True), p.onestep(obs, torch.zeros(4, H, A)).clamp(-1, 1))
    assert torch.equal(p.sample(obs, noise=z), p.onestep(obs, z).clamp(-1, 1))
    # the one-step actor, not the flow, acts
    with torch.no_grad():
        p.actor[-1].bias.fill_(5.0)
    assert torch.all(p.sample(obs, deterministic=True) == 1.0)
    path = tmp_path / "onestep.safetensors"
    p.save(path)
    q = load_policy(path)
    assert type(q) is OneStepFlowPolicy
    raw = torch.randn(3, O)
    assert torch.equal(q.act(raw), p.act(raw))
    assert torch.equal(q.act(raw), flow.normalizer.unnormalize_action(torch.ones(3, H, A)))


def test_fql_td_target_uses_the_one_step_actor_from_fresh_noise():
    algo = _algo("fql", tau=1.0)
    b = _batch(1)
    torch.manual_seed(7)
    z_next = torch.randn(b.batch_size, H, A)  # the first draw of the update: the noise of a' = mu(s', z')
    with torch.no_grad():
        a_next = algo.policy.onestep(b.next_obs, z_next).clamp(-1, 1)
        y = b.reward + b.bootstrap * algo.target_critic(b.next_obs, a_next).mean(0)
    torch.manual_seed(7)
    m = algo.update(b)
    assert m["critic/td_target_mean"] == pytest.approx(y.mean().item(), abs=1e-6)
    assert {"actor/distill_loss", "actor/bc_loss", "actor/actor_q", "actor/actor_lam", "critic/q_mean"} <= set(m)


def test_fql_wraps_a_flow_policy_and_continues_its_own_artifact():
    fql = _algo("fql")
    assert type(fql.policy) is OneStepFlowPolicy
    b = _batch(2)
    fql.update(b)
    again = get_algorithm("fql")(fql.cfg, O, A, H, policy=fql.policy)  # offline FQL -> online FQL
    assert again.policy is fql.policy
    with pytest.raises(ConfigError, match="fql"):
        get_algorithm("iql")(get_algorithm("iql").Config(), O, A, H, policy=fql.policy)
    gauss = build_policy(PolicyConfig(kind="gaussian", hidden_dims=(8,)), O, A, H)
    with pytest.raises(ConfigError, match="flow"):
        get_algorithm("fql")(fql.cfg, O, A, H, policy=gauss)
    flow_only = FlowPolicy(O, A, H, hidden_dims=(8,), flow_steps=2, time_embed_dim=4)
    assert type(get_algorithm("fql")(fql.cfg, O, A, H, policy=flow_only).policy) is OneStepFlowPolicy


def test_fql_config_validation():
    cls = get_algorithm("fql").Config
    with pytest.raises(ConfigError, match="q_agg"):
        cls(q_agg="max")
    with pytest.raises(ConfigError, match="alpha"):
        cls(alpha=-1.0)
    assert math.isfinite(cls().alpha)
