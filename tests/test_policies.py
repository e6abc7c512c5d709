"""Gaussian and flow policies, their pure loss functions, and the 1D temporal U-Net."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from rlft.errors import CheckpointError, ConfigError
from rlft.nets.unet1d import SinusoidalTimeEmbedding, TemporalUNet1D
from rlft.policies import build_policy, load_policy
from rlft.policies.base import policy_extra
from rlft.policies.config import GaussianOptions, PolicyConfig
from rlft.policies.flow import FlowPolicy, flow_matching_target, masked_flow_loss
from rlft.policies.gaussian import (
    GaussianPolicy,
    gaussian_bc_nll,
    squashed_gaussian_log_prob,
    tanh_log_abs_det_jacobian,
)

torch.set_num_threads(1)

O, H, A = 6, 4, 3
SMALL = dict(hidden_dims=(32, 32))
UNET_SMALL = dict(velocity_net="unet", unet_dims=(16, 32), time_embed_dim=16)


def make(kind: str, **kw):
    torch.manual_seed(0)
    if kind == "gaussian":
        return GaussianPolicy(O, A, H, **{**SMALL, **kw})
    if kind == "flow-mlp":
        return FlowPolicy(O, A, H, velocity_net="mlp", **{**SMALL, **kw})
    return FlowPolicy(O, A, H, **{**UNET_SMALL, **kw})


KINDS = ["gaussian", "flow-mlp", "flow-unet"]


# ---------------------------------------------------------------- tanh-Gaussian density
def test_tanh_jacobian_stable_form():
    u = torch.linspace(-5, 5, 41, dtype=torch.float64)
    ref = torch.log(1 - torch.tanh(u) ** 2)
    torch.testing.assert_close(tanh_log_abs_det_jacobian(u), ref, rtol=1e-9, atol=1e-9)
    big = tanh_log_abs_det_jacobian(torch.tensor([-60.0, 60.0]))
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big, torch.tensor([2 * (math.log(2) - 60.0)] * 2))  # ~ log(4 e^{-2|u|})


def test_squashed_log_prob_matches_torch_and_closed_form():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(2, 3, dtype=torch.float64, generator=g)
    log_std = torch.rand(2, 3, dtype=torch.float64, generator=g) - 1.0
    u = mean + log_std.exp() * torch.randn(2, 3, dtype=torch.float64, generator=g)
    ref = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()]).log_prob(torch.tanh(u))
    torch.testing.assert_close(squashed_gaussian_log_prob(u, mean, log_std), ref, rtol=1e-7, atol=1e-7)
    # 1-D closed form: N(0, 1), action a = 0.5 -> u = atanh(0.5); p(a) = N(u) / (1 - a^2)
    ua = math.atanh(0.5)
    hand = -0.5 * ua**2 - 0.5 * math.log(2 * math.pi) - math.log(1 - 0.25)
    got = squashed_gaussian_log_prob(
        torch.tensor([ua], dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
    )
    assert abs(got.item() - hand) < 1e-12


def test_policy_log_prob_consistent_with_rsample_and_reparameterised():
    pol = make("gaussian")
    obs = torch.randn(5, O)
    a, lp = pol.rsample_log_prob(obs)
    assert a.shape == (5, H, A) and lp.shape == (5,)
    assert a.abs().max() < 1
    torch.testing.assert_close(pol.log_prob(obs, a.detach()), lp.detach(), rtol=1e-3, atol=1e-3)
    (a.sum() + lp.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pol.net.parameters())


def test_log_std_bounded():
    pol = make("gaussian", log_std_min=-3.0, log_std_max=1.0)
    with torch.no_grad():
        pol.net[-1].bias.fill_(100.0)
        _, hi = pol.dist_params(torch.randn(4, O))
        pol.net[-1].bias.fill_(-100.0)
        _, lo = pol.dist_params(torch.randn(4, O))
    assert hi.max() <= 1.0 + 1e-6 and lo.min() >= -3.0 - 1e-6
    assert hi.min() > 0.9 and lo.max() < -2.9


def test_masked_log_prob_excludes_padding():
    pol = make("gaussian")
    obs = torch.randn(3, O)
    act = torch.rand(3, H, A) * 1.8 - 0.9
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    lp = pol.log_prob(obs, act, mask)
    act2 = act.clone()
    act2[mask == 0] = 0.97
    torch.testing.assert_close(pol.log_prob(obs, act2, mask), lp)
    assert not torch.allclose(pol.log_prob(obs, act2), pol.log_prob(obs, act))  # unmasked sum does see them
    per_dim = pol.log_prob_dims(obs, act)
    torch.testing.assert_close(lp, (per_dim * mask[..., None]).sum((1, 2)))
    # bc_loss also ignores padded actions
    l1, _ = pol.bc_loss(obs, act, mask)
    l2, _ = pol.bc_loss(obs, act2, mask)
    torch.testing.assert_close(l1, l2)


def test_log_prob_of_boundary_actions_is_finite():
    pol = make("gaussian")
    act = torch.ones(2, H, A)
    act[1] = -1.0
    assert torch.isfinite(pol.log_prob(torch.randn(2, O), act)).all()


def test_gaussian_bc_nll_normalisation_by_hand():
    lp = torch.tensor([[[-1.0, -3.0], [-5.0, -100.0]], [[-2.0, -2.0], [-4.0, -4.0]]])  # [B=2, H=2, A=2]
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    w = torch.tensor([2.0, 0.5])
    loss, nll = gaussian_bc_nll(lp, mask, w)
    torch.testing.assert_close(nll, torch.tensor([(1 + 3) / 2, (2 + 2 + 4 + 4) / 4]))  # [2, 3]
    torch.testing.assert_close(loss, torch.tensor((2 * 2.0 + 0.5 * 3.0) / 2))


def test_gaussian_sample_modes():
    pol = make("gaussian")
    obs = torch.randn(4, O)
    mean, log_std = pol.dist_params(obs)
    torch.testing.assert_close(pol.sample(obs, deterministic=True), torch.tanh(mean))
    eps = torch.randn(4, H, A)
    torch.testing.assert_close(pol.sample(obs, noise=eps), torch.tanh(mean + log_std.exp() * eps))
    torch.testing.assert_close(pol.sample(obs, noise=torch.zeros(4, H, A)), torch.tanh(mean))
    _, info = pol.bc_loss(obs, torch.rand(4, H, A) - 0.5, torch.ones(4, H))
    assert set(info) >= {"bc_loss", "entropy", "log_std_mean", "mse"}
    assert all(math.isfinite(v) for v in info.values())


# ---------------------------------------------------------------- flow matching
def test_flow_matching_target_by_hand():
    x0 = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]]])  # [B=2, H=1, A=2]
    x1 = torch.tensor([[[3.0, -1.0]], [[1.0, 1.0]]])
    x_t, v = flow_matching_target(x0, x1, torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(x_t, torch.tensor([[[1.5, 1.25]], [[1.0, 1.0]]]))
    torch.testing.assert_close(v, torch.tensor([[[2.0, -3.0]], [[1.0, 1.0]]]))
    x_t0, _ = flow_matching_target(x0, x1, torch.zeros(2))
    torch.testing.assert_close(x_t0, x0)  # t = 0 is noise


def test_masked_flow_loss_by_hand_and_ignores_padding():
    pred = torch.tensor([[[1.0], [2.0], [9.0]], [[0.0], [0.0], [0.0]]])  # [B=2, H=3, A=1]
    target = torch.tensor([[[0.0], [0.0], [-9.0]], [[1.0], [1.0], [1.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, per = masked_flow_loss(pred, target, mask)
    torch.testing.assert_close(per, torch.tensor([(1 + 4) / 2, 1.0]))
    torch.testing.assert_close(loss, torch.tensor((2.5 + 1.0) / 2))
    wloss, _ = masked_flow_loss(pred, target, mask, torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(wloss, torch.tensor(2.0))
    pred2 = pred.clone()
    pred2[0, 2] = -123.0
    torch.testing.assert_close(masked_flow_loss(pred2, target, mask)[0], loss)


@pytest.mark.parametrize("kind", ["flow-mlp", "flow-unet"])
def test_flow_bc_loss_gradient_ignores_padded_targets(kind):
    """Padded steps get no loss: the gradient w.r.t. the predicted velocity is zero there."""
    pol = make(kind)
    obs, act = torch.randn(3, O), torch.rand(3, H, A) * 2 - 1
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    captured = {}

    def hook(_m, _inp, out):
        out.retain_grad()
        captured["v"] = out

    pol.net.register_forward_hook(hook)
    loss, info = pol.bc_loss(obs, act, mask)
    loss.backward()
    g = captured["v"].grad
    assert (g[mask == 0] == 0).all() and (g[mask == 1] != 0).any()
    assert set(info) == {"bc_loss", "flow_loss"} and math.isfinite(info["bc_loss"])


def test_flow_sample_modes_and_velocity():
    pol = make("flow-mlp", flow_steps=3)
    obs = torch.randn(4, O)
    assert pol.noise_shape == (H, A)
    det = pol.sample(obs, deterministic=True)
    torch.testing.assert_close(pol.sample(obs, noise=torch.zeros(4, H, A)), det)
    noise = torch.randn(4, H, A)
    # explicit noise overrides deterministic; result is the clamped 3-step Euler solution
    x = noise.clone()
    for k in range(3):
        x = x + pol.velocity(obs, x, torch.full((4,), k / 3)) / 3
    torch.testing.assert_close(pol.sample(obs, noise=noise, deterministic=True), x.clamp(-1, 1))
    assert pol.sample(obs).abs().max() <= 1.0
    assert pol.velocity(obs, noise, 0.5).shape == (4, H, A)


# ---------------------------------------------------------------- U-Net
@pytest.mark.parametrize("horizon", [1, 4, 5, 8, 16])
def test_unet_shapes(horizon):
    net = TemporalUNet1D(action_dim=7, cond_dim=10, dims=(16, 32, 64), kernel_size=5, time_embed_dim=16)
    x, t, c = torch.randn(2, horizon, 7), torch.rand(2), torch.randn(2, 10)
    out = net(x, t, c)
    assert out.shape == (2, horizon, 7) and torch.isfinite(out).all()
    assert not torch.allclose(net(x, t, c + 1.0), out)  # conditioned on obs
    assert not torch.allclose(net(x, 1.0 - t, c), out)  # and on time


def test_unet_levels_and_validation():
    assert TemporalUNet1D(3, 4, dims=(16,))(torch.randn(2, 3, 3), torch.rand(2), torch.randn(2, 4)).shape == (2, 3, 3)
    with pytest.raises(ValueError):
        TemporalUNet1D(3, 4, dims=(12, 24), n_groups=8)
    with pytest.raises(ValueError):
        TemporalUNet1D(3, 4, kernel_size=4)
    emb = SinusoidalTimeEmbedding(7)(torch.tensor([0.0, 0.5]))
    assert emb.shape == (2, 7) and (emb[:, -1] == 0).all()


def test_unet_seed_size_param_count():
    """A ~5.9M-parameter 1D velocity U-Net (H=8, A=7): (64,128,256) channels with a 256-wide time embedding."""
    net = TemporalUNet1D(action_dim=7, cond_dim=32, dims=(64, 128, 256), kernel_size=5, time_embed_dim=256)
    n = sum(p.numel() for p in net.parameters())
    assert 5.0e6 < n < 7.0e6, n
    out = net(torch.randn(2, 8, 7), torch.rand(2), torch.randn(2, 32))
    assert out.shape == (2, 8, 7)


# ---------------------------------------------------------------- deployment API and persistence
def _set_stats(pol):
    pol.normalizer.set_stats(
        obs_mean=torch.linspace(-1, 1, O),
        obs_std=torch.linspace(0.5, 2, O),
        act_low=torch.tensor([0.0, -2.0, -1.0]),
        act_high=torch.tensor([10.0, 2.0, 1.0]),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    pol = make(kind)
    _set_stats(pol)
    path = tmp_path / "policy.safetensors"
    pol.save(path, extra={"env_id": "cube-single"})
    loaded = load_policy(path)
    assert type(loaded) is type(pol) and loaded.kwargs == pol.kwargs
    assert policy_extra(path) == {"env_id": "cube-single"}
    obs, noise = torch.randn(5, O) * 3, torch.randn(5, H, A)
    torch.testing.assert_close(loaded.act(obs, noise=noise), pol.act(obs, noise=noise), rtol=0, atol=0)
    torch.testing.assert_close(loaded.act(obs), pol.act(obs), rtol=0, atol=0)


def test_load_corrupt_file_raises(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_policy(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_act_shapes_and_units(kind):
    pol = make(kind)
    _set_stats(pol)
    obs = torch.randn(7, O)
    a = pol.act(obs)
    assert a.shape == (7, H, A)
    low, high = pol.normalizer.act_low, pol.normalizer.act_high
    assert (a >= low - 1e-5).all() and (a <= high + 1e-5).all()
    expect = pol.normalizer.unnormalize_action(pol.sample(pol.normalizer.normalize_obs(obs), deterministic=True))
    torch.testing.assert_close(a, expect)
    single = pol.act(obs[0].numpy(), noise=torch.zeros(H, A))
    assert single.shape == (H, A)
    with pytest.raises(CheckpointError):
        pol.act(torch.randn(2, O + 1))


def test_build_policy_from_config_and_errors():
    assert isinstance(build_policy(PolicyConfig(kind="gaussian", hidden_dims=(8,)), O, A, H), GaussianPolicy)
    flow = build_policy(PolicyConfig(kind="flow", velocity_net="unet", unet_dims=(8, 16), time_embed_dim=8), O, A, H)
    assert isinstance(flow, FlowPolicy) and flow.sample(torch.randn(2, O)).shape == (2, H, A)
    with pytest.raises(ConfigError, match="velocity_net"):
        build_policy(PolicyConfig(kind="flow", velocity_net="transformer"), O, A, H)
    with pytest.raises(ConfigError, match="unet_dims"):
        build_policy(PolicyConfig(kind="flow", velocity_net="unet", unet_dims=(12, 24)), O, A, H)
    with pytest.raises(ConfigError, match="log_std"):
        build_policy(PolicyConfig(kind="gaussian", gaussian=GaussianOptions(log_std_min=1.0, log_std_max=0.0)), O, A, H)


# ---------------------------------------------------------------- BC sanity: each policy fits a tiny dataset
# kind -> (policy kwargs, Adam lr, steps); the U-Net is overhead-bound on CPU (~20 ms/step even when tiny)
OVERFIT = {
    "gaussian": (dict(hidden_dims=(128, 128)), 1e-3, 500),
    "flow-mlp": (dict(hidden_dims=(128, 128)), 3e-3, 300),
    "flow-unet": (dict(unet_dims=(16, 32)), 1e-2, 200),
}


@pytest.mark.parametrize("kind", KINDS)
def test_bc_overfits_tiny_dataset(kind):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(64, O, generator=g)
    # a smooth obs -> chunk map inside (-1, 1); predicting the data mean would give mse ~ 0.26
    W = torch.randn(O, H * A, generator=g) / math.sqrt(O)
    act = (0.8 * torch.tanh(obs @ W)).reshape(64, H, A)
    mask = torch.ones(64, H)
    kwargs, lr, steps = OVERFIT[kind]
    pol = make(kind, **kwargs)
    opt = torch.optim.Adam(pol.parameters(), lr=lr)
    for _ in range(steps):
        loss, _ = pol.bc_loss(obs, act, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = (pol.sample(obs, deterministic=True) - act).pow(2).mean().item()
    assert mse < 0.02, (kind, mse, act.pow(2).mean().item())
