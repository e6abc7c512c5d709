"""Diagnosis rules (rlft.report.diagnose) on real runs.

* Three real short runs here: a run that diverges to NaN; online SAC whose temperature explodes (a common SAC failure
  on long chunks: a 10x5 chunk, the auto target entropy -dim, a policy that cannot widen enough to reach it), checked
  end to end through ``rlft train`` -- the one-line warning is printed once, the report's rule gives the sign of
  log_prob + target_entropy -- and a healthy online SAC run (the default target-entropy rule) that must trigger no
  rule.
* Metric series recorded from real runs (tests/data/report/, provenance in its README.md) for triggers that take
  longer than a CI test should.
* Synthetic series for the plumbing (NaN written by the Logger), next to its real run the lambda-collapse shape,
  the weight-dominance shape no real fixture has, and ``healthy_iql_default`` (a synthetic reconstruction of a
  reported healthy default pipeline that the previous rules flagged; provenance in its README.md); they are
  labelled as such.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from rlft.cli import main
from rlft.report import diagnose as dg
from rlft.report.diagnose import LiveDiagnosis, diagnose
from rlft.report.runs import Metrics, expand_runs, load_run
from rlft.train.logger import Logger

DATA = Path(__file__).resolve().parent / "data" / "report"
CUBE_ACTION_DIM = 5  # OGBench cube-single's action dimension (the fixtures keep no checkpoint to read it from)


def _diag(name: str, **ctx) -> dict[str, dg.Finding]:
    run = load_run(DATA / name)
    found = diagnose(run.metrics, {**run.context(), "action_dim": CUBE_ACTION_DIM, **ctx})
    return {f.rule: f for f in found}


# ---------------------------------------------------------------------------------------------------------------
# real runs, in the test
# ---------------------------------------------------------------------------------------------------------------
ONLINE_TINY = [
    "--mode",
    "online",
    "--env.max-episode-steps",
    "50",
    "--eval.num-episodes",
    "1",
    "--eval.parallel-envs",
    "1",
    "--run.no-tensorboard",
    "--run.log-every",
    "50",
    "--batch-size",
    "32",
    "--critic-hidden-dims",
    "32",
    "32",
    "--policy.hidden-dims",
    "32",
    "32",
    "--num-critics",
    "2",
    "--utd-ratio",
    "4",
    "--actor-update-every",
    "1",
    "--warmup-steps",
    "100",
    "--offline-ratio",
    "0",
]


@pytest.mark.slow
def test_temperature_explosion_real_run_warns_once_during_training(tmp_path, capsys):
    """SAC on a 10x5 chunk with the textbook target -dim = -50 and a policy whose log-std is capped at -3: its
    entropy cannot reach -50 (at most ~-79 nats), log_prob + target_entropy stays > 0 and alpha grows."""
    argv = [
        "train",
        "sac",
        *ONLINE_TINY,
        "--steps",
        "350",
        "--env.act-horizon",
        "10",
        "--target-entropy-per-dim",
        "-1",
        "--no-target-entropy-from-policy",
        "--policy.gaussian.log-std-max",
        "-3",
        "--temperature-lr",
        "0.03",
        "--run.out-dir",
        str(tmp_path),
        "--run.name",
        "temp",
    ]
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "] temperature_explosion at step" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning [sac]"), err  # one line, once per run

    run = load_run(tmp_path / "temp")
    assert run.context()["action_dim"] == 5 and run.context()["act_horizon"] == 10  # read from the checkpoint
    found = {f.rule: f for f in diagnose(run.metrics, run.context())}
    f = found["temperature_explosion"]
    _, temp = run.metrics.series("alpha/temperature")
    assert temp.max() >= dg.TEMP_GROWTH_FACTOR * temp[0]
    # the evidence carries the sign of log_prob + target_entropy (= target - entropy), here positive
    ent = dg._at(run.metrics, "actor/entropy", f.step)
    assert ent < -50 and f"log_prob + target_entropy = +{-50 - ent:.3g}" in f.evidence
    assert "over 50 dims" in f.evidence and "pushes alpha up" in f.explanation


@pytest.mark.slow
def test_healthy_run_triggers_no_rule(tmp_path, capsys):
    """Online SAC from scratch with rlft's default target-entropy rule: nothing should fire, live or afterwards."""
    capsys.readouterr()
    assert (
        main(["train", "sac", *ONLINE_TINY, "--steps", "300", "--run.out-dir", str(tmp_path), "--run.name", "ok"]) == 0
    )
    assert "warning" not in capsys.readouterr().err
    run = load_run(tmp_path / "ok")
    assert run.metrics.has("alpha/temperature") and run.metrics.has("critic/q_std")
    assert diagnose(run.metrics, run.context()) == []


def test_nonfinite_real_diverged_run(tmp_path, capsys):
    """A real run whose critic learning rate is absurd (1e12): the first NaN update stops training with one error
    naming the metric, the live diagnosis prints its warning, and the diverged update's metrics are in the run's
    metrics.jsonl, so `rlft report` names the metric and the step (no policy is saved)."""
    capsys.readouterr()
    rc = main(
        [
            "train",
            "sac",
            *ONLINE_TINY,
            "--steps",
            "300",
            "--critic-lr",
            "1e12",
            "--run.out-dir",
            str(tmp_path),
            "--run.name",
            "nan",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "became nan" in err and "training diverged" in err
    assert "] nonfinite at step" in err and err.count("] nonfinite at step") == 1
    run = load_run(tmp_path / "nan")
    (f,) = [f for f in diagnose(run.metrics, run.context()) if f.rule == "nonfinite"]
    assert f.severity == "error" and f.metric in err and f"at step {f.step}" in err
    assert not (tmp_path / "nan" / "checkpoints" / "policy_final.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------------
# series recorded from real runs
# ---------------------------------------------------------------------------------------------------------------
def test_collapsed_online_sac_entropy_rise_and_success_regression():
    # start_success: the starting policy's run (iql1) ended at success_once 0.46 (its summary.json; README.md)
    found = _diag("sac_online_collapse", start_success=0.46, start_source="iql1")
    assert set(found) == {"entropy_rise", "success_regression"}
    rise = found["entropy_rise"]
    assert rise.step == 2001 and "-60.4" in rise.evidence and "not rising" in rise.evidence
    reg = found["success_regression"]
    assert reg.step == 5001 and "0.46" in reg.evidence and "online episode success" in reg.evidence
    # without the starting point, one evaluation gives no regression to speak of
    assert "success_regression" not in _diag("sac_online_collapse", start_success=None)


def test_offline_sac_without_bc_overestimates_q_and_collapses_entropy():
    found = _diag("sac_offline_q_overestimation")
    assert set(found) == {"q_overestimation", "entropy_collapse"}
    q = found["q_overestimation"]
    assert q.step == 50 and q.metric == "actor/actor_q"
    assert found["entropy_collapse"].step == 100 and "0.75 nats/dim x 50 dims" in found["entropy_collapse"].evidence


def test_iql_on_demos_weights_uniform_and_success_stuck():
    found = _diag("iql_demos_uniform_weights")
    assert set(found) == {"uniform_weights", "success_stuck_at_zero"}
    assert "nearly uniform" in found["uniform_weights"].title
    assert "in all 3 evaluations" in found["success_stuck_at_zero"].evidence


def test_iql_frozen_critic_weights_at_clip_and_td_not_decreasing():
    found = _diag("iql_frozen_critic_beta1000")
    assert set(found) == {"weight_outliers", "uniform_weights", "td_not_decreasing"}
    assert "max_weight (100) on 100% of log points" in found["weight_outliers"].evidence
    assert "at the clip for a large part of the batch" in found["weight_outliers"].title  # mean 73-77 of 100
    assert "102% of its targets' magnitude" in found["td_not_decreasing"].evidence  # the critic learned nothing
    assert "saturate at the clip" in found["uniform_weights"].title
    assert found["td_not_decreasing"].severity == "warning"  # offline: the targets do not move with new data


def test_online_sac_tiny_replay_critic_divergence():
    found = _diag("sac_online_fresh_tiny_replay")
    assert "critic_divergence" in found and found["critic_divergence"].step == 400
    assert found["td_not_decreasing"].severity == "info"  # online: new data keeps arriving
    assert "temperature_explosion" not in found  # x4.7 < TEMP_GROWTH_FACTOR


def _replay_live(path: Path, ctx: dict) -> list[dg.Finding]:
    """What the training loop's live diagnosis would have announced, replaying a run's metrics.jsonl line by line."""
    seen: list[dg.Finding] = []
    live = LiveDiagnosis(ctx, seen.append)
    for line in (path / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        live(r["step"], {k: v for k, v in r.items() if k not in ("step", "time")})
    return seen


def test_default_pipeline_stages():
    """REAL (the default pipeline, seed 0, online 15k env steps): a healthy run -- no rule fires on any stage, in the
    report or live. Its IQL stages are the regime that used to raise false alarms: advantage weights with the batch
    max at the clip 100 but mean 3.6-11 (the clip binds on at most 4-11% of the batch; one sample carries <= 20% of
    a batch's weight), and an online TD error that drops 3.28 -> 1.5 within four logs and then plateaus at ~3% of
    its target."""
    runs = expand_runs([DATA / "pipeline_f_s0"])
    assert [r.name for r in runs] == ["pipeline_f_s0/bc", "pipeline_f_s0/offline", "pipeline_f_s0/online"]
    assert [r.start_success for r in runs] == [None, 0.2, 0.18]  # each stage starts from the previous stage
    by = {r.group: {f.rule for f in diagnose(r.metrics, r.context())} for r in runs}
    assert by == {"bc": set(), "offline": set(), "online": set()}
    for r in runs:
        assert _replay_live(r.path, r.context()) == [], r.name
    _, wmax = runs[2].metrics.series("actor/iql_weights_max")
    assert (wmax >= 0.99 * 100).mean() > 0.9  # at the clip nearly always: not a failure by itself


HEALTHY = DATA / "healthy_iql_default"


def test_healthy_default_iql_synthetic_reconstruction_triggers_nothing():
    """SYNTHETIC (healthy_iql_default/README.md: a reconstruction of the magnitudes of a reported healthy default
    pipeline, BC 0.20 -> IQL 0.30 -> online 0.92, that printed weight_outliers twice and td_not_decreasing): no rule
    fires on either stage, in the report or live."""
    for stage, start in (("offline", 0.20), ("online", 0.30)):
        run = load_run(HEALTHY / stage)
        ctx = {**run.context(), "action_dim": CUBE_ACTION_DIM, "start_success": start}
        assert diagnose(run.metrics, ctx) == [], stage
        assert _replay_live(HEALTHY / stage, ctx) == [], stage
    # the fixture is in the reported regime, which the previous rules flagged
    off, on = load_run(HEALTHY / "offline").metrics, load_run(HEALTHY / "online").metrics
    _, omax = off.series("actor/iql_weights_max")
    _, omean = off.series("actor/iql_weights_mean")
    assert omax[-1] >= 99 and 3 <= omean[-1] <= 3.5 and (omax >= 99).mean() >= 0.25
    s, td = on.series("critic/td_error")
    _, tgt = on.series("critic/td_target_mean")
    assert (td[0], td[-1]) == (3.82, 1.78) and td[1] > td[0]  # the rise at the start of the online stage
    rel, q = td / np.abs(tgt), len(td) // 4
    assert np.median(rel[-q:]) >= 0.9 * np.median(rel[:q])  # quarter medians alone: "not decreasing"
    assert np.median(rel[-q:]) < dg.TD_REL_UNFIT / 2  # ...but the critic fits its targets to ~3%
    assert load_run(HEALTHY / "online").final_eval()["eval/success_once"] == 0.92


def test_weight_outliers_dominance_synthetic():
    """SYNTHETIC: one chunk carrying most of each batch's weight (max 100 at mean 0.6 in a batch of 256: share 65%,
    an effective sample size of at most 2.4) fires; the same series without a known batch size cannot be judged."""
    steps = list(range(1000, 6000, 1000))
    m = _synthetic({"actor/iql_weights_max": [100.0] * 5, "actor/iql_weights_mean": [0.6] * 5}, steps)
    (f,) = dg.weight_outliers(m, {"algo_cfg": {"batch_size": 256, "max_weight": 100.0}})
    assert f.title == "a few samples dominate the weighted actor loss"
    assert "65% of the batch's total weight" in f.evidence
    assert dg.weight_outliers(m, {"algo_cfg": {"max_weight": 100.0}}) == []
    healthy = _synthetic({"actor/iql_weights_max": [100.0] * 5, "actor/iql_weights_mean": [3.0] * 5}, steps)
    assert dg.weight_outliers(healthy, {"algo_cfg": {"batch_size": 256, "max_weight": 100.0}}) == []


def test_live_diagnosis_announces_warnings_not_info():
    """REAL (sac_online_fresh_tiny_replay): the report lists td_not_decreasing as info (online); the live hook, whose
    lines read as warnings, announces only critic_divergence."""
    run = load_run(DATA / "sac_online_fresh_tiny_replay")
    ctx = {**run.context(), "action_dim": CUBE_ACTION_DIM}
    assert _diag("sac_online_fresh_tiny_replay")["td_not_decreasing"].severity == "info"
    assert [f.rule for f in _replay_live(run.path, ctx)] == ["critic_divergence"]


def test_live_diagnosis_fires_each_rule_once_and_matches_the_report():
    records = [json.loads(x) for x in (DATA / "iql_frozen_critic_beta1000" / "metrics.jsonl").read_text().splitlines()]
    ctx = {**load_run(DATA / "iql_frozen_critic_beta1000").context(), "action_dim": CUBE_ACTION_DIM}
    seen: list[dg.Finding] = []
    live = LiveDiagnosis(ctx, seen.append)
    for r in records:
        live(r["step"], {k: v for k, v in r.items() if k not in ("step", "time")})
    names = [f.rule for f in seen]
    assert sorted(names) == sorted(set(names)) == sorted(_diag("iql_frozen_critic_beta1000"))
    # the first warning arrives the moment its condition holds, not at the end
    assert seen[0].rule == "weight_outliers" and seen[0].step == 20
    # resuming: the history is replayed silently, nothing fires twice
    again: list[dg.Finding] = []
    LiveDiagnosis(ctx, again.append, history=records)(records[-1]["step"] + 20, {"actor/iql_weights_max": 100.0})
    assert again == []


# ---------------------------------------------------------------------------------------------------------------
# synthetic series (labelled): the lambda shape next to its real run, and plumbing
# ---------------------------------------------------------------------------------------------------------------
def _synthetic(series: dict[str, list[float]], steps: list[int]) -> Metrics:
    m = Metrics()
    for i, s in enumerate(steps):
        m.add(s, {k: v[i] for k, v in series.items()})
    return m


def test_lambda_collapse_synthetic_td3bc_shape():
    """SYNTHETIC: TD3+BC's lambda collapse under Q overestimation (lambda 0.35 -> ~0.01 while actor_q 5 -> 100)."""
    steps = list(range(1000, 11000, 1000))
    q = list(np.geomspace(5, 100, len(steps)))
    m = _synthetic({"actor/actor_lam": [2.5 / x for x in q], "actor/actor_q": q}, steps)
    f = dg.lambda_collapse(m, {})
    assert len(f) == 1 and f[0].rule == "lambda_collapse" and "actor/actor_q" in f[0].evidence
    flat = _synthetic({"actor/actor_lam": [0.05] * len(steps)}, steps)  # small but stable: Q scale, not collapse
    assert dg.lambda_collapse(flat, {}) == []


def test_q_unbounded_real_divergence_and_not_on_a_fresh_critic_learning_its_scale():
    """REAL (sac_offline_q_divergence: offline SAC on 50 ManiSkill LiftPegUpright demos, one critic without
    LayerNorm, alpha fixed at 1e-4, no BC term): q_mean grows geometrically past the bound r_max / (1 - gamma) = 100
    of the task's rewards in [0, 1] -- the deadly triad, through the actor's out-of-data actions in the target.
    The real online SAC run whose fresh critic grows from ~0 to its return scale (sac_online_fresh_tiny_replay,
    q_mean -0.3 -> -2.5) does not fire, nor does any other real fixture."""
    found = _diag("sac_offline_q_divergence", action_dim=7)
    f = found["q_unbounded"]
    assert (
        f.metric == "critic/q_mean" and "still growing" in f.evidence and "r_max / (1 - gamma) = 100" in f.explanation
    )
    for other in (
        "sac_online_fresh_tiny_replay",
        "sac_offline_q_overestimation",
        "sac_offline_uniform_box",
        "dsrl_sac_stage2",
        "sac_online_collapse",
        "iql_demos_uniform_weights",
    ):
        assert "q_unbounded" not in _diag(other), other


def test_nonfinite_as_written_by_the_logger(tmp_path):
    log = Logger(tmp_path, use_tensorboard=False)
    log.log(10, {"critic/q_mean": -1.0})
    log.log(20, {"critic/q_mean": float("nan"), "critic/critic_loss": float("inf")})
    log.close()
    assert '"nan"' in (tmp_path / "metrics.jsonl").read_text()  # the Logger's format for non-finite values
    (f,) = dg.nonfinite(load_run(tmp_path).metrics, {})
    assert f.severity == "error" and f.step == 20 and "also non-finite" in f.evidence


def test_rules_read_metrics_not_algorithm_names():
    src = inspect.getsource(dg)
    assert 'ctx.get("algo")' not in src and "ctx['algo']" not in src and 'ctx["algo"]' not in src
    for name, fn in dg.RULES.items():
        assert fn(Metrics(), {}) == [], name  # no metrics, no finding


def test_entropy_settling_at_its_target_is_not_a_collapse():
    """REAL (DSRL-SAC stage 2): entropy +16 -> -13 nats is the temperature bringing a wide fresh latent actor down
    to its target (-12.5) while alpha falls -- no entropy_collapse. The same drop past a target the policy cannot
    hold (offline SAC on demos, entropy -148 -> -232) still fires (see above)."""
    found = _diag("dsrl_sac_stage2", action_dim=5)
    assert "entropy_collapse" not in found
    assert "entropy_collapse" in _diag("sac_offline_q_overestimation")


def test_offline_sac_study_gaussian_stays_uniform_over_the_box():
    """REAL (the offline SAC study's configuration on our data, docs/notebook/benchmarks.md §8): with init_temperature 1 the tanh-Gaussian chunk
    actor never leaves the uniform distribution on [-1, 1]^40 (entropy 27.3 of at most 40 log 2 = 27.7)."""
    found = _diag("sac_offline_uniform_box")
    f = found["entropy_at_box_maximum"]
    assert "40 dims x log 2" in f.evidence and "alpha/temperature" in f.evidence
    assert "success_stuck_at_zero" in found and "temperature_explosion" not in found
    for other in ("dsrl_sac_stage2", "sac_offline_q_overestimation", "sac_online_collapse"):
        assert "entropy_at_box_maximum" not in _diag(other)


def test_fresh_latent_actor_leaving_the_box_maximum_is_not_stuck_there():
    """REAL (DSRL-NA on LiftPegUpright-v1, the first 20k env steps): a fresh latent actor starts uniform over its
    56-dim box (entropy 38.1 of at most 38.8) and comes down slowly as alpha falls (37.7 at step 5.5k, 33.9 at 20k,
    success 0.82). Checked as the live hook sees it, after every log record: never ``entropy_at_box_maximum`` (it
    fired at step 3006 before the rule waited for 8 log points and for the entropy to stop falling). The stuck actor
    of the offline SAC study still fires, from step 800 of its 3000."""
    records, ctx = _records("dsrl_na_liftpeg_leaving_box"), load_run(DATA / "dsrl_na_liftpeg_leaving_box").context()
    for n in range(1, len(records) + 1):
        assert "entropy_at_box_maximum" not in _rules(records[:n], ctx), records[n - 1]["step"]
    stuck = _records("sac_offline_uniform_box")
    ctx = {**load_run(DATA / "sac_offline_uniform_box").context(), "action_dim": CUBE_ACTION_DIM}
    first = next(r["step"] for n, r in enumerate(stuck, 1) if "entropy_at_box_maximum" in _rules(stuck[:n], ctx))
    assert first == 800


def _records(name: str) -> list[dict]:
    """The log records of fixture ``name``, in order (what the live hook is fed one at a time)."""
    return [json.loads(line) for line in (DATA / name / "metrics.jsonl").open()]


def _rules(records: list[dict], ctx: dict) -> set[str]:
    return {f.rule for f in diagnose(Metrics(records), ctx)}


def test_lambda_collapse_real_td3bc_run():
    """REAL (the same run: actor_loss_type td3bc): TD3+BC's lambda 0.39 -> 0.04 while actor_q 4.7 -> 56 -- the
    synthetic test's shape (0.35 -> ~0.01 while actor_q 5 -> 100). No other real fixture has lambda fall with
    actor_q growing."""
    f = _diag("sac_offline_uniform_box")["lambda_collapse"]
    assert f.metric == "actor/actor_lam" and "actor/actor_q 4.67 ->" in f.evidence
    for other in (
        "dsrl_sac_stage2",
        "sac_offline_q_overestimation",
        "sac_online_collapse",
        "iql_demos_uniform_weights",
    ):
        assert "lambda_collapse" not in _diag(other)
