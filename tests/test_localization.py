"""The localization study: stage checkpoints, patching tables, ranking and the summary text."""

import pandas as pd
import pytest

from helpers import tiny_config
from initlens.analyses.figures.localization import attribution_scatter, effect_over_training
from initlens.analyses.studies.localization import (
    Experiment,
    compare_tasks,
    experiments,
    localize,
    rank_components,
    stage_steps,
    summary,
    undefined_steps,
)
from initlens.analyses.studies.run_analysis import TABLES, AnalysisConfig, analyze_run
from initlens.models import UserError, build_model
from initlens.models.tasks import task_class


def test_stage_steps_cover_init_early_and_end(tiny_run):
    stages = stage_steps(tiny_run)
    steps = tiny_run.checkpoint_steps()
    assert set(stages) <= set(steps)
    assert stages[steps[0]].startswith("init") and stages[steps[-1]].endswith("end")
    assert any("early" in s for s in stages.values())


def test_experiments_per_task():
    names = [e.corruption for e in experiments(task_class("composite")())]
    assert names == ["key", "key", "held_out_vs_twist"]
    assert [e.source for e in experiments(task_class("mixture")())] == ["reasoning", "memory"]


def test_localize_is_exact_where_it_must_be():
    """Patching the clean layer-0 residual at the key position restores the clean run
    exactly, and at the unchanged positions leaves the corrupted run as it is (any model;
    seq_len 3 puts the key at position 0 in every prompt)."""
    cfg = tiny_config().replace(task={"seq_len": 3})
    model, task = build_model(cfg, "cpu"), cfg.task
    table, agree = localize(
        model,
        task,
        Experiment("memory", "key", "memory"),
        n=32,
        components=("resid_pre", "z"),
        run="r",
    )
    resid0 = table[(table.component == "resid_pre") & (table.layer == 0)]
    key = resid0.token == "key"
    assert key.sum() == 1
    assert resid0[key].value.iloc[0] == pytest.approx(resid0.clean.iloc[0], abs=1e-5)
    assert resid0[~key].value.to_numpy() == pytest.approx(resid0.corrupted.iloc[0], abs=1e-5)
    assert set(table.experiment) == {"memory"} and (table.run == "r").all()
    assert len(table[table.component == "z"]) == 2 * task.seq_len * 2  # layer x pos x head
    assert list(agree.component) == ["resid_pre", "z"]
    assert agree[["pearson", "spearman"]].abs().le(1 + 1e-9).all().all()


def synthetic(effects: dict[tuple[float, str, str, int], float]) -> pd.DataFrame:
    """A localization table at one step: (gamma, experiment, component, layer) -> effect."""
    rows = [
        dict(
            run=f"g{g}",
            gamma=g,
            step=100,
            stage="end",
            experiment=e,
            corruption="key",
            component=c,
            layer=layer,
            position=2,
            head=0 if c == "z" else -1,
            token="a2",
            value=v,
            normalized=v,
            attribution=v,
            attribution_normalized=v / 2,
            clean=3.0,
            corrupted=1.0,
        )
        for (g, e, c, layer), v in effects.items()
    ]
    return pd.DataFrame(rows)


EFFECTS = {
    (0.3, "reasoning", "attn_out", 0): 0.2,
    (0.3, "reasoning", "mlp_out", 1): 0.7,
    (0.3, "memory", "attn_out", 0): 0.1,
    (0.3, "memory", "mlp_out", 1): 0.9,
    (0.8, "reasoning", "attn_out", 0): 0.8,
    (0.8, "reasoning", "mlp_out", 1): 0.3,
    (0.8, "memory", "attn_out", 0): 0.05,
    (0.8, "memory", "mlp_out", 1): 0.6,
    (0.8, "memory", "resid_pre", 1): 1.0,
}  # the residual stream is not ranked


def test_rank_and_compare():
    table = synthetic(EFFECTS)
    ranked = rank_components(table, top=2)
    top = ranked[ranked["rank"] == 1].set_index(["gamma", "experiment"]).patch
    assert top[(0.8, "reasoning")] == "attn_out L0 @a2"
    assert top[(0.8, "memory")] == "mlp_out L1 @a2"  # not resid_pre, though larger
    assert top[(0.3, "memory")] == "mlp_out L1 @a2"
    diff = compare_tasks(table, "reasoning", "memory")
    first = diff[diff.gamma == 0.8].iloc[0]
    assert first.patch == "attn_out L0 @a2" and first.difference == pytest.approx(0.75)


def test_summary_states_the_numbers():
    text = " ".join(summary(synthetic(EFFECTS), "reasoning", "memory"))
    assert (
        "Gamma = 0.8, step 100: on reasoning prompts the strongest single patch is "
        "attn_out L0 @a2 (restores 80%" in text
    )
    assert "gap of 2.00" in text
    assert (
        "differs most between the two task types is attn_out L0 @a2: 80% on reasoning "
        "vs 5% on memory" in text
    )
    # across init scales: the small-init top patch, at both gammas
    assert (
        "reasoning prompts: attn_out L0 @a2 restores 80% at small init (gamma = 0.8) "
        "and 20% at large init (gamma = 0.3)" in text
    )


def test_summary_refuses_to_localize_without_a_gap():
    table = synthetic(EFFECTS).assign(normalized=float("nan"), clean=1.0, corrupted=1.0)
    assert "too close to localize" in " ".join(summary(table, "reasoning", "memory"))


def one_head(heads: int = 1) -> pd.DataFrame:
    """A one-run table whose head patches repeat its attention outputs (one head per layer:
    `heads` = 1), or split them (two heads)."""
    effects = {
        (0.3, e, c, layer): v
        for e in ("reasoning", "memory")
        for (c, layer), v in {
            ("attn_out", 0): 0.6,
            ("attn_out", 1): 0.4,
            ("mlp_out", 0): 0.5,
            ("mlp_out", 1): 0.1,
        }.items()
    }
    table = synthetic(effects)
    attn = table[table.component == "attn_out"]
    heads = [
        attn.assign(component="z", head=h, normalized=attn.normalized / heads) for h in range(heads)
    ]
    return pd.concat([table, *heads], ignore_index=True)


def test_a_single_head_is_ranked_once_as_its_attention_output():
    ranked = rank_components(one_head(), top=4)
    assert not (ranked.component == "z").any()
    assert not ranked.duplicated(["run", "experiment", "layer", "position", "normalized"]).any()
    top = ranked[ranked.experiment == "reasoning"].patch.tolist()
    assert top == [
        "attn_out L0 @a2 (= its only head)",
        "mlp_out L0 @a2",
        "attn_out L1 @a2 (= its only head)",
        "mlp_out L1 @a2",
    ]
    diff = compare_tasks(one_head(), "reasoning", "memory")
    assert not diff.patch.str.startswith("head").any() and diff.columns.name is None
    assert "attn_out L0 @a2 (= its only head)" in " ".join(
        summary(one_head(), "reasoning", "memory")
    )
    lines = {t.name for t in effect_over_training(one_head()).data}
    assert lines == {"gamma 0.3: attn_out L0 @a2 (= its only head)", "gamma 0.3: mlp_out L0 @a2"}
    assert "z" not in {t.name.split(", ")[-1] for t in attribution_scatter(one_head()).data}
    # Two heads per layer: each head is its own patch, and attn_out has no suffix.
    two = rank_components(one_head(heads=2), top=8)
    assert (two.component == "z").sum() == 2 * 2 * 2  # layers x heads x experiments
    assert "attn_out L0 @a2" in set(two.patch)


def test_undefined_steps_say_where_and_why_lines_are_missing():
    table = pd.concat(
        [
            synthetic(EFFECTS).assign(step=0, stage="init", clean=1.02, corrupted=1.0),
            synthetic(EFFECTS).assign(step=10, stage="early"),
        ],
        ignore_index=True,
    )
    table.loc[table.step == 0, "normalized"] = float("nan")
    late = table[(table.gamma == 0.8) | (table.step == 10)]  # gamma 0.3 starts late
    notes = undefined_steps(late)
    assert len(notes) == 2  # gamma 0.8 at init, both experiments; gamma 0.3 has no init
    assert notes[0].startswith(
        "gamma = 0.8, reasoning prompts: no normalized effect at step 0 (init)"
    )
    assert "clean minus corrupted: +0.02" in notes[0] and "does not yet tell" in notes[0]
    never = undefined_steps(late.assign(clean=1.0, corrupted=1.0))
    assert "at any analysed step (no line)" in never[0] and "does not tell" in never[0]
    assert undefined_steps(synthetic(EFFECTS)) == []


@pytest.mark.integration
def test_analyze_run_writes_once_and_reuses(tiny_run):
    cfg = AnalysisConfig(pairs=16, probe_rows=400, probe_targets=("task_type",), geometry_rows=64)
    tables = analyze_run(tiny_run, cfg)
    folder = tiny_run.path / "analysis"
    assert all((folder / f"{name}.csv").exists() for name in TABLES)
    assert set(tables["localization"].stage) == set(stage_steps(tiny_run).values())
    assert set(tables["probes"].target) == {"task_type"}
    assert "attention_entropy" in set(tables["geometry"].metric)
    stamp = (folder / "localization.csv").stat().st_mtime_ns
    again = analyze_run(tiny_run, cfg)
    assert (folder / "localization.csv").stat().st_mtime_ns == stamp  # reused
    pd.testing.assert_frame_equal(again["probes"], tables["probes"])
    analyze_run(
        tiny_run,
        AnalysisConfig(pairs=8, probe_rows=400, probe_targets=("task_type",), geometry_rows=64),
    )
    assert (folder / "localization.csv").stat().st_mtime_ns != stamp  # other settings


def test_stage_steps_of_a_run_with_two_checkpoints(tiny_run, monkeypatch):
    monkeypatch.setattr(type(tiny_run), "checkpoint_steps", lambda self: [0, 30])
    assert stage_steps(tiny_run) == {0: "init", 30: "end"}  # no "early" on step 0


def test_analysis_settings_are_checked():
    with pytest.raises(UserError, match="unknown probe target.*lable.*choose from.*label"):
        AnalysisConfig(probe_targets=("lable",))
    with pytest.raises(UserError, match="at least 1"):
        AnalysisConfig(pairs=0)
