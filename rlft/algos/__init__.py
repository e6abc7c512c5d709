"""Algorithms: one file each, registered by name. ``make_algorithm(name, cfg, ...)`` builds one."""

from __future__ import annotations

from rlft.algos.base import AlgoConfig, Algorithm, PolicyConfig

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    ALGORITHMS[cls.name] = cls
    return cls


def get_algorithm(name: str) -> type[Algorithm]:
    from rlft.errors import ConfigError

    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}'; available: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def _load_builtin() -> None:
    import importlib

    for mod in ("bc", "iql", "sac"):
        importlib.import_module(f"rlft.algos.{mod}")


_load_builtin()

__all__ = ["ALGORITHMS", "AlgoConfig", "Algorithm", "PolicyConfig", "get_algorithm", "register"]
