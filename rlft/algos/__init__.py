"""Algorithms: one file each, registered by name. ``make_algorithm(name, cfg, ...)`` builds one."""

from __future__ import annotations

from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig
from rlft.policies.config import PolicyConfig

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` buildable by its ``name`` and name its Config's error messages after it."""
    owner = "every algorithm" if cls.Config in (AlgoConfig, CriticConfig) else cls.Config.__dict__.get("algo_name")
    if owner is not None and owner != cls.name:
        raise TypeError(f"{cls.Config.__name__} is already the config of '{owner}'; give '{cls.name}' its own subclass")
    cls.Config.algo_name = cls.name
    ALGORITHMS[cls.name] = cls
    return cls


def get_algorithm(name: str) -> type[Algorithm]:
    from rlft.errors import ConfigError

    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}'; available: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


# The built-in algorithms, one file each; importing a file registers its algorithm (``@register``).
from rlft.algos import aw_shortcut as _aw_shortcut  # noqa: E402,F401
from rlft.algos import awac as _awac  # noqa: E402,F401
from rlft.algos import awcp as _awcp  # noqa: E402,F401
from rlft.algos import awr as _awr  # noqa: E402,F401
from rlft.algos import bc as _bc  # noqa: E402,F401
from rlft.algos import calql as _calql  # noqa: E402,F401
from rlft.algos import cpql as _cpql  # noqa: E402,F401
from rlft.algos import cql as _cql  # noqa: E402,F401
from rlft.algos import dqc as _dqc  # noqa: E402,F401
from rlft.algos import dsrl_awmle as _dsrl_awmle  # noqa: E402,F401
from rlft.algos import dsrl_na as _dsrl_na  # noqa: E402,F401
from rlft.algos import dsrl_ppo as _dsrl_ppo  # noqa: E402,F401
from rlft.algos import fql as _fql  # noqa: E402,F401
from rlft.algos import iql as _iql  # noqa: E402,F401
from rlft.algos import qc as _qc  # noqa: E402,F401
from rlft.algos import sac as _sac  # noqa: E402,F401
from rlft.algos import sac_offline as _sac_offline  # noqa: E402,F401
from rlft.algos import td3bc as _td3bc  # noqa: E402,F401

__all__ = ["ALGORITHMS", "AlgoConfig", "Algorithm", "CriticConfig", "PolicyConfig", "get_algorithm", "register"]
