"""Automatic diagnosis of a run's metric curves: the failure modes a person finds by reading loss pages
(e.g. those of the offline SAC study in docs/algorithms/sac_offline.md).

Each rule is a small function ``rule(m: Metrics, ctx: dict) -> list[Finding]`` over the logged series. A finding
carries its evidence (which metric, at which step, by how much) and the explanation a person would give. Rules only
read metrics by their logged names (``critic/q_mean``, ``alpha/temperature``, ``actor/iql_weights_max``, ...; a
``*suffix`` pattern matches any algorithm's variant, e.g. ``*weights_max`` for IQL's and AWR's) and the context of
the run (``ctx``):

* ``algo``, ``mode``, ``algo_cfg`` (the algorithm's config dict: ``max_weight``, ``beta``, ``batch_size`` ...),
* ``act_horizon``, ``action_dim`` (chunk dimensions D = H * A, for per-dimension entropy), ``gamma``,
* ``init_policy``: the policy file the run started from (None: a fresh policy);
* ``start_success`` / ``start_source``: final success of the policy the run started from, when known.

No rule branches on the algorithm's name: a rule applies when the metrics it reads were logged.

The thresholds are the module constants below; each says what it means. ``diagnose(m, ctx)`` runs every rule;
``LiveDiagnosis`` runs them on the growing series during training (each rule fires at most once per run, and only
with an 'error' or 'warning' finding: 'info' is for the report).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from rlft.report.runs import Metrics

# ---------------------------------------------------------------------------------------------------------------
# thresholds (documented constants)
# ---------------------------------------------------------------------------------------------------------------
TEMP_GROWTH_FACTOR = 5.0
"""Temperature explosion: alpha reaches this multiple of its first logged value (offline SAC on
8 x 7 chunks with the auto target entropy: 1 -> 15)."""
ENTROPY_DROP_PER_DIM = 0.75
"""Entropy collapse: the entropy falls this many nats per chunk dimension below its running maximum (offline
pure SAC on 8 x 7 chunks: +10 -> -40 nats over 56 dims = 0.9 per dim)."""
ENTROPY_RISE_PER_DIM = 0.5
"""Policy widening without temperature: a pretrained policy's entropy rises this many nats per dimension above its
running minimum while alpha does not rise."""
ENTROPY_ABS_FALLBACK = 20.0
"""Entropy thresholds in nats per chunk when the chunk dimension is unknown."""
ACTOR_Q_GAP_REL = 0.5
"""Q overestimation: actor_q - q_mean (Q of the policy's actions minus Q of the data's) exceeds this fraction of
max(|q_mean|, Q_SCALE_FLOOR)..."""
ACTOR_Q_MIN_CONSECUTIVE = 2
"""...on this many consecutive log points."""
Q_SCALE_FLOOR = 1.0
"""Smallest Q magnitude used to normalise Q gaps (avoids dividing by ~0 at initialisation)."""
Q_GROWTH_FACTOR = 10.0
"""Unbounded Q: |q_mean| or |actor_q| grows, in the second half of the run, to this multiple of its median over the
second quarter (the first quarter is left out: a fresh critic starting near 0 grows to the return scale)..."""
Q_GROWTH_ABS_MIN = 10.0
"""...reaches at least this magnitude, and is still growing over the last Q_GROWTH_LAST_LOGS log points."""
Q_GROWTH_LAST_LOGS = 3
"""Unbounded Q: the magnitude must have grown at each of this many last log points (not a one-off spike)."""
LAMBDA_DROP_FACTOR = 0.2
"""TD3+BC lambda collapse: actor_lam falls to this fraction of its first logged value (e.g. 0.35 -> ~0.01)..."""
LAMBDA_Q_GROWTH = 5.0
"""...while |actor_q| (where logged) has grown to at least this multiple of its first logged value: the fall comes from
the Q values of the policy's actions growing (e.g. 5 -> 100), not from a critic settling at a smaller scale."""
BOX_ENTROPY_FRACTION = 0.9  # entropy_at_box_maximum: median late entropy >= this x d log 2
BOX_ENTROPY_MIN_LOGS = 8
"""entropy_at_box_maximum judges a run only once its entropy has this many log points (live: not in the first few)."""
BOX_ENTROPY_LEAVING = 0.002
"""...and only while the entropy is not coming down: a fall over the second half of more than this x d log 2 (mean of
its first two points to the mean of its last two) is the temperature doing its job -- a fresh actor leaving the box
maximum -- not an actor stuck there."""
UNIFORM_WEIGHT_RATIO = 2.0
"""Near-uniform advantage weights: median of weights_max / weights_mean over the second half of the run below this
(the largest weight in a batch is less than twice the mean: every sample is imitated almost equally)."""
WEIGHT_CLIP_HIT = 0.99
"""Weight saturation: the batch's max weight counts as "at the clip" from this fraction of max_weight on."""
WEIGHT_NEAR_CLIP = 0.5
"""Weight saturation: a weight within this fraction of the clip (w >= 0.5 * max_weight, i.e. an advantage within
log 2 / beta of the clip's) counts as near the clip: the ranking among such chunks is compressed to a factor < 2."""
WEIGHT_SATURATED_FRACTION = 0.25
"""Weight saturation fires when at least this fraction of the batch is *provably* near the clip. The logged max and
mean only bound it: every weight is <= max_weight = c, so the fraction with w >= x * c is at least
(mean / c - x) / (1 - x) (x = WEIGHT_NEAR_CLIP); >= 0.25 means mean >= 0.625 * c. Conversely, at most mean / c of the
batch can sit at the clip at all. A max *at* the clip says nothing on its own: the max of exp(beta * A) over a batch
is an extreme order statistic, and clipping the few highest-advantage chunks is what the clip is for (IQL, Kostrikov
et al. 2022: exp(beta * A) clipped at 100, beta 3-10; AWR, Peng et al. 2019: clipped at 20). On a mixture of
task demos and play data the healthy default (beta 3, clip 100) has max ~99-100 with mean ~3-11: the clip binds on at
most 3-11% of the batch -- the weights picking the few task-directed chunks, which is what makes IQL work there."""
WEIGHT_DOMINANT_SHARE = 0.5
"""Weight dominance: the largest weight carries at least this share of the batch's total weight,
share = weights_max / (batch_size * weights_mean). With share s the batch's effective sample size
(Kish: (sum w)^2 / sum w^2) lies in [1 / s, 1 / s^2], so s >= 0.5 guarantees at most 4 effective samples: each
update imitates a handful of chunks, and any critic error in their advantage is copied straight into the actor. The
healthy default (batch 256, max ~100, mean ~1-11) has s ~0.04-0.2 (at least 5, typically tens of effective samples).
Needs the batch size (algo_cfg.batch_size); without it max / mean alone bounds nothing and the rule stays silent."""
WEIGHT_MIN_LOG_FRACTION = 0.25
"""Weight outliers (saturation or dominance) must hold on at least this fraction of log points..."""
WEIGHT_MIN_HITS = 2
"""...and on at least this many (one interval's batch statistics are not a pattern)."""
QSTD_GROWTH_FACTOR = 3.0
"""Critic ensemble divergence: critic/q_std grows to this multiple of its running minimum..."""
QSTD_REL_MIN = 0.05
"""...and exceeds this fraction of max(|q_mean|, Q_SCALE_FLOOR)."""
TD_MIN_LOGS = 8
"""TD error not decreasing: needs at least this many log points. The TD error is read relative to the target's
scale, rel = td_error / max(|td_target_mean|, 1): a fresh critic growing to the return scale (the offline IQL stage:
targets -16 -> -56) raises the raw error while fitting better, and the targets keep moving online."""
TD_STALL_RATIO = 0.9
"""The relative TD error counts as not decreasing when the median over the last quarter of the log points is at least
this multiple of *both* the median over the first quarter and the median over the first TD_HEAD_LOGS log points (it
fell by less than 10% from either). The first points matter on their own: a critic fits most of a new data
distribution within a few log intervals (the online stage starts with the TD error jumping as the policy's own
rollouts enter the replay -- the recorded default pipeline: 1.16 at the end of offline IQL, 3.28 at the first online
log, 1.5 four logs later), so a quarter-window of a long run already sits on the plateau and comparing it with
the last quarter compares plateau with plateau."""
TD_HEAD_LOGS = 3
"""Number of first log points whose median is the TD error's starting level (a median of three: one noisy interval
neither makes nor hides the start)."""
TD_REL_UNFIT = 0.1
"""...and only when the critic does not fit its targets: the last quarter's median relative TD error is at least this
(the Bellman residual is >= 10% of the value being predicted). A fitted critic's TD error does not go to zero: with
sampled targets E(y - Q)^2 = (Bellman error)^2 + Var[y | s, a] (Sutton & Barto 2018, sec. 11.5), and the variance
(stochastic next states, an open-loop chunk's outcome, the replay changing online) is irreducible, so a flat TD error
at a few per cent of the target is a converged critic, not a stalled one (the recorded default pipeline: 2-3%, 6% at
the first online log). The failures this rule is for sit near 1 (a critic that learns nothing: |y - Q| ~ |y|; a
tiny online replay chasing its own targets: 0.93)."""
MIN_LOGS_TREND = 4
"""Trend rules over the second half of a run (near-uniform weights) need at least this many log points."""
STUCK_MIN_EVALS = 3
"""Success stuck at zero: at least this many evaluations, all with success_once == 0."""
SUCCESS_DROP_MIN = 0.1
"""Success regression: the drop must be at least this (absolute) and at least SUCCESS_DROP_SE standard errors of
the difference of two success rates (binomial, from eval/num_episodes)."""
SUCCESS_DROP_SE = 2.0

Q_RANGE_MARGIN = 0.5
"""Q out of range: a value estimate counts as impossible when it lies outside the range the rewards and gamma allow,
[min(0, r_min), max(0, r_max)] / (1 - gamma) (widened by the soft backup's alpha * |entropy| / (1 - gamma) where a
temperature is logged), by more than this fraction of the range's width (at least 1). A fitted critic stays inside;
critic lr 1e3-1e5 put q_mean at 4.7e3-4.7e5 on rewards in [-1, 0] (range [-100, 0])."""
LOSS_EXPLOSION_FACTOR = 1e3
"""Loss explosion: a logged ``*loss`` whose magnitude exceeds this multiple of its starting level (the smaller of
the median of its first TD_HEAD_LOGS log points and, live, its value at the run's first update; at least 1): three orders of magnitude is divergence, not learning (actor lr 10 gave a
flow bc_loss of 5.6e9 where it starts near 1)."""
DIVERGENCE_RULES = ("nonfinite", "q_out_of_range", "loss_explosion")
"""The rules whose findings mean the run diverged: ``run.stop_on_divergence`` stops a run on them."""

SEVERITIES = ("error", "warning", "info")
LIVE_SEVERITIES = ("error", "warning")
"""Severities the live diagnosis announces during training (info findings only appear in reports)."""


@dataclasses.dataclass
class Finding:
    """One diagnosed failure mode."""

    rule: str
    """Rule id (e.g. 'temperature_explosion')."""
    severity: str
    """'error' (the run is broken), 'warning' (a known failure mode), 'info' (worth knowing)."""
    step: int
    """Step at which the rule's condition first held."""
    metric: str
    """The main metric the evidence is about."""
    title: str
    """One line: what happened."""
    evidence: str
    """The numbers: which metric, at which step, by how much."""
    explanation: str
    """Why it happens and what to do, as a person reading the curves would put it."""
    run: str = ""
    """Run name (filled in by reports)."""

    def one_line(self) -> str:
        return f"{self.rule} at step {self.step}: {self.title} ({self.evidence})"


Rule = Callable[[Metrics, dict], list[Finding]]
RULES: dict[str, Rule] = {}


def rule(name: str):
    def deco(fn: Rule) -> Rule:
        RULES[name] = fn
        fn.rule_name = name  # type: ignore[attr-defined]
        return fn

    return deco


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def g(x: float) -> str:
    """Compact number formatting for evidence strings."""
    if x is None or not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{x:.2e}"
    return f"{x:.3g}" if a < 100 else f"{x:.0f}"


def _chunk_dims(ctx: dict) -> int | None:
    h, a = ctx.get("act_horizon"), ctx.get("action_dim")
    return int(h) * int(a) if h and a else None


def _at(m: Metrics, name: str | None, step: int) -> float | None:
    """Value of ``name`` at the last log point at or before ``step`` (None if none)."""
    if name is None:
        return None
    s, v = m.series(name)
    idx = np.nonzero(s <= step)[0]
    return float(v[idx[-1]]) if len(idx) else None


def _finite(s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(v)
    return s[ok], v[ok]


def _entropy_name(m: Metrics) -> str | None:
    return m.find("alpha/entropy", "actor/entropy", "*/entropy")


def _has_rl_signal(m: Metrics) -> bool:
    """An actor trained against a critic or with a temperature (not plain likelihood BC)."""
    return m.find("*actor_q", "alpha/temperature", "*/temperature", "*weights_mean", "*actor_lam") is not None


def _per_dim(ctx: dict, per_dim: float) -> tuple[float, str]:
    d = _chunk_dims(ctx)
    if d:
        return per_dim * d, f"{per_dim:g} nats/dim x {d} dims"
    return ENTROPY_ABS_FALLBACK, f"{ENTROPY_ABS_FALLBACK:g} nats (chunk dimension unknown)"


# ---------------------------------------------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------------------------------------------
@rule("nonfinite")
def nonfinite(m: Metrics, ctx: dict) -> list[Finding]:
    first: tuple[int, str, float] | None = None
    bad = []
    for name in m.names:
        s, v = m.series(name)
        idx = np.nonzero(~np.isfinite(v))[0]
        if len(idx):
            bad.append(name)
            if first is None or s[idx[0]] < first[0]:
                first = (int(s[idx[0]]), name, float(v[idx[0]]))
    if first is None:
        return []
    step, name, val = first
    others = f"; also non-finite: {', '.join(sorted(set(bad) - {name}))}" if len(bad) > 1 else ""
    return [
        Finding(
            "nonfinite",
            "error",
            step,
            name,
            f"{name} became {val}",
            f"{name} = {val} at step {step}{others}",
            "A NaN/inf in a loss or statistic means the optimisation diverged (exploding Q targets, "
            "log-probabilities of actions at the tanh boundary, a zero-variance normaliser); everything "
            "logged after it is meaningless. Lower the learning rates, check the data's action range and "
            "normalisation, and look at which metric went first.",
        )
    ]


def q_bounds(ctx: dict, m: Metrics | None = None) -> tuple[float, float] | None:
    """``(lo, hi)``: the values a Q or V estimate can take given ``ctx['reward_range']`` and ``ctx['gamma']``, plus the
    soft backup's entropy bonus when ``m`` logs a temperature and an entropy; None when either is unknown."""
    rr, gamma = ctx.get("reward_range"), ctx.get("gamma")
    if not rr or not gamma or not 0 < gamma < 1:
        return None
    lo, hi = min(0.0, float(rr[0])) / (1 - gamma), max(0.0, float(rr[1])) / (1 - gamma)
    if m is not None:
        tn, en = m.find("alpha/temperature", "*/temperature"), m.find("actor/entropy", "alpha/entropy", "*/entropy")
        if tn and en:
            _, t = _finite(*m.series(tn))
            _, e = _finite(*m.series(en))
            if len(t) and len(e):
                soft = float(np.max(np.abs(t))) * float(np.max(np.abs(e))) / (1 - gamma)
                lo, hi = lo - soft, hi + soft
    return lo, hi


@rule("q_out_of_range")
def q_out_of_range(m: Metrics, ctx: dict) -> list[Finding]:
    bounds = q_bounds(ctx, m)
    if bounds is None:
        return []
    lo, hi = bounds
    margin = max(Q_RANGE_MARGIN * (hi - lo), 1.0)
    names = [
        n
        for n in (
            m.find("critic/q_mean", "*/q_mean"),
            m.find("critic/td_target_mean", "*/td_target_mean"),
            m.find("critic/v_mean", "*/v_mean"),
            m.find("actor/actor_q", "*actor_q"),
        )
        if n
    ]
    first: tuple[int, str, float] | None = None
    for name in names:
        s, v = _finite(*m.series(name))
        idx = np.nonzero((v < lo - margin) | (v > hi + margin))[0]
        if len(idx) and (first is None or s[idx[0]] < first[0]):
            first = (int(s[idx[0]]), name, float(v[idx[0]]))
    if first is None:
        return []
    step, name, val = first
    rr = ctx["reward_range"]
    return [
        Finding(
            "q_out_of_range",
            "error",
            step,
            name,
            f"{name} left the range the rewards allow",
            f"{name} = {g(val)} at step {step}; rewards in [{g(rr[0])}, {g(rr[1])}] with gamma {ctx['gamma']} allow "
            f"[{g(lo)}, {g(hi)}]",
            "No return can be worth this: the critic diverged (a learning rate too high for the critic, bootstrapping "
            "from its own overestimates, or rewards on another scale than the data's). Everything trained on this critic "
            "since is suspect. Lower the critic lr, check the reward scale and the terminal masking; "
            "run.stop_on_divergence stops such a run at once, keeping its last checkpoint.",
        )
    ]


@rule("loss_explosion")
def loss_explosion(m: Metrics, ctx: dict) -> list[Finding]:
    for name in sorted(n for n in m.names if n.rsplit("/", 1)[-1].endswith("loss")):
        s, v = _finite(*m.series(name))
        if len(v) <= TD_HEAD_LOGS:
            continue
        start = float(np.median(np.abs(v[:TD_HEAD_LOGS])))
        first = (ctx.get("first_update") or {}).get(name)  # the very first update's value, when the trainer knows it
        if first is not None and math.isfinite(first):  # (a loss can explode within the first log interval)
            start = min(start, abs(float(first)))
        start = max(start, 1.0)
        idx = np.nonzero(np.abs(v) > LOSS_EXPLOSION_FACTOR * start)[0]
        if len(idx):
            i = int(idx[0])
            return [
                Finding(
                    "loss_explosion",
                    "error",
                    int(s[i]),
                    name,
                    f"{name} exploded",
                    f"|{name}| {g(start)} at the start -> {g(v[i])} at step {s[i]} "
                    f"(x{g(abs(v[i]) / start)}, threshold x{g(LOSS_EXPLOSION_FACTOR)})",
                    "A loss three orders of magnitude above where it started means the optimisation diverged (a "
                    "learning rate far too high, or targets that blew up); the weights are no longer a policy or a critic "
                    "worth keeping. Lower the learning rates; run.stop_on_divergence stops such a run at once, keeping "
                    "its last checkpoint.",
                )
            ]
    return []


@rule("temperature_explosion")
def temperature_explosion(m: Metrics, ctx: dict) -> list[Finding]:
    name = m.find("alpha/temperature", "*/temperature")
    if name is None:
        return []
    s, t = _finite(*m.series(name))
    if len(t) < 2 or t[0] <= 0:
        return []
    hit = np.nonzero(t >= TEMP_GROWTH_FACTOR * t[0])[0]
    if not len(hit):
        return []
    i = int(hit[0])
    step = int(s[i])
    ev = f"{name} {g(t[0])} (step {s[0]}) -> {g(t[i])} at step {step} (x{g(t[i] / t[0])}; peak {g(t.max())})"
    ent_n, tgt_n = _entropy_name(m), m.find("alpha/target_entropy", "*/target_entropy")
    ent, tgt = _at(m, ent_n, step), _at(m, tgt_n, step)
    sign_txt = ""
    if ent is not None and tgt is not None:
        gap = tgt - ent  # = E[log pi] + H_target
        ev += f"; entropy {g(ent)} vs target {g(tgt)}: log_prob + target_entropy = {gap:+.3g}"
        d = _chunk_dims(ctx)
        if d:
            ev += f" ({gap / d:+.2f} per dim over {d} dims)"
        if gap > 0:
            sign_txt = (
                f"Here log_prob + target_entropy = {gap:+.3g} > 0 (the policy's entropy {g(ent)} is below the "
                f"target {g(tgt)}), so the temperature loss -log(alpha) * (log_prob + target_entropy) pushes "
                f"alpha up at every step. "
            )
        else:
            sign_txt = (
                f"At this step log_prob + target_entropy = {gap:+.3g} <= 0, so alpha is no longer pushed up; "
                f"the growth came from an earlier phase where the entropy was below the target. "
            )
    d = _chunk_dims(ctx)
    dim_txt = f" For this {d}-dimensional chunk the textbook target -dim is {-d}." if d else ""
    return [
        Finding(
            "temperature_explosion",
            "warning",
            step,
            name,
            f"temperature exploded (x{g(t[i] / t[0])})",
            ev,
            sign_txt + "Alpha only stops growing once the entropy reaches the target. If the actor cannot raise its "
            "entropy -- its log-std sits at a bound, a BC/advantage-weighted term pulls it narrow, or alpha does not "
            "enter the actor's main loss term at all (IQL/AWR with an added entropy bonus) -- alpha grows "
            "without bound and the entropy term swamps Q. The auto target -dim is unreachable for a narrow "
            "(BC-pretrained) chunk policy." + dim_txt + " Use a reachable target (rlft's sac default: "
            "min(-0.5 * dim, the starting policy's entropy)), a fixed alpha, or no entropy term for weighted-BC actors.",
        )
    ]


@rule("entropy_collapse")
def entropy_collapse(m: Metrics, ctx: dict) -> list[Finding]:
    name = _entropy_name(m)
    if name is None or not _has_rl_signal(m):
        return []
    s, e = _finite(*m.series(name))
    if len(e) < 2:
        return []
    thr, thr_txt = _per_dim(ctx, ENTROPY_DROP_PER_DIM)
    run_max = np.maximum.accumulate(e)
    hit = np.nonzero(run_max - e >= thr)[0]
    if not len(hit):
        return []
    i = int(hit[0])
    step = int(s[i])
    jmax = int(np.argmax(e[: i + 1]))
    ev = (
        f"{name} {g(e[jmax])} (step {s[jmax]}) -> {g(e[i])} at step {step} (drop {g(e[jmax] - e[i])}; "
        f"threshold {thr_txt}); final {g(e[-1])}"
    )
    tgt = _at(m, m.find("alpha/target_entropy", "*/target_entropy"), step)
    t_name = m.find("alpha/temperature", "*/temperature")
    t0, t1 = _at(m, t_name, int(s[0])), _at(m, t_name, int(s[-1]))
    if tgt is not None and e[-1] >= tgt - thr / 4 and t0 is not None and t1 is not None and t1 <= t0:
        return []  # a wide initial policy settling at its entropy target while alpha falls: the target at work
    if tgt is not None:
        ev += f"; target_entropy {g(tgt)}"
    return [
        Finding(
            "entropy_collapse",
            "warning",
            step,
            name,
            f"policy entropy collapsed to {g(e[i])}",
            ev,
            "The actor's distribution shrank onto a narrow region: the Q-term drove it to the actions the critic "
            "overvalues (pure SAC offline, e.g. entropy +10 -> -40), or the weighted-likelihood term fits the "
            "mean of near-deterministic data. A collapsed chunk policy no longer explores and its log-probabilities "
            "become huge, which also feeds a temperature explosion. Anchor to the data (BC term) or keep a reachable "
            "entropy target.",
        )
    ]


@rule("entropy_at_box_maximum")
def entropy_at_box_maximum(m: Metrics, ctx: dict) -> list[Finding]:
    name, t_name = _entropy_name(m), m.find("alpha/temperature", "*/temperature")
    d = _chunk_dims(ctx)
    if name is None or t_name is None or not d:
        return []
    s, e = _finite(*m.series(name))
    if len(e) < BOX_ENTROPY_MIN_LOGS:
        return []
    h_max = d * math.log(2.0)  # differential entropy of the uniform distribution on the action box [-1, 1]^d
    late = e[len(e) // 2 :]
    if float(np.median(late)) < BOX_ENTROPY_FRACTION * h_max:
        return []
    if float(np.mean(late[:2]) - np.mean(late[-2:])) > BOX_ENTROPY_LEAVING * h_max:
        return []
    step = int(s[len(e) // 2])
    t0, t1 = _at(m, t_name, int(s[0])), _at(m, t_name, int(s[-1]))
    q_n = m.find("critic/q_mean", "*/q_mean")
    q1 = _at(m, q_n, int(s[-1]))
    ev = (
        f"{name} median {g(float(np.median(late)))} over the second half of training (from step {step}) vs "
        f"{g(h_max)} = {d} dims x log 2, the maximum for actions in [-1, 1]^{d}; {t_name} {g(t0)} -> {g(t1)}"
    )
    if q1 is not None:
        ev += f"; {q_n} {g(q1)} at the end"
    return [
        Finding(
            "entropy_at_box_maximum",
            "warning",
            step,
            name,
            "the policy stays uniform over the action box",
            ev,
            "The entropy term outweighs the critic: with alpha this large, spreading the chunk uniformly over [-1, 1] "
            "earns more soft value than any action the critic prefers, so the actor never leaves its initial "
            "maximum-entropy state (its BC/likelihood term cannot pull it in either). The soft Q then carries "
            "alpha * H / (1 - gamma) of entropy bonus, which is why q_mean can sit far above what the rewards allow. "
            "Start from a small temperature (init_temperature 0.01-0.1), raise temperature_lr, or drop the entropy "
            "bonus from the backup.",
        )
    ]


@rule("entropy_rise")
def entropy_rise(m: Metrics, ctx: dict) -> list[Finding]:
    name = _entropy_name(m)
    if name is None or not _has_rl_signal(m) or not ctx.get("init_policy"):
        return []  # a fresh policy's entropy moves a lot while it first fits; this rule is about pretrained ones
    s, e = _finite(*m.series(name))
    if len(e) < 3:
        return []
    thr, thr_txt = _per_dim(ctx, ENTROPY_RISE_PER_DIM)
    run_min = np.minimum.accumulate(e)
    hit = np.nonzero(e - run_min >= thr)[0]
    if not len(hit):
        return []
    i = int(hit[0])
    jmin = int(np.argmin(e[: i + 1]))
    t_name = m.find("alpha/temperature", "*/temperature")
    t0, t1 = _at(m, t_name, int(s[jmin])), _at(m, t_name, int(s[i]))
    if t0 is not None and t1 is not None and t1 > t0:
        return []  # the temperature is widening the policy: that is the entropy target at work, not this failure
    step = int(s[i])
    ev = f"{name} {g(e[jmin])} (step {s[jmin]}) -> {g(e[i])} at step {step} (+{g(e[i] - e[jmin])}; threshold {thr_txt})"
    if t0 is not None and t1 is not None:
        ev += f"; meanwhile {t_name} {g(t0)} -> {g(t1)} (not rising)"
    bc = (ctx.get("algo_cfg") or {}).get("bc_coef")
    bc_txt = f" (bc_coef is {bc})" if bc is not None else ""
    return [
        Finding(
            "entropy_rise",
            "warning",
            step,
            name,
            f"policy widened by {g(e[i] - e[jmin])} nats without the temperature",
            ev,
            "The policy's entropy grew although alpha did not rise, so the entropy bonus is not what widened it: the "
            "-Q term itself rewards spreading the chunk distribution, i.e. the critic values actions away from the "
            "policy's mean (and away from the data) higher -- extrapolation off the data manifold. A pretrained "
            "policy drifts away from what made it succeed. Anchor the actor to the offline data with a BC term"
            f"{bc_txt}, lower the actor learning rate, or warm up the critic before the actor moves.",
        )
    ]


@rule("q_overestimation")
def q_overestimation(m: Metrics, ctx: dict) -> list[Finding]:
    out: list[Finding] = []
    qn = m.find("critic/q_mean", "*/q_mean")
    an = m.find("actor/actor_q", "*actor_q")
    gamma = ctx.get("gamma")
    bound_txt = (
        f" With per-step rewards bounded by r_max, |Q| <= r_max / (1 - gamma) = {g(1 / (1 - gamma))} r_max."
        if gamma and 0 < gamma < 1
        else ""
    )
    if qn and an:
        qs, qv = m.series(qn)
        table = dict(zip(qs.tolist(), qv.tolist()))
        s, a = m.series(an)
        rows = [(int(st), float(av), table[int(st)]) for st, av in zip(s, a) if int(st) in table]
        run = 0
        for k, (st, av, qv_) in enumerate(rows):
            gap = (av - qv_) / max(abs(qv_), Q_SCALE_FLOOR)
            run = run + 1 if (math.isfinite(gap) and gap >= ACTOR_Q_GAP_REL) else 0
            if run >= ACTOR_Q_MIN_CONSECUTIVE:
                st0, av0, q0 = rows[k - run + 1]
                out.append(
                    Finding(
                        "q_overestimation",
                        "warning",
                        st0,
                        an,
                        "the policy's actions are valued far above the data's",
                        f"{an} {g(av0)} vs {qn} {g(q0)} at step {st0} (gap {g(av0 - q0)} = "
                        f"{g((av0 - q0) / max(abs(q0), Q_SCALE_FLOOR))}"
                        f" x |q_mean|, threshold {ACTOR_Q_GAP_REL}); at step {st}: {g(av)} vs {g(qv_)}",
                        "Q of the actor's own chunks exceeds Q of the dataset chunks by a wide margin: the actor found "
                        "actions where the critic extrapolates upward (out-of-distribution overestimation, e.g. "
                        "actor_q 5 -> 100). Nothing in the TD targets corrects Q there because those actions never occur "
                        "in the data. Constrain the actor to the data (BC/TD3+BC weight, IQL/AWR-style weighted BC, CQL) "
                        "or use pessimistic ensembles." + bound_txt,
                    )
                )
                break
    return out


@rule("q_unbounded")
def q_unbounded(m: Metrics, ctx: dict) -> list[Finding]:
    gamma = ctx.get("gamma")
    bound_txt = (
        f" With per-step rewards bounded by r_max, |Q| <= r_max / (1 - gamma) = {g(1 / (1 - gamma))} r_max."
        if gamma and 0 < gamma < 1
        else ""
    )
    for name in [n for n in (m.find("critic/q_mean", "*/q_mean"), m.find("actor/actor_q", "*actor_q")) if n]:
        s, v = _finite(*m.series(name))
        n = len(v)
        if n < max(4, Q_GROWTH_LAST_LOGS + 1):
            continue
        base = float(np.median(np.abs(v[n // 4 : max(n // 4 + 1, n // 2)])))  # after the critic found its scale
        mag = np.abs(v)
        for i in range(n // 2, n):
            tail = mag[max(0, i - Q_GROWTH_LAST_LOGS) : i + 1]
            growing = len(tail) > Q_GROWTH_LAST_LOGS and bool(np.all(np.diff(tail) > 0))
            if mag[i] >= Q_GROWTH_ABS_MIN and mag[i] >= Q_GROWTH_FACTOR * max(base, 1e-8) and growing:
                return [
                    Finding(
                        "q_unbounded",
                        "warning",
                        int(s[i]),
                        name,
                        f"{name} keeps growing in magnitude",
                        f"|{name}| median {g(base)} over the second quarter of the run -> {g(mag[i])} at step {s[i]} "
                        f"(x{g(mag[i] / max(base, 1e-8))}), still growing over the last {Q_GROWTH_LAST_LOGS} logs",
                        "Q grows far beyond its early scale and keeps growing: bootstrapping from overestimated "
                        "next-state values compounds (deadly triad), typically through out-of-distribution actions in "
                        "the target. Compare with the return scale of the task."
                        + bound_txt
                        + " Check the target (min over an ensemble, terminated masking), the reward scale and the policy "
                        "constraint.",
                    )
                ]
    return []


@rule("lambda_collapse")
def lambda_collapse(m: Metrics, ctx: dict) -> list[Finding]:
    name = m.find("actor/actor_lam", "*actor_lam")
    if name is None:
        return []
    s, lam = _finite(*m.series(name))
    n = len(lam)
    if n < 3:
        return []
    base = float(lam[0])
    if base <= 0:
        return []
    aq_n = m.find("actor/actor_q", "*actor_q")
    aq0 = _at(m, aq_n, int(s[0]))
    hit = None
    for i in np.nonzero(lam[1:] <= LAMBDA_DROP_FACTOR * base)[0] + 1:
        aq1 = _at(m, aq_n, int(s[i]))
        if aq0 is None or aq1 is None or abs(aq1) >= LAMBDA_Q_GROWTH * max(abs(aq0), 1e-8):
            hit = int(i)
            break
    if hit is None:
        return []
    i, step = hit, int(s[hit])
    ev = f"{name} {g(base)} at the first log (step {int(s[0])}) -> {g(lam[i])} at step {step} (x{g(lam[i] / base)})"
    aq1 = _at(m, aq_n, step)
    if aq0 is not None and aq1 is not None:
        ev += f"; {aq_n} {g(aq0)} -> {g(aq1)}"
    return [
        Finding(
            "lambda_collapse",
            "warning",
            step,
            name,
            f"TD3+BC's lambda collapsed to {g(lam[i])}",
            ev,
            "lambda = alpha / mean|Q(s, pi(s))| shrinks because the Q values of the policy's actions grew (e.g. "
            "actor_q 5 -> 100 took lambda from 0.35 to ~0.01). The Q-term is normalised by those inflated values, so "
            "its gradient no longer tracks real improvement and the MSE term dominates: the actor degenerates to BC while "
            "the critic overestimates. Look at q_overestimation/q_unbounded; fix the critic, not alpha.",
        )
    ]


def _weight_clip(ctx: dict, weights_max_name: str) -> float | None:
    """The configured upper clip of the advantage weights logged as ``weights_max_name``: the algo_cfg field
    ``<family>_max_weight`` (``actor/awr_weights_max`` -> ``awr_max_weight``), else ``max_weight``."""
    acfg = ctx.get("algo_cfg") or {}
    family = weights_max_name.split("/")[-1][: -len("weights_max")]  # 'iql_', 'awr_', ''
    for key in (f"{family}max_weight", "max_weight"):
        v = acfg.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _weight_pairs(m: Metrics) -> list[tuple[str, str, str | None]]:
    """(weights_max, weights_mean, advantage_mean) name triples for every weighted-BC family logged."""
    out = []
    for mx in sorted(n for n in m.names if n.endswith("weights_max")):
        mean = mx[: -len("max")] + "mean"
        if m.has(mean):
            adv = mx[: -len("weights_max")] + "advantage_mean"
            out.append((mx, mean, adv if m.has(adv) else None))
    return out


@rule("uniform_weights")
def uniform_weights(m: Metrics, ctx: dict) -> list[Finding]:
    out = []
    for mx, mean, adv in _weight_pairs(m):
        s, vmax = m.series(mx)
        s2, vmean = m.series(mean)
        if len(vmax) < MIN_LOGS_TREND or len(vmax) != len(vmean):
            continue
        ratio = vmax / np.maximum(vmean, 1e-12)
        half = len(ratio) // 2
        med = float(np.median(ratio[half:]))
        if not math.isfinite(med) or med >= UNIFORM_WEIGHT_RATIO:
            continue
        step = int(s[half])
        clip = _weight_clip(ctx, mx)
        if clip is not None and float(np.median(vmean[half:])) >= 0.5 * clip:
            out.append(
                Finding(
                    "uniform_weights",
                    "warning",
                    step,
                    mx,
                    "advantage weights saturate at the clip: weighted BC = plain BC",
                    f"{mean} median {g(float(np.median(vmean[half:])))} and {mx} {g(vmax[-1])} with max_weight {g(clip)} "
                    f"over steps {s[half]}-{s[-1]}",
                    "exp(beta * A) exceeds the clip for most samples, so nearly every weight equals the clip and every "
                    "chunk is imitated equally: IQL/AWR degenerates to BC the other way round -- beta * |A| is far too "
                    "large (a huge beta or a critic whose errors are large). Lower beta or normalise the advantages.",
                )
            )
            continue
        ev = (
            f"{mx} / {mean}: median {g(med)} over steps {s[half]}-{s[-1]} (threshold {UNIFORM_WEIGHT_RATIO}); "
            f"last {g(vmax[-1])} / {g(vmean[-1])}"
        )
        beta = (ctx.get("algo_cfg") or {}).get("beta")
        if adv:
            a = _at(m, adv, int(s[-1]))
            ev += f"; {adv} {g(a)}" + (f", beta * |A| = {g(beta * abs(a))}" if beta and a is not None else "")
        out.append(
            Finding(
                "uniform_weights",
                "warning",
                step,
                mx,
                "advantage weights are nearly uniform: weighted BC = plain BC",
                ev,
                "The largest weight in a batch is barely above the mean, so every dataset chunk is imitated almost "
                "equally: the advantage signal (beta * A) is too small or too noisy to separate good from bad actions "
                "and IQL/AWR degenerates to BC (e.g. offline AWR with advantage mean -0.05: weights ~uniform). "
                "Expected on expert-only data (nothing to prefer); otherwise raise beta, normalise advantages, or check that the "
                "critic learned anything (q_std, td_error).",
            )
        )
    return out


@rule("weight_outliers")
def weight_outliers(m: Metrics, ctx: dict) -> list[Finding]:
    """Advantage weights that hurt: saturated at the clip for a large part of the batch, or so concentrated that one
    sample carries most of the batch's weight (WEIGHT_SATURATED_FRACTION, WEIGHT_DOMINANT_SHARE). A batch max at the
    clip with a mean far below it is the regime IQL/AWR are designed for and is not flagged.

    The logged weights_max / weights_mean are averages over a log interval of the per-batch max / mean, so the bounds
    below hold for a typical batch of the interval, not exactly for each one."""
    out = []
    bs = (ctx.get("algo_cfg") or {}).get("batch_size")
    bs = int(bs) if isinstance(bs, (int, float)) and not isinstance(bs, bool) and bs > 0 else None
    for mx, mean, _adv in _weight_pairs(m):
        clip = _weight_clip(ctx, mx)
        s, vmax = m.series(mx)
        _, vmean = m.series(mean)
        n = len(vmax)
        if n < WEIGHT_MIN_HITS or len(vmean) != n or (clip is None and bs is None):
            continue
        near, sat, share, dom = _weight_outlier_masks(vmax, vmean, clip, bs)
        need = max(WEIGHT_MIN_HITS, math.ceil(WEIGHT_MIN_LOG_FRACTION * n))
        for kind, hit in (("saturated", sat), ("dominant", dom)):
            if int(hit.sum()) < need:
                continue
            frac = float(hit.mean())
            i = int(np.nonzero(hit)[0][0])
            first = f"first at step {s[i]}: max {g(vmax[i])}, mean {g(vmean[i])}"
            if kind == "saturated":
                out.append(_saturated_weights_finding(mx, mean, clip, int(s[i]), frac, first, near[i]))
            else:
                out.append(_dominant_weights_finding(mx, mean, bs, int(s[i]), frac, first, share[i]))
    return out


def _weight_outlier_masks(
    vmax: np.ndarray, vmean: np.ndarray, clip: float | None, bs: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per log point: (provable fraction near the clip, saturated?, largest weight's share of the batch, dominant?)."""
    n = len(vmax)
    vmean_pos = np.maximum(vmean, 1e-12)
    with np.errstate(invalid="ignore"):
        if clip is not None:
            near = (vmean / clip - WEIGHT_NEAR_CLIP) / (1.0 - WEIGHT_NEAR_CLIP)  # provable fraction near the clip
            sat = (vmax >= WEIGHT_CLIP_HIT * clip) & (near >= WEIGHT_SATURATED_FRACTION)
        else:
            near, sat = np.full(n, np.nan), np.zeros(n, dtype=bool)
        share = vmax / (bs * vmean_pos) if bs else np.full(n, np.nan)
        dom = share >= WEIGHT_DOMINANT_SHARE
    return near, sat, share, dom


def _saturated_weights_finding(
    mx: str, mean: str, clip: float, step: int, frac: float, first: str, near: float
) -> Finding:
    """weight_outliers' finding for weights at the clip on a large part of the batch."""
    mean_thr = (WEIGHT_NEAR_CLIP + WEIGHT_SATURATED_FRACTION * (1 - WEIGHT_NEAR_CLIP)) * clip
    return Finding(
        "weight_outliers",
        "warning",
        step,
        mx,
        "advantage weights sit at the clip for a large part of the batch",
        f"{mean} >= {g(mean_thr)} with {mx} at max_weight ({g(clip)}) on {100 * frac:.0f}% of log "
        f"points ({first}, so at least {100 * near:.0f}% of the batch has a weight >= "
        f"{WEIGHT_NEAR_CLIP:g} x max_weight)",
        "exp(beta * A) reaches the clip for a large part of the batch, so the ranking among those chunks "
        "is lost: they are all imitated with (nearly) the same weight, the highest-advantage ones no more "
        "than the merely good -- beta * |A| is far too large for the clip (a huge beta, or a critic whose "
        "errors are large). Lower beta or normalise the advantages per batch. A max at the clip with a "
        "mean far below it is normal for IQL/AWR (Kostrikov et al. 2022; Peng et al. 2019) and is not "
        "flagged.",
    )


def _dominant_weights_finding(mx: str, mean: str, bs: int, step: int, frac: float, first: str, share: float) -> Finding:
    """weight_outliers' finding for one sample carrying most of the batch's weight."""
    return Finding(
        "weight_outliers",
        "warning",
        step,
        mx,
        "a few samples dominate the weighted actor loss",
        f"{mx} / ({bs} x {mean}) >= {WEIGHT_DOMINANT_SHARE:g} on {100 * frac:.0f}% of log points "
        f"({first}: one sample carries {100 * share:.0f}% of the batch's total weight, an effective "
        f"sample size of at most {g(1 / share**2)} of {bs})",
        "One chunk carries most of each batch's weight, so every actor update imitates a handful of "
        "samples -- including those whose high advantage is a critic error -- and the gradient's noise is "
        "that of a batch of a few. Lower beta, normalise the advantages per batch, or lower the clip (AWR, "
        "Peng et al. 2019, clips at 20); check the critic (q_std, td_error) if the advantages are noise.",
    )


@rule("critic_divergence")
def critic_divergence(m: Metrics, ctx: dict) -> list[Finding]:
    name = m.find("critic/q_std", "*/q_std")
    if name is None:
        return []
    s, qs = _finite(*m.series(name))
    if len(qs) < MIN_LOGS_TREND:
        return []
    qn = m.find("critic/q_mean", "*/q_mean")
    run_min = np.minimum.accumulate(qs)
    for i in range(1, len(qs)):
        q = _at(m, qn, int(s[i]))
        scale = max(abs(q), Q_SCALE_FLOOR) if q is not None else Q_SCALE_FLOOR
        if qs[i] >= QSTD_GROWTH_FACTOR * max(run_min[i], 1e-12) and qs[i] >= QSTD_REL_MIN * scale:
            j = int(np.argmin(qs[: i + 1]))
            return [
                Finding(
                    "critic_divergence",
                    "warning",
                    int(s[i]),
                    name,
                    "the critic ensemble members disagree more and more",
                    f"{name} {g(qs[j])} (step {s[j]}) -> {g(qs[i])} at step {s[i]} (x{g(qs[i] / max(qs[j], 1e-12))}); "
                    f"|q_mean| {g(scale)}, so the spread is {g(100 * qs[i] / scale)}% of Q",
                    "The members of the Q ensemble, trained on the same targets, drift apart: they are queried where they "
                    "have no data (out-of-distribution actions in the actor's or the target's samples) or the targets "
                    "themselves oscillate (e.g. offline IQL whose q_std jumped to 2.5+ after 20k steps). "
                    "Min-over-ensemble targets then become very pessimistic or noisy. Constrain the actor, lower the critic lr, use "
                    "LayerNorm critics.",
                )
            ]
    return []


def _scale_at(m: Metrics, name: str | None, steps: np.ndarray) -> np.ndarray:
    """max(|name|, 1) at the last log point at or before each of ``steps`` (1 where none): ``_at`` vectorised."""
    if name is None:
        return np.ones(len(steps))
    ts, tv = m.series(name)
    idx = np.searchsorted(ts, steps, side="right") - 1
    vals = np.where(idx >= 0, np.abs(tv[np.maximum(idx, 0)]) if len(tv) else 0.0, 0.0)
    return np.maximum(np.nan_to_num(vals, nan=0.0, posinf=0.0, neginf=0.0), 1.0)


@rule("td_not_decreasing")
def td_not_decreasing(m: Metrics, ctx: dict) -> list[Finding]:
    """The critic does not fit its targets (relative TD error >= TD_REL_UNFIT at the end) and did not get better at it
    (it fell by less than 10% from its start and from its first quarter; TD_STALL_RATIO, TD_HEAD_LOGS). A TD error
    that fell and then settled on a plateau of a few per cent of the target is a converged critic."""
    tn = m.find("critic/td_error", "*/td_error")
    if tn is None:
        return []
    s, td = _finite(*m.series(tn))
    n = len(td)
    if n < TD_MIN_LOGS:
        return []
    rel = td / _scale_at(m, m.find("critic/td_target_mean", "*/td_target_mean"), s)
    q = max(1, n // 4)
    head = TD_HEAD_LOGS
    start, first, last = float(np.median(rel[:head])), float(np.median(rel[:q])), float(np.median(rel[-q:]))
    if not (last >= TD_REL_UNFIT and last >= TD_STALL_RATIO * max(start, first)):
        return []
    online = ctx.get("mode") == "online"
    return [
        Finding(
            "td_not_decreasing",
            "info" if online else "warning",
            int(s[n - q]),
            tn,
            "the TD error is not decreasing",
            f"td_error / max(|td_target_mean|, 1): median {g(start)} over the first {head} logs and {g(first)} over steps "
            f"{s[0]}-{s[q - 1]} -> {g(last)} over steps {s[n - q]}-{s[-1]} (raw td_error {g(td[0])} -> {g(td[-1])}); the "
            f"critic's TD error is still {100 * last:.0f}% of its targets' magnitude (threshold {100 * TD_REL_UNFIT:.0f}%)",
            "The critic does not fit its own targets better over training, and its error is a large fraction of the "
            "values it predicts. Offline that points at a critic that does not learn (learning rate, frozen or "
            "mis-wired parameters) or at moving targets (overestimation feeding back, too large tau); online some of it "
            "is new data arriving, so read it with q_std and q_mean. A critic that never fits gives the actor noise to "
            "follow. (A TD error that plateaus at a few per cent of the target is normal: sampled targets carry "
            "irreducible variance.)",
        )
    ]


@rule("success_stuck_at_zero")
def success_stuck_at_zero(m: Metrics, ctx: dict) -> list[Finding]:
    en = m.find("eval/success_once")
    if en is None:
        return []
    s, v = m.series(en)
    if len(v) < STUCK_MIN_EVALS or np.any(v > 0):
        return []
    loss_txt = []
    for ln in ("critic/critic_loss", "actor/bc_loss", "actor/actor_loss"):
        if m.has(ln):
            ls, lv = _finite(*m.series(ln))
            if len(lv) >= 2:
                loss_txt.append(f"{ln} {g(lv[0])} -> {g(lv[-1])}")
    return [
        Finding(
            "success_stuck_at_zero",
            "warning",
            int(s[STUCK_MIN_EVALS - 1]),
            en,
            "success stays at zero",
            f"{en} = 0 in all {len(v)} evaluations (steps {s[0]}-{s[-1]})"
            + (f" while the losses look fine: {'; '.join(loss_txt)}" if loss_txt else ""),
            "Optimisation runs but the objective does not lead to success: the actor imitates or maximises something "
            "that never completes the task (an unexpressive actor for the chunk distribution -- e.g. a Gaussian "
            "MLP over the flattened chunk with bc_loss stuck at 0.8 --, too little data near the goal, a chunk too "
            "long to react, or a critic that learned nothing useful). Check BC alone first: if BC cannot succeed, RL on top rarely will.",
        )
    ]


_REGRESSION_EXPLANATION = (
    "Fine-tuning made the policy worse than where it started: the RL update moved the actor away from "
    "behaviour that worked before the critic could rank actions reliably (a fresh or mismatched critic, "
    "Q overestimation off the data, too large actor steps, exploration noise in the replay). Look at the "
    "entropy and actor_q findings; keep the best checkpoint (policy_best), anchor to the data (BC term), warm "
    "up the critic before the actor moves, or lower the actor lr."
)
"""success_regression's explanation (both of its findings)."""


def _significant_drop(p0: float, p1: float, n: float | None) -> bool:
    """A success drop p0 -> p1 of at least SUCCESS_DROP_MIN and, with ``n`` episodes per evaluation, at least
    SUCCESS_DROP_SE standard errors."""
    drop = p0 - p1
    if drop < SUCCESS_DROP_MIN:
        return False
    if not n:
        return True
    se = math.sqrt(max(p0 * (1 - p0), 1e-12) / n + max(p1 * (1 - p1), 1e-12) / n)
    return drop >= SUCCESS_DROP_SE * se


def _online_success_text(m: Metrics) -> str:
    """Evidence suffix on the online episode success (best -> last), or "" when it was not logged."""
    tn = m.find("train/episode_success")
    if tn is not None:
        ts, tv = _finite(*m.series(tn))
        if len(tv) >= 2:
            j = int(np.argmax(tv))
            return (
                f"; online episode success (last 20 episodes) {g(tv[j])} at step {ts[j]} -> {g(tv[-1])} at "
                f"step {ts[-1]}"
            )
    return ""


@rule("success_regression")
def success_regression(m: Metrics, ctx: dict) -> list[Finding]:
    en = m.find("eval/success_once")
    if en is None:
        return []
    s, v = m.series(en)
    if not len(v):
        return []
    _, n_ep = m.series("eval/num_episodes")
    n = float(n_ep[-1]) if len(n_ep) else None
    train = _online_success_text(m)
    start = ctx.get("start_success")
    expl = _REGRESSION_EXPLANATION
    if start is not None:
        bad = [k for k in range(len(v)) if _significant_drop(float(start), float(v[k]), n)]
        if bad:
            k = bad[0]
            src = ctx.get("start_source") or "the initial policy"
            return [
                Finding(
                    "success_regression",
                    "warning",
                    int(s[k]),
                    en,
                    f"success fell below the starting policy's ({g(start)} -> {g(v[k])})",
                    f"starting policy ({src}) success_once {g(start)}; {en} {g(v[k])} at step {s[k]}, final {g(v[-1])}"
                    f"{f' over {int(n)} episodes' if n else ''}" + train,
                    expl,
                )
            ]
    if len(v) >= 2:
        j = int(np.argmax(v))
        if j < len(v) - 1 and _significant_drop(float(v[j]), float(v[-1]), n):
            return [
                Finding(
                    "success_regression",
                    "warning",
                    int(s[-1]),
                    en,
                    f"success fell from its best ({g(v[j])} -> {g(v[-1])})",
                    f"{en} {g(v[j])} at step {s[j]} -> {g(v[-1])} at step {s[-1]}" + train,
                    expl,
                )
            ]
    return []


# ---------------------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------------------
def diagnose(m: Metrics, ctx: dict | None = None, rules: dict[str, Rule] | None = None) -> list[Finding]:
    """Run every rule; findings sorted by severity, then step."""
    ctx = ctx or {}
    out: list[Finding] = []
    for fn in (rules or RULES).values():
        out += fn(m, ctx)
    return sorted(out, key=lambda f: (SEVERITIES.index(f.severity), f.step))


class LiveDiagnosis:
    """Runs the rules on the series as they are logged; calls ``on_finding`` once per rule, the first time it fires
    with a finding of severity LIVE_SEVERITIES ('error', 'warning').

    Used as a logger hook: ``hook(step, metrics)`` after each log line. ``history`` (records already in the run's
    metrics.jsonl, e.g. when resuming) is replayed silently: rules that fired before do not fire again. 'info'
    findings (worth knowing, not a failure) are left to the report: the live hook is the training loop's warning
    channel, and a line there is read as "something is wrong".
    """

    def __init__(self, ctx: dict, on_finding: Callable[[Finding], None], history: list[dict] | None = None):
        self.ctx = ctx
        self.on_finding = on_finding
        self.metrics = Metrics(history or [])
        self.fired: set[str] = set()
        self.findings: list[Finding] = []
        if history:
            self._check(announce=False)

    def _check(self, announce: bool = True) -> None:
        for name, fn in RULES.items():
            if name in self.fired:
                continue
            try:
                found = [f for f in fn(self.metrics, self.ctx) if f.severity in LIVE_SEVERITIES]
            except Exception:  # a diagnosis must never break training
                continue
            if found:
                self.fired.add(name)
                if announce:
                    self.findings += found
                    for f in found:
                        self.on_finding(f)

    def __call__(self, step: int, metrics: dict) -> None:
        self.metrics.add(step, metrics)
        self._check()
