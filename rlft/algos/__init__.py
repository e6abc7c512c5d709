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
    """Import every module of this package (each algorithm file registers itself with ``@register``)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "losses") and not info.name.startswith("_"):
            importlib.import_module(f"rlft.algos.{info.name}")


_load_builtin()

__all__ = ["ALGORITHMS", "AlgoConfig", "Algorithm", "PolicyConfig", "get_algorithm", "register"]
