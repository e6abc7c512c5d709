"""Expert-data collection: ``run_collect(CollectConfig) -> Path`` (also ``python -m rlft.collect --help``).

One collector per expert, chosen by the env's family (``COLLECTORS``) or by ``mode='policy'``:
``rlft.collect.oracle`` (OGBench's scripted oracles), ``rlft.collect.maniskill`` (ManiSkill's motion planner),
``rlft.collect.policy`` (rollouts of a trained rlft policy). Every collector writes the same dataset format.

Every collector runs its episodes in worker processes on all cores. Attempt ``i`` is a pure function of
``(seed, i)`` (``episode_seed``), so the dataset does not depend on the number of workers; with ``only_success`` the
first ``num_episodes`` successful attempts *in index order* are kept. Datasets are written atomically
(``rlft.data.h5io``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rlft.collect.common import CollectConfig, episode_seed
from rlft.errors import RlftError

__all__ = ["COLLECTORS", "CollectConfig", "episode_seed", "main", "run_collect"]


def _oracle(cfg: CollectConfig) -> Path:
    from rlft.collect.oracle import run_collect_oracle

    return run_collect_oracle(cfg)


def _maniskill(cfg: CollectConfig) -> Path:
    from rlft.collect.maniskill import run_collect_maniskill

    return run_collect_maniskill(cfg)


COLLECTORS: dict[str, Callable[[CollectConfig], Path]] = {"ogbench": _oracle, "maniskill": _maniskill}
"""The expert of each env family (``rlft.envs.ENV_FAMILIES`` names); a new family adds its collector here."""


def run_collect(cfg: CollectConfig) -> Path:
    """Collect ``cfg.num_episodes`` episodes and write them to ``cfg.out`` (h5 + json sidecar); return the path."""
    from rlft.envs import env_family

    if cfg.mode == "policy" or cfg.policy is not None:
        from rlft.collect.policy import run_collect_policy

        return run_collect_policy(cfg)
    family = env_family(cfg.env_id).name
    if cfg.mode == "mpc" and family != "ogbench":
        from rlft.errors import ConfigError

        raise ConfigError(f"collect.mode: the MPC expert plans OGBench cube tasks only, not {cfg.env_id}")
    return COLLECTORS[family](cfg)


def main(argv: list[str] | None = None) -> None:
    import sys

    import tyro

    cfg = tyro.cli(CollectConfig, args=argv, description=__doc__)
    try:
        run_collect(cfg)
    except RlftError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
