"""Shortcut, consistency and diffusion policies: hand-computed checks of their pure pieces (targets, schedules, DDIM
step), their losses with a known network, masking of padded steps, explicit start noise, and save/load."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rlft.errors import ConfigError
from rlft.policies import build_policy, load_policy, policy_kind
from rlft.policies.config import ConsistencyOptions, DiffusionOptions, PolicyConfig, ShortcutOptions
from rlft.policies.consistency import (
    ConsistencyFlowPolicy,
    adjacent_time,
    consistency_fn,
    consistency_residual,
    segment_end,
)
from rlft.policies.diffusion import (
    DiffusionPolicy,
    alphas_cumprod,
    beta_schedule,
    ddim_step,
    ddim_timesteps,
    diffusion_forward,
    flow_time,
)
from rlft.policies.shortcut import ShortcutFlowPolicy, bootstrap_levels, bootstrap_times, shortcut_target, step_level

torch.set_num_threads(1)
T = torch.tensor
O, H, A = 5, 4, 2
SMALL = dict(hidden_dims=(16, 16), time_embed_dim=8)
KINDS = ["shortcut", "consistency", "diffusion"]


def make(kind: str, **kw):
    torch.manual_seed(0)
    cls = {"shortcut": ShortcutFlowPolicy, "consistency": ConsistencyFlowPolicy, "diffusion": DiffusionPolicy}[kind]
    return cls(O, A, H, **{**SMALL, **kw})


class ZeroNet(nn.Module):
    """A stand-in network whose output is always 0 (velocity / eps): makes every loss a closed-form function of the
    sampled noise and times."""

    def forward(self, x, t, cond):
        return torch.zeros_like(x)


def masked_mean_sq(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of x^2 over valid steps (reference for the policies' masked MSE), [B]."""
    m = mask[..., None].expand_as(x)
    return (x.pow(2) * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2))


def data(B: int = 6, pad_value: float | None = 1e6):
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(B, O, generator=g)
    action = torch.rand(B, H, A, generator=g) * 2 - 1
    mask = torch.ones(B, H)
    mask[1, 2:] = 0.0  # chunks cut short by the episode's end: their last steps are padding
    mask[B - 2, 1:] = 0.0
    if pad_value is not None:
        action[mask == 0] = pad_value  # padded steps hold garbage: they must never reach the loss
    return obs, action, mask


# ================================================================ shortcut
def test_shortcut_step_levels():
    assert step_level(1, 128) == 0 and step_level(4, 128) == 2 and step_level(128, 128) == 7
    for bad in (3, 0, 256):
        with pytest.raises(ConfigError):
            step_level(bad, 128)


def test_shortcut_bootstrap_levels_and_times():
    assert bootstrap_levels(5, 3).tolist() == [0, 1, 2, 0, 1]
    levels = T([0, 1, 2, 2, 3])
    t = bootstrap_times(levels, T([0.7, 0.7, 0.3, 0.99, 0.5]))
    # grid of the big step 2d = 2^-k: k=0 -> {0}; k=1 -> {0, .5}; k=2 -> {0, .25, .5, .75}; k=3 -> eighths
    assert t.tolist() == pytest.approx([0.0, 0.5, 0.25, 0.75, 0.5])
    assert (t + torch.pow(2.0, -levels.float()) <= 1.0).all()  # the two half steps never pass t = 1


def test_shortcut_target_two_half_steps():
    # s(x, t) = x + t: v1 = s(1, 0) = 1; x' = 1 + 0.5 * 1 = 1.5; v2 = s(1.5, 0.5) = 2; target = 1.5
    target = shortcut_target(lambda x, t: x + t.reshape(-1, 1, 1), torch.ones(1, 1, 1), T([0.0]), T([0.5]))
    assert target.item() == pytest.approx(1.5)
    # one step of 2d with the target lands where the two half steps land: 1 + 1.0 * 1.5 = 1.5 + 0.5 * 2
    assert 1.0 + 1.0 * target.item() == pytest.approx(1.5 + 0.5 * 2.0)


def test_shortcut_loss_with_zero_net_is_masked_flow_error_on_flow_rows():
    p = make("shortcut", bootstrap_frac=0.5, max_steps=8)
    p.net = ZeroNet()
    obs, action, mask = data(6)
    w = T([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    torch.manual_seed(7)
    loss, info = p.bc_loss(obs, action, mask, weights=w)
    torch.manual_seed(7)
    x0 = torch.randn_like(action)
    # rows 0..2 bootstrap (zero net -> zero target, zero error); rows 3..5 flow: error = (x1 - x0) on valid steps
    per = torch.cat([torch.zeros(3), masked_mean_sq((action - x0)[3:], mask[3:])])
    assert torch.isfinite(loss) and loss.item() < 100  # the 1e6 padding never entered
    assert loss.item() == pytest.approx((w * per).mean().item(), rel=1e-5)
    assert info["shortcut_loss"].item() == 0.0
    assert info["flow_loss"].item() == pytest.approx(per[3:].mean().item(), rel=1e-5)


def test_shortcut_loss_matches_reference_computation():
    p = make("shortcut", bootstrap_frac=0.5, max_steps=4)
    obs, action, mask = data(4, pad_value=None)
    torch.manual_seed(11)
    loss, _ = p.bc_loss(obs, action, mask)
    # re-derive with the same random draws: 2 bootstrap rows (levels 0, 1), 2 flow rows (finest level L = 2)
    torch.manual_seed(11)
    x0 = torch.randn_like(action)
    t_flow = torch.randint(0, 4, (2,)).float() / 4
    u = torch.rand(2)
    k = T([0, 1])
    t_boot = torch.stack([torch.floor(u[0] * 1) / 1, torch.floor(u[1] * 2) / 2])
    d = T([0.5, 0.25])
    with torch.no_grad():
        xb = (1 - t_boot)[:, None, None] * x0[:2] + t_boot[:, None, None] * action[:2]
        v1 = p.velocity(obs[:2], xb, t_boot, k + 1)
        v2 = p.velocity(obs[:2], xb + d[:, None, None] * v1, t_boot + d, k + 1)
        tgt_boot = (v1 + v2) / 2
        xf = (1 - t_flow)[:, None, None] * x0[2:] + t_flow[:, None, None] * action[2:]
        pred = p.velocity(obs, torch.cat([xb, xf]), torch.cat([t_boot, t_flow]), T([0, 1, 2, 2]))
        target = torch.cat([tgt_boot, action[2:] - x0[2:]])
    assert loss.item() == pytest.approx(masked_mean_sq(pred - target, mask).mean().item(), rel=1e-5)


def test_shortcut_one_step_sample():
    p = make("shortcut", shortcut_steps=1)
    obs = torch.randn(3, O)
    z = torch.randn(3, H, A)
    with torch.no_grad():
        ref = (z + p.velocity(obs, z, 0.0, 0)).clamp(-1, 1)  # one step of d = 1 at level 0
        assert torch.allclose(p.sample(obs, noise=z), ref)


# ================================================================ consistency
def test_consistency_segments_and_adjacent_time():
    t = T([0.0, 0.3, 0.5, 0.99])
    assert segment_end(t, 1).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert segment_end(t, 2).tolist() == [0.5, 0.5, 1.0, 1.0]
    assert adjacent_time(T([0.1, 0.49]), 0.025, T([0.5, 0.5])).tolist() == pytest.approx([0.125, 0.5])


def test_consistency_function_and_residual_by_hand():
    # x_t = 1, t = 0.25, v = 2, segment end 1: f = 1 + 0.75 * 2 = 2.5
    assert consistency_fn(torch.ones(1, 1, 1), T([0.25]), torch.full((1, 1, 1), 2.0), T([1.0])).item() == 2.5
    # path x0 = 0 -> x1 = 1 (u = 1); t = 0.5, r = 0.6, end 1, v_t = 2, v_r = 1:
    # f_t = 0.5 + 0.5 * 2 = 1.5, f_r = 0.6 + 0.4 * 1 = 1.0 -> (f_t - f_r) / (r - t) = 0.5 / 0.1 = 5
    one = torch.ones(1, 1, 1)
    res = consistency_residual(2 * one, one, one, T([0.5]), T([0.6]), T([1.0]))
    assert res.item() == pytest.approx(5.0)
    # at r = end the residual is the flow-matching error v_t - u
    assert consistency_residual(2 * one, 7 * one, one, T([0.5]), T([1.0]), T([1.0])).item() == pytest.approx(1.0)


def test_consistency_residual_equals_direct_difference():
    g = torch.Generator().manual_seed(0)
    x0, x1 = (
        torch.randn(4, 3, 2, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 2, generator=g, dtype=torch.float64),
    )
    v_t, v_r = (
        torch.randn(4, 3, 2, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 2, generator=g, dtype=torch.float64),
    )
    t = T([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    end = segment_end(t, 2)
    r = adjacent_time(t, 0.05, end)
    path = lambda s: (1 - s)[:, None, None] * x0 + s[:, None, None] * x1  # noqa: E731
    direct = (consistency_fn(path(t), t, v_t, end) - consistency_fn(path(r), r, v_r, end)) / (r - t)[:, None, None]
    torch.testing.assert_close(consistency_residual(v_t, v_r, x1 - x0, t, r, end), direct)


def test_consistency_loss_with_zero_net_weights_both_terms():
    p = make("consistency", flow_coef=0.5, consistency_coef=2.0)
    p.net = ZeroNet()
    obs, action, mask = data(6)
    torch.manual_seed(5)
    loss, info = p.bc_loss(obs, action, mask)
    torch.manual_seed(5)
    x0 = torch.randn_like(action)
    # v = 0: flow error = -u, consistency residual = -u as well -> (0.5 + 2.0) * |u|^2 on valid steps
    u2 = masked_mean_sq(action - x0, mask)
    assert loss.item() == pytest.approx(2.5 * u2.mean().item(), rel=1e-5)
    assert info["flow_loss"].item() == pytest.approx(u2.mean().item(), rel=1e-5)
    assert info["consistency_loss"].item() == pytest.approx(u2.mean().item(), rel=1e-5)


def test_consistency_one_step_sample_is_f_at_zero():
    p = make("consistency")  # flow_steps = 1 segment
    obs, z = torch.randn(3, O), torch.randn(3, H, A)
    with torch.no_grad():
        f0 = consistency_fn(z, torch.zeros(3), p.velocity(obs, z, 0.0), torch.ones(3))
        assert torch.allclose(p.sample(obs, noise=z), f0.clamp(-1, 1))


# ================================================================ diffusion
def test_cosine_schedule_by_hand():
    abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = beta_schedule("cosine", 2)
    assert betas.tolist() == pytest.approx([1 - abar(0.5) / abar(0.0), 0.999])  # abar(1) ~ 0 -> capped
    ab = alphas_cumprod(beta_schedule("cosine", 100))
    assert (ab[1:] < ab[:-1]).all() and ab[0] > 0.999 and ab[-1] < 1e-4


def test_linear_schedule_is_rescaled_to_k_steps():
    b1000 = beta_schedule("linear", 1000)
    assert (b1000[0].item(), b1000[-1].item()) == pytest.approx((1e-4, 0.02))
    b100 = beta_schedule("linear", 100)
    assert (b100[0].item(), b100[-1].item()) == pytest.approx((1e-3, 0.2))
    # same total noise: abar_{K-1} ~ exp(-sum beta) is ~ e^-10 for both
    assert alphas_cumprod(b100)[-1].item() < 1e-4 and alphas_cumprod(b1000)[-1].item() < 1e-4
    with pytest.raises(ConfigError):
        beta_schedule("sigmoid", 10)


def test_ddim_timesteps_trailing_and_flow_time():
    assert ddim_timesteps(100, 10) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    assert ddim_timesteps(100, 3) == [99, 66, 32]  # round(66.67) - 1, round(33.33) - 1
    assert flow_time(T([99, 49, -1]), 100).tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_ddim_step_by_hand():
    # x_k = 1, eps = 0.5, abar_k = 0.64, abar_prev = 0.81: a_hat = (1 - 0.6 * 0.5) / 0.8 = 0.875
    x = ddim_step(T([1.0]), T([0.5]), 0.64, 0.81, clip_sample=False)
    assert x.item() == pytest.approx(0.9 * 0.875 + math.sqrt(0.19) * 0.5)
    # clipping the predicted clean sample: x = 2, eps = 0, abar = 0.25 -> a_hat = 4 -> 1 (last step: abar_prev = 1)
    assert ddim_step(T([2.0]), T([0.0]), 0.25, 1.0, clip_sample=True).item() == 1.0
    assert ddim_step(T([2.0]), T([0.0]), 0.25, 1.0, clip_sample=False).item() == pytest.approx(4.0)


def test_ddim_step_inverts_the_forward_process_with_the_true_noise():
    g = torch.Generator().manual_seed(0)
    a, eps = torch.rand(3, 4, 2, generator=g) * 2 - 1, torch.randn(3, 4, 2, generator=g)
    abar = T([0.3, 0.6, 0.9])
    x_k = diffusion_forward(a, eps, abar)
    assert torch.allclose(x_k[1], math.sqrt(0.6) * a[1] + math.sqrt(0.4) * eps[1])
    for i in range(3):
        assert torch.allclose(ddim_step(x_k[i], eps[i], abar[i], 1.0, clip_sample=False), a[i], atol=1e-6)


def test_diffusion_loss_with_zero_net_is_masked_noise_energy():
    p = make("diffusion", train_steps=20, inference_steps=5)
    p.net = ZeroNet()
    obs, action, mask = data(6)
    w = T([1.0, 0.0, 2.0, 1.0, 1.0, 0.5])
    torch.manual_seed(9)
    loss, info = p.bc_loss(obs, action, mask, weights=w)
    torch.manual_seed(9)
    torch.randint(0, 20, (6,))
    eps = torch.randn_like(action)
    per = masked_mean_sq(eps, mask)
    assert loss.item() == pytest.approx((w * per).mean().item(), rel=1e-5)
    assert info["bc_loss"].item() == pytest.approx(per.mean().item(), rel=1e-5)


def test_diffusion_sample_telescopes_from_the_explicit_noise():
    # eps = 0 everywhere: each DDIM step rescales x by sqrt(abar_prev / abar_k), so the chain ends at
    # x_T / sqrt(abar_{k_0}) with k_0 = K - 1 the first (trailing) level
    p = make("diffusion", train_steps=10, inference_steps=4, beta_schedule_kind="linear", clip_sample=False)
    p.net = ZeroNet()
    ab0 = p.alphas_cumprod[9]
    z = 0.5 * ab0.sqrt() * torch.tanh(torch.randn(2, H, A))
    assert torch.allclose(p.sample(torch.randn(2, O), noise=z), z / ab0.sqrt(), atol=1e-6)


# ================================================================ all three: noise, config, persistence
@pytest.mark.parametrize("kind", KINDS)
def test_explicit_noise_is_honoured(kind):
    p = make(kind)
    obs = torch.randn(3, O)
    z1, z2 = torch.randn(3, H, A), torch.randn(3, H, A)
    with torch.no_grad():
        a1 = p.sample(obs, noise=z1)
        assert torch.equal(a1, p.sample(obs, noise=z1))  # deterministic given the noise
        assert not torch.allclose(a1, p.sample(obs, noise=z2))
        assert torch.equal(p.sample(obs, deterministic=True), p.sample(obs, noise=torch.zeros(3, H, A)))
        assert a1.shape == (3, H, A) and a1.abs().max() <= 1.0
    raw = p.act(obs[0].numpy(), noise=z1[0])  # deployment API, single observation with its [H, A] noise
    assert raw.shape == (H, A)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("net", ["mlp", "unet"])
def test_save_load_round_trip(kind, net, tmp_path):
    kw = dict(velocity_net=net, unet_dims=(8, 16)) if net == "unet" else {}
    p = make(kind, **kw)
    p.normalizer.obs_mean.fill_(0.3)
    p.save(tmp_path / "p.safetensors", extra={"stage": "bc"})
    q = load_policy(tmp_path / "p.safetensors")
    assert type(q) is type(p) and q.kwargs == p.kwargs and policy_kind(q) == kind
    obs, z = torch.randn(2, O), torch.randn(2, H, A)
    with torch.no_grad():
        assert torch.equal(p.sample(obs, noise=z), q.sample(obs, noise=z))
    assert torch.equal(q.normalizer.obs_mean, p.normalizer.obs_mean)


def test_build_policy_maps_config_fields():
    base = dict(hidden_dims=(16,), time_embed_dim=8)
    s = build_policy(
        PolicyConfig(kind="shortcut", shortcut=ShortcutOptions(steps=2, max_steps=16, bootstrap_frac=0.125), **base),
        O,
        A,
        H,
    )
    assert (s.shortcut_steps, s.max_steps, s.bootstrap_frac, s.num_levels, s.sample_level) == (2, 16, 0.125, 4, 1)
    c = build_policy(
        PolicyConfig(
            kind="consistency", consistency=ConsistencyOptions(steps=2, delta=0.1, coef=3.0, flow_coef=0.0), **base
        ),
        O,
        A,
        H,
    )
    assert (c.segments, c.consistency_delta, c.consistency_coef, c.flow_coef) == (2, 0.1, 3.0, 0.0)
    d = build_policy(
        PolicyConfig(
            kind="diffusion",
            diffusion=DiffusionOptions(train_steps=50, inference_steps=5, beta_schedule="linear", clip_sample=False),
            **base,
        ),
        O,
        A,
        H,
    )
    assert (d.train_steps, d.timesteps, d.clip_sample) == (50, [49, 39, 29, 19, 9], False)
    assert [policy_kind(x) for x in (s, c, d)] == ["shortcut", "consistency", "diffusion"]


@pytest.mark.parametrize(
    "fields",
    [
        dict(kind="shortcut", shortcut=ShortcutOptions(steps=3)),
        dict(kind="shortcut", shortcut=ShortcutOptions(max_steps=100)),
        dict(kind="shortcut", shortcut=ShortcutOptions(steps=256)),
        dict(kind="shortcut", shortcut=ShortcutOptions(bootstrap_frac=1.0)),
        dict(kind="consistency", consistency=ConsistencyOptions(delta=0.0)),
        dict(kind="consistency", consistency=ConsistencyOptions(coef=0.0, flow_coef=0.0)),
        dict(kind="consistency", consistency=ConsistencyOptions(steps=0)),
        dict(kind="diffusion", diffusion=DiffusionOptions(inference_steps=200)),
        dict(kind="diffusion", diffusion=DiffusionOptions(beta_schedule="quadratic")),
        dict(kind="diffusion", velocity_net="transformer"),
        dict(kind="nope"),
    ],
)
def test_invalid_config_is_refused(fields):
    with pytest.raises(ConfigError):
        build_policy(PolicyConfig(hidden_dims=(8,), **fields), O, A, H)
