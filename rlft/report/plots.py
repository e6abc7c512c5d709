"""Metric curves as PNG pages (matplotlib, Agg backend), grouped by what a person reads together.

Pages: critic (critic_loss, q_mean, q_std, td_error, td_target_mean, value_loss, v_mean, ...), actor (actor_loss,
bc_loss, actor_q, actor_lam, ...), temperature / entropy (temperature, temperature_loss, entropy drawn against
target_entropy, log_std), weights / advantages (iql_/awr_ weights and advantages, eff_num), evaluation
(success_once with success_at_end, return, episode length, online episode statistics), throughput, and anything
else that was logged. Every logged metric lands on exactly one page.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rlft.report.runs import Metrics  # noqa: E402
from rlft.utils import atomic_path  # noqa: E402

PAGES = [
    ("eval", "Evaluation"),
    ("critic", "Critic"),
    ("actor", "Actor"),
    ("temperature", "Temperature / entropy"),
    ("weights", "Weights / advantages"),
    ("time", "Throughput"),
    ("other", "Other metrics"),
]
COLUMNS = 3
_FIRST = [
    "eval/success_once",
    "eval/success_at_end",
    "eval/return",
    "eval/episode_length",
    "train/episode_success",
    "train/episode_return",
    "critic/critic_loss",
    "critic/q_mean",
    "critic/td_target_mean",
    "critic/q_std",
    "critic/td_error",
    "actor/actor_loss",
    "actor/bc_loss",
    "actor/actor_q",
    "actor/actor_lam",
    "alpha/temperature",
    "alpha/temperature_loss",
]
"""Metrics drawn first on their page (in this order); the rest follow alphabetically."""
_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def page_of(name: str) -> str:
    """The page a metric is drawn on."""
    leaf = name.split("/")[-1]
    if name.startswith("eval/") or name.startswith("train/episode_"):
        return "eval"
    if name.startswith("time/") or name == "train/episodes":
        return "time"
    if name.startswith("alpha/") or any(k in leaf for k in ("temperature", "entropy", "log_std")):
        return "temperature"
    if any(k in leaf for k in ("weights", "advantage", "eff_num")):
        return "weights"
    if name.startswith("critic/") or name.startswith("value/"):
        return "critic"
    if name.startswith("actor/"):
        return "actor"
    return "other"


def panels_for(names: list[str]) -> dict[str, list[tuple[str, list[str]]]]:
    """page -> [(panel title, [metric names drawn in that panel])]; entropy and target_entropy share a panel, as do
    success_once and success_at_end."""
    order = {n: i for i, n in enumerate(_FIRST)}
    names = sorted(set(names), key=lambda n: (order.get(n, len(order)), n))
    pages: dict[str, list[tuple[str, list[str]]]] = {p: [] for p, _ in PAGES}
    used: set[str] = set()
    targets = [n for n in names if n.endswith("target_entropy")]
    has_entropy = any(n.endswith("/entropy") for n in names)
    for n in names:
        if n in used or n in ("eval/num_episodes", "eval/best_success_once") or (n in targets and has_entropy):
            continue
        group = [n]
        if n == "eval/success_once" and "eval/success_at_end" in names:
            group.append("eval/success_at_end")
        elif n.endswith("/entropy") and targets:
            group += [t for t in targets if t not in used]
        used.update(group)
        pages[page_of(n)].append((n if len(group) == 1 else " vs ".join(x.split("/")[-1] for x in group), group))
    return {p: v for p, v in pages.items() if v}


def _plot_series(ax, steps: np.ndarray, values: np.ndarray, label: str, color, dashed: bool = False) -> None:
    ok = np.isfinite(values)
    style = "--" if dashed else "-"
    marker = "o" if ok.sum() <= 20 else None
    ax.plot(steps[ok], values[ok], style, color=color, label=label, marker=marker, markersize=3, linewidth=1.3)
    bad = ~ok
    if bad.any():  # non-finite values: red crosses on the axis floor
        lo = np.nanmin(values[ok]) if ok.any() else 0.0
        ax.plot(steps[bad], np.full(bad.sum(), lo), "x", color="red", markersize=7, label=f"{label} (nan/inf)")


def plot_page(
    runs: list[tuple[str, Metrics]],
    panels: list[tuple[str, list[str]]],
    path: Path,
    title: str,
    markers: dict[str, list[tuple[int, str]]] | None = None,
    xlabel: str = "step",
) -> Path:
    """Draw ``panels`` for one or several runs (overlaid, one colour per run) into ``path`` (PNG, written
    atomically). ``markers``: metric -> [(step, label)] drawn as vertical dotted lines (diagnosis findings);
    ``xlabel``: what the runs' step counts (``step_label``)."""
    n = len(panels)
    ncols = min(COLUMNS, n)
    nrows = math.ceil(n / ncols)
    extra = 0.8 + (0.22 * math.ceil(len(runs) / 4) if len(runs) > 1 else 0.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 2.6 * nrows + extra), squeeze=False)
    for k, (ptitle, names) in enumerate(panels):
        _draw_panel(axes[k // ncols][k % ncols], runs, ptitle, names, markers)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    _lay_out_page(fig, runs, title, xlabel)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def _draw_panel(
    ax, runs: list[tuple[str, Metrics]], ptitle: str, names: list[str], markers: dict[str, list[tuple[int, str]]] | None
) -> None:
    """Draw one panel: the ``names`` series of every run, the finding markers, the axis scale and decorations."""
    several = len(runs) > 1
    for r, (label, m) in enumerate(runs):
        for j, name in enumerate(names):
            s, v = m.series(name)
            if not len(s):
                continue
            color = _COLORS[r % len(_COLORS)] if several else _COLORS[j % len(_COLORS)]
            lab = label if several and j == 0 else (None if several else name.split("/")[-1])
            _plot_series(ax, s, v, lab, color, dashed=several and j > 0)
    for name in names:
        for step, mlabel in (markers or {}).get(name, []):
            ax.axvline(step, color="crimson", linestyle=":", linewidth=1.2)
            ax.annotate(
                mlabel,
                (step, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="crimson",
                rotation=90,
                va="top",
                ha="right",
            )
    if names[0] in ("eval/success_once", "eval/success_at_end", "train/episode_success"):
        ax.set_ylim(-0.03, 1.03)
    elif names[0].endswith("temperature"):  # alpha spans decades when it explodes or collapses
        vals = np.concatenate([m.series(names[0])[1] for _, m in runs])
        vals = vals[np.isfinite(vals)]
        if len(vals) and vals.min() > 0 and vals.max() / vals.min() > 20:
            ax.set_yscale("log")
    ax.set_title(ptitle, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(names) > 1 and not several:
        ax.legend(fontsize=7)


def step_label(modes: set[str]) -> str:
    """The x-axis label of runs in these modes: an online run logs by env step, an offline run by update."""
    if modes == {"online"}:
        return "env steps"
    if modes == {"offline"}:
        return "updates"
    return "step (online runs: env steps; offline runs: updates)"


def _lay_out_page(fig, runs: list[tuple[str, Metrics]], title: str, xlabel: str) -> None:
    """Set the page's margins, the run legend (several runs), the title and the x label."""
    several = len(runs) > 1
    # fixed margins (no tight_layout / bbox_inches='tight': each costs a full extra layout pass per page)
    head = 0.55 + (0.22 * math.ceil(len(runs) / 4) if several else 0.0)  # inches above the panels
    height = fig.get_figheight()
    width = fig.get_figwidth()
    fig.subplots_adjust(
        left=0.65 / width,
        right=1 - 0.15 / width,
        bottom=0.45 / height + 0.02,
        top=1 - head / height,
        hspace=0.5,
        wspace=0.3,
    )
    if several:
        handles = [
            plt.Line2D([], [], color=_COLORS[r % len(_COLORS)], label=label) for r, (label, _) in enumerate(runs)
        ]
        fig.legend(
            handles=handles,
            loc="upper center",
            ncol=min(len(runs), 4),
            fontsize=8,
            bbox_to_anchor=(0.5, 1 - 0.3 / height),
        )
    fig.suptitle(title, fontsize=11, y=1 - 0.05 / height, va="top")
    fig.supxlabel(xlabel, fontsize=8, y=0.01)


def plot_stages(pipelines: dict[str, list[tuple[str, dict[str, float]]]], path: Path) -> Path:
    """Final success after each stage, one line per pipeline (success_once solid, success_at_end dashed)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for i, (name, stages) in enumerate(pipelines.items()):
        color = _COLORS[i % len(_COLORS)]
        xs = list(range(len(stages)))
        for key, style in (("eval/success_once", "-o"), ("eval/success_at_end", "--s")):
            ys = [ev.get(key, float("nan")) for _, ev in stages]
            ax.plot(
                xs,
                ys,
                style,
                color=color,
                markersize=4,
                label=f"{name} {key.split('/')[-1]}"
                if len(pipelines) > 1 or key.endswith("once")
                else key.split("/")[-1],
            )
        ax.set_xticks(xs, [s for s, _ in stages], fontsize=8)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("success", fontsize=8)
    ax.set_title("Success after each stage", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
