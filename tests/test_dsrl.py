"""DSRL: the noise-action env on the real OGBench simulator, the steered (composite) policy, the DSRL algorithms'
losses checked against values computed by hand, and a short end-to-end DSRL-SAC run through rlft's training runner."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch

from rlft.algos import get_algorithm
from rlft.algos.dsrl_awmle import (
    awmle_loss,
    awmle_weights,
    ensemble_score,
    latent_kl_to_prior,
    pearson_corr,
    soft_baseline,
)
from rlft.algos.dsrl_na import na_critic_target, noise_distill_loss
from rlft.data.batch import ChunkBatch
from rlft.data.replay import ReplayBuffer
from rlft.envs import ChunkExecutor, make_env
from rlft.envs.noise_action import NoiseActionWrapper
from rlft.envs.oracles import collect_demo_episode, make_oracle
from rlft.errors import CheckpointError, ConfigError, TrainingError
from rlft.policies import build_policy, load_policy
from rlft.policies.config import PolicyConfig
from rlft.policies.steered import SteeredFlowPolicy, split_steered

torch.set_num_threads(1)
T = torch.tensor
SINGLE = "cube-single-singletask-v0"
O, A, H, M = 28, 5, 3, 1.5  # cube-single obs/action dims, chunk length, noise magnitude


def flow_policy(obs_dim=O, action_dim=A, horizon=H, seed=0):
    torch.manual_seed(seed)
    p = build_policy(
        PolicyConfig(kind="flow", hidden_dims=(32, 32), flow_steps=3, time_embed_dim=8), obs_dim, action_dim, horizon
    )
    p.normalizer.set_stats(np.zeros(obs_dim), np.ones(obs_dim), -np.ones(action_dim), np.ones(action_dim))
    return p


def latent_actor(obs_dim=O, action_dim=A, horizon=H, magnitude=M, seed=1):
    torch.manual_seed(seed)
    p = build_policy(PolicyConfig(kind="gaussian", hidden_dims=(32, 32)), obs_dim, action_dim, horizon)
    m = np.full(action_dim, magnitude)
    p.normalizer.set_stats(np.zeros(obs_dim), np.ones(obs_dim), -m, m)
    return p


def noise_env(max_episode_steps=None, gamma=0.9, policy=None):
    kw = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    return NoiseActionWrapper(ChunkExecutor(make_env(SINGLE, **kw), H, gamma), policy or flow_policy(), M)


def dsrl_replay(base, latent, capacity=8):
    return ReplayBuffer(capacity, O, H, A, latent.normalizer, exec_shape=(H, A), exec_normalizer=base.normalizer)


def add(replay, obs, w, R, next_obs, term, info):
    replay.add(
        obs[None],
        w[None],
        np.array([R]),
        next_obs[None],
        np.array([float(term)]),
        np.array([info["discount"]]),
        np.array([info["k"]]),
        exec_chunk=info["decoded_action"][None],
    )


# ------------------------------------------------------------------------------------------------------------
# the noise-action env (real OGBench)
# ------------------------------------------------------------------------------------------------------------
def test_noise_env_decodes_the_given_noise_and_executes_exactly_that_chunk():
    base = flow_policy()
    env = noise_env(policy=base)
    assert env.action_space.shape == (H, A)
    assert float(env.action_space.low.min()) == -M and float(env.action_space.high.max()) == M
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    w1, w2 = rng.uniform(-M, M, (H, A)).astype(np.float32), rng.uniform(-M, M, (H, A)).astype(np.float32)
    c1, c1_again, c2 = env.decode(obs, w1), env.decode(obs, w1), env.decode(obs, w2)
    np.testing.assert_array_equal(c1, c1_again)  # same noise, same chunk (the decoder is deterministic)
    assert np.abs(c1 - c2).max() > 1e-3  # different noise, different chunk
    np.testing.assert_allclose(c1, base.act(obs, noise=torch.from_numpy(w1)).numpy(), atol=1e-6)
    # out-of-box noise is clipped to the box before decoding
    np.testing.assert_allclose(env.decode(obs, 10 * np.sign(w1)), env.decode(obs, M * np.sign(w1)), atol=1e-6)

    # the macro-step executes exactly the decoded chunk: replay it through a plain chunk executor
    plain = ChunkExecutor(make_env(SINGLE), H, 0.9)
    plain.reset(seed=3)
    decode_obs = obs
    for w in (w1, w2):
        o_n, R_n, term_n, trunc_n, info_n = env.step(w)
        # decoded at the observation the wrapper last returned (reset's, then the first macro-step's)
        np.testing.assert_array_equal(info_n["decoded_action"], env.decode(decode_obs, w))
        o_p, R_p, term_p, trunc_p, info_p = plain.step(info_n["decoded_action"])
        np.testing.assert_allclose(o_n, o_p, atol=1e-6)
        assert (R_n, term_n, trunc_n, info_n["k"]) == (R_p, term_p, trunc_p, info_p["k"])
        np.testing.assert_array_equal(info_n["latent_action"], w)
        decode_obs = o_n


def test_noise_env_episode_truncated_inside_a_chunk_bootstraps_with_gamma_k():
    """7-step limit, H=3, gamma=0.9: macro-steps of k=3, 3, then 1 step (time limit inside the chunk)."""
    base, latent = flow_policy(), latent_actor()
    env = noise_env(max_episode_steps=7, policy=base)
    replay = dsrl_replay(base, latent)
    obs, _ = env.reset(seed=0)
    w = np.zeros((H, A), np.float32)
    for _ in range(2):
        nxt, R, term, trunc, info = env.step(w)
        assert info["k"] == 3 and not term and not trunc
        assert R == pytest.approx(-1 - 0.9 - 0.81) and info["discount"] == pytest.approx(0.729)
        add(replay, obs, w, R, nxt, term, info)
        obs = nxt
    w_last = np.full((H, A), 0.75, np.float32)
    nxt, R, term, trunc, info = env.step(w_last)
    assert info["k"] == 1 and trunc and not term
    assert R == pytest.approx(-1.0) and info["discount"] == pytest.approx(0.9)
    add(replay, obs, w_last, R, nxt, term, info)

    b = replay.get(torch.arange(3))
    torch.testing.assert_close(b.bootstrap, T([0.729, 0.729, 0.9]))  # truncation is not termination: bootstrap
    torch.testing.assert_close(b.valid_mask[2], T([1.0, 0.0, 0.0]))
    torch.testing.assert_close(b.action[2], torch.full((H, A), 0.75 / M))  # the latent, normalised by its box
    torch.testing.assert_close(b.exec_action[2], torch.from_numpy(info["decoded_action"]))  # OGBench box = [-1, 1]
    assert b.executed_action is b.exec_action


def test_noise_env_episode_terminated_inside_a_chunk_does_not_bootstrap():
    """Replay an oracle demo up to the state at the goal; OGBench decides success/termination from the state before
    the action, so the next macro-step ends after k=1 step, terminated, whatever chunk the noise decodes to."""
    gamma = 0.95
    demo_env = make_env(SINGLE)
    demo = collect_demo_episode(demo_env, make_oracle(demo_env), np.random.default_rng(0), seed=123)
    assert demo.terminated[-1]
    base, latent = flow_policy(), latent_actor()
    env = noise_env(gamma=gamma, policy=base)
    replay = dsrl_replay(base, latent)
    env.reset(seed=123)
    inner = env.env.env  # the per-step env under the chunk executor
    for t in range(len(demo) - 1):
        obs = inner.step(demo.actions[t])[0]
    w = np.full((H, A), -0.3, np.float32)
    nxt, R, term, trunc, info = env.step(w)
    assert term and not trunc and info["k"] == 1 < H
    assert R == 0.0 and info["discount"] == pytest.approx(gamma) and info["success"]
    add(replay, obs, w, R, nxt, term, info)
    b = replay.get(torch.arange(1))
    assert b.bootstrap.item() == 0.0 and b.terminated.item() == 1.0
    torch.testing.assert_close(b.valid_mask[0], T([1.0, 0.0, 0.0]))


def test_replay_with_executed_chunks_round_trips_and_batches_concatenate():
    base, latent = flow_policy(), latent_actor()
    r = dsrl_replay(base, latent, capacity=4)
    g = np.random.default_rng(0)
    for _ in range(5):  # wraps around
        r.add(
            g.normal(size=(1, O)),
            g.uniform(-M, M, (1, H, A)),
            [-1.0],
            g.normal(size=(1, O)),
            [0.0],
            [0.9],
            [2],
            exec_chunk=g.uniform(-1, 1, (1, H, A)),
        )
    r2 = dsrl_replay(base, latent, capacity=4)
    r2.load_state_dict(r.state_dict())
    b1, b2 = r.get(torch.arange(4)), r2.get(torch.arange(4))
    assert sorted(b1.exec_action.sum(dim=(1, 2)).tolist()) == pytest.approx(
        sorted(b2.exec_action.sum(dim=(1, 2)).tolist())
    )
    with pytest.raises(TrainingError, match="exec_chunk must be given"):
        r.add(np.zeros((1, O)), np.zeros((1, H, A)), [0.0], np.zeros((1, O)), [0.0], [0.9], [1])  # exec chunk missing
    # a dataset batch (no exec_action: its action is the executed chunk) concatenates with a replay batch
    off = ChunkBatch.random(3, O, H, A)
    cat = ChunkBatch.cat([off, b1])
    torch.testing.assert_close(cat.exec_action[:3], off.action)
    torch.testing.assert_close(cat.exec_action[3:], b1.exec_action)
    assert ChunkBatch.cat([off, off]).exec_action is None


# ------------------------------------------------------------------------------------------------------------
# the deployable composite
# ------------------------------------------------------------------------------------------------------------
def test_steered_policy_decodes_the_latent_actors_noise_and_round_trips(tmp_path):
    base, latent = flow_policy(), latent_actor()
    steered = SteeredFlowPolicy.compose(base, latent)
    assert steered.latent is latent and steered.base is base  # shared: training the latent actor trains the composite
    obs = torch.randn(4, O)
    w = latent.act(obs, deterministic=True)
    assert w.abs().max() <= M
    torch.testing.assert_close(steered.act(obs), base.act(obs, noise=w))
    eps = torch.randn(4, H, A)
    torch.testing.assert_close(
        steered.act(obs, noise=eps, deterministic=False),
        base.act(obs, noise=latent.act(obs, noise=eps, deterministic=False)),
    )
    steered.save(tmp_path / "p.safetensors")
    loaded = load_policy(tmp_path / "p.safetensors")
    assert isinstance(loaded, SteeredFlowPolicy)
    torch.testing.assert_close(loaded.act(obs), steered.act(obs))
    b, lat = split_steered(loaded)
    assert b is loaded.base and lat is loaded.latent and split_steered(base) == (None, base)
    assert not any(p.requires_grad for p in loaded.base.parameters())
    with pytest.raises(CheckpointError):  # latent chunk shape must equal the base policy's noise shape
        SteeredFlowPolicy.compose(base, latent_actor(horizon=H + 1))


# ------------------------------------------------------------------------------------------------------------
# DSRL-NA
# ------------------------------------------------------------------------------------------------------------
def test_na_critic_target_by_hand():
    next_q = T([[1.0, 3.0], [2.0, 0.0]])  # N=2, B=2
    r, boot = T([1.0, -1.0]), T([0.5, 0.0])  # the second row terminated
    # min: [1, 0] -> [1 + 0.5, -1] ; mean: [1.5, 1.5] -> [1 + 0.75, -1]
    torch.testing.assert_close(na_critic_target(next_q, r, boot, "min"), T([1.5, -1.0]))
    torch.testing.assert_close(na_critic_target(next_q, r, boot, "mean"), T([1.75, -1.0]))


def test_noise_distill_loss_by_hand():
    q_w = T([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    q_a = T([[0.0, 2.0], [1.0, 1.0]])
    loss, info = noise_distill_loss(q_w, q_a)
    # member 0: (1 + 0) / 2 = 0.5 ; member 1: (1 + 1) / 2 = 1 ; sum 1.5
    assert loss.item() == pytest.approx(1.5)
    assert info["qw_mean"].item() == pytest.approx(0.75) and info["distill_error"].item() == pytest.approx(0.75)
    loss.backward()
    assert q_w.grad.flatten().tolist() == pytest.approx([1.0, 0.0, -1.0, -1.0])  # 2 (q_w - q_a) / B


def _dsrl_algo(name, **cfg):
    torch.manual_seed(0)
    cls = get_algorithm(name)
    small = dict(critic_hidden_dims=(32, 32), policy=PolicyConfig(kind="gaussian", hidden_dims=(32, 32)))
    return cls(cls.Config(**{**small, **cfg}), 6, 2, 3, base_policy=flow_policy(6, 2, 3))


def test_dsrl_na_learns_from_executed_chunks_and_never_reads_the_stored_latent():
    batch = ChunkBatch.random(16, 6, 3, 2, generator=torch.Generator().manual_seed(0))
    batch.exec_action = torch.rand(16, 3, 2) * 2 - 1
    other_latent = ChunkBatch(**{**vars(batch), "action": torch.zeros(16, 3, 2)})
    other_exec = ChunkBatch(**{**vars(batch), "exec_action": torch.zeros(16, 3, 2)})
    runs = {}
    for key, b in (("base", batch), ("latent", other_latent), ("exec", other_exec)):
        algo = _dsrl_algo("dsrl_na")
        torch.manual_seed(5)
        runs[key] = algo.update(b)
    assert runs["base"] == runs["latent"]  # batch.action (the latent) is not an input of any loss
    assert runs["base"]["critic/q_mean"] != runs["exec"]["critic/q_mean"]  # Q^A sees the executed chunk
    assert runs["base"]["alpha/target_entropy"] == pytest.approx(-0.5 * 3 * 2)
    for k in (
        "critic/td_error",
        "critic/distill_loss",
        "critic/qw_mean",
        "actor/actor_loss",
        "actor/entropy",
        "alpha/temperature",
    ):
        assert k in runs["base"]


def test_dsrl_algorithms_need_a_base_policy():
    for name in ("dsrl_na", "dsrl_awmle"):
        cls = get_algorithm(name)
        with pytest.raises(ConfigError, match="base policy"):
            cls(cls.Config(), 6, 2, 3)


# ------------------------------------------------------------------------------------------------------------
# AW-MLE (stage 1)
# ------------------------------------------------------------------------------------------------------------
def test_ensemble_score_and_soft_baseline_by_hand():
    q = T([[1.0, 2.0], [3.0, 6.0]])  # N=2 members, 2 candidates: mean [2, 4], population std [1, 2]
    torch.testing.assert_close(ensemble_score(q, 1.0), T([3.0, 6.0]))
    torch.testing.assert_close(ensemble_score(q, -1.0), T([1.0, 2.0]))
    torch.testing.assert_close(ensemble_score(q, 0.0), T([2.0, 4.0]))
    s = T([[0.0, 10.0]])
    # 5 * (log(e^0 + e^2) - log 2)
    assert soft_baseline(s, 5.0).item() == pytest.approx(5.0 * (math.log(1.0 + math.e**2) - math.log(2.0)), rel=1e-6)
    assert soft_baseline(s, 1e4).item() == pytest.approx(5.0, abs=1e-2)  # tau -> inf: the mean
    assert soft_baseline(s, 1e-2).item() == pytest.approx(10.0 - 1e-2 * math.log(2.0), abs=1e-4)  # tau -> 0: the max


def test_awmle_weights_by_hand():
    s = T([[1.0, 2.0, 3.0]])
    w, adv = awmle_weights(s, tau=1.0, beta=1.0, advantage_clip=20.0)
    b = math.log((math.e + math.e**2 + math.e**3) / 3.0)
    torch.testing.assert_close(adv, T([[1.0 - b, 2.0 - b, 3.0 - b]]))
    z = math.e + math.e**2 + math.e**3
    torch.testing.assert_close(w, T([[math.e / z, math.e**2 / z, math.e**3 / z]]))  # softmax: baseline cancels
    # clip: A = S - b with b ~ 2.41 -> A clipped to +-0.5 -> weights softmax([-0.5, -0.41, 0.5])
    w2, adv2 = awmle_weights(s, tau=1.0, beta=2.0, advantage_clip=0.5)
    a = [max(-0.5, min(0.5, x - b)) for x in (1.0, 2.0, 3.0)]
    e = [math.exp(2.0 * x) for x in a]
    torch.testing.assert_close(adv2, T([a]))
    torch.testing.assert_close(w2, T([[x / sum(e) for x in e]]))


def test_latent_kl_and_awmle_loss_by_hand():
    w = T([[0.5, -1.0]])
    log_prior = -0.125 - 0.5 - 2 * 0.5 * math.log(2 * math.pi)
    assert latent_kl_to_prior(T([-1.0]), w).item() == pytest.approx(-1.0 - log_prior)

    lp = T([[-1.0, -2.0]], requires_grad=True)
    weights = T([[0.25, 0.75]])
    kl = T([2.0], requires_grad=True)
    loss, info = awmle_loss(lp, weights, kl, kl_coef=0.1, advantage=T([[1.0, -1.0]]))
    assert info["nll_loss"].item() == pytest.approx(0.25 * 1.0 + 0.75 * 2.0)  # 1.75
    assert loss.item() == pytest.approx(1.75 + 0.1 * 2.0)
    assert info["eff_num"].item() == pytest.approx(1.0 / (0.25**2 + 0.75**2))  # 1.6
    assert info["corr_A_logprob"].item() == pytest.approx(1.0, abs=1e-6)  # higher A where higher log-prob
    loss.backward()
    assert lp.grad.tolist() == [[-0.25, -0.75]] and kl.grad.item() == pytest.approx(0.1)


def test_pearson_corr_by_hand():
    x, y = T([1.0, 2.0, 3.0]), T([2.0, 4.0, 7.0])
    # centred x = (-1, 0, 1), y = (-7/3, -1/3, 8/3): cov = 5/3, var_x = 2/3, var_y = 114/27
    assert pearson_corr(x, y).item() == pytest.approx((5 / 3) / math.sqrt((2 / 3) * (114 / 27)), rel=1e-5)
    assert pearson_corr(x, -y).item() == pytest.approx(-pearson_corr(x, y).item(), rel=1e-6)


def test_awmle_moves_the_latent_actor_towards_high_q_noise():
    """A linear frozen critic Q(s, a) = sum(a) and a near-identity flow: AW-MLE must learn to put the latent actor's
    noise where the decoded chunk sums high, so E[Q] under the actor ends above E[Q] under the prior."""
    algo = _dsrl_algo(
        "dsrl_awmle", num_candidates=16, critic_hidden_dims=(), lr=3e-3, kl_coef=1e-3, critic_layernorm=False
    )
    with torch.no_grad():
        for p in algo.base_policy.parameters():  # velocity ~ 0: the flow decodes w to clamp(w, -1, 1)
            p.mul_(1e-3)
        for c in algo.critic.critics:  # Linear(obs + H*A -> 1): weight 0 on obs, 1 on each action dim
            c[0].weight.zero_()
            c[0].weight[0, 6:] = 1.0
            c[0].bias.zero_()
    batch = ChunkBatch.random(16, 6, 3, 2, generator=torch.Generator().manual_seed(0))
    first = algo.update(batch)
    for _ in range(60):
        last = algo.update(batch)
    assert first["actor/q_policy"] == pytest.approx(first["actor/q_prior"], abs=1.5)
    assert last["actor/q_policy"] > last["actor/q_prior"] + 1.0
    assert last["actor/corr_A_logprob"] > 0.0
    assert 1.0 <= last["actor/eff_num"] <= 16.0


def test_awmle_refuses_a_state_without_a_matching_critic():
    algo = _dsrl_algo("dsrl_awmle")
    iql = get_algorithm("iql")(get_algorithm("iql").Config(critic_hidden_dims=(16,)), 6, 2, 3)
    with pytest.raises(CheckpointError, match="no critic"):
        algo.load_pretrained(iql.state_dict())
    iql_ok = get_algorithm("iql")(get_algorithm("iql").Config(critic_hidden_dims=(32, 32)), 6, 2, 3)
    assert "critic" in algo.load_pretrained(iql_ok.state_dict())
    obs, act = torch.randn(4, 6), torch.rand(4, 3, 2)
    torch.testing.assert_close(algo.critic(obs, act), iql_ok.critic(obs, act))


# ------------------------------------------------------------------------------------------------------------
# DSRL-SAC = rlft's SAC (rlft.algos.sac) + online loop on the noise-action env (TrainConfig.base_policy)
# ------------------------------------------------------------------------------------------------------------
def _stage(tmp_path, base_path, **over):
    from rlft.train.config import train_config_from_dict

    d = {
        "algo": "sac",
        "mode": "online",
        "steps": 45,
        "base_policy": str(base_path),
        "action_magnitude": M,
        "env": {"env_id": SINGLE, "act_horizon": H, "max_episode_steps": 20},
        "eval": {"num_episodes": 1, "parallel_envs": 1},
        "run": {"out_dir": str(tmp_path), "name": "dsrl", "log_every": 5, "tensorboard": False},
        "algo_cfg": {
            "batch_size": 8,
            "utd_ratio": 1,
            "warmup_steps": 15,
            "offline_ratio": 0.0,
            "num_critics": 2,
            "critic_hidden_dims": [32],
            "target_entropy_per_dim": -0.5,
            "target_entropy_from_policy": False,
            "actor_update_every": 1,
            "policy": {"kind": "gaussian", "hidden_dims": [32]},
        },
    }
    for k, v in over.items():
        d[k] = v
    return train_config_from_dict(d, "test")


def test_dsrl_sac_runs_the_spine_sac_on_the_noise_env_and_saves_the_composite(tmp_path):
    from rlft.train.runner import Trainer

    base = flow_policy()
    base.save(tmp_path / "base.safetensors")
    tr = Trainer(_stage(tmp_path, tmp_path / "base.safetensors"), quiet=True)
    assert type(tr.algo).__name__ == "SAC" and tr.algo.policy.chunk_shape == (H, A)  # latent dims = noise dims
    obs0 = torch.randn(3, O)
    assert tr.algo.policy.act(obs0).abs().max() < 0.05  # a fresh latent actor starts at the prior's mode (w ~ 0)...
    torch.testing.assert_close(tr.policy.act(obs0), base.act(obs0), atol=0.05, rtol=0)  # ...i.e. as the base policy
    summary = tr.run()
    assert summary["steps"] >= 45
    # replay: latent actions within the box, the decoded env chunks stored next to them
    b = tr.replay.get(torch.arange(len(tr.replay)))
    assert b.exec_action is not None and b.action.abs().max() <= 1.0
    rows = [json.loads(x) for x in (tmp_path / "dsrl" / "metrics.jsonl").read_text().splitlines()]
    te = [r["alpha/target_entropy"] for r in rows if "alpha/target_entropy" in r]
    assert te and te[-1] == pytest.approx(-0.5 * H * A)
    loaded = load_policy(tmp_path / "dsrl" / "checkpoints" / "policy_final.safetensors")
    assert isinstance(loaded, SteeredFlowPolicy)
    obs = torch.randn(2, O)
    torch.testing.assert_close(loaded.base.act(obs), base.act(obs))  # the base policy stayed frozen
    torch.testing.assert_close(loaded.act(obs), tr.policy.act(obs))


def test_base_policy_misuse_is_refused(tmp_path):
    from rlft.train.runner import Trainer

    flow_policy().save(tmp_path / "base.safetensors")
    with pytest.raises(ConfigError, match="dataset holds env actions"):  # SAC cannot learn latents from env actions
        Trainer(_stage(tmp_path, tmp_path / "base.safetensors", mode="offline", dataset="x.h5"), quiet=True)
    with pytest.raises(ConfigError, match="base_policy"):  # a DSRL algorithm without a base policy
        Trainer(
            _stage(
                tmp_path,
                tmp_path / "base.safetensors",
                algo="dsrl_na",
                base_policy=None,
                algo_cfg={"offline_ratio": 0.0},
            ),
            quiet=True,
        )


# ------------------------------------------------------------------------------------------------------------
# the debugging checklist (rlft dsrl-check): decisions on logged curves
# ------------------------------------------------------------------------------------------------------------
def _write_metrics(run_dir, rows, gamma=0.99):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run_dir / "config.yaml").write_text(f"env: {{gamma: {gamma}}}\n")


def test_dsrl_check_stage1_compares_q_under_the_actor_and_the_prior(tmp_path):
    from rlft.report.dsrl_check import dsrl_checklist

    rows = [{"step": i, "actor/q_policy": -10.0 + i, "actor/q_prior": -8.0, "actor/eff_num": 20.0} for i in range(10)]
    # last 20% = 2 points: q_policy -2, -1 (mean -1.5) vs q_prior -8: pass
    _write_metrics(tmp_path / "s1", rows)
    (res,) = dsrl_checklist(tmp_path / "s1")
    assert res.status == "PASS" and "gap +6.500" in res.evidence
    rows = [{**r, "actor/q_policy": -9.0} for r in rows]
    _write_metrics(tmp_path / "s1b", rows)
    assert dsrl_checklist(tmp_path / "s1b")[0].status == "FAIL"


def test_dsrl_check_stage2_items(tmp_path):
    from rlft.report.dsrl_check import dsrl_checklist

    n = 9
    good = [
        {
            "step": i,
            "critic/td_error": 2.0 - 0.1 * i,
            "critic/q_mean": -50.0 + i,
            "alpha/temperature": 0.1,
            "actor/entropy": 5.0 - 0.1 * i,
        }
        for i in range(n)
    ]
    _write_metrics(tmp_path / "good", good)
    res = {r.item: r.status for r in dsrl_checklist(tmp_path / "good")}
    assert set(res.values()) == {"PASS"} and len(res) == 4
    bad = [
        {
            **r,
            "critic/td_error": 1.0 + 0.1 * i,
            "critic/q_mean": -50.0 - 30 * i,
            "alpha/temperature": 0.1 * 2**i,
            "actor/entropy": 5.0 - 100.0 * i,
        }
        for i, r in enumerate(good)
    ]
    _write_metrics(tmp_path / "bad", bad)
    res = {r.item: r for r in dsrl_checklist(tmp_path / "bad")}
    assert all(r.status == "FAIL" for r in res.values())
    # |q| bound: 1.5 * 1 / (1 - 0.99) = 150; q reaches -290
    assert "bound 150" in res["q_mean rises without exploding"].evidence
    _write_metrics(tmp_path / "short", good[:2])
    assert {r.status for r in dsrl_checklist(tmp_path / "short")} == {"SKIP"}
    # the CLI entry point: exit status 0 when every item passes, 1 when one fails
    from rlft.cli import main

    assert main(["dsrl-check", str(tmp_path / "good")]) == 0
    with pytest.raises(SystemExit) as e:
        main(["dsrl-check", str(tmp_path / "good"), str(tmp_path / "bad")])
    assert e.value.code == 1


# ------------------------------------------------------------------------------------------------------------
# on-policy DSRL (PPO with SMDP GAE)
# ------------------------------------------------------------------------------------------------------------
def test_episode_continues_by_hand():
    from rlft.algos.dsrl_ppo import episode_continues

    obs, nxt = T([[0.0], [1.0], [5.0], [6.0]]), T([[1.0], [2.0], [6.0], [7.0]])
    # row 0 -> row 1 continues; row 1 ends (reset: next 2 != 5); row 2 -> row 3 continues; the last row is cut
    assert episode_continues(obs, nxt, T([0.0, 0.0, 0.0, 1.0])).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert episode_continues(obs, nxt, T([0.0, 0.0, 1.0, 0.0])).tolist() == [1.0, 0.0, 0.0, 0.0]  # terminated


def test_smdp_gae_by_hand():
    from rlft.algos.dsrl_ppo import smdp_gae

    r, v, v_next = T([1.0, 2.0, 3.0]), T([0.5, 1.0, 1.5]), T([1.0, 1.5, 2.0])
    term, disc, cont = T([0.0, 0.0, 1.0]), T([0.9, 0.81, 0.9]), T([1.0, 0.0, 0.0])
    adv, ret = smdp_gae(r, v, v_next, term, disc, cont, lam=0.5)
    # delta = [1 + 0.9*1 - 0.5, 2 + 0.81*1.5 - 1, 3 - 1.5] = [1.4, 2.215, 1.5]
    # A2 = 1.5 ; A1 = 2.215 (episode cut after row 1) ; A0 = 1.4 + 0.9 * 0.5 * 2.215 = 2.39675
    torch.testing.assert_close(adv, T([2.39675, 2.215, 1.5]))
    torch.testing.assert_close(ret, T([2.89675, 3.215, 3.0]))


def test_ppo_clip_loss_by_hand():
    from rlft.algos.dsrl_ppo import ppo_clip_loss

    lp = torch.log(T([1.5, 0.5])).requires_grad_(True)
    loss, info = ppo_clip_loss(lp, torch.zeros(2), T([1.0, -1.0]), clip=0.2)
    # ratios 1.5, 0.5: min(1.5, 1.2) = 1.2 ; min(-0.5, -0.8) = -0.8 -> loss = -(1.2 - 0.8) / 2 = -0.2, both clipped
    assert loss.item() == pytest.approx(-0.2)
    assert info["clip_frac"].item() == 1.0
    assert info["approx_kl"].item() == pytest.approx(((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2)
    loss.backward()
    assert lp.grad.tolist() == pytest.approx([0.0, 0.0])
    lp2 = torch.log(T([1.5, 0.5])).requires_grad_(True)
    loss2, _ = ppo_clip_loss(lp2, torch.zeros(2), T([-1.0, 1.0]), clip=0.2)
    # min(-1.5, -1.2) = -1.5 ; min(0.5, 0.8) = 0.5 -> loss = 0.5, unclipped: d/dlp = -r A / 2
    assert loss2.item() == pytest.approx(0.5)
    loss2.backward()
    assert lp2.grad.tolist() == pytest.approx([0.75, -0.25])


def test_dsrl_ppo_runs_on_policy_rollouts_in_the_noise_space(tmp_path):
    from rlft.train.runner import Trainer

    flow_policy().save(tmp_path / "base.safetensors")
    cfg = _stage(
        tmp_path,
        tmp_path / "base.safetensors",
        algo="dsrl_ppo",
        steps=30,
        algo_cfg={
            "rollout_steps": 4,
            "update_epochs": 2,
            "minibatch_size": 2,
            "value_hidden_dims": [16],
            "policy": {"kind": "gaussian", "hidden_dims": [16]},
        },
    )
    tr = Trainer(cfg, quiet=True)
    seen = []
    update = tr.algo.update
    tr.algo.update = lambda b: (seen.append(b), update(b))[1]
    tr.run()
    assert len(seen) == 30 // (4 * H)  # one update per 4 macro-steps of 3 env steps
    first = seen[0]
    assert first.batch_size == 4
    # the rollout arrives in collection order: each row's next_obs is the following row's obs (no reset in 12 steps)
    torch.testing.assert_close(first.next_obs[:-1], first.obs[1:])
    assert first.exec_action is not None and len(tr.replay) < 4  # the rollout was discarded after its update
    with pytest.raises(ConfigError, match="rollout_steps"):
        Trainer(
            _stage(
                tmp_path,
                tmp_path / "base.safetensors",
                algo="dsrl_ppo",
                replay_capacity=2,
                algo_cfg={"rollout_steps": 4},
            ),
            quiet=True,
        )


# ------------------------------------------------------------------------------------------------------------
# distillation: the pipeline's last stage trains a standalone policy on the steered policy's rollouts
# ------------------------------------------------------------------------------------------------------------
def test_pipeline_ends_with_dsrl_and_distils_the_steered_policy(tmp_path):
    from rlft.cli import main
    from rlft.data.h5io import read_episodes

    cfg_dir = os.path.join(os.path.dirname(__file__), "..", "configs")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"env: {{env_id: {SINGLE}, act_horizon: {H}, max_episode_steps: 30}}\n"
        "collect: {mode: demos, num_episodes: 2, num_workers: 1}\n"
        "eval: {num_episodes: 2}\n"
        "policy_kind: flow\n"
        "stages:\n"
        f"  - {{name: bc, config: {cfg_dir}/bc.yaml, overrides: {{steps: 5}}}}\n"
        f"  - {{name: stage2, config: {cfg_dir}/stage2_online.yaml, base_from_previous: true,\n"
        "     overrides: {steps: 60, algo_cfg: {warmup_steps: 30, utd_ratio: 1, batch_size: 8}}}\n"
        f"  - {{name: distil, config: {cfg_dir}/bc.yaml, rollout_episodes: 2, rollout_only_success: false,\n"
        "     overrides: {steps: 5}}\n"
    )
    assert main(["pipeline", "--config", str(cfg), "--out-dir", str(tmp_path), "--name", "d", "--quiet"]) == 0
    res = json.loads((tmp_path / "d" / "pipeline_summary.json").read_text())
    assert [r["stage"] for r in res["stages"]] == ["collect", "bc", "stage2", "distil data", "distil"]
    assert res["stages"][3]["algo"] == "rollouts of stage2" and res["stages"][3]["kept"] == 2
    eps, meta = read_episodes(tmp_path / "d" / "data" / "distil-rollouts.h5")
    assert len(eps) == 2 and meta["source"]["policy_class"] == "SteeredFlowPolicy"
    assert meta["source"]["policy"].endswith("stage2/checkpoints/policy_final.safetensors")
    # the distilled policy is a plain flow policy over env actions, trained on those rollouts from scratch
    distilled = load_policy(res["final_policy"])
    assert type(distilled).__name__ == "FlowPolicy" and distilled.chunk_shape == (H, A)
    dcfg = (tmp_path / "d" / "distil" / "config.yaml").read_text()
    assert "distil-rollouts.h5" in dcfg and "init_policy: null" in dcfg
