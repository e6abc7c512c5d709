"""``rlft report RUN_DIR [RUN_DIR ...] [--out DIR]``: a self-contained HTML report of one or several runs.

The output folder holds ``index.html``, ``fig/*.png`` (matplotlib pages) and ``media/`` (the runs' evaluation
videos, copied so the folder can be moved or archived on its own). Every file is written atomically. Sections:

1. results table (one row per run; a pipeline directory is expanded into its stages) and, for groups of runs
   (several pipelines' same stage, or several standalone runs: a sweep), mean +- std of the final evaluation;
2. diagnosis: every finding of ``rlft.report.diagnose`` with its evidence and explanation;
3. comparison pages for each group of >= 2 runs: curves overlaid, one colour per run;
4. per run: evaluation curves, metric pages (critic, actor, temperature/entropy, weights/advantages, ...) with the
   findings marked at their step, evaluation videos, config and environment summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import platform
import re
import shutil
import statistics
import sys
from pathlib import Path

from rlft.report.diagnose import Finding, diagnose
from rlft.report.plots import PAGES, panels_for, plot_page, plot_stages, step_label
from rlft.report.runs import RunData, expand_runs
from rlft.utils import atomic_path, atomic_write_text

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1400px;color:#222;
padding:0 16px}
h1{font-size:22px}h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:34px}
h3{font-size:16px;margin-top:22px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}
.finding{border-left:5px solid #999;background:#fafafa;padding:6px 12px;margin:8px 0;font-size:13px}
.finding.error{border-color:#c0392b}.finding.warning{border-color:#e67e22}.finding.info{border-color:#2980b9}
.sev{font-weight:bold;text-transform:uppercase;font-size:11px}
.evidence{font-family:monospace;font-size:12px;color:#333;margin:3px 0}
img.page{max-width:100%;border:1px solid #eee;margin:6px 0}
.videos{display:flex;flex-wrap:wrap;gap:12px}.videos figure{margin:0;font-size:12px}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow-x:auto;max-height:420px}
.muted{color:#777;font-size:12px}
"""


@dataclasses.dataclass
class ReportResult:
    out_dir: Path
    index: Path
    runs: list[RunData]
    findings: dict[str, list[Finding]]
    files: list[Path]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, nd: int = 2) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return _e(x)  # anything else read from a file (a hand-edited summary.json) is text, never markup


def default_out_dir(paths: list[str | Path]) -> Path:
    """One run (or pipeline) directory: ``<dir>/report``; several: ``./rlft-report``."""
    return Path(paths[0]) / "report" if len(paths) == 1 else Path("rlft-report")


def _groups(runs: list[RunData]) -> dict[str, list[RunData]]:
    out: dict[str, list[RunData]] = {}
    for r in runs:
        out.setdefault(r.group, []).append(r)
    return out


def _results_rows(runs: list[RunData], findings: dict[str, list[Finding]]) -> str:
    head = (
        "<tr><th class=l>run</th><th class=l>algo</th><th class=l>mode</th><th>steps</th><th>success_once</th>"
        "<th>success_at_end</th><th>return</th><th>best success_once</th><th>start success</th><th>wall (s)</th>"
        "<th>findings</th></tr>"
    )
    rows = []
    for r in runs:
        ev = r.final_eval()
        s = r.summary or {}
        fs = findings.get(r.name, [])
        steps = s.get("steps", r.metrics.last_step)
        best = s.get("best_success_once", ev.get("eval/best_success_once"))
        rows.append(
            f"<tr><td class=l><a href='#{_e(slug(r.name))}'>{_e(r.name)}</a></td><td class=l>{_e(r.algo)}</td>"
            f"<td class=l>{_e(r.mode)}</td><td>{_e(steps)}</td><td>{_fmt(ev.get('eval/success_once'))}</td>"
            f"<td>{_fmt(ev.get('eval/success_at_end'))}</td><td>{_fmt(ev.get('eval/return'), 1)}</td>"
            f"<td>{_fmt(best)}</td><td>{_fmt(r.start_success)}</td><td>{_fmt(s.get('wall_s'), 0)}</td>"
            f"<td>{len(fs) if fs else ''}</td></tr>"
        )
    return "<table>" + head + "".join(rows) + "</table>"


def _group_table(groups: dict[str, list[RunData]]) -> str:
    multi = {g: rs for g, rs in groups.items() if len(rs) >= 2}
    if not multi:
        return ""
    rows = []
    for g_, rs in multi.items():
        cells = []
        for key, nd in (("eval/success_once", 2), ("eval/success_at_end", 2), ("eval/return", 1)):
            vals = [r.final_eval()[key] for r in rs if key in r.final_eval()]
            if vals:
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"<td>{vals and sum(vals) / len(vals):.{nd}f} &plusmn; {sd:.{nd}f}</td>")
            else:
                cells.append("<td></td>")
        rows.append(f"<tr><td class=l>{_e(g_)}</td><td>{len(rs)}</td>{''.join(cells)}</tr>")
    return (
        "<h3>Across runs (mean &plusmn; std of the final evaluation)</h3><table><tr><th class=l>group</th>"
        "<th>runs</th><th>success_once</th><th>success_at_end</th><th>return</th></tr>" + "".join(rows) + "</table>"
    )


def _finding_html(f: Finding, with_run: bool) -> str:
    run = f"<b>{_e(f.run)}</b> &middot; " if with_run else ""
    return (
        f"<div class='finding {_e(f.severity)}'><span class=sev>{_e(f.severity)}</span> {run}"
        f"<b>{_e(f.title)}</b> <span class=muted>({_e(f.rule)}, step {f.step})</span>"
        f"<div class=evidence>{_e(f.evidence)}</div><div>{_e(f.explanation)}</div></div>"
    )


def _env_summary(r: RunData) -> str:
    c = r.config
    env = c.get("env", {}) or {}
    meta = r.policy_meta
    pol = (c.get("algo_cfg", {}) or {}).get("policy", {}) or {}
    rows = [
        ("environment", env.get("env_id")),
        ("act_horizon (chunk H)", env.get("act_horizon")),
        ("obs_horizon", env.get("obs_horizon")),
        ("gamma", env.get("gamma")),
        ("max_episode_steps", env.get("max_episode_steps") or "env default"),
        ("obs_dim / action_dim", f"{meta.get('obs_dim', '?')} / {meta.get('action_dim', '?')}" if meta else None),
        ("policy", f"{meta.get('policy_class') or pol.get('kind')}"),
        ("dataset", c.get("dataset")),
        ("init_policy", c.get("init_policy")),
        ("init_critic", c.get("init_critic")),
        ("seed", (c.get("run", {}) or {}).get("seed")),
        ("device / threads", f"{(c.get('run', {}) or {}).get('device')} / {(c.get('run', {}) or {}).get('threads')}"),
        ("evaluation", ", ".join(f"{k}={v}" for k, v in (c.get("eval", {}) or {}).items())),
        ("run directory", str(r.path)),
    ]
    return (
        "<table>"
        + "".join(f"<tr><th class=l>{_e(k)}</th><td class=l>{_e(v)}</td></tr>" for k, v in rows if v not in (None, ""))
        + "</table>"
    )


def _report_environment() -> str:
    import importlib.metadata as md

    vers = []
    for pkg in ("rlft", "torch", "numpy", "mujoco", "ogbench", "gymnasium", "matplotlib"):
        try:
            vers.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return (
        f"Report generated {datetime.datetime.now().isoformat(timespec='seconds')} on {platform.node()} "
        f"({platform.platform()}, Python {sys.version.split()[0]}; {', '.join(vers)}). Runs record their config "
        f"but not the machine they ran on."
    )


def _copy(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def build_report(paths: list[str | Path], out: str | Path | None = None) -> ReportResult:
    """Read the run directories, diagnose them, draw the figures and write ``<out>/index.html``."""
    runs = expand_runs(paths)
    out_dir = Path(out) if out is not None else default_out_dir(paths)
    fig_dir, media_dir = out_dir / "fig", out_dir / "media"
    files: list[Path] = []  # every file written, in order (the helpers below append to it)
    findings = _diagnose_runs(runs)

    title = "rlft report: " + ", ".join(str(Path(p).name) for p in paths)
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    parts.append("<h2 id='results'>Results</h2>" + _results_rows(runs, findings))
    groups = _groups(runs)
    parts.append(_group_table(groups))
    parts += _stages_figure(runs, fig_dir, files)
    parts.append(
        "<p class=muted>success_once: the task succeeded at any step of an evaluation episode; "
        "success_at_end: at its last step; start success: final success of the policy the run started "
        "from (previous stage or init_policy's run), when known.</p>"
    )
    parts += _diagnosis_section(runs, findings)
    parts += _comparison_sections(groups, fig_dir, files)
    for r in runs:
        parts += _run_section(r, findings[r.name], fig_dir, media_dir, files)
    parts.append(f"<hr><p class=muted>{_e(_report_environment())}</p></body></html>")
    index = out_dir / "index.html"
    atomic_write_text(index, "\n".join(x for x in parts if x))
    return ReportResult(out_dir, index, runs, findings, files)


def _diagnose_runs(runs: list[RunData]) -> dict[str, list[Finding]]:
    """Run the diagnosis rules on every run; return its findings (tagged with the run's name) by run name."""
    findings: dict[str, list[Finding]] = {}
    for r in runs:
        fs = diagnose(r.metrics, r.context())
        for f in fs:
            f.run = r.name
        findings[r.name] = fs
    return findings


def _stages_figure(runs: list[RunData], fig_dir: Path, files: list[Path]) -> list[str]:
    """The success-after-each-stage figure of the pipelines among ``runs`` (none without pipelines)."""
    pipelines: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for r in runs:
        if r.pipeline is not None and r.final_eval():
            pipelines.setdefault(r.pipeline, []).append((r.group, r.final_eval()))
    if not pipelines:
        return []
    p = plot_stages(pipelines, fig_dir / "stages.png")
    files.append(p)
    return [f"<img class=page src='fig/{_e(p.name)}' alt='success after each stage'>"]


def _diagnosis_section(runs: list[RunData], findings: dict[str, list[Finding]]) -> list[str]:
    """The Diagnosis section: every run's findings, or a note that no rule fired."""
    parts = ["<h2 id='diagnosis'>Diagnosis</h2>"]
    all_f = [f for r in runs for f in findings[r.name]]
    if not all_f:
        parts.append("<p>No rule fired: none of the known failure modes shows in the logged metrics.</p>")
    for r in runs:
        if findings[r.name]:
            parts.append(f"<h3>{_e(r.name)}</h3>" + "".join(_finding_html(f, False) for f in findings[r.name]))
    return parts


def _comparison_sections(groups: dict[str, list[RunData]], fig_dir: Path, files: list[Path]) -> list[str]:
    """Comparison pages (curves of all runs overlaid) for each group with several runs."""
    parts = []
    for g_, rs in groups.items():
        if len(rs) < 2:
            continue
        parts.append(f"<h2 id='compare-{_e(slug(g_))}'>Comparison: {_e(g_)} ({len(rs)} runs)</h2>")
        names = sorted({n for r in rs for n in r.metrics.names})
        pages = panels_for(names)
        for pid, ptitle in PAGES:
            if pid not in pages:
                continue
            p = plot_page(
                [(r.name, r.metrics) for r in rs],
                pages[pid],
                fig_dir / f"compare_{slug(g_)}_{pid}.png",
                f"{g_}: {ptitle}",
                xlabel=step_label({r.mode for r in rs}),
            )
            files.append(p)
            parts.append(f"<img class=page src='fig/{_e(p.name)}' alt='{_e(ptitle)}'>")
    return parts


def _run_section(r: RunData, fs: list[Finding], fig_dir: Path, media_dir: Path, files: list[Path]) -> list[str]:
    """One run's section: its findings, metric pages, evaluation videos, environment and config."""
    parts = [f"<h2 id='{_e(slug(r.name))}'>{_e(r.name)} <span class=muted>({_e(r.algo)}, {_e(r.mode)})</span></h2>"]
    markers: dict[str, list[tuple[int, str]]] = {}
    for f in fs:
        markers.setdefault(f.metric, []).append((f.step, f.rule))
    if fs:
        parts.append(
            "<p>Findings: "
            + ", ".join(f"<b>{_e(f.rule)}</b> (step {f.step})" for f in fs)
            + " &mdash; see <a href='#diagnosis'>Diagnosis</a>; marked on the curves below.</p>"
        )
    pages = panels_for(r.metrics.names)
    for pid, ptitle in PAGES:
        if pid not in pages:
            continue
        p = plot_page(
            [(r.name, r.metrics)],
            pages[pid],
            fig_dir / f"{slug(r.name)}_{pid}.png",
            f"{r.name}: {ptitle}",
            markers,
            xlabel=step_label({r.mode}),
        )
        files.append(p)
        parts.append(f"<img class=page src='fig/{_e(p.name)}' alt='{_e(ptitle)}'>")
    parts += _videos_html(r, media_dir, files)
    parts.append("<h3>Environment and config</h3>" + _env_summary(r))
    cfg_text = (r.path / "config.yaml").read_text() if (r.path / "config.yaml").is_file() else "(no config.yaml)"
    parts.append(f"<details><summary>config.yaml</summary><pre>{_e(cfg_text)}</pre></details>")
    if r.summary:
        parts.append(
            f"<details><summary>summary.json</summary><pre>{_e(json.dumps(r.summary, indent=2))}</pre></details>"
        )
    return parts


def _videos_html(r: RunData, media_dir: Path, files: list[Path]) -> list[str]:
    """Copy the run's evaluation videos (and their posters) into ``media_dir``; return their HTML (none if none)."""
    vids = r.videos()
    if not vids:
        return []
    parts = ["<h3>Evaluation videos</h3><div class=videos>"]
    for v in vids:
        dst = _copy(v, media_dir / slug(r.name) / v.name)
        files.append(dst)
        rel = f"media/{slug(r.name)}/{v.name}"
        poster = v.with_suffix(".png")
        poster_attr = ""
        if poster.is_file():
            files.append(_copy(poster, media_dir / slug(r.name) / poster.name))
            poster_attr = f" poster='media/{_e(slug(r.name))}/{_e(poster.name)}'"
        if v.suffix == ".gif":
            parts.append(
                f"<figure><img src='{_e(rel)}' width=320 alt='{_e(v.stem)}'>"
                f"<figcaption>{_e(v.stem)}</figcaption></figure>"
            )
        else:
            parts.append(
                f"<figure><video controls muted loop preload='metadata' width=320{poster_attr}>"
                f"<source src='{_e(rel)}' type='video/mp4'></video>"
                f"<figcaption>{_e(v.stem)}</figcaption></figure>"
            )
    parts.append("</div>")
    return parts


def print_report(res: ReportResult, console=None) -> None:
    """The results table and the diagnosis in the terminal (rich)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    t = Table(title="rlft report")
    for c in ("run", "algo", "mode", "success_once", "success_at_end", "return", "findings"):
        t.add_column(c, justify="left" if c in ("run", "algo", "mode") else "right")
    for r in res.runs:
        ev = r.final_eval()
        t.add_row(
            escape(r.name),
            r.algo,
            r.mode,
            _fmt(ev.get("eval/success_once")),
            _fmt(ev.get("eval/success_at_end")),
            _fmt(ev.get("eval/return"), 1),
            str(len(res.findings[r.name])),
        )
    console.print(t)
    colors = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    any_f = False
    for r in res.runs:
        for f in res.findings[r.name]:
            any_f = True
            console.print(
                f"[{colors[f.severity]}]{f.severity}[/] [bold]{escape(r.name)}[/bold] step {f.step}: "
                f"[bold]{escape(f.title)}[/bold] ({f.rule})"
            )
            console.print(f"    [dim]evidence:[/dim] {escape(f.evidence)}")
            console.print(f"    [dim]why:[/dim] {escape(f.explanation)}")
    if not any_f:
        console.print("diagnosis: no rule fired")
    console.print(f"report: [bold]{escape(str(res.index))}[/bold]")
