"""Read-outs over training (analyses/over_training.py), their figures, and `probe geometry`."""

import pandas as pd
import pytest
import torch

from helpers import assert_user_error, run_cli
from initlens.analyses.figures.representations import (
    TICK_FONT,
    cosine_heatmap,
    facet_over_steps,
    metric_over_steps,
    pca_scatter,
    probe_heatmap,
)
from initlens.analyses.studies.over_training import (
    cka_over_training,
    geometry_over_training,
    over_training,
    select_steps,
    stage_steps,
)
from initlens.models.errors import UserError
from initlens.probes.geometry import cosine_matrix, token_embeddings, token_roles


def test_over_training_stacks_every_checkpoint(tiny_run):
    steps = tiny_run.checkpoint_steps()
    table = over_training(
        [tiny_run],
        lambda model, run, step: {
            "norm": float(model.state_dict()["embed.weight"].norm()),
            "step_twice": 2 * step,
        },
    )
    assert list(table.columns[:3]) == ["run", "gamma", "step"]
    assert sorted(table.step.unique()) == steps and len(table) == 2 * len(steps)
    twice = table[table.metric == "step_twice"]
    assert (twice.value == 2 * twice.step).all()
    assert select_steps(tiny_run, "last") == [steps[-1]]
    assert select_steps(tiny_run, [steps[0], steps[-1]]) == [steps[0], steps[-1]]
    with pytest.raises(UserError, match="no checkpoint at step 7"):
        over_training([tiny_run], lambda *a: {}, steps=7)
    with pytest.raises(UserError, match="no runs given"):
        over_training([], lambda *a: {})


def test_geometry_over_training_weight_change_starts_at_zero(tiny_run):
    table = geometry_over_training([tiny_run], n=64)
    change = table[table.metric == "relative_weight_change"]
    assert (change[change.step == 0].value == 0).all()
    last = change[change.step == change.step.max()]
    assert (last.value > 0).all() and len(last) >= 10
    ranks = table[(table.metric == "effective_rank") & (table.hook == "embed.weight")]
    assert ranks.groupby("step").size().nunique() == 1  # same read-outs at every step


def test_cka_over_training_is_one_on_the_diagonal_and_symmetric(tiny_run):
    table = cka_over_training([tiny_run], steps=[0, "last"], n=64)
    same = table[(table.step_a == table.step_b) & (table.layer_a == table.layer_b)]
    assert len(same) == 2 * tiny_run.config.model.n_layers
    assert torch.allclose(
        torch.tensor(same.cka.to_numpy()), torch.ones(len(same), dtype=torch.float64), atol=1e-9
    )
    pivot = table.pivot_table(
        index=["step_a", "layer_a"], columns=["step_b", "layer_b"], values="cka"
    )
    assert torch.allclose(torch.tensor(pivot.to_numpy()), torch.tensor(pivot.to_numpy().T))


def test_cosine_heatmap_and_pca_follow_roles(tiny_run):
    model, task = tiny_run.load_model(), tiny_run.config.task
    roles = token_roles(task)
    order = roles["memory_anchor"] + roles["reasoning_anchor"] + roles["key"]
    fig = cosine_heatmap(model, task)
    expected = cosine_matrix(token_embeddings(model, order)).numpy()
    assert torch.allclose(torch.tensor(fig.data[0].z), torch.tensor(expected))
    assert len(fig.layout.shapes) == 4  # two role boundaries, drawn on both axes
    scatter = pca_scatter(model, task)
    assert [t.name for t in scatter.data] == ["memory_anchor", "reasoning_anchor", "key"]
    assert sum(len(t.x) for t in scatter.data) == len(order)


def test_pca_labels_do_not_pile_up_and_every_point_hovers(tiny_run):
    model, task = tiny_run.load_model(), tiny_run.config.task
    scatter = pca_scatter(model, task)
    points = [
        (x, y, text, hover)
        for t in scatter.data
        for x, y, text, hover in zip(t.x, t.y, t.text, t.customdata)
    ]
    assert all(hover for *_, hover in points)  # every token named on hover
    shown = [(x, y) for x, y, text, _ in points if text]
    assert 0 < len(shown) <= len(points)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    dx, dy = max(xs) - min(xs), max(ys) - min(ys)
    for i, (x1, y1) in enumerate(shown):  # no two text labels on top of each other
        for x2, y2 in shown[:i]:
            assert abs(x1 - x2) > 0.06 * dx or abs(y1 - y2) > 0.05 * dy
    heat = cosine_heatmap(model, task)
    for axis in (heat.layout.xaxis, heat.layout.yaxis):
        assert axis.tickfont.size >= TICK_FONT >= 11 and axis.title.text


def test_steps_are_log_with_init_on_every_checkpoint_figure():
    steps = pd.DataFrame(
        {"run": "a", "gamma": 0.3, "step": [0, 10, 100, 1000], "position": 0, "value": 0.5}
    )
    table = pd.concat(
        [steps.assign(metric="m"), steps.assign(metric="n"), steps.assign(metric="n", position=1)]
    )
    line = metric_over_steps(table, metric="m", y_title="entropy")
    facets = facet_over_steps(table, "position", "flow", y_title="share", metric="n")
    for axis in (line.layout.xaxis, facets.layout.xaxis, facets.layout.xaxis2):
        assert axis.type == "log" and axis.title.text == "step (log scale)"
        assert axis.ticktext[0] == "init" and axis.tickvals[0] == 5  # init: left of step 10
    assert list(line.data[0].x) == [5, 10, 100, 1000] and list(line.data[0].customdata) == [
        0,
        10,
        100,
        1000,
    ]
    assert line.layout.yaxis.title.text == "entropy" and facets.layout.yaxis.title.text == "share"
    assert metric_over_steps(table, metric="m").layout.yaxis.title.text == "m"  # not "value"


def test_metric_over_steps_and_probe_heatmap():
    table = pd.DataFrame(
        {
            "run": ["a"] * 4 + ["b"] * 4,
            "gamma": [0.3] * 4 + [0.8] * 4,
            "step": [0, 0, 10, 10] * 2,
            "metric": ["m"] * 8,
            "value": [1.0, 3.0, 2.0, 2.0, 5.0, 5.0, 6.0, 8.0],
        }
    )
    fig = metric_over_steps(table, metric="m")
    assert [list(t.y) for t in fig.data] == [[2.0, 2.0], [5.0, 7.0]]  # mean per step
    with pytest.raises(UserError, match="no rows with metric = 'x'; choose one of m"):
        metric_over_steps(table, metric="x")
    probes = pd.DataFrame(
        {
            "run": "a",
            "step": 10,
            "target": "key",
            "component": "resid_post",
            "layer": [0, 0, 1, 1],
            "position": [0, 1, 0, 1],
            "selectivity": [0.1, 0.2, 0.3, 0.4],
        }
    )
    heat = probe_heatmap(probes, "selectivity")
    assert heat.data[0].z.tolist() == [[0.1, 0.2], [0.3, 0.4]]
    with pytest.raises(UserError, match="slices"):
        probe_heatmap(pd.concat([probes, probes.assign(target="a1")]), "selectivity")


def test_geometry_cli_writes_tables_and_figures(capsys, tmp_path, tiny_run):
    code, out, err = run_cli(capsys, "geometry", tiny_run.path, "--out", tmp_path, "--n", 64)
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "geometry.parquet")
    assert set(table.step) == set(tiny_run.checkpoint_steps())
    assert {"within_cosine", "attention_entropy", "relative_weight_change", "n_directions"} <= set(
        table.metric
    )
    cka = pd.read_csv(tmp_path / "cka.csv")
    assert cka.cka.max() == pytest.approx(1.0)
    html = (tmp_path / f"cosine_{tiny_run.name}.html").read_text()
    assert "plotly" in html and "Token-embedding cosine similarity" in html
    assert (tmp_path / "over_steps_within_cosine_reasoning.html").exists()
    assert_user_error(run_cli(capsys, "geometry", tmp_path / "nope"), "does not exist")
    assert_user_error(
        run_cli(capsys, "geometry", tiny_run.path, "--step", "7", "--out", tmp_path),
        "no checkpoint at step 7; available",
    )


def test_linear_cli_probes_every_hook_position_and_step(capsys, tmp_path, tiny_run):
    code, out, err = run_cli(
        capsys,
        "linear",
        tiny_run.path,
        "--target",
        "key,memorized",
        "--component",
        "resid_pre,resid_post",
        "--n",
        400,
        "--steps",
        "all",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "probes.parquet")
    cfg = tiny_run.config
    per_step = 2 * 2 * cfg.model.n_layers * cfg.task.seq_len  # targets x components x ...
    assert len(table) == per_step * len(tiny_run.checkpoint_steps())
    # resid_post of layer 0 is resid_pre of layer 1: fitted once, the same numbers.
    same = ["step", "target", "position"]
    post0 = table[table.hook == "blocks.0.hook_resid_post"].set_index(same)
    pre1 = table[table.hook == "blocks.1.hook_resid_pre"].set_index(same)
    columns = ["accuracy", "control_accuracy", "train_accuracy"]
    pd.testing.assert_frame_equal(post0[columns], pre1[columns].loc[post0.index])
    assert (table.selectivity == table.accuracy - table.control_accuracy).all()
    assert table.accuracy.between(0, 1).all() and (table.n_test > 0).all()
    assert "best selectivity" in out
    html = (tmp_path / f"probe_selectivity_key_resid_post_{tiny_run.name}.html").read_text()
    assert "probe selectivity" in html
    assert (tmp_path / "over_steps_selectivity_memorized.html").exists()
    assert_user_error(
        run_cli(capsys, "linear", tiny_run.path, "--target", "colour", "--out", tmp_path),
        "unknown probe target.*choose from key",
    )


def test_linear_cli_defaults_to_the_stage_checkpoints(capsys, tmp_path, tiny_run):
    code, _, err = run_cli(capsys, "linear", tiny_run.path, "--rows", 400, "--out", tmp_path)
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "probes.parquet")
    assert sorted(table.step.unique()) == list(stage_steps(tiny_run))
