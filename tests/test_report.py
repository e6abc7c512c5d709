"""``rlft report``: the HTML report of run / pipeline directories (figures, results table, diagnosis, config), its
command line, and clear errors on bad input. Uses the real-run fixtures of tests/data/report (see its README.md)."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rlft.cli import main
from rlft.report.build import build_report
from rlft.report.plots import panels_for, step_label
from rlft.report.runs import ReportError, expand_runs

DATA = Path(__file__).resolve().parent / "data" / "report"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Checker(HTMLParser):
    """Well-formedness: every non-void element is closed in order; collects referenced files."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.refs: list[str] = []
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for k, v in attrs:
            if k in ("src", "poster") and v:
                self.refs.append(v)
            if k == "href" and v and not v.startswith("#"):
                self.refs.append(v)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def check_html(index: Path) -> _Checker:
    """Parse ``index``: well-formed, and every referenced file exists relative to it (no absolute paths)."""
    c = _Checker()
    c.feed(index.read_text())
    c.close()
    assert c.errors == [] and c.stack == [], (c.errors, c.stack)
    for ref in c.refs:
        assert not ref.startswith(("/", "http:", "https:", "file:")), ref
        assert (index.parent / ref).is_file(), ref
    return c


def _copy(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(DATA / name, tmp_path / name))


def test_pipeline_report_is_well_formed_and_complete(tmp_path):
    res = build_report([DATA / "pipeline_f_s0"], tmp_path / "rep")
    c = check_html(res.index)
    html = res.index.read_text()
    # results table: one row per stage with its final evaluation (from the stages' summary.json)
    for stage, so in (("bc", "0.20"), ("offline", "0.18"), ("online", "0.40")):
        assert f">pipeline_f_s0/{stage}</a>" in html and f"<td>{so}</td>" in html
    assert "<td>0.40</td>" in html and "Success after each stage" not in html  # the figure carries that title
    # pages grouped by topic: critic, actor, weights/advantages, evaluation, per stage; no leftovers
    figs = {p.name for p in (tmp_path / "rep" / "fig").glob("*.png")}
    assert {
        "pipeline_f_s0_online_critic.png",
        "pipeline_f_s0_online_weights.png",
        "pipeline_f_s0_online_eval.png",
        "pipeline_f_s0_bc_actor.png",
        "stages.png",
    } <= figs
    assert all(p.stat().st_size > 5000 for p in (tmp_path / "rep" / "fig").glob("*.png"))
    assert c.tags["img"] == len(figs)
    # diagnosis: the default pipeline is healthy, no rule fires (tests/test_report_diagnose.py); config, environment
    assert "No rule fired" in html and not any(res.findings.values())
    assert "cube-single-singletask-v0" in html and "<summary>config.yaml</summary>" in html
    assert not list((tmp_path / "rep").rglob(".*tmp-*"))  # atomic writes leave no temporaries


def test_sweep_report_overlays_runs_and_aggregates(tmp_path):
    """Several run directories (a sweep): one comparison page set with the runs overlaid, a mean +- std row."""
    a, b = _copy(tmp_path, "sac_online_collapse"), _copy(tmp_path, "sac_online_fresh_tiny_replay")
    res = build_report([a, b], tmp_path / "rep")
    check_html(res.index)
    html = res.index.read_text()
    assert "Comparison: runs (2 runs)" in html and "compare_runs_critic.png" in html
    assert "mean &plusmn; std" in html
    assert {f.rule for f in res.findings["sac_online_fresh_tiny_replay"]} >= {"critic_divergence"}
    assert "critic_divergence" in html and "critic/q_std 0.102 (step 150)" in html  # the finding with its evidence


def test_every_metric_lands_on_one_page():
    names = [n for r in expand_runs([DATA / "pipeline_f_s0", DATA / "sac_online_collapse"]) for n in r.metrics.names]
    pages = panels_for(names)
    drawn = [n for panels in pages.values() for _, group in panels for n in group]
    assert len(drawn) == len(set(drawn))
    assert set(names) - set(drawn) == {"eval/num_episodes", "eval/best_success_once"}
    temp = dict(pages["temperature"])
    assert temp["entropy vs target_entropy"] == ["actor/entropy", "alpha/target_entropy"]
    assert pages["eval"][0] == ("success_once vs success_at_end", ["eval/success_once", "eval/success_at_end"])


def test_curves_say_what_their_step_counts():
    """An online run's curves are success against env steps; an offline run's against updates."""
    modes = {r.name: r.mode for r in expand_runs([DATA / "pipeline_f_s0"])}
    assert {step_label({m}) for m in modes.values()} == {"updates", "env steps"}
    assert step_label({modes[n] for n in modes if n.endswith("online")}) == "env steps"
    assert "env steps" in step_label(set(modes.values())) and "updates" in step_label(set(modes.values()))


def test_cli_report_prints_diagnosis_and_writes_default_out(tmp_path, capsys):
    run = _copy(tmp_path, "sac_offline_q_overestimation")
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "q_overestimation" in out and "evidence:" in out and "why:" in out
    assert (run / "report" / "index.html").is_file()
    assert main(["report", str(run), "--out", str(tmp_path / "r2")]) == 0
    check_html(tmp_path / "r2" / "index.html")


@pytest.mark.parametrize("case", ["missing", "no_metrics", "corrupt", "empty_pipeline", "not_a_dir"])
def test_bad_input_is_one_clear_error_naming_the_file(tmp_path, capsys, case):
    if case == "missing":
        target, expect = tmp_path / "nope", f"{tmp_path / 'nope'}: no such run directory"
    elif case == "no_metrics":
        (tmp_path / "r").mkdir()
        target, expect = tmp_path / "r", f"{tmp_path / 'r' / 'metrics.jsonl'}: no metrics file"
    elif case == "corrupt":
        run = _copy(tmp_path, "sac_online_collapse")
        lines = (run / "metrics.jsonl").read_text().splitlines()
        lines[3] = lines[3][:40]  # a line cut in the middle, not the last one
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        target, expect = run, f"{run / 'metrics.jsonl'}:4: corrupt JSON line"
    elif case == "empty_pipeline":
        (tmp_path / "p").mkdir()
        (tmp_path / "p" / "pipeline.yaml").write_text("stages: [{name: bc, config: bc.yaml}]\n")
        target, expect = tmp_path / "p", "pipeline directory without any finished stage"
    else:
        (tmp_path / "f").write_text("x")
        target, expect = tmp_path / "f", "not a directory"
    with pytest.raises(ReportError, match="."):
        expand_runs([target])
    capsys.readouterr()
    assert main(["report", str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expect in err.replace("\n", "") and "Traceback" not in err


def test_truncated_last_line_of_a_killed_run_is_tolerated(tmp_path):
    run = _copy(tmp_path, "sac_online_collapse")
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + '{"step": 7501, "time": 80.5, "critic/q_me')
    (r,) = expand_runs([run])
    assert len(r.records) == len(text.splitlines()) and r.metrics.last_step == 7001


def test_nonfinite_values_are_plotted_and_reported(tmp_path):
    run = _copy(tmp_path, "sac_offline_q_overestimation")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 650, "time": 1.0, "critic/q_mean": "nan", "critic/critic_loss": "inf"}) + "\n")
    res = build_report([run], tmp_path / "rep")
    check_html(res.index)
    assert res.findings[run.name][0].rule == "nonfinite" and res.findings[run.name][0].severity == "error"


def test_sweep_directory_expands_into_runs_grouped_by_grid_point(tmp_path):
    """An rlft sweep directory (<sweep>/<point>,s<seed>/ run dirs next to configs/, results.md): its runs, overlaid
    and averaged per grid point across seeds."""
    from rlft.report.build import _group_table, _groups

    sweep = tmp_path / "sw"
    for name in ("algo_cfg.beta=1,s0", "algo_cfg.beta=1,s1", "algo_cfg.beta=3,s0", "algo_cfg.beta=3,s1"):
        shutil.copytree(DATA / "iql_demos_uniform_weights", sweep / name)
    (sweep / "configs").mkdir()
    (sweep / "results.md").write_text("# rlft sweep\n")
    runs = expand_runs([sweep])
    assert [r.group for r in runs] == ["sw/algo_cfg.beta=1"] * 2 + ["sw/algo_cfg.beta=3"] * 2
    table = _group_table(_groups(runs))
    assert table.count("<td>2</td>") == 2 and "&plusmn;" in table
    (sweep / "algo_cfg.beta=3,s1").rename(sweep / "algo_cfg.beta=5,s1")  # one seed per point: one group, overlaid
    (sweep / "algo_cfg.beta=1,s1").rename(sweep / "algo_cfg.beta=2,s1")
    assert {r.group for r in expand_runs([sweep])} == {"sw"}
