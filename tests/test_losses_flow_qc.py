"""Hand-computed checks of the chunked flow-actor methods (FQL, QC, DQC), their deployable policies
(``OneStepFlowPolicy``, ``BestOfNPolicy``), the policy hand-off rules and the runner's ``data_horizon`` hook."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algos import get_algorithm
from rlft.algos.dqc import dqc_distill_loss, dqc_value_loss
from rlft.algos.fql import fql_actor_loss
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import aggregate_q
from rlft.policies import build_policy, load_policy
from rlft.policies.best_of_n import BestOfNPolicy, best_of_n
from rlft.policies.config import PolicyConfig
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


# ---------------------------------------------------------------------------------------------------------------
# best-of-N (QC / DQC's deployable policy)
# ---------------------------------------------------------------------------------------------------------------
def test_best_of_n_and_aggregation_by_hand():
    cands = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)  # B = 2, N = 3
    scores = T([[0.1, 0.9, 0.5], [2.0, -1.0, 2.0]])  # row 1: a tie -> the lowest index
    chosen, idx = best_of_n(cands, scores)
    assert idx.tolist() == [1, 0]
    assert chosen.flatten().tolist() == [1.0, 3.0]
    q = T([[1.0, -2.0], [3.0, 0.0]])  # [N=2, B=2]
    assert aggregate_q(q, "mean").tolist() == [2.0, -1.0]
    assert aggregate_q(q, "min").tolist() == [1.0, -2.0]
    with pytest.raises(ConfigError):
        aggregate_q(q, "max")


class _QuadraticCritic(torch.nn.Module):
    """Q_1(s, a) = -sum (a - 0.5)^2, Q_2 = Q_1 - 1: a known score, argmax at the chunk closest to 0.5."""

    def forward(self, obs, action, members=None):
        q1 = -(action.reshape(action.shape[0], -1) - 0.5).square().sum(-1)
        return torch.stack([q1, q1 - 1.0])


def test_best_of_n_policy_picks_the_highest_scoring_candidate_and_saves(tmp_path):
    torch.manual_seed(0)
    flow = build_policy(SMALL_POLICY, O, A, H)
    p = BestOfNPolicy.from_flow(flow, num_critics=2, critic_hidden_dims=(8,), num_samples=6)
    obs = torch.randn(4, O)
    z = torch.randn(4, 6, H, A)
    # the deployable sample is best_of_n over the flow's candidates scored by the critic ensemble
    cands = p.candidates(obs, z)
    for j in range(6):
        assert torch.equal(cands[:, j], flow.sample(obs, noise=z[:, j]))
    assert torch.equal(p.sample(obs, noise=z), best_of_n(cands, p.score(obs, cands))[0])
    # with a known critic: the chosen chunk is the candidate closest to 0.5 (mean and min agree on the order)
    p.critic = _QuadraticCritic()
    chosen = p.sample(obs, noise=z)
    dist = (cands - 0.5).square().sum((-1, -2))
    assert torch.equal(chosen, cands[torch.arange(4), dist.argmin(1)])
    # deterministic: the fixed candidate set, candidate 0 = the flow's own zero-noise chunk
    assert p.eval_noise.shape == (6, H, A) and torch.all(p.eval_noise[0] == 0)
    assert torch.equal(p.sample(obs, deterministic=True), p.sample(obs, noise=p.eval_noise.expand(4, -1, -1, -1)))
    p.set_selection(1, "min")  # N = 1: the plain flow policy's deterministic action
    assert torch.equal(p.sample(obs, deterministic=True), flow.sample(obs, deterministic=True))
    # save / load (rlft eval's path) rebuilds the same selection
    p2 = BestOfNPolicy.from_flow(flow, num_critics=2, critic_hidden_dims=(8,), num_samples=5, q_agg="min")
    path = tmp_path / "bon.safetensors"
    p2.save(path)
    q = load_policy(path)
    assert type(q) is BestOfNPolicy and (q.num_samples, q.q_agg) == (5, "min")
    raw = torch.randn(3, O)
    assert torch.equal(q.act(raw), p2.act(raw))
    # one start noise per chunk (a noise-space actor steering this policy): the flow's chunk, no selection
    z1 = torch.randn(4, H, A)
    assert torch.equal(p2.sample(obs, noise=z1), flow.sample(obs, noise=z1))
    with pytest.raises(ValueError, match="B, N, H, A"):
        p2.sample(obs, noise=torch.randn(4, 2, H + 1, A))


# ---------------------------------------------------------------------------------------------------------------
# QC
# ---------------------------------------------------------------------------------------------------------------
def test_qc_td_target_is_the_best_of_n_next_chunk_under_the_target_critic():
    algo = _algo("qc", num_samples=4, q_agg="min")
    pi = algo.policy
    assert type(pi) is BestOfNPolicy and (pi.num_samples, pi.q_agg) == (4, "min")
    with torch.no_grad():  # make the target critic differ from the critic used for scoring
        for t in algo.target_critic.parameters():
            t.add_(0.1 * torch.randn_like(t))
    b = _batch(3)
    torch.manual_seed(11)
    z = torch.randn(b.batch_size, 4, H, A)  # the first draw of the update: the N candidates' noise at s'
    with torch.no_grad():
        cands = torch.stack([pi.flow.sample(b.next_obs, noise=z[:, j]) for j in range(4)], 1)
        scores = pi.critic(b.next_obs.repeat_interleave(4, 0), cands.reshape(-1, H, A)).min(0).values.reshape(-1, 4)
        a_next = cands[torch.arange(b.batch_size), scores.argmax(1)]
        y = b.reward + b.bootstrap * algo.target_critic(b.next_obs, a_next).min(0).values
    torch.manual_seed(11)
    m = algo.update(b)
    assert m["critic/td_target_mean"] == pytest.approx(y.mean().item(), abs=1e-6)
    assert {"actor/bc_loss", "actor/actor_loss", "critic/q_mean", "critic/critic_loss"} <= set(m)


def test_qc_hand_offs_and_exploration():
    qc = _algo("qc", num_samples=3)
    qc.update(_batch(4))
    # offline QC -> online QC (and -> DQC) continue the same artifact, critic included
    again = get_algorithm("qc")(get_algorithm("qc").Config(num_samples=5), O, A, H, policy=qc.policy)
    assert again.policy is qc.policy and qc.policy.num_samples == 5
    assert qc.policy.kwargs["num_samples"] == 5
    for other in ("iql", "bc", "fql"):
        with pytest.raises(ConfigError, match="qc/dqc"):
            get_algorithm(other)(get_algorithm(other).Config(), O, A, H, policy=qc.policy)
    # exploration: one chunk per observation, noise scale applies to every candidate
    raw = torch.randn(O).numpy()
    assert qc.explore(raw).shape == (H, A)
    qc.cfg.explore_noise_scale = 0.0  # all candidates collapse to the zero-noise chunk
    assert torch.allclose(qc.explore(raw), qc.policy.flow.act(raw, deterministic=True))
    assert qc.explore(torch.randn(2, O).numpy()).shape == (2, H, A)


# ---------------------------------------------------------------------------------------------------------------
# DQC
# ---------------------------------------------------------------------------------------------------------------
def test_dqc_distill_loss_by_hand():
    q_chunk = T([[2.0, 0.0, 5.0], [1.0, 1.0, 5.0]])  # [N=2, B=3]
    q_action = T([[1.0, 1.0, 0.0], [1.0, 3.0, 0.0]], requires_grad=True)
    mask = T([1.0, 1.0, 0.0])  # the third row's policy chunk is padding: no loss
    loss, info = dqc_distill_loss(q_action, q_chunk, kappa=0.8, row_mask=mask)
    # residuals Q^c - Q^a: member 0: +1 (w .8), -1 (w .2) ; member 1: 0, -2 (w .2)
    # member 0: (0.8 * 1 + 0.2 * 1) / 3 = 1/3 ; member 1: (0 + 0.2 * 4) / 3 = 0.8/3 ; sum = 1.8/3 = 0.6
    assert loss.item() == pytest.approx(0.6)
    assert info["distill_loss"].item() == pytest.approx(0.6)
    assert info["action_q_mean"].item() == pytest.approx(1.0)
    loss.backward()  # dL/dQ^a = -2 w u / B per member
    assert q_action.grad.tolist() == [
        pytest.approx([-2 * 0.8 / 3, 2 * 0.2 / 3, 0.0]),
        pytest.approx([0.0, 2 * 0.2 * 2 / 3, 0.0]),
    ]


def test_dqc_value_loss_expectile_and_quantile_by_hand():
    q = T([3.0, 0.0, 9.0])
    v = T([1.0, 1.0, 0.0])
    mask = T([1.0, 1.0, 0.0])
    # u = +2 (w .9), -1 (w .1), masked
    loss, info = dqc_value_loss(q, v, 0.9, mask, "expectile")
    assert loss.item() == pytest.approx((0.9 * 4 + 0.1 * 1) / 3)
    assert info["v_mean"].item() == pytest.approx(2.0 / 3)
    loss_q, _ = dqc_value_loss(q, v, 0.9, mask, "quantile")
    assert loss_q.item() == pytest.approx((0.9 * 2 + 0.1 * 1) / 3)
    with pytest.raises(ConfigError):
        dqc_value_loss(q, v, 0.9, mask, "huber")


def test_dqc_update_uses_long_chunks_for_the_critic_and_the_first_h_actions_for_the_policy():
    Hb = 7
    algo = _algo("dqc", backup_horizon=Hb, num_samples=4, kappa_d=0.7)
    assert algo.cfg.data_horizon(H) == Hb and type(algo.policy) is BestOfNPolicy
    assert algo.policy.act_horizon == H and algo.policy.critic(torch.zeros(1, O), torch.zeros(1, H, A)).shape == (2, 1)
    b = _batch(5, horizon=Hb, n=16)
    with torch.no_grad():
        y = b.reward + b.bootstrap * algo.value(b.next_obs)
        qc_ = algo.chunk_critic(b.obs, b.action)
        qa = algo.policy.critic(b.obs, b.action[:, :H])
        want, _ = dqc_distill_loss(qa, qc_, 0.7, b.valid_mask[:, H - 1])
    m = algo.update(b)
    assert m["critic/td_target_mean"] == pytest.approx(y.mean().item(), abs=1e-6)
    assert m["critic/distill_loss"] == pytest.approx(want.item(), rel=1e-5)
    assert {"critic/value_loss", "critic/v_mean", "actor/bc_loss", "critic/q_mean"} <= set(m)
    with pytest.raises(Exception, match="backup_horizon"):
        algo.update(_batch(5, horizon=H))
    with pytest.raises(ConfigError, match="backup_horizon"):
        get_algorithm("dqc").Config(backup_horizon=2).data_horizon(H)


def test_runner_builds_data_horizon_chunks_and_refuses_online_for_longer_ones(tmp_path):
    import numpy as np

    from rlft.data.episodes import Episode
    from rlft.data.h5io import write_episodes
    from rlft.train.config import train_config_from_dict
    from rlft.train.runner import Trainer

    rng = np.random.default_rng(0)
    eps = []
    for T_ in (12, 20):
        term = np.zeros(T_, bool)
        term[-1] = True
        eps.append(
            Episode(
                obs=rng.normal(size=(T_ + 1, 28)).astype(np.float32),
                actions=rng.uniform(-1, 1, (T_, 5)).astype(np.float32),
                rewards=-np.ones(T_, np.float32),
                terminated=term,
                truncated=np.zeros(T_, bool),
                success=term.copy(),
            )
        )
    data = write_episodes(tmp_path / "d.h5", eps, {"env_id": "cube-single-singletask-v0", "max_episode_steps": 200})
    small = {
        "backup_horizon": 8,
        "critic_hidden_dims": [16],
        "num_samples": 2,
        "policy": {"kind": "flow", "hidden_dims": [16], "flow_steps": 2, "time_embed_dim": 8},
    }
    base = {
        "algo": "dqc",
        "dataset": str(data),
        "env": {"env_id": "cube-single-singletask-v0", "act_horizon": 3},
        "algo_cfg": small,
        "run": {"out_dir": str(tmp_path)},
    }
    tr = Trainer(train_config_from_dict(base, "test"), run_dir=tmp_path / "r", quiet=True)
    assert tr.dataset.act_horizon == 8 and tr.policy.act_horizon == 3
    bt = tr.dataset.sample(4, tr.gen)
    assert bt.action.shape == (4, 8, 5)
    assert tr.algo.update(bt)["critic/critic_loss"] >= 0
    with pytest.raises(ConfigError, match="offline"):
        Trainer(train_config_from_dict({**base, "mode": "online"}, "test"), run_dir=tmp_path / "o", quiet=True)
    assert get_algorithm("iql").Config().data_horizon(3) == 3  # the default: the policy's act_horizon
