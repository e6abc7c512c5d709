"""Algorithms: one file each, registered by name. ``make_algorithm(name, cfg, ...)`` builds one."""

from __future__ import annotations

from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, PolicyConfig

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


def _load_builtin() -> None:
    """Import every module of this package (each algorithm file registers itself with ``@register``)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "losses") and not info.name.startswith("_"):
            importlib.import_module(f"rlft.algos.{info.name}")


_load_builtin()

__all__ = ["ALGORITHMS", "AlgoConfig", "Algorithm", "CriticConfig", "PolicyConfig", "get_algorithm", "register"]
