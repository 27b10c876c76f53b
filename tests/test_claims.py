"""The published claims judged over seeds, on hand-built per-run tables whose answers are
known: reproduced, not reproduced, the strict-majority boundary, and not judged."""

import pandas as pd
import pytest

from initlens.analyses.studies.claims import COLUMNS, claims_table
from initlens.analyses.studies.report import claim_lines, verdict

LARGE, SMALL = 0.3, 0.8  # large init = the smallest gamma, small init = the largest


def _row(gamma, seed, test_acc=0.5, lead=0, t_r=500, t_m=500, steps=1000, **extra):
    """One run's preference row (the columns the claims read)."""
    return {
        "run": f"gamma_{gamma:g}_seed_{seed}",
        "gamma": gamma,
        "seed": seed,
        "steps": steps,
        "step_to_90_reasoning": t_r,
        "step_to_90_memory": t_m,
        "final_acc_reasoning_test": test_acc,
        "reasoning_lead_steps": lead,
        **extra,
    }


def _table(rows) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    steps = [c for c in table if c.startswith("step_to_")]
    return table.astype({c: "Int64" for c in steps})  # as preference_table gives them


def _claim(claims: pd.DataFrame, key: str) -> pd.DataFrame:
    return claims[claims.claim == key]


def _verdict(claims: pd.DataFrame, key: str) -> str:
    [verdict] = set(_claim(claims, key).verdict)
    return verdict


def _published(seeds=(0, 1, 2)) -> list[dict]:
    """Every seed shows each Yao et al. claim: small init generalizes and leads, large
    init learns both groups within 10% of the steps of each other."""
    return [
        row
        for s in seeds
        for row in (
            _row(LARGE, s, test_acc=0.1 + s / 100, lead=100, t_r=400, t_m=500),
            _row(SMALL, s, test_acc=0.9 + s / 100, lead=600, t_r=300, t_m=900),
        )
    ]


def test_claims_reproduced_in_every_seed_with_mean_and_spread():
    claims = claims_table(_table(_published()))
    assert list(claims.columns) == list(COLUMNS)
    for key in ("i", "ii", "iii"):
        assert _verdict(claims, key) == "reproduced"
        rows = _claim(claims, key)
        assert set(rows.reproduced_in) == {3} and set(rows.of_seeds) == {3}
        assert set(rows.needed) == {2} and set(rows.holds) == {"0: yes; 1: yes; 2: yes"}
    held_out = _claim(claims, "i").set_index("init")
    assert held_out.loc["small", "gamma"] == SMALL and held_out.loc["large", "gamma"] == LARGE
    assert held_out.loc["small", "mean"] == pytest.approx(0.91)
    assert held_out.loc["small", "min"] == pytest.approx(0.90)
    assert held_out.loc["small", "max"] == pytest.approx(0.92)
    assert held_out.loc["small", "std"] == pytest.approx(0.01)  # sample std over seeds
    assert held_out.loc["large", "per_seed"] == "0: 0.1; 1: 0.11; 2: 0.12"
    pace = _claim(claims, "iii").set_index("init")
    assert pace.loc["large", "mean"] == pytest.approx(0.1)  # |100| / 1000 steps
    assert pace.loc["small", "mean"] == pytest.approx(0.6)
    # Not the composite task: no inferential/symmetric read-outs to judge (iv) on.
    assert _verdict(claims, "iv") == "not judged"
    assert "composite task only" in _claim(claims, "iv").why.iloc[0]


def test_claims_not_reproduced_when_the_direction_is_reversed():
    rows = [
        row
        for s in (0, 1)
        for row in (
            _row(LARGE, s, test_acc=0.9, lead=600, t_r=300, t_m=900),  # large init leads
            _row(SMALL, s, test_acc=0.1, lead=100, t_r=400, t_m=500),
        )
    ]
    claims = claims_table(_table(rows))
    for key in ("i", "ii", "iii"):
        assert _verdict(claims, key) == "not reproduced"
        assert set(_claim(claims, key).reproduced_in) == {0}
    lines = " ".join(claim_lines(claims))
    assert "Reproduced in 0 of 2 seeds" in lines and "NOT reproduced" in lines


@pytest.mark.parametrize(
    "holds, verdict",
    [
        ((True,), "reproduced"),  # one seed: a majority of 1
        ((False,), "not reproduced"),
        ((True, False), "not reproduced"),  # half is not a strict majority
        ((True, True, False), "reproduced"),  # 2 of 3
        ((True, False, False), "not reproduced"),
        ((True, True, False, False), "not reproduced"),  # 2 of 4
        ((True, True, True, False), "reproduced"),  # 3 of 4
    ],
)
def test_a_claim_is_reproduced_in_a_strict_majority_of_seeds(holds, verdict):
    rows = [
        row
        for s, h in enumerate(holds)
        for row in (
            _row(LARGE, s, lead=100),
            _row(SMALL, s, lead=300 if h else 50),
        )
    ]
    lead = _claim(claims_table(_table(rows)), "ii")
    assert set(lead.verdict) == {verdict}
    assert set(lead.reproduced_in) == {sum(holds)} and set(lead.of_seeds) == {len(holds)}
    assert set(lead.needed) == {len(holds) // 2 + 1}
    if len(holds) == 1:
        assert lead["std"].isna().all()  # no spread from one seed


def test_similar_pace_needs_both_groups_at_90_and_a_lead_within_20_percent():
    rows = [
        _row(LARGE, 0, lead=200, t_r=300, t_m=500),  # exactly 20% of 1000 steps: holds
        _row(LARGE, 1, lead=210, t_r=290, t_m=500),  # 21%: does not
        _row(LARGE, 2, lead=0, t_r=None, t_m=1000),  # reasoning never reached 90%
        _row(LARGE, 3, lead=-100, t_r=600, t_m=500),  # memory ahead by 10%: holds
        *[_row(SMALL, s) for s in range(4)],
    ]
    pace = _claim(claims_table(_table(rows)), "iii")
    assert set(pace.holds) == {"0: yes; 1: no; 2: no; 3: yes"}
    assert set(pace.verdict) == {"not reproduced"}  # 2 of 4


def test_claims_pair_runs_by_seed():
    """A seed without a run at both init scales is left out of the comparison."""
    rows = [*_published(seeds=(0, 1)), _row(SMALL, 2, test_acc=0.0, lead=-500)]
    held_out = _claim(claims_table(_table(rows)), "i")
    assert set(held_out.of_seeds) == {2} and set(held_out.verdict) == {"reproduced"}
    assert set(held_out.n_seeds) == {2}


def test_composite_claim_inferential_at_small_and_symmetric_at_large_init():
    def rows(small_inferential):
        out = []
        for s in (0, 1, 2):
            inferential = small_inferential[s]
            out += [
                _row(LARGE, s, inferential_fraction=0.1, symmetric_fraction=0.8),
                _row(
                    SMALL,
                    s,
                    inferential_fraction=0.7 if inferential else 0.2,
                    symmetric_fraction=0.1 if inferential else 0.6,
                ),
            ]
        return _table(out)

    composite = _claim(claims_table(rows((True, True, False))), "iv").set_index("init")
    assert set(composite.verdict) == {"reproduced"} and set(composite.holds) == {
        "0: yes; 1: yes; 2: no"
    }
    assert composite.loc["large", "mean"] == pytest.approx(-0.7)  # inferential - symmetric
    assert composite.loc["small", "mean"] == pytest.approx((0.6 + 0.6 - 0.4) / 3)
    again = _claim(claims_table(rows((True, False, False))), "iv")
    assert set(again.verdict) == {"not reproduced"}


def test_claims_that_cannot_be_judged_say_why():
    one_gamma = claims_table(_table([_row(LARGE, 0), _row(LARGE, 1)]))
    assert list(one_gamma.claim) == ["i", "ii", "iii", "iv", "v"]
    assert set(one_gamma.verdict) == {"not judged"}
    assert set(one_gamma.why) == {"needs two init scales to compare (the runs have 1)"}
    no_test = _table(_published()).drop(columns="final_acc_reasoning_test")
    held_out = _claim(claims_table(no_test), "i")
    assert list(held_out.verdict) == ["not judged"]
    assert "no held-out reasoning group (reasoning_test)" in held_out.why.iloc[0]
    assert _verdict(claims_table(no_test), "ii") == "reproduced"  # the others still judged
    assert claims_table(pd.DataFrame()).verdict.eq("not judged").all()
    lines = claim_lines(one_gamma)
    assert len(lines) == 5 and all("not judged (needs two init scales" in line for line in lines)
    emb_mlp = _claim(claims_table(_table(_published())), "v")
    assert list(emb_mlp.verdict) == ["not judged"]
    assert "needs Emb-MLP runs beside the transformer runs" in emb_mlp.why.iloc[0]


def test_claim_lines_state_numbers_seeds_threshold_and_verdict():
    rows = _published()
    rows[-1] = _row(SMALL, 2, test_acc=0.05, lead=600, t_r=300, t_m=900)  # seed 2: (i) fails
    lines = claim_lines(claims_table(_table(rows), "reasoning", "memory"))
    held_out = next(line for line in lines if line.startswith("(i) "))
    small = "gamma = 0.8 (small init): mean 0.620 over 3 seeds (min 0.050, max 0.910, sd 0.494"
    assert small in held_out
    assert "gamma = 0.3 (large init): mean 0.110 over 3 seeds" in held_out
    assert "by seed 0: 0.9; 1: 0.91; 2: 0.05" in held_out
    assert "Direction holds by seed: 0: yes; 1: yes; 2: no." in held_out
    assert "Reproduced in 2 of 3 seeds (needs a strict majority, at least 2 of 3): " in held_out
    assert held_out.endswith(": reproduced.")
    lead = next(line for line in lines if line.startswith("(ii) "))
    assert "mean 600 over 3 seeds (min 600, max 600, sd 0; by seed 0: 600; 1: 600; 2: 600)" in lead


def test_verdict_with_several_seeds_names_them_and_defers_to_the_claims():
    table = _table(_published(seeds=(0, 1))).assign(
        signed_area=0.1, mean_relative_loss_gap=0.2, step_to_90_reasoning_test=None
    )
    lines = verdict(table, "reasoning", "memory")
    assert lines[0].startswith("gamma = 0.3, seed 0, within 1000 steps")
    assert len(lines) == 5 and "Published claims, over seeds" in lines[-1]
    assert not any("Published direction" in line for line in lines)


def test_the_emb_mlp_claim_on_a_table_with_both_architectures():
    """(v) reads the Emb-MLP rows only, (i)-(iv) the transformer rows only."""

    def table(emb_mlp_leads_at_small):
        transformer = [{**r, "architecture": "transformer"} for r in _published()]
        emb_mlp = []
        for s, leads in enumerate(emb_mlp_leads_at_small):
            emb_mlp += [
                {**_row(LARGE, s, test_acc=0.9, lead=300), "architecture": "emb_mlp"},
                {
                    **_row(SMALL, s, test_acc=0.0, lead=500 if leads else 100),
                    "architecture": "emb_mlp",
                },
            ]
        for r in emb_mlp:
            r["run"] = "emb_mlp_" + r["run"]
        return _table(transformer + emb_mlp)

    claims = claims_table(table((True, True, False)))
    emb_mlp = _claim(claims, "v").set_index("init")
    assert set(emb_mlp.verdict) == {"reproduced"}
    assert set(emb_mlp.holds) == {"0: yes; 1: yes; 2: no"}
    assert emb_mlp.loc["small", "mean"] == pytest.approx((500 + 500 + 100) / 3)
    assert emb_mlp.loc["large", "mean"] == 300
    # (i) is the transformer's: the Emb-MLP's reversed held-out accuracies do not enter it
    assert _verdict(claims, "i") == "reproduced"
    assert _claim(claims, "i").set_index("init").loc["small", "mean"] == pytest.approx(0.91)
    assert _verdict(claims_table(table((True, False, False))), "v") == "not reproduced"
