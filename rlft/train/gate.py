"""The deploy gate of ``rlft pipeline``: which stage's policy ships, and which stages regressed.

Every stage of a pipeline is evaluated at its end on the same fixed evaluation seeds (``eval.seed + i``, ``i <
eval.num_episodes``). For stage s with k_s successes in n_s episodes:

* its 95 % interval is Wilson's score interval (Wilson, 1927), which stays inside [0, 1] and is accurate at the
  rates near 0 and 1 that matter here;
* stage s **regresses** from an earlier stage e when the 95 % interval of the difference p_s - p_e lies entirely below
  0, the interval being Newcombe's hybrid score interval built from the two Wilson intervals (Newcombe, 1998,
  method 10):  L = d - sqrt((p_s - l_s)^2 + (u_e - p_e)^2),  U = d + sqrt((u_s - p_s)^2 + (p_e - l_e)^2);
* the **deployed** stage is the one with the highest success rate, the later stage on a tie (the more trained
  policy), so a regression is never deployed: a regressed stage is below the stage it regressed from.

Stages without an evaluation (``eval.num_episodes: 0``) take no part.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054
"""Two-sided 95 % normal quantile."""


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n: ``(centre -+ half) / (1 + z^2/n)`` with
    ``centre = p + z^2 / (2n)``, ``half = z sqrt(p (1 - p) / n + z^2 / (4 n^2))``."""
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be > 0, got {n}")
    p = k / n
    denom = 1.0 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def difference_interval(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Newcombe's 95 % interval of p1 - p2 from the two Wilson intervals (module docstring)."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


#: two-sided 95 % quantiles of Student's t with 1..30 degrees of freedom
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def mean_interval(
    values: list[float], bounds: tuple[float, float] = (-math.inf, math.inf)
) -> tuple[float, float, float] | None:
    """Mean over seeds with its 95 % Student-t interval, ``mean -+ t_{0.975, n-1} s / sqrt(n)`` (s: the sample
    standard deviation; beyond 30 seeds the normal quantile), clipped to ``bounds`` (a success rate's [0, 1]); None
    for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = (_T975[n - 2] if n - 1 <= len(_T975) else Z95) * s / math.sqrt(n)
    return mean, max(bounds[0], mean - half), min(bounds[1], mean + half)


def gate(stages: list[dict]) -> dict:
    """``stages``: dicts with ``stage``, ``successes``, ``episodes`` (evaluated stages, in pipeline order).

    Returns ``{"deployed": name, "intervals": {name: (lo, hi)}, "regressions": [{"stage", "from", "diff",
    "interval"}]}``; ``deployed`` is None when no stage was evaluated."""
    ev = [s for s in stages if s.get("episodes")]
    out: dict = {"deployed": None, "intervals": {}, "regressions": []}
    best = None
    for i, s in enumerate(ev):
        k, n = int(s["successes"]), int(s["episodes"])
        out["intervals"][s["stage"]] = wilson_interval(k, n)
        # one line per regressed stage, against the best earlier stage it is worse than (the largest drop)
        worse = []
        for e in ev[:i]:
            lo, hi = difference_interval(k, n, int(e["successes"]), int(e["episodes"]))
            if hi < 0:
                worse.append(
                    {
                        "stage": s["stage"],
                        "from": e["stage"],
                        "diff": k / n - int(e["successes"]) / int(e["episodes"]),
                        "interval": (lo, hi),
                    }
                )
        if worse:
            out["regressions"].append(min(worse, key=lambda r: r["diff"]))
        if best is None or k / n >= best[1]:
            best = (s["stage"], k / n)
    out["deployed"] = best[0] if best else None
    return out
