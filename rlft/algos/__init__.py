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


def import_plugins(specs: list[str] | tuple[str, ...], base_dir: str | None = None) -> list[str]:
    """Import algorithm files from outside rlft so that their ``@register`` runs: each spec is a ``.py`` path
    (relative ones are looked up in ``base_dir`` -- e.g. the folder of the YAML naming them -- then in the working
    directory) or an importable module name. Importing the same file twice is a no-op. Returns the specs with files
    as absolute paths (what a saved config should record)."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    from rlft.errors import ConfigError

    resolved = []
    for spec in specs:
        if not spec.endswith(".py"):
            try:
                importlib.import_module(spec)
            except ImportError as e:
                raise ConfigError(f"plugins: cannot import module {spec!r}: {e}") from None
            resolved.append(spec)
            continue
        candidates = [Path(base_dir) / spec] if base_dir and not Path(spec).is_absolute() else []
        path = next((c for c in [*candidates, Path(spec)] if c.is_file()), None)
        if path is None:
            raise ConfigError(
                f"plugins: file not found: {spec}"
                + (f" (looked in {base_dir} and the working directory)" if base_dir else "")
            )
        path = path.resolve()
        resolved.append(str(path))
        name = "rlft_plugin_" + "_".join(path.with_suffix("").parts[1:]).replace("-", "_").replace(".", "_")
        if name in sys.modules:
            continue
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise ConfigError(f"plugins: {path} failed to import: {type(e).__name__}: {e}") from e
    return resolved


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

__all__ = [
    "ALGORITHMS",
    "AlgoConfig",
    "Algorithm",
    "CriticConfig",
    "PolicyConfig",
    "get_algorithm",
    "import_plugins",
    "register",
]
