"""A DSRL debugging checklist as code: ``rlft dsrl-check RUN_DIR`` prints PASS/FAIL per item.

The checklist comes from an unpublished off-policy DSRL implementation (docs/algorithms/dsrl_awmle.md,
docs/algorithms/dsrl_na.md); DSRL: Wagenmaker et al. 2025, "Steering Your Diffusion Policy with Latent Space RL".

It reads a run directory's ``metrics.jsonl`` (and ``config.yaml`` / the saved policy for the discount and the latent
dimension) and decides from the logged curves:

Stage 1 (a run that logged ``actor/q_policy`` -- the AW-MLE warm start):

* E[Q(s, pi_dp(s, w))] for w ~ pi_W above that for w ~ prior: the mean of ``actor/q_policy - actor/q_prior`` over the
  last ``TAIL`` fraction of log points is > 0 (after stage 1 the latent actor's noise should decode to chunks
  with higher Q values than the prior's noise).

Stage 2 (a run that logged ``critic/td_error`` and ``alpha/temperature`` -- DSRL-SAC, DSRL-NA):

1. td_error decreases: its mean over the last third of log points is below its mean over the first third;
2. q_mean rises without exploding: last-third mean above first-third mean, and ``|q_mean| <= Q_SLACK * r_max /
   (1 - gamma)`` at every log point (``r_max`` the per-step reward bound, ``--reward-bound``, 1 for cube-single).
   With negative rewards (OGBench: -1 per step until success) a fresh critic first *falls* from ~0 to the return
   scale, so a short run fails "rises" until the policy's returns improve;
3. alpha does not explode: ``alpha/temperature`` stays below ``ALPHA_FACTOR`` times its first logged value;
4. entropy does not collapse at once: over the first ``EARLY`` fraction of log points, ``actor/entropy`` stays above
   its first value minus ``ENTROPY_DROP_PER_DIM`` nats per latent dimension.

Curves too short to judge (fewer than ``MIN_POINTS`` log points) give SKIP. Exit status 1 when any item fails.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from rlft.errors import ConfigError

TAIL = 0.2
"""Stage 1: fraction of the last log points averaged for the Q comparison."""
Q_SLACK = 1.5
"""Stage 2: |q_mean| may exceed the largest possible return r_max / (1 - gamma) by this factor before it counts as
exploding (TD targets overshoot a little early in training)."""
ALPHA_FACTOR = 10.0
"""Stage 2: alpha 'explodes' when it exceeds this multiple of its first logged value."""
EARLY = 0.1
"""Stage 2: fraction of the first log points over which an instant entropy collapse is looked for."""
ENTROPY_DROP_PER_DIM = 1.0
"""Stage 2: largest tolerated early entropy drop, in nats per latent dimension."""
MIN_POINTS = 3
"""Fewest log points a curve needs to be judged."""


@dataclasses.dataclass
class CheckResult:
    item: str
    status: str  # PASS, FAIL or SKIP
    evidence: str

    def line(self) -> str:
        return f"[{self.status}] {self.item}: {self.evidence}"


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no metrics.jsonl (not an rlft run directory)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows if key in r and r[key] is not None and math.isfinite(r[key])], float)


def _thirds(x: np.ndarray) -> tuple[float, float]:
    n = max(1, len(x) // 3)
    return float(x[:n].mean()), float(x[-n:].mean())


def _latent_dim(run_dir: Path) -> int | None:
    """H * A of the trained actor (the latent actor of a steered policy), from the saved final policy."""
    from rlft.policies import load_policy
    from rlft.policies.steered import split_steered

    path = run_dir / "checkpoints" / "policy_final.safetensors"
    if not path.is_file():
        return None
    _, actor = split_steered(load_policy(path))
    return int(np.prod(actor.chunk_shape))


def _gamma(run_dir: Path) -> float:
    import yaml

    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        data = yaml.safe_load(cfg.read_text()) or {}
        return float((data.get("env") or {}).get("gamma", 0.99))
    return 0.99


def stage1_checks(rows: list[dict]) -> list[CheckResult]:
    qp, q0 = series(rows, "actor/q_policy"), series(rows, "actor/q_prior")
    n = min(len(qp), len(q0))
    if n < 1:
        return [CheckResult("E[Q] under pi_W above under the prior", "SKIP", "actor/q_policy not logged")]
    k = max(1, int(round(TAIL * n)))
    gap = float((qp[n - k : n] - q0[n - k : n]).mean())
    ok = gap > 0
    return [
        CheckResult(
            "stage 1: E[Q(s, pi_dp(s, w))] for w ~ pi_W above that for w ~ prior",
            "PASS" if ok else "FAIL",
            f"q_policy {qp[n - k : n].mean():.3f} vs q_prior {q0[n - k : n].mean():.3f} (gap {gap:+.3f}, last {k} log points)"
            + _extras(rows),
        )
    ]


def _extras(rows: list[dict]) -> str:
    parts = []
    for key in ("actor/eff_num", "actor/corr_A_logprob", "actor/nll_loss", "actor/kl_loss"):
        x = series(rows, key)
        if len(x):
            parts.append(f"{key.split('/')[1]} {x[0]:.3g} -> {x[-1]:.3g}")
    return "; " + ", ".join(parts) if parts else ""


def stage2_checks(rows: list[dict], gamma: float, reward_bound: float, latent_dim: int | None) -> list[CheckResult]:
    out = []
    td = series(rows, "critic/td_error")
    if len(td) < MIN_POINTS:
        out.append(CheckResult("td_error decreases", "SKIP", f"{len(td)} log points"))
    else:
        a, b = _thirds(td)
        out.append(
            CheckResult("td_error decreases", "PASS" if b < a else "FAIL", f"first third {a:.4g} -> last third {b:.4g}")
        )
    q = series(rows, "critic/q_mean")
    bound = Q_SLACK * reward_bound / (1.0 - gamma) if gamma < 1 else math.inf
    if len(q) < MIN_POINTS:
        out.append(CheckResult("q_mean rises without exploding", "SKIP", f"{len(q)} log points"))
    else:
        a, b = _thirds(q)
        peak = float(np.abs(q).max())
        ok = b > a and peak <= bound
        out.append(
            CheckResult(
                "q_mean rises without exploding",
                "PASS" if ok else "FAIL",
                f"first third {a:.4g} -> last third {b:.4g}; max |q_mean| {peak:.4g} "
                f"(bound {bound:.4g} = {Q_SLACK} * {reward_bound} / (1 - {gamma}))",
            )
        )
    alpha = series(rows, "alpha/temperature")
    if len(alpha) < MIN_POINTS:
        out.append(CheckResult("alpha does not explode", "SKIP", f"{len(alpha)} log points"))
    else:
        ok = float(alpha.max()) <= ALPHA_FACTOR * float(alpha[0])
        out.append(
            CheckResult(
                "alpha does not explode",
                "PASS" if ok else "FAIL",
                f"first {alpha[0]:.4g}, max {alpha.max():.4g}, last {alpha[-1]:.4g} (limit {ALPHA_FACTOR} x first)",
            )
        )
    ent = series(rows, "actor/entropy")
    if len(ent) < MIN_POINTS:
        out.append(CheckResult("entropy does not collapse at once", "SKIP", f"{len(ent)} log points"))
    else:
        k = max(2, int(math.ceil(EARLY * len(ent))))
        dim = latent_dim if latent_dim is not None else 1
        floor = float(ent[0]) - ENTROPY_DROP_PER_DIM * dim
        early_min = float(ent[:k].min())
        out.append(
            CheckResult(
                "entropy does not collapse at once",
                "PASS" if early_min >= floor else "FAIL",
                f"first {ent[0]:.4g}, min over the first {k} log points {early_min:.4g} (floor "
                f"{floor:.4g} = first - {ENTROPY_DROP_PER_DIM} x {dim} latent dims), last {ent[-1]:.4g}",
            )
        )
    return out


def dsrl_checklist(run_dir: str | Path, reward_bound: float = 1.0) -> list[CheckResult]:
    """Run the checklist items that apply to the run's logged metrics (see the module docstring)."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    keys = {k for r in rows for k in r}
    results: list[CheckResult] = []
    if "actor/q_policy" in keys:
        results += stage1_checks(rows)
    if "critic/td_error" in keys and "alpha/temperature" in keys:
        results += stage2_checks(rows, _gamma(run_dir), reward_bound, _latent_dim(run_dir))
    if not results:
        raise ConfigError(
            f"{run_dir}: logged neither stage-1 (actor/q_policy) nor stage-2 (critic/td_error, "
            f"alpha/temperature) metrics"
        )
    return results


def print_checklist(run_dirs: list[str], reward_bound: float = 1.0) -> bool:
    """Print the checklist of each run directory; True if any item fails (``rlft dsrl-check``)."""
    failed = False
    for d in run_dirs:
        print(f"{d}:")
        for r in dsrl_checklist(d, reward_bound):
            print("  " + r.line())
            failed = failed or r.status == "FAIL"
    return failed
