"""The circuit instrument, report section and `probe circuit` on a trained tiny run."""

import pandas as pd
import pytest

from helpers import assert_user_error, run_cli, tiny_config
from initlens.analyses.commands.circuit import circuit_command
from initlens.analyses.figures.circuit import circuit_graph
from initlens.analyses.studies.circuit import (
    EDGE_AGREEMENT_COLUMNS,
    EDGE_COLUMNS,
    strongest_edges,
    trace_run,
)
from initlens.analyses.studies.localization import MIN_GAP
from initlens.analyses.studies.over_training import stage_steps
from initlens.analyses.studies.report import build_report
from initlens.analyses.studies.run_analysis import AnalysisConfig, analyze_run, analyze_runs
from initlens.models import train
from initlens.probes.corruptions import make_pairs
from initlens.probes.patching import logit_diff
from initlens.probes.paths import path_patch


@pytest.fixture(scope="module")
def traced(tiny_run):
    return trace_run(tiny_run, n=32)


def test_every_path_at_every_stage_and_experiment(tiny_run, traced):
    edges, agreement = traced
    assert set(edges.step) == set(stage_steps(tiny_run))
    assert set(edges.experiment) == {"reasoning", "memory"}
    # 2 layers, 2 heads, MLPs: 1 + 4 + 2 senders; each path once per step and experiment
    per = edges.groupby(["step", "experiment"]).size()
    assert per.nunique() == 1 and per.iloc[0] == len(edges.drop_duplicates(["sender", "receiver"]))
    assert set(EDGE_COLUMNS) <= set(edges.columns)
    assert set(EDGE_AGREEMENT_COLUMNS) <= set(agreement.columns)
    assert (agreement.n_paths == per.iloc[0]).all()


def test_the_table_is_path_patching_of_the_same_pairs(tiny_run, traced):
    edges, _ = traced
    step = max(edges.step)
    model = tiny_run.load_model(step)
    task = tiny_run.config.task
    pairs = make_pairs(task, "key", n=32, seed=0, data_seed=tiny_run.config.train.data_seed)
    direct = path_patch(
        model, pairs.clean, pairs.corrupted, logit_diff(pairs.clean_label, pairs.corrupted_label)
    ).table()
    ours = edges[(edges.step == step) & (edges.experiment == "reasoning")]
    assert list(ours.value) == pytest.approx(list(direct.value), abs=1e-6)
    gap = ours.clean.iloc[0] - ours.corrupted.iloc[0]
    if abs(gap) >= MIN_GAP:
        normalized = (ours.value - ours.corrupted) / gap
        assert list(ours.normalized) == pytest.approx(list(normalized))
    else:  # too small a gap to normalize
        assert ours.normalized.isna().all()


@pytest.fixture(scope="module")
def normalized(traced):
    """The tiny run's edges normalized whatever the gap (30 steps leave it below MIN_GAP)."""
    edges = traced[0]
    return edges.assign(
        normalized=(edges.value - edges.corrupted) / (edges.clean - edges.corrupted)
    )


def test_strongest_edges_rank_by_absolute_normalized_effect(normalized):
    edges = normalized
    top = strongest_edges(edges, top=3)
    last = edges[edges.step == edges.step.max()]
    for exp, group in top.groupby("experiment"):
        assert len(group) == 3
        every = last[last.experiment == exp].normalized.abs()
        assert group.normalized.abs().max() == pytest.approx(every.max())
        assert list(group.normalized.abs()) == sorted(group.normalized.abs(), reverse=True)


def test_the_graph_draws_each_strongest_edge(normalized, traced):
    edges = normalized
    fig = circuit_graph(edges, top=4)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 4 * 2  # one panel per experiment (one run)
    hover = " ".join(t.hovertext for t in lines)
    for row in strongest_edges(edges, top=4).itertuples():
        assert f"{row.sender} -> {row.receiver}: {row.normalized:+.2f}" in hover
    small_gap = traced[0]  # as measured: every gap below MIN_GAP, nothing to rank
    assert small_gap.normalized.isna().all()
    fig = circuit_graph(small_gap)
    assert not [t for t in fig.data if t.mode == "lines"]
    assert "gap too small" in " ".join(a.text for a in fig.layout.annotations)


def test_the_instrument_reaches_the_report(tiny_run):
    cfg = AnalysisConfig(instruments=("circuit",), pairs=32)
    tables = analyze_run(tiny_run, cfg)
    assert tuple(tables["circuit"].columns) == EDGE_COLUMNS
    stacked, problems = analyze_runs([tiny_run], cfg)
    assert not problems
    page = "".join(build_report([tiny_run], analysis=stacked).parts)
    assert "Which paths carry each task type?" in page
    # the tiny run's gaps are too small to rank (see the graph test); the page says so
    assert "no path is ranked" in page or "strongest path is" in page
    assert "Agreement of edge attribution patching" in page


def test_probe_circuit_writes_the_edge_table_and_the_graph(tiny_run, tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "circuit", tiny_run.path, "--out", tmp_path, "--pairs", "32", "--per-position"
    )
    assert code == 0, err
    table = pd.read_csv(tmp_path / "circuit.csv")
    assert (table.position == -1).all() and set(table.step) == {tiny_run.resolve_step("last")}
    by_position = pd.read_csv(tmp_path / "circuit_by_position.csv")
    assert (by_position.position >= 0).all()
    assert (tmp_path / "circuit_graph.html").stat().st_size > 1000
    assert "edge attribution vs exact over" in out
    assert_user_error(
        run_cli(capsys, "circuit", tiny_run.path, "--out", tmp_path, "--top", "0"), "top=0"
    )


def test_an_emb_mlp_gets_one_line_and_a_not_applicable_report(tiny_run, tmp_path, capsys):
    cfg = tiny_config(steps=10).replace(model={"architecture": "emb_mlp", "d_mlp": 32})
    run = train(cfg, tmp_path / "emb_mlp", progress=False)
    assert_user_error(
        run_cli(capsys, "circuit", run.path, "--out", tmp_path / "c"), "does not apply"
    )
    with pytest.raises(Exception, match="does not apply"):
        circuit_command([run.path], tmp_path / "c")
    cfg = AnalysisConfig(instruments=("circuit",), pairs=32)
    stacked, problems = analyze_runs([tiny_run, run], cfg)
    assert set(problems) == {"emb_mlp"}
    assert "path patching not applicable" in problems["emb_mlp"]
    page = "".join(build_report([tiny_run, run], problems=problems, analysis=stacked).parts)
    assert "Not applicable: emb_mlp (the Emb-MLP has no attention heads" in page
