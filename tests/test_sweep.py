"""Sweeps: a validated grid trained locally (ensembles) or on Ray, resumable, failures kept
to their runs, gathered into one table and a phase diagram."""

import json
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import initlens.analyses.studies.sweep as sweep_module
import initlens.models.ensemble as ensemble
from helpers import TINY, assert_user_error, run_cli, tiny_config
from initlens.analyses.figures.phase_diagram import phase_diagram
from initlens.analyses.studies.phase import phase_grid, rows_axis
from initlens.analyses.studies.preference import curves, preference_row
from initlens.models import Run, UserError, train
from initlens.models.run import read_metrics
from initlens.models.run_writer import FolderLock

GRID = {"seed": [0, 1], "gamma": [0.3, 0.8], "n_layers": [1, 2]}


def _sweep(grid=GRID, **train_fields):
    return sweep_module.make_sweep(tiny_config(**train_fields), grid)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    return out, sweep_module.run_sweep(_sweep(), out, progress=False)


def _in_process(bars):
    """The local backend's units trained in this process, where the test's patches are."""
    return ThreadPoolExecutor(max_workers=1)


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
def test_rerun_skips_finished_runs_and_resumes_started_ones(done):
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
    monkeypatch.setattr(sweep_module, "local_pool", _in_process)
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
    monkeypatch.setattr(sweep_module, "local_pool", _in_process)
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
    assert not (tmp_path / "s" / "claims.csv").exists()  # lr varies too: no claims


@pytest.mark.integration
def test_a_sweep_over_gamma_seed_and_architecture_judges_the_claims(tmp_path, capsys):
    """claims.csv: (i)-(iv) on the transformer runs, (v) on the Emb-MLP runs (a grid that
    varies anything else has none: test_cli_sweep)."""
    code, _, err = run_cli(
        capsys,
        "sweep",
        "--out",
        tmp_path / "s",
        "--gammas",
        "0.3,0.8",
        "--seeds",
        "0,1",
        "--vary",
        "architecture=transformer,emb_mlp",
        *TINY,
        "--steps",
        "20",
    )
    assert code == 0, err
    results = pd.read_csv(tmp_path / "s" / "results.csv")
    claims = pd.read_csv(tmp_path / "s" / "claims.csv")
    assert list(dict.fromkeys(claims.claim)) == ["i", "ii", "iii", "iv", "v"]
    emb_mlp = results[results.architecture == "emb_mlp"].set_index(["seed", "gamma"])
    v = claims[claims.claim == "v"].set_index("gamma")
    for gamma in (0.3, 0.8):  # (v)'s numbers are the Emb-MLP runs' reasoning leads
        leads = emb_mlp.xs(gamma, level="gamma").reasoning_lead_steps.dropna()
        assert v.loc[gamma, "n_seeds"] == len(leads)
        if len(leads):
            assert v.loc[gamma, "mean"] == pytest.approx(leads.mean())


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


# --- lost workers: retry and resume ------------------------------------------------------


def _assert_same_run(ours: Path, reference: Path) -> None:
    """`ours` finished with the checkpoints (weights, optimizer) and metrics rows of
    `reference`, bit for bit."""
    assert Run(ours).done, Run(ours).status
    files = sorted(f.name for f in (reference / "checkpoints").glob("*.safetensors"))
    assert sorted(f.name for f in (ours / "checkpoints").glob("*.safetensors")) == files
    for name in files:
        a, b = load_file(ours / "checkpoints" / name), load_file(reference / "checkpoints" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (ours, name)
    assert read_metrics(ours / "metrics.jsonl")[0] == read_metrics(reference / "metrics.jsonl")[0]


def _stamps(runs: list[Path], upto: int | None = None) -> dict[Path, tuple[int, int]]:
    """The step checkpoints of `runs` (up to step `upto`), with what changes when one is
    written again."""
    files = [f for run in runs for f in (run / "checkpoints").glob("step_*.safetensors")]
    return {
        f: (f.stat().st_ino, f.stat().st_mtime_ns)
        for f in files
        if upto is None or int(f.stem[len("step_") :]) <= upto
    }


def _resume_step(run: Path) -> int | None:
    point = Run(run).resume_point() if (run / "checkpoints").exists() else None
    return point and point[0]


def _kill_between_checkpoints(runs: list[Path], after: int, timeout: float = 60) -> int:
    """SIGKILL the process training `runs` (an ensemble; its pid from a run's lock file)
    once all of them hold the same checkpoint past step `after`; that step. The process is
    stopped while the checkpoints are read, so that the kill cannot land mid-save."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.05)
        if Run(runs[0]).status.get("step", 0) <= after:
            continue
        pid = json.loads((runs[0] / ".lock").read_text())["pid"]
        assert pid != os.getpid()  # the child, not this process
        os.kill(pid, signal.SIGSTOP)
        try:
            steps = {_resume_step(r) for r in runs}
        except BaseException:
            os.kill(pid, signal.SIGCONT)
            raise
        if len(steps) == 1 and steps != {None}:
            os.kill(pid, signal.SIGKILL)
            return steps.pop()
        os.kill(pid, signal.SIGCONT)  # stopped during a save: try again after it
    raise AssertionError(f"no common checkpoint past step {after} in {timeout} s")


@pytest.mark.integration
def test_a_killed_child_is_retried_and_resumes_bit_identically(tmp_path):
    sweep = _sweep({"gamma": [0.3, 0.8]}, steps=600, n_checkpoints=5)  # one ensemble
    reference = sweep_module.run_sweep(sweep, tmp_path / "ref", progress=False)
    out = tmp_path / "s"
    with ThreadPoolExecutor(1) as thread:
        result = thread.submit(sweep_module.run_sweep, sweep, out, progress=False)
        runs = [out / "runs" / name for name in reference["table"].run]
        step = _kill_between_checkpoints(runs, after=20)
        kept = _stamps(runs, upto=step)
        info = result.result(timeout=120)
    assert (info["table"].state == "done").all()
    assert _stamps(runs, upto=step) == kept  # resumed from `step`, not retrained
    for run in runs:
        _assert_same_run(run, tmp_path / "ref" / "runs" / run.name)


class _Doomed(ProcessPoolExecutor):
    """A training process that dies as soon as it is given the gamma 0.3 run."""

    def __init__(self, bars):
        super().__init__(1, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn, *args):
        if args and args[0][0][0].model.gamma == 0.3:
            return super().submit(os._exit, 9)
        return super().submit(fn, *args)


@pytest.mark.integration
def test_a_child_that_keeps_dying_fails_its_runs_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "local_pool", _Doomed)
    info = sweep_module.run_sweep(
        _sweep({"gamma": [0.3, 0.8]}, steps=12),
        tmp_path / "s",
        strategy="sequential",
        progress=False,
        retries=1,
    )
    table = info["table"].set_index("run")
    assert table.loc["g0.3", "state"] == "failed"
    assert table.loc["g0.3", "error"] == "its training process died (2 times)"
    assert table.loc["g0.8", "state"] == "done"


def test_a_training_process_that_cannot_start_is_an_error_not_a_failed_run(tmp_path, monkeypatch):
    def unborn(bars):  # e.g. an unguarded script, which the child imports, fails there
        spawn = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(1, mp_context=spawn, initializer=os._exit, initargs=(1,))

    monkeypatch.setattr(sweep_module, "local_pool", unborn)
    with pytest.raises(UserError, match=r"could not start .*`if __name__ == \"__main__\""):
        sweep_module.run_sweep(_sweep({"gamma": [0.3]}), tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "runs" / "g0.3").exists()  # not marked failed


@pytest.mark.integration
def test_a_killed_ray_worker_is_retried_and_resumes_bit_identically(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # Two nodes of one CPU: two units (ensembles of two), one per node.
    sweep = _sweep({"gamma": [0.3, 0.8], "seed": [0, 1]}, steps=400, n_checkpoints=5)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        assert len(ray.nodes()) == 2
        reference = sweep_module.run_sweep(sweep, tmp_path / "ref", backend="ray", progress=False)
        out = tmp_path / "s"
        with ThreadPoolExecutor(1) as thread:
            result = thread.submit(
                sweep_module.run_sweep, sweep, out, backend="ray", progress=False
            )
            runs = [out / "runs" / name for name in ("g0.3_s0", "g0.8_s0")]  # one unit
            step = _kill_between_checkpoints(runs, after=20)
            kept = _stamps(runs, upto=step)
            info = result.result(timeout=120)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert (info["table"].state == "done").all()
    assert _stamps(runs, upto=step) == kept  # resumed from `step`, not retrained
    for name in reference["table"].run:
        _assert_same_run(out / "runs" / name, tmp_path / "ref" / "runs" / name)


def test_a_ray_task_refuses_a_sweep_folder_its_node_cannot_see(tmp_path):
    unit = [(tiny_config(), tmp_path / "s" / "runs" / "g0.3")]
    with pytest.raises(UserError, match=r"sweep folder .*/s is not visible on node .*; put it"):
        sweep_module._ray_unit(unit, 1)
    assert not (tmp_path / "s").exists()


def test_cli_sweep_refuses_negative_retries_and_a_busy_folder(tmp_path, capsys):
    sweep = ["sweep", "--gammas", "0.3", *TINY]
    assert_user_error(
        run_cli(capsys, *sweep, "--out", tmp_path / "s", "--retries", "-1"),
        r"^error: --retries: retries must be at least 0 \(got -1\)$",
    )
    assert not (tmp_path / "s").exists()
    out = tmp_path / "busy"  # a sweep folder that another sweep holds
    (out / "runs" / "g0.3").mkdir(parents=True)
    (out / "sweep.json").write_text("{}")
    with FolderLock(out, "sweep"):
        before = sorted(out.rglob("*"))
        assert_user_error(
            run_cli(capsys, *sweep, "--out", out, "--overwrite"),
            rf"in use by another process \(pid {os.getpid()} on ",
        )
        assert sorted(out.rglob("*")) == before  # nothing overwritten


@pytest.mark.integration
def test_a_half_trained_sweep_resumes_where_it_stopped(done, tmp_path):
    reference, _ = done
    sweep, out = _sweep(), tmp_path / "s"
    (out / "runs").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps(sweep.to_dict()))
    runs = [(cfg, out / "runs" / name) for name, cfg in sweep.configs()]
    for unit in sweep_module.plan(runs):  # as the sweep groups them: two ensembles
        cfgs, paths = [cfg for cfg, _ in unit], [path for _, path in unit]
        ensemble.train_ensemble(cfgs, paths, progress=False, stop_at=17)
    paths = [path for _, path in runs]
    kept = _stamps(paths)
    assert len(kept) == 3 * len(paths)  # steps 0, 10 and 17
    info = sweep_module.run_sweep(sweep, out, progress=False)
    assert (info["table"].state == "done").all()
    assert _stamps(paths, upto=17) == kept  # resumed, not retrained
    for path in paths:
        _assert_same_run(path, reference / "runs" / path.name)


@pytest.mark.integration
def test_a_half_trained_single_run_resumes(tmp_path):
    sweep, out = _sweep({"gamma": [0.3]}), tmp_path / "s"  # one run: trained alone
    (out / "runs").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps(sweep.to_dict()))
    [(name, cfg)] = sweep.configs()
    run = train(cfg, out / "runs" / name, stop_at=17, progress=False).path
    kept = _stamps([run])
    sweep_module.run_sweep(sweep, out, progress=False)
    assert _stamps([run], upto=17) == kept
    _assert_same_run(run, train(cfg, tmp_path / "alone", progress=False).path)
