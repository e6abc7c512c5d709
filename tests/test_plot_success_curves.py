"""``scripts/plot_success_curves.py`` draws the per-method success curves of docs/results.md from run directories;
its mean over seeds is checked on hand-computed values, and a figure is written from real metrics files."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "plot_success_curves.py"
spec = importlib.util.spec_from_file_location("plot_success_curves", SCRIPT)
psc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(psc)


def _run(tmp_path: Path, name: str, evals: list[tuple[int, float]]) -> Path:
    run = tmp_path / name
    run.mkdir()
    rows = [{"step": s, "train/episode_success": 0.5} for s in range(500, 40001, 500)]
    rows += [{"step": s, "eval/success_once": v, "eval/num_episodes": 100} for s, v in evals]
    rows.sort(key=lambda r: r["step"])
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_mean_curve_takes_the_kth_evaluation_of_every_run_up_to_the_shortest():
    a = (np.array([0, 20000, 40000]), np.array([0.7, 0.2, 0.6]))
    b = (np.array([0, 20007, 40001, 60003]), np.array([0.8, 0.4, 0.8, 0.9]))
    steps, mean = psc.mean_curve([a, b])
    np.testing.assert_allclose(steps, [0, 20003.5, 40000.5])
    np.testing.assert_allclose(mean, [0.75, 0.3, 0.7])


def test_curve_prepends_the_starting_policy(tmp_path):
    run = _run(tmp_path, "r", [(20000, 0.25), (40000, 0.5)])
    steps, values = psc.curve(run, "eval/success_once", 0.75)
    assert steps.tolist() == [0, 20000, 40000] and values.tolist() == [0.75, 0.25, 0.5]


def test_the_figure_is_written_and_a_start_count_mismatch_is_refused(tmp_path, monkeypatch):
    runs = [_run(tmp_path, f"m{m}s{s}", [(20000, 0.1 * s), (40000, 0.2 * m)]) for m in range(2) for s in range(2)]
    out = tmp_path / "curves.png"
    argv = ["x", "--out", str(out), "--method", "A", str(runs[0]), str(runs[1]), "--method", "B", str(runs[2])]
    monkeypatch.setattr("sys.argv", argv + [str(runs[3]), "--start", "0.5", "0.6"])
    psc.main()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    monkeypatch.setattr("sys.argv", argv + ["--start", "0.5"])
    with pytest.raises(SystemExit, match="--start has 1 values"):
        psc.main()


def test_a_run_without_metrics_or_without_the_metric_gets_one_message_and_no_figure(tmp_path, monkeypatch):
    run = _run(tmp_path, "r", [])  # trained but never evaluated
    out = tmp_path / "curves.png"
    monkeypatch.setattr("sys.argv", ["x", "--out", str(out), "--method", "A", str(run)])
    with pytest.raises(SystemExit, match="no 'eval/success_once' in its metrics.jsonl"):
        psc.main()
    monkeypatch.setattr("sys.argv", ["x", "--out", str(out), "--method", "A", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="no metrics file"):
        psc.main()
    assert list(tmp_path.glob("curves*")) == []
