"""``scripts/peginsertion_failures.py`` sorts PegInsertionSide episodes by how far they got with ManiSkill's own
insertion test; its numbers are in docs/results.md, so its geometry is checked on the real task with the peg placed by
hand, and its classes on hand-made records."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("mani_skill")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "peginsertion_failures.py"
spec = importlib.util.spec_from_file_location("peginsertion_failures", SCRIPT)
pf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pf)


def test_head_in_hole_is_maniskills_frame():
    from rlft.envs import make_env

    env = make_env("PegInsertionSide-v1")
    try:
        env.reset(seed=3)
        base = env.unwrapped
        (x, y, z), r = pf.head_in_hole(base)
        assert x < pf.MOUTH and r == pytest.approx(float(base.peg_half_sizes[0, 1]) + 0.003, abs=1e-6)
        # the peg placed with its head at the hole's centre: inserted by ManiSkill's test, (0, 0, 0) in the hole frame
        base.peg.set_pose(base.box_hole_pose * base.peg_head_offsets.inv())
        pos, _ = pf.head_in_hole(base)
        assert abs(pos).max() < 1e-5 and bool(base.has_peg_inserted()[0][0])
    finally:
        env.close()


def test_classify_and_summarize():
    assert pf.classify(True, True, -0.01) == "success"
    assert pf.classify(False, False, None) == "never_grasped"
    assert pf.classify(False, True, None) == "not_lined_up"  # never within 10 cm of the mouth
    assert pf.classify(False, True, 0.004) == "not_lined_up"  # near the mouth, 4 mm off the hole's radius
    assert pf.classify(False, True, -0.002) == "lined_up"
    eps = [
        {"class": "success", "yz_margin": -0.01, "max_x": 0.0, "min_dist": 0.0, "end_dist": 0.0},
        {"class": "not_lined_up", "yz_margin": None, "max_x": None, "min_dist": 0.1, "end_dist": 0.3},
        {"class": "not_lined_up", "yz_margin": 0.002, "max_x": -0.08, "min_dist": 0.08, "end_dist": 0.1},
    ]
    s = pf.summarize(eps)
    assert s["num_episodes"] == 3 and s["success"]["count"] == 1 and s["lined_up"] == {"count": 0}
    assert s["not_lined_up"]["yz_margin_mm_q10_median_q90"] == [2.0, 2.0, 2.0]
    assert s["not_lined_up"]["min_dist_mm_q10_median_q90"] == [82.0, 90.0, 98.0]
