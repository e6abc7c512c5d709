"""Policy EMA: the hand-computed average, buffers copied, config errors, and a run that saves the average."""

from __future__ import annotations

import pytest
import torch

from rlft.errors import ConfigError
from rlft.policies.gaussian import GaussianPolicy
from rlft.train.ema import PolicyEMA


def _policy() -> GaussianPolicy:
    torch.manual_seed(0)
    return GaussianPolicy(obs_dim=3, action_dim=2, act_horizon=2, hidden_dims=(8,))


def test_ema_matches_hand_computed_average():
    p = _policy()
    ema = PolicyEMA(p, decay=0.9)
    w0 = next(p.parameters()).detach().clone()
    # update 0: d_0 = min(0.9, 1/10) = 0.1 -> the average moves 0.9 of the way to the live weights
    with torch.no_grad():
        next(p.parameters()).add_(1.0)
    ema.update()
    torch.testing.assert_close(next(ema.policy.parameters()), 0.1 * w0 + 0.9 * (w0 + 1.0))
    # after many updates the warm-up is over: d = decay
    ema.num_updates = 1000
    assert ema.rate() == pytest.approx(0.1)
    before = next(ema.policy.parameters()).detach().clone()
    with torch.no_grad():
        next(p.parameters()).add_(1.0)
    ema.update()
    torch.testing.assert_close(next(ema.policy.parameters()), 0.9 * before + 0.1 * (w0 + 2.0))
    # buffers (normalisation statistics) follow the live policy exactly; the EMA copy has no gradients
    p.normalizer.obs_mean.fill_(3.0)
    ema.update()
    assert torch.equal(ema.policy.normalizer.obs_mean, p.normalizer.obs_mean)
    assert not any(t.requires_grad for t in ema.policy.parameters())
    # round trip
    other = PolicyEMA(p, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == ema.num_updates
    torch.testing.assert_close(next(other.policy.parameters()), next(ema.policy.parameters()))


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_bad_decay_is_a_config_error(decay):
    with pytest.raises(ConfigError, match="policy_ema"):
        PolicyEMA(_policy(), decay)
