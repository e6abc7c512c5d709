"""``scripts/liftpeg_failures.py`` sorts failed LiftPegUpright episodes by the peg's end state with ManiSkill's own
uprightness measure; its numbers are in docs/results.md, so its classification is checked on hand-made poses."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mani_skill")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "liftpeg_failures.py"
spec = importlib.util.spec_from_file_location("liftpeg_failures", SCRIPT)
lf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lf)


def _stood_up_by(angle: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of the task's start pose (the peg lying along world x, rolled by pi/2 about x)
    turned by ``angle`` about world y: pi/2 stands the peg up."""
    roll = np.array([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0])
    w1, x1, y1, z1 = math.cos(angle / 2), 0.0, math.sin(angle / 2), 0.0
    w2, x2, y2, z2 = roll
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def test_upright_error_is_maniskills_measure():
    # lying as the task starts is pi/2 from upright; a quarter turn about y stands it up; 0.1 rad short leaves 0.1
    assert lf.upright_error(_stood_up_by(0.0)) == pytest.approx(math.pi / 2, abs=1e-5)
    assert lf.upright_error(_stood_up_by(math.pi / 2)) == pytest.approx(0.0, abs=1e-3)
    assert lf.upright_error(_stood_up_by(math.pi / 2 - 0.1)) == pytest.approx(0.1, abs=1e-3)


def test_classify_and_summarize():
    assert lf.classify(0.122, 0.05, True) == "success"
    assert lf.classify(0.123, 0.10, False) == "near_miss"  # standing (within 5 mm of 0.12 m), tilted
    assert lf.classify(0.21, 1.1, False) == "held_tilted"
    assert lf.classify(0.21, 0.05, False) == "held_upright"
    assert lf.classify(0.025, math.pi / 2, False) == "lying"
    assert lf.classify(0.10, 0.3, False) == "other"
    eps = [
        {"class": "success", "end_tilt": 0.05, "tilt_at_lift": 0.6},
        {"class": "success", "end_tilt": 0.05, "tilt_at_lift": 0.7},
        {"class": "near_miss", "end_tilt": 0.1, "tilt_at_lift": 0.65},
        {"class": "lying", "end_tilt": 1.5708, "tilt_at_lift": None},
    ]
    s = lf.summarize(eps)
    assert s["num_episodes"] == 4 and s["success"]["count"] == 2 and s["held_tilted"] == {"count": 0}
    assert s["success"]["tilt_at_lift_q10_median_q90"] == [0.61, 0.65, 0.69]
    assert s["near_miss"]["end_tilt"] == [0.1] and s["lying"]["tilt_at_lift"] == [None]
