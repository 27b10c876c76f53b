"""Preference read-outs on synthetic curves whose answers are known."""

import pandas as pd
import pytest

from initlens.analyses.studies.preference import first_step_reaching, relative_loss_gap, signed_area
from initlens.analyses.studies.report import verdict

STEPS = [0, 10, 20, 30, 40]


def test_first_step_reaching():
    curve = pd.Series([0.1, 0.5, 0.91, 0.8, 0.95], index=STEPS)
    assert first_step_reaching(curve, 0.9) == 20
    assert first_step_reaching(curve, 0.99) is None


def test_signed_area_sign_and_scale():
    ones, zeros = pd.Series(1.0, index=STEPS), pd.Series(0.0, index=STEPS)
    assert signed_area(ones, zeros) == pytest.approx(1.0)
    assert signed_area(zeros, ones) == pytest.approx(-1.0)
    ramp = pd.Series([0, 0.25, 0.5, 0.75, 1.0], index=STEPS)
    assert signed_area(ramp, zeros) == pytest.approx(0.5)
    assert signed_area(ramp, ramp) == 0.0


def test_relative_loss_gap():
    rows = [
        {"step": s, "group": g, "metric": "loss", "value": v}
        for s, lr, lm in [(0, 2.0, 2.0), (10, 1.0, 2.0)]
        for g, v in (("reasoning", lr), ("memory", lm))
    ]
    gap = relative_loss_gap(pd.DataFrame(rows))
    assert gap.loc[0] == 0.0 and gap.loc[10] == 1.0


def _table(lead_large, lead_small, test_large=0.05, test_small=0.97):
    return pd.DataFrame(
        [
            {
                "gamma": 0.3,
                "steps": 2000,
                "step_to_90_reasoning": 1000,
                "step_to_90_memory": 1000 + lead_large,
                "step_to_90_reasoning_test": None,
                "final_acc_reasoning_test": test_large,
                "reasoning_lead_steps": lead_large,
                "signed_area": 0.01,
                "mean_relative_loss_gap": 0.02,
            },
            {
                "gamma": 0.8,
                "steps": 2000,
                "step_to_90_reasoning": 1100,
                "step_to_90_memory": None,
                "step_to_90_reasoning_test": 1100,
                "final_acc_reasoning_test": test_small,
                "reasoning_lead_steps": lead_small,
                "signed_area": 0.4,
                "mean_relative_loss_gap": 0.5,
            },
        ]
    )


def test_verdict_states_the_direction_only_when_the_numbers_show_it():
    good = " ".join(verdict(_table(300, 900), "reasoning", "memory"))
    assert "Published direction reproduced" in good and "memory never reached 90%" in good
    bad = " ".join(verdict(_table(900, 300), "reasoning", "memory"))
    assert "NOT reproduced" in bad
    flat = " ".join(verdict(_table(-100, 0), "reasoning", "memory"))
    assert "NOT reproduced" in flat  # a lead of zero is not a preference
    worse = " ".join(
        verdict(_table(300, 900, test_large=0.9, test_small=0.2), "reasoning", "memory")
    )
    assert "expects it higher at small init" in worse
