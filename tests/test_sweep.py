"""Sweeps: a validated grid trained locally (ensembles) or on Ray, resumable, failures kept
to their runs, gathered into one table and a phase diagram."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import initlens.analyses.studies.sweep as sweep_module
import initlens.models.ensemble as ensemble
from helpers import TINY, assert_user_error, run_cli, tiny_config
from initlens.analyses.figures.phase_diagram import phase_diagram
from initlens.analyses.studies.phase import phase_grid, rows_axis
from initlens.analyses.studies.preference import curves, preference_row
from initlens.models import Run, UserError, train

GRID = {"seed": [0, 1], "gamma": [0.3, 0.8], "n_layers": [1, 2]}


def _sweep(grid=GRID, **train_fields):
    return sweep_module.make_sweep(tiny_config(**train_fields), grid)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    return out, sweep_module.run_sweep(_sweep(), out, progress=False)


def _train_loss(run: Run) -> pd.Series:
    return curves(run.metrics(), "loss")["train"]


def test_invalid_combinations_are_all_listed_and_nothing_trains(tmp_path):
    grid = {"d_model": [16, 15, 17], "n_heads": [2, 4]}
    with pytest.raises(UserError) as e:
        sweep_module.run_sweep(_sweep(grid), tmp_path / "s", progress=False)
    message = str(e.value)
    assert message.startswith("4 of 6 grid combinations are invalid")
    for bad in (
        "d_model15_n_heads2",
        "d_model15_n_heads4",
        "d_model17_n_heads2",
        "d_model17_n_heads4",
    ):
        assert bad in message
    assert "d_model16" not in message and not (tmp_path / "s").exists()


def test_ray_slots_follow_cpus_or_gpus():
    assert sweep_module.ray_slots({"CPU": 16.0}, 1, 0) == 16
    assert sweep_module.ray_slots({"CPU": 16.0}, 3, 0) == 5
    assert sweep_module.ray_slots({"CPU": 16.0, "GPU": 2.0}, 1, 0.25) == 8


def test_grid_runs_are_ensembles_of_matching_architectures():
    runs = [(cfg, name) for name, cfg in _sweep().configs()]
    units = sweep_module.plan(runs)
    assert sorted(len(u) for u in units) == [4, 4]  # one ensemble per depth
    for unit in units:
        assert len({cfg.model.n_layers for cfg, _ in unit}) == 1
    assert len(sweep_module.plan(runs, min_units=4)) == 4  # e.g. one per Ray worker
    assert all(len(u) == 1 for u in sweep_module.plan(runs, "sequential"))


@pytest.mark.integration
def test_results_table_has_every_grid_point(done):
    out, info = done
    table = info["table"]
    assert list(table.run) == [
        "g0.3_L1_s0",
        "g0.3_L1_s1",
        "g0.3_L2_s0",
        "g0.3_L2_s1",
        "g0.8_L1_s0",
        "g0.8_L1_s1",
        "g0.8_L2_s0",
        "g0.8_L2_s1",
    ]
    assert (table.state == "done").all()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), table)
    for row in table.itertuples():
        run = Run.open(out / "runs" / row.run)
        assert (run.config.model.gamma, run.config.model.n_layers, run.config.train.seed) == (
            row.gamma,
            row.n_layers,
            row.seed,
        )
        assert row.signed_area == pytest.approx(preference_row(run)["signed_area"])


@pytest.mark.integration
def test_a_sweep_run_equals_the_run_trained_alone(done, tmp_path):
    out, _ = done
    run = Run.open(out / "runs" / "g0.8_L2_s1")
    alone = train(run.config, tmp_path / "alone", progress=False)
    assert (_train_loss(run) - _train_loss(alone)).abs().max() < 1e-4


@pytest.mark.integration
def test_phase_diagram_shows_the_table(done):
    _, info = done
    table = info["table"]
    fig = phase_diagram(table)
    assert [a.text for a in fig.layout.annotations] == ["seed 0", "seed 1", "mean over 2 seeds"]
    mean = table.groupby(["n_layers", "gamma"]).signed_area.mean()
    z = np.asarray(fig.data[2].z)
    assert z.shape == (2, 2)
    assert z[1, 0] == pytest.approx(mean[(2, 0.3)]) and z[0, 1] == pytest.approx(mean[(1, 0.8)])
    seed1 = table[(table.seed == 1) & (table.n_layers == 1) & (table.gamma == 0.8)]
    assert np.asarray(fig.data[1].z)[0, 1] == pytest.approx(seed1.signed_area.iloc[0])
    assert (
        phase_grid(table.assign(state="failed", signed_area=np.nan), "signed_area")
        .isna()
        .all()
        .all()
    )


@pytest.mark.integration
def test_rerun_skips_finished_runs_and_restarts_half_written_ones(done):
    out, _ = done
    kept, broken = out / "runs" / "g0.3_L1_s0", out / "runs" / "g0.8_L2_s0"
    before = (kept / "metrics.jsonl").stat().st_mtime_ns
    reference = _train_loss(Run(broken))
    (broken / "status.json").write_text(json.dumps({"state": "running", "step": 10}))
    (broken / "summary.json").unlink()
    info = sweep_module.run_sweep(_sweep(), out, progress=False)
    assert (info["table"].state == "done").all()
    assert (kept / "metrics.jsonl").stat().st_mtime_ns == before
    assert (_train_loss(Run(broken)) - reference).abs().max() < 1e-4
    with pytest.raises(UserError, match="holds a different sweep"):
        sweep_module.run_sweep(_sweep({"gamma": [0.5]}), out, progress=False)
    # A sweep.json written before a config field existed (here batch_seed) still resumes.
    spec = json.loads((out / "sweep.json").read_text())
    del spec["base"]["train"]["batch_seed"]
    (out / "sweep.json").write_text(json.dumps(spec))
    sweep_module.run_sweep(_sweep(), out, progress=False)
    assert (kept / "metrics.jsonl").stat().st_mtime_ns == before


@pytest.mark.integration
def test_a_failed_member_is_recorded_and_the_rest_finish(tmp_path, monkeypatch):
    real = ensemble.build_model

    def poisoned(cfg, device):  # the gamma 0.8, seed 1 member starts with NaN weights
        model = real(cfg, device)
        if (cfg.model.gamma, cfg.train.seed) == (0.8, 1):
            with torch.no_grad():
                model.state_dict()["embed.weight"].fill_(float("nan"))
        return model

    monkeypatch.setattr(ensemble, "build_model", poisoned)
    info = sweep_module.run_sweep(
        _sweep({"seed": [0, 1], "gamma": [0.3, 0.8]}, steps=12), tmp_path / "s", progress=False
    )
    table = info["table"].set_index("run")
    assert table.loc["g0.8_s1", "state"] == "failed"
    assert "diverged" in table.loc["g0.8_s1", "error"]
    assert (table.drop("g0.8_s1").state == "done").all()


@pytest.mark.integration
def test_a_unit_that_raises_fails_alone(tmp_path, monkeypatch):
    real = sweep_module.train

    def broken(cfg, out, **kw):
        if cfg.model.gamma == 0.3:
            raise RuntimeError("CUDA out of memory")
        return real(cfg, out, **kw)

    monkeypatch.setattr(sweep_module, "train", broken)
    info = sweep_module.run_sweep(
        _sweep({"gamma": [0.3, 0.8]}, steps=12),
        tmp_path / "s",
        strategy="sequential",
        progress=False,
    )
    table = info["table"].set_index("run")
    assert table.loc["g0.3", "state"] == "failed"
    assert table.loc["g0.3", "error"] == "RuntimeError: CUDA out of memory"
    assert table.loc["g0.8", "state"] == "done"


@pytest.mark.integration
def test_ray_backend_trains_the_same_runs(done, tmp_path):
    ray = pytest.importorskip("ray")
    out, info = done
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(UserError, match="the Ray cluster has none"):  # no GPU here
            sweep_module.run_sweep(_sweep(), tmp_path / "s", backend="ray", gpus_per_task=1)
        assert not (tmp_path / "s").exists()
        result = sweep_module.run_sweep(_sweep(), tmp_path / "s", backend="ray", progress=False)
    finally:
        ray.shutdown()
    table = result["table"]
    assert list(table.run) == list(info["table"].run) and (table.state == "done").all()
    for name in table.run:
        ours, local = Run(tmp_path / "s" / "runs" / name), Run(out / "runs" / name)
        assert ours.config == local.config
        assert (_train_loss(ours) - _train_loss(local)).abs().max() < 1e-4


@pytest.mark.integration
def test_cli_sweep(tmp_path, capsys):
    code, out, err = run_cli(
        capsys,
        "sweep",
        "--out",
        tmp_path / "s",
        "--gammas",
        "0.3,1",
        "--vary",
        "lr=0.001,0.003",
        *TINY,
        "--steps",
        "10",
    )
    assert code == 0, err
    table = pd.read_csv(tmp_path / "s" / "results.csv")
    assert list(table.run) == ["g0.3_lr0.001", "g0.3_lr0.003", "g1_lr0.001", "g1_lr0.003"]
    assert Run.open(tmp_path / "s" / "runs" / "g1_lr0.003").config.train.lr == 0.003
    assert "4 of 4 runs done" in out
    assert_user_error(
        run_cli(
            capsys,
            "sweep",
            "--out",
            tmp_path / "bad",
            *TINY,
            "--vary",
            "d_model=16,15",
            "--n-heads",
            "2",
        ),
        r"1 of 2 grid combinations are invalid.*d_model15",
    )
    assert_user_error(
        run_cli(capsys, "sweep", "--out", tmp_path / "bad", "--vary", "nope=1"),
        "--vary 'nope=1': expected NAME=V1,V2",
    )
    assert_user_error(run_cli(capsys, "sweep", "--out", tmp_path / "bad"), "nothing to sweep")
    assert not (tmp_path / "bad").exists()


def test_ray_backend_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(UserError, match=r"pip install 'initlens\[ray\]'"):
        sweep_module.run_sweep(_sweep({"gamma": [0.3]}), tmp_path / "s", backend="ray")
    with pytest.raises(UserError, match="backend 'slurm' is not one of local, ray"):
        sweep_module.run_sweep(_sweep({"gamma": [0.3]}), tmp_path / "s", backend="slurm")
    assert not (tmp_path / "s").exists()


def test_tuple_fields_sweep_and_read_back():
    sweep = _sweep({"held_out": [((11, 13),), ((11, 13), (13, 11))], "keys": [(21, 30)]})
    assert [name for name, _ in sweep.points()] == [
        "held_out11-13_keys21-30",
        "held_out11-13+13-11_keys21-30",
    ]
    again = sweep_module.Sweep.from_dict(json.loads(json.dumps(sweep.to_dict())))
    assert again == sweep and [c for _, c in again.configs()] == [c for _, c in sweep.configs()]


@pytest.mark.integration
def test_probe_report_rebuilds_a_sweeps_table_and_figure(done, capsys):
    out, info = done
    (out / "results.csv").unlink()
    (out / "phase_diagram.html").unlink()
    code, printed, err = run_cli(capsys, "report", out)
    assert code == 0, err
    assert f"wrote {out / 'phase_diagram.html'}" in printed
    assert list(pd.read_csv(out / "results.csv").run) == list(info["table"].run)


@pytest.mark.integration
def test_cli_sweep_from_a_grid_file(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"base": tiny_config().to_dict(), "grid": {"gamma": [0.3, 0.8]}}))
    code, out, err = run_cli(
        capsys, "sweep", "--out", tmp_path / "s", "--grid", grid, "--seeds", "0,1", "--steps", "10"
    )
    assert code == 0, err
    table = pd.read_csv(tmp_path / "s" / "results.csv")
    assert list(table.run) == ["g0.3_s0", "g0.3_s1", "g0.8_s0", "g0.8_s1"]
    cfg = Run.open(tmp_path / "s" / "runs" / "g0.8_s1").config
    assert cfg.train.steps == 10 and cfg.model.d_model == tiny_config().model.d_model
    grid.write_text(json.dumps({"gamma": [0.3]}))
    assert_user_error(
        run_cli(capsys, "sweep", "--out", tmp_path / "t", "--grid", grid),
        'must be a JSON object with a "grid" object',
    )


def test_phase_diagram_rows_follow_what_was_swept():
    table = pd.DataFrame(
        {
            "gamma": [0.3, 0.8] * 4,
            "n_layers": 2,
            "seed": 0,
            "weight_decay": [0.0, 0.0, 0.1, 0.1] * 2,
            "lr": [0.001] * 4 + [0.003] * 4,
            "signed_area": np.arange(8.0),
        }
    )
    assert rows_axis(table, ["gamma", "weight_decay", "lr"]) == "weight_decay"
    assert rows_axis(table.assign(n_layers=[1, 2] * 4), ["weight_decay"]) == "n_layers"
    assert rows_axis(table[table.weight_decay == 0], ["weight_decay"]) == "n_layers"
    grid = phase_grid(table, "signed_area", rows="weight_decay")  # mean over lr
    assert grid.loc[0.1, 0.3] == pytest.approx((2 + 6) / 2)
    fig = phase_diagram(table, rows="weight_decay")
    assert list(fig.data[0].y) == ["0", "0.1"] and fig.layout.yaxis.title.text == "weight_decay"
