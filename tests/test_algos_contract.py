"""The contract every registered algorithm keeps (iterates ``rlft.algos.ALGORITHMS``, so new ones are covered).

For each algorithm x each policy kind it declares in ``supported_policies``:
* one ``update`` on a random ``ChunkBatch`` changes the parameters behind every optimiser (policy, critics, ...) and
  returns finite float metrics named ``critic/...``, ``actor/...`` or ``alpha/...``;
* two instances built and updated under the same seed give identical metrics and parameters;
* ``state_dict`` survives ``torch.save``/``torch.load`` (weights_only) into a differently initialised instance, after
  which both give identical results on the next update;
* a policy kind it does not support is refused with ``ConfigError`` at construction;
* ``explore`` returns finite chunks for one observation or a batch, reproducibly under a seed;
* ``load_pretrained`` warm-starts every trained network but the policy from another instance's state;
* "it learns": every algorithm that learns from rewards prefers the rewarded action of a two-action bandit dataset
  after 400 updates with its default config.
Run it on an algorithm from outside rlft with ``pytest tests/test_algos_contract.py --plugin FILE.py``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re

import pytest
import torch

from rlft.algos import ALGORITHMS, register
from rlft.algos.base import CriticConfig
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.policies import build_policy
from rlft.policies.config import PolicyConfig

torch.set_num_threads(1)  # small ops: more threads only add OpenMP overhead on a shared 2-core machine
OBS, ACT, H, B = 6, 3, 4, 32
POLICY_KINDS = ("gaussian", "flow", "shortcut", "consistency", "diffusion")
METRIC_NAME = re.compile(r"^(critic|actor|alpha)/\w+$")


def _supported(cls) -> tuple[str, ...]:
    return tuple(getattr(cls, "supported_policies", POLICY_KINDS))


CASES = [(name, kind) for name, cls in sorted(ALGORITHMS.items()) for kind in _supported(cls)]
UNSUPPORTED = [
    (name, kind) for name, cls in sorted(ALGORITHMS.items()) for kind in POLICY_KINDS if kind not in _supported(cls)
]


def small_config(cls, kind: str):
    """The algorithm's default Config with every ``*hidden_dims`` field shrunk (fast) and the given policy kind."""
    cfg = cls.Config()
    small = {f.name: (32, 32) for f in dataclasses.fields(cfg) if f.name.endswith("hidden_dims")}
    policy = PolicyConfig(kind=kind, hidden_dims=(32, 32), flow_steps=3, unet_dims=(8, 16), time_embed_dim=8)
    return dataclasses.replace(cfg, policy=policy, **small)


def make(name: str, kind: str, seed: int):
    torch.manual_seed(seed)
    cls = ALGORITHMS[name]
    extra = {}
    if getattr(cls, "uses_base_policy", False):  # DSRL variants steer a frozen base policy: a small flow policy
        extra["base_policy"] = build_policy(PolicyConfig(kind="flow", hidden_dims=(32, 32), flow_steps=3), OBS, ACT, H)
    return cls(small_config(cls, kind), OBS, ACT, H, **extra)


def batch(seed: int, algo) -> ChunkBatch:
    """A random batch with the algorithm's data horizon (``AlgoConfig.data_horizon``: H unless, like DQC, the
    algorithm trains on longer chunks than the policy executes)."""
    return ChunkBatch.random(B, OBS, algo.cfg.data_horizon(H), ACT, generator=torch.Generator().manual_seed(seed))


def update(algo, b: ChunkBatch, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)  # policy sampling / flow noise use torch's global RNG
    return algo.update(b)


def optimisers(algo) -> dict[str, torch.optim.Optimizer]:
    return {k: v for k, v in vars(algo).items() if isinstance(v, torch.optim.Optimizer)}


def snapshot(algo) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in vars(algo).items():
        if isinstance(v, torch.nn.Module):
            out.update({f"{k}.{n}": t.detach().clone() for n, t in v.state_dict().items()})
        elif isinstance(v, torch.Tensor):
            out[k] = v.detach().clone()
    return out


def assert_same_params(a, b) -> None:
    sa, sb = snapshot(a), snapshot(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"parameter {k} differs"


@pytest.mark.parametrize("name, kind", CASES)
def test_update_changes_params_and_returns_named_finite_metrics(name, kind):
    algo = make(name, kind, seed=0)
    policy_before = [p.detach().clone() for p in algo.policy.parameters()]
    optims = optimisers(algo)
    assert optims, f"{name}: no optimiser attributes"
    before = {k: [p.detach().clone() for g in o.param_groups for p in g["params"]] for k, o in optims.items()}

    metrics = update(algo, batch(1, algo), seed=100)

    assert metrics, f"{name}: update returned no metrics"
    for k, v in metrics.items():
        assert METRIC_NAME.match(k), f"{name}: metric {k!r} is not named critic/..., actor/... or alpha/..."
        assert type(v) is float and math.isfinite(v), f"{name}: metric {k} = {v!r}"
    for k, o in optims.items():
        after = [p.detach() for g in o.param_groups for p in g["params"]]
        assert any(not torch.equal(a, b) for a, b in zip(before[k], after)), f"{name}: {k} changed no parameter"
    trained_policy = any(
        p is q for o in optims.values() for g in o.param_groups for p in g["params"] for q in algo.policy.parameters()
    )
    if trained_policy:
        assert any(not torch.equal(a, b.detach()) for a, b in zip(policy_before, algo.policy.parameters()))
    if hasattr(algo, "critic"):
        assert any(k.startswith("critic/") for k in metrics)
    assert algo.num_updates == 1


@pytest.mark.parametrize("name, kind", CASES)
def test_update_is_deterministic_under_seed(name, kind):
    a, b = make(name, kind, seed=0), make(name, kind, seed=0)
    for step in range(2):
        bt = batch(10 + step, a)
        assert update(a, bt, seed=step) == update(b, bt, seed=step)
    assert_same_params(a, b)


@pytest.mark.parametrize("name, kind", CASES)
def test_state_dict_round_trip(name, kind):
    a = make(name, kind, seed=0)
    update(a, batch(1, a), seed=1)  # non-trivial optimiser state, counters, target nets
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = make(name, kind, seed=123)  # different initial weights
    c.load_state_dict(torch.load(buf, weights_only=True))
    assert c.num_updates == a.num_updates
    assert_same_params(a, c)
    for step in range(2):
        bt = batch(20 + step, a)
        assert update(a, bt, seed=50 + step) == update(c, bt, seed=50 + step)
    assert_same_params(a, c)


@pytest.mark.parametrize("name, kind", UNSUPPORTED)
def test_unsupported_policy_kind_is_refused(name, kind):
    with pytest.raises(ConfigError):
        make(name, kind, seed=0)


CRITIC_ALGOS = sorted(name for name, cls in ALGORITHMS.items() if issubclass(cls.Config, CriticConfig))


@pytest.mark.parametrize("name", CRITIC_ALGOS)
@pytest.mark.parametrize("field, value", [("num_critics", 0), ("critic_impl", "fast"), ("tau", 0.0), ("tau", 1.5)])
def test_bad_critic_field_is_refused_naming_the_algorithm(name, field, value):
    with pytest.raises(ConfigError, match=rf"^{name}\.{field} must"):
        ALGORITHMS[name].Config(**{field: value})


def test_register_refuses_a_config_shared_by_two_algorithms():
    iql = ALGORITHMS["iql"]
    twin = type("IQLTwin", (iql,), {"name": "iql_twin"})  # same Config class as iql
    with pytest.raises(TypeError, match="already the config of 'iql'"):
        register(twin)
    assert "iql_twin" not in ALGORITHMS and iql.Config.algo_name == "iql"


def test_composites_are_continued_only_by_the_algorithms_that_declare_them():
    """Policies name no algorithm: a ``needs_own_trainer`` policy is continued by the algorithms listing its class in
    ``continues`` and refused by every other, with a message naming the ones that continue it."""
    from rlft.policies import POLICY_CLASSES

    owned = [c for c in POLICY_CLASSES.values() if getattr(c, "needs_own_trainer", False)]
    assert {c.__name__ for c in owned} == {"BestOfNPolicy", "OneStepFlowPolicy"}
    for policy_cls in owned:
        owners = [n for n, a in ALGORITHMS.items() if policy_cls in a.continues]  # registry order
        assert owners, f"{policy_cls.__name__}: no algorithm continues it"
        policy = make(owners[0], "flow", 0).policy
        assert isinstance(policy, policy_cls)

        def make_with(name, policy=policy):
            return ALGORITHMS[name](small_config(ALGORITHMS[name], "flow"), OBS, ACT, H, policy=policy)

        for name in owners:
            make_with(name)  # continued
        with pytest.raises(
            ConfigError, match=f"cannot start from a {policy_cls.__name__} .*continue with {'/'.join(owners)}"
        ):
            make_with("iql")


# ------------------------------------------------------------------------------------------------------------
# explore(), load_pretrained(), and "it learns": the parts of the contract the runner relies on beyond update()
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind", CASES)
def test_explore_gives_finite_chunks_reproducibly(name, kind):
    """``explore`` takes raw observations, one or a batch, and returns finite chunks [(N,) H, A]; the same torch seed
    gives the same chunk."""
    algo = make(name, kind, seed=0)
    g = torch.Generator().manual_seed(3)
    one, many = torch.randn(OBS, generator=g).numpy(), torch.randn(4, OBS, generator=g).numpy()
    torch.manual_seed(7)
    a = algo.explore(one)
    torch.manual_seed(7)
    assert torch.equal(algo.explore(one), a)
    assert tuple(a.shape) == (H, ACT) and bool(torch.isfinite(a).all())
    b = algo.explore(many)
    assert tuple(b.shape) == (4, H, ACT) and bool(torch.isfinite(b).all())


@pytest.mark.parametrize("name, kind", CASES)
def test_load_pretrained_warm_starts_every_network_but_the_policy(name, kind):
    """``load_pretrained`` (``init_critic``: critics from an earlier stage) loads every trained network attribute other
    than the policy (a DSRL variant's frozen ``base_policy`` is the stage's input, not its state) from another
    instance's state, leaves the policy alone, and reports what it loaded."""
    a = make(name, kind, seed=0)
    update(a, batch(1, a), seed=1)
    c = make(name, kind, seed=123)
    policy_before = {k: v.clone() for k, v in c.policy.state_dict().items()}
    loaded = c.load_pretrained(a.state_dict())
    nets = {k for k, v in vars(c).items() if isinstance(v, torch.nn.Module) and k not in ("policy", "base_policy")}
    assert set(loaded) == nets
    for k in nets:
        for n, t in getattr(c, k).state_dict().items():
            assert torch.equal(t, getattr(a, k).state_dict()[n]), f"{name}: {k}.{n} not loaded"
    assert all(torch.equal(v, c.policy.state_dict()[k]) for k, v in policy_before.items())


def bandit_batch(n: int, horizon: int, g: torch.Generator) -> ChunkBatch:
    """One-step episodes: half the rows hold the good chunk (all +0.5, reward 1), half the bad one (all -0.5,
    reward 0), each with small noise, from random states; every row terminates."""
    good = torch.rand(n, generator=g) < 0.5
    action = torch.where(good, 0.5, -0.5)[:, None, None] + 0.05 * torch.randn(n, horizon, ACT, generator=g)
    obs = torch.randn(n, OBS, generator=g)
    base = ChunkBatch.random(n, OBS, horizon, ACT, generator=g)
    return dataclasses.replace(
        base,
        obs=obs,
        action=action,
        reward=good.float(),
        next_obs=obs.clone(),
        terminated=torch.ones(n),
        valid_mask=torch.ones(n, horizon),
        is_offline=torch.ones(n),
        mc_return=good.float(),
    )


LEARNERS = [
    (name, kind)
    for name, kind in CASES
    if name != "bc" and not ALGORITHMS[name].uses_base_policy and kind == _supported(ALGORITHMS[name])[0]
]


@pytest.mark.parametrize("name, kind", LEARNERS)
def test_it_learns_the_better_action_of_a_bandit(name, kind):
    """Every algorithm that learns from rewards (all but BC, and the DSRL variants, which steer a base policy), with
    its default config: after 400 updates on a two-action bandit dataset, the deterministic policy's chunk leans
    towards the rewarded action in at least 90 % of 256 fresh states."""
    algo = make(name, kind, seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        algo.update(bandit_batch(64, algo.cfg.data_horizon(H), g))
    with torch.no_grad():
        chunk = algo.policy.sample(torch.randn(256, OBS, generator=g), deterministic=True)
    lean = chunk.mean(dim=(1, 2))
    assert float((lean > 0).float().mean()) >= 0.9, f"{name}: mean chunk {float(lean.mean()):+.3f}"
