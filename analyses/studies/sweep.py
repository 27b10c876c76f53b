"""A sweep: one base config trained over a grid (gamma x layers x seed x any option).

    SWEEP/sweep.json            the base RunConfig and the grid
    SWEEP/runs/<name>/          one ordinary run directory per grid point (g0.3_L2_s0, ...)
    SWEEP/results.csv/.parquet  one row per grid point: its values, state, error, preference
    SWEEP/claims.csv            the published claims over seeds, when the grid varies gamma
                                and at most seed and architecture besides
    SWEEP/learning_curves.html  every run's reasoning and memory accuracy over training
    SWEEP/phase_diagram.html    gamma x depth coloured by the preference index (gamma swept)

Every combination is validated before anything trains. Runs that differ only in their init
(gamma, readout_scale, init_rank) and seed train together as an ensemble
(`models.ensemble`), in a child process or as Ray tasks. Finished and failed runs are kept
when a sweep is run again; started ones resume from their last checkpoint. A unit whose
process dies (a preempted node, an out-of-memory kill) is tried again, resuming, so it
ends with the files of an uninterrupted unit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from initlens.analyses.figures.curves import sweep_curves
from initlens.analyses.figures.export import export_figures, export_table, figure_formats
from initlens.analyses.figures.labels import value_text
from initlens.analyses.figures.phase_diagram import phase_diagram
from initlens.analyses.studies.claims import claims_table
from initlens.analyses.studies.folders import check_folder
from initlens.analyses.studies.phase import rows_axis
from initlens.analyses.studies.preference import preference_row, readout_row
from initlens.models.checkpoint import read_json, write_json
from initlens.models.config import RunConfig
from initlens.models.ensemble import can_ensemble, ensemble_key, train_ensemble
from initlens.models.errors import UserError
from initlens.models.progress import Bar, Log, Progress, show_progress
from initlens.models.run import Run
from initlens.models.run_writer import FolderLock
from initlens.models.threads import configure_threads
from initlens.models.train import mark_failed, train

SHORT = {"gamma": "g", "n_layers": "L", "seed": "s"}
STRATEGIES = ("auto", "ensemble", "sequential")
BACKENDS = ("local", "ray")
MAX_MEMBERS = 32  # runs per ensemble at most (memory of the stacked weights and batches)
GRIDS = Path(__file__).parent.parent / "grids"  # shipped grid files (`probe sweep --grid FILE`)


def section_of(name: str, cfg: RunConfig) -> str:
    """Which config section holds the field `name` (task fields depend on the task)."""
    for section, obj in (("model", cfg.model), ("train", cfg.train), ("task", cfg.task)):
        if name in {f.name for f in dataclasses.fields(obj)}:
            return section
    known = sorted(
        {f.name for obj in (cfg.model, cfg.train, cfg.task) for f in dataclasses.fields(obj)}
    )
    raise UserError(
        f"cannot sweep {name!r}: not a field of the {cfg.task.name} config; "
        f"choose from {', '.join(known)}"
    )


@dataclass(frozen=True)
class Sweep:
    """A base config and the values each swept field takes (the grid is their product)."""

    base: RunConfig
    grid: dict[str, tuple]

    def points(self) -> list[tuple[str, dict[str, Any]]]:
        """(run name, {field: value}) for every grid point, in grid order."""
        names = list(self.grid)
        return [
            (_run_name(dict(zip(names, values))), dict(zip(names, values)))
            for values in itertools.product(*self.grid.values())
        ]

    def configs(self) -> list[tuple[str, RunConfig]]:
        """Every grid point's validated config; a UserError lists every invalid one."""
        out, bad = [], []
        for name, values in self.points():
            changes: dict[str, dict] = {"task": {}, "model": {}, "train": {}}
            for field, value in values.items():
                changes[section_of(field, self.base)][field] = value
            try:
                out.append((name, self.base.replace(**changes).validate()))
            except (UserError, TypeError, ValueError) as e:
                bad.append(f"{name}: {e}")
        if bad:
            raise UserError(
                f"{len(bad)} of {len(out) + len(bad)} grid combinations are "
                f"invalid, nothing was trained: " + "; ".join(bad)
            )
        return out

    def to_dict(self) -> dict:
        """The base config and the grid, as they read back from a JSON file."""
        return json.loads(
            json.dumps(
                {"base": self.base.to_dict(), "grid": {k: list(v) for k, v in self.grid.items()}}
            )
        )

    @classmethod
    def from_dict(cls, data: dict, source: str = "sweep file") -> Sweep:
        if not isinstance(data, dict) or not isinstance(data.get("grid"), dict):
            raise UserError(
                f'{source} must be a JSON object with a "grid" object '
                f'({{"gamma": [0.3, 0.8], "n_layers": [1, 2]}}) and an '
                f'optional "base" config'
            )
        base = RunConfig.from_dict(data.get("base", {}), source)
        grid = {}
        for name, values in data["grid"].items():
            section_of(name, base)
            values = values if isinstance(values, list) else [values]
            grid[name] = tuple(_tuples(v) for v in values)
        return make_sweep(base, grid)


def _tuples(value):
    """JSON lists back into the tuples config fields hold, at any depth."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_sweep(path: str | Path) -> Sweep:
    """A sweep from a grid file ({"base": config, "grid": {...}}), e.g. GRIDS / name."""
    return Sweep.from_dict(read_json(Path(path), "sweep file"), str(path))


def make_sweep(base: RunConfig, grid: dict[str, Sequence]) -> Sweep:
    """A Sweep with gamma, n_layers and seed first (the phase-diagram axes), then the rest."""
    for name, values in grid.items():
        section_of(name, base)
        if not len(values) or len(set(values)) != len(values):
            raise UserError(
                f"sweep values of {name} must be a non-empty list without "
                f"repeats (got {list(values)})"
            )
    order = sorted(grid, key=lambda n: list(SHORT).index(n) if n in SHORT else len(SHORT))
    return Sweep(base, {n: tuple(grid[n]) for n in order})


def _run_name(values: dict[str, Any]) -> str:
    """g0.3_L2_s0, keys21-60, held_out11-13+13-11, ..."""
    parts = [f"{SHORT.get(name, name)}{value_text(value)}" for name, value in values.items()]
    return "_".join(parts).replace("/", "-") or "run"


# --- training ----------------------------------------------------------------------------

Unit = list[tuple[RunConfig, Path]]  # runs trained together (one ensemble, or one run)


def pending(runs: list[tuple[RunConfig, Path]]) -> list[tuple[RunConfig, Path]]:
    """The runs still to train. Finished and failed runs are kept; so are started runs of
    their grid point's config, which resume from their last checkpoint; any other folder
    (never started, or holding another config) is removed and trained afresh."""
    todo = []
    for cfg, path in runs:
        started = (path / "config.json").exists()
        if started and _state(path) in ("done", "failed"):
            continue
        if path.exists() and not (started and _saved_config(path) == cfg):
            shutil.rmtree(path)
        todo.append((cfg, path))
    return todo


def _state(path: Path) -> str:
    return Run(path).status.get("state", "unknown")


def _saved_config(path: Path) -> RunConfig | None:
    """The config a run folder holds; None if it cannot be read (then it is retrained)."""
    try:
        return Run(path).config
    except UserError:
        return None


def plan(
    runs: list[tuple[RunConfig, Any]], strategy: str = "auto", min_units: int = 1
) -> list[list[tuple[RunConfig, Any]]]:
    """Group runs into units: ensembles of runs that differ only in init and seed (auto,
    ensemble) or one run each (sequential); groups are split to give at least `min_units`
    units (e.g. one per Ray worker) and at most MAX_MEMBERS runs each."""
    _one_of("strategy", strategy, STRATEGIES)
    if strategy == "sequential":
        return [[r] for r in runs]
    groups: dict[RunConfig, Unit] = {}
    units = [[(cfg, path)] for cfg, path in runs if not can_ensemble(cfg)]
    for cfg, path in runs:
        if can_ensemble(cfg):
            groups.setdefault(ensemble_key(cfg), []).append((cfg, path))
    for group in groups.values():
        parts = max(
            -(-len(group) // MAX_MEMBERS),
            min(len(group), -(-min_units * len(group) // max(len(runs), 1))),
        )
        units += [group[i::parts] for i in range(parts)]
    return units


def train_unit(unit: Unit, progress: bool | None = None) -> list[tuple[str, str, str]]:
    """Train one unit, continuing what an earlier try of it left (a lost worker or child),
    so that a retried unit ends as an uninterrupted one would. Never raises: returns (run
    path, state, error) per run."""
    paths = [path for _, path in unit]
    try:
        train_together(unit, progress)
    except Exception as e:  # recorded, so the rest of the sweep goes on
        return _lost(paths, _error(e))
    return _results(paths)


def train_together(unit: Unit, progress: bool | None = None) -> None:
    """Train the unfinished runs of one unit (from `plan`): as one ensemble, or one run
    alone, resuming what their folders hold; raises what training raises."""
    # Finished runs are left alone. A member that diverged in an earlier try stays in
    # (pending() kept earlier sweeps' failed runs out), so the ensemble goes on, or
    # starts again, whole: one member short, the others' last bits could change.
    todo = [(cfg, path) for cfg, path in unit if _state(path) != "done"]
    if len(unit) == 1 and todo:
        [(cfg, path)] = todo
        train(cfg, path, resume=(path / "config.json").exists(), progress=progress)
    elif todo:
        cfgs, outs = [cfg for cfg, _ in todo], [path for _, path in todo]
        train_ensemble(cfgs, outs, progress=progress, resume=True)


def _results(paths: list[Path]) -> list[tuple[str, str, str]]:
    """(run path, state, error) of each run, from its status.json."""
    return [(str(p), _state(p), Run(p).status.get("reason", "")) for p in paths]


def _lost(paths: list[Path], reason: str) -> list[tuple[str, str, str]]:
    """Mark the unfinished runs among `paths` failed for `reason`; every run's result."""
    for path in paths:
        if _state(path) not in ("done", "failed"):
            _failed(path, Run(path).status.get("step", 0), reason)
    return _results(paths)


@dataclass
class Tally:
    """Runs finished so far: each reported to `progress`, each failure told to `log`."""

    done: int
    total: int
    progress: Progress | None = None
    log: Log | None = None

    def record(self, result: list[tuple[str, str, str]]) -> None:
        for path, state, error in result:
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total, "sweep")
            if state != "done" and self.log is not None:
                self.log(f"{Path(path).name}: {state}: {error}")


def run_local(units: list[Unit], tally: Tally, bars: bool | None = None, retries: int = 2) -> None:
    """Train the units one after another in a child process (`bars`: a step bar each). A
    child that dies (killed, out of memory) takes only its unit's try down: the unit is
    tried again in a new child, resuming, up to `retries` times; then its unfinished runs
    are marked failed and the sweep goes on."""
    bars = show_progress() if bars is None else bars
    pool = child = None
    try:
        for unit in units:
            result = None
            for _ in range(retries + 1):
                if pool is None:
                    pool, child = _started(local_pool(bars))
                try:
                    result = pool.submit(train_unit, unit, bars).result()
                    break
                except BrokenProcessPool:
                    pool.shutdown()
                    pool = None
            if result is None:
                tries = f"{retries + 1} times" if retries else "once"
                result = _lost([p for _, p in unit], f"its training process died ({tries})")
            tally.record(result)
    except BaseException:  # e.g. interrupted: the child stops now too (its runs resume)
        if pool is not None and child != os.getpid():  # not an in-process executor
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def local_pool(bars: bool) -> Executor:
    """The local backend's one child process, reused from unit to unit (its imports take
    seconds); spawned, not forked, as torch's threads do not survive a fork. Tests that
    patch what trains swap in an in-process executor."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_child,
        initargs=(bars, torch.get_num_threads()),
    )


def _started(pool: Executor) -> tuple[Executor, int]:
    """`pool` once its child has started, and the child's pid: a child that cannot start
    is an error, not a failed unit (e.g. a script that calls run_sweep unguarded, which
    the child imports)."""
    try:
        pid = pool.submit(os.getpid).result()
    except BrokenProcessPool:
        pool.shutdown()
        raise UserError(
            "the training process could not start (its error is above); a script that "
            'calls run_sweep must do so under `if __name__ == "__main__":`, as that '
            "process imports the script first"
        ) from None
    return pool, pid


_RUN_BAR_LINE: list = []  # in the child: a hidden bar holding the parent's run-bar line


def _start_child(bars: bool, threads: int) -> None:
    """In the child: the parent's thread count (the same numbers, try after try), and the
    step bars drawn on the line under the parent's run bar, as in one process."""
    configure_threads(threads)
    tqdm.set_lock(threading.RLock())  # not tqdm's semaphore, which a killed child would leak
    if bars:
        _RUN_BAR_LINE.append(tqdm(total=0, file=io.StringIO(), leave=False))


def connect_ray(address: str | None = None):
    """The `ray` module, connected: to the Ray instance already started, else to the
    cluster at `address`, else to a new local instance on every core."""
    try:
        import ray
    except ImportError:
        raise UserError(
            "the ray backend needs Ray: pip install 'initlens[ray]' (or "
            "ray[default]); or use the local backend",
            option="backend",
        ) from None
    if not ray.is_initialized():
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except Exception as e:  # e.g. no cluster at that address
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise UserError(
                f"could not start or reach {where}: {_error(e)}", option="address"
            ) from None
    return ray


def ray_slots(resources: dict, cpus_per_task: int, gpus_per_task: float) -> int:
    """How many tasks the cluster runs at once; a clear error if it has no GPU to give."""
    if gpus_per_task > 0:
        if not resources.get("GPU"):
            raise UserError(
                "GPUs per task were asked for, and the Ray cluster has none; "
                "leave it at 0 to train on CPUs",
                option="gpus_per_task",
            )
        return max(1, int(resources["GPU"] / gpus_per_task))
    return max(1, int(resources.get("CPU", 1)) // cpus_per_task)


def run_ray(
    ray,
    runs: list[tuple[RunConfig, Path]],
    strategy: str,
    tally: Tally,
    slots: int,
    cpus_per_task: int = 1,
    gpus_per_task: float = 0,
    retries: int = 2,
) -> None:
    """Train the runs (in SWEEP/runs/) as Ray tasks (`ray`: from `connect_ray`), one per
    unit with `cpus_per_task` cores (torch threads) and `gpus_per_task` GPUs each (a
    fraction shares one), in at least `slots` units. A task whose worker dies is retried
    `retries` times, on any node, and resumes from the run folders: on a cluster the sweep
    folder must be on storage every node reaches, at the same path."""
    task = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=retries)(
        _ray_unit
    )
    runs = [(cfg, path.absolute()) for cfg, path in runs]  # workers start in other folders
    pending_tasks = {
        task.remote(unit, cpus_per_task): unit for unit in plan(runs, strategy, min_units=slots)
    }
    while pending_tasks:
        [ready], _ = ray.wait(list(pending_tasks), num_returns=1)
        unit = pending_tasks.pop(ready)
        try:
            result = ray.get(ready)
        except Exception as e:  # out of retries, or the task raised: the others go on
            cause = getattr(e, "cause", None) or e  # a RayTaskError wraps what it raised
            result = _lost([path for _, path in unit], f"Ray task failed: {_error(cause)}")
        tally.record(result)


def _ray_unit(unit: Unit, threads: int) -> list[tuple[str, str, str]]:
    """A Ray task: train a unit, in the shared sweep folder (not in a folder of this node
    that nobody reads)."""
    folder = Path(unit[0][1]).parents[1]  # SWEEP/runs/<name>
    if not (folder / "sweep.json").exists():
        raise UserError(
            f"the sweep folder {folder} is not visible on node {socket.gethostname()}; "
            f"put it on storage every node reaches, at the same path"
        )
    torch.set_num_threads(threads)
    return train_unit(unit, progress=False)


def _failed(path: Path, step: int, reason: str) -> tuple[str, str, str]:
    """Mark `path` failed (creating it if training never started) and return its result."""
    if (path / "config.json").exists():
        mark_failed(path, step, reason)
    else:
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "status.json", {"state": "failed", "step": step, "reason": reason})
    return str(path), "failed", reason


def _one_of(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{what} {value!r} is not one of {', '.join(choices)}", option=what)


def _error(e: Exception) -> str:
    """The exception's type and the first line of its message."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    backend: str = "local",
    strategy: str = "auto",
    address: str | None = None,
    cpus_per_task: int = 1,
    gpus_per_task: float = 0,
    overwrite: bool = False,
    progress: bool | None = None,
    formats: Sequence[str] = ("html",),
    log: Log | None = None,
    retries: int = 2,
) -> dict[str, object]:
    """Train every grid point of `sweep` into `out/runs/` (skipping finished runs, resuming
    started ones), then gather results.csv/.parquet and the phase diagram (`report_sweep`).
    `progress`: bars for the runs and their steps (None: on a terminal); `log` hears of each
    failed run; `retries`: tries more for a unit whose process dies, each resuming."""
    out = Path(out)
    _one_of("backend", backend, BACKENDS)
    _one_of("strategy", strategy, STRATEGIES)
    if cpus_per_task < 1 or gpus_per_task < 0:
        raise UserError(
            f"CPUs per task must be at least 1 and GPUs per task at least 0 "
            f"(got {cpus_per_task} and {gpus_per_task})",
            option="cpus_per_task" if cpus_per_task < 1 else "gpus_per_task",
        )
    if retries < 0:
        raise UserError(f"retries must be at least 0 (got {retries})", option="retries")
    figure_formats(formats)
    configs = sweep.configs()  # every combination valid before anything trains
    spec = sweep.to_dict()
    with FolderLock(out, "sweep"):  # one sweep at a time checks and writes this folder
        if backend == "ray":  # before anything is written
            ray = connect_ray(address)
            slots = ray_slots(ray.cluster_resources(), cpus_per_task, gpus_per_task)
        check_folder(  # with the lock held: two sweeps never both clear or fill it
            out, "sweep.json", spec, overwrite, lambda d: Sweep.from_dict(d, str(out)).to_dict()
        )
        (out / "runs").mkdir(parents=True, exist_ok=True)
        write_json(out / "sweep.json", spec)
        todo = pending([(cfg, out / "runs" / name) for name, cfg in configs])
        bars = show_progress() if progress is None else progress
        tally = Tally(len(configs) - len(todo), len(configs), Bar(bars, unit="run"), log)
        if backend == "ray":
            run_ray(ray, todo, strategy, tally, slots, cpus_per_task, gpus_per_task, retries)
        else:
            run_local(plan(todo, strategy), tally, bars, retries)
        return report_sweep(out, formats)


def report_sweep(out: str | Path, formats: Sequence[str] = ("html",)) -> dict[str, object]:
    """(Re)write results.csv/.parquet and phase_diagram.* of a sweep folder from disk."""
    out = Path(out)
    if not (out / "sweep.json").exists():
        raise UserError(f"{out} is not a sweep folder (no sweep.json); run the sweep first")
    sweep = Sweep.from_dict(read_json(out / "sweep.json", "sweep file"), str(out))
    table = results_table(sweep, out)
    files = export_table(table, out, "results")
    finished = table[table.state == "done"]
    if set(sweep.grid) <= {"gamma", "seed", "architecture"} and finished.gamma.nunique() > 1:
        task = sweep.base.task
        claims = claims_table(finished, task.reasoning_group, task.memory_group)
        files += export_table(claims, out, "claims", formats=("csv",))
    labels = {
        name: ", ".join(f"{k}={value_text(v)}" for k, v in values.items())
        for name, values in sweep.points()
    }
    done = table.run[table.state == "done"]
    figures = {
        "learning_curves": sweep_curves(
            [Run(out / "runs" / n) for n in done], [labels[n] for n in done]
        )
    }
    if table.gamma.nunique() > 1:  # gamma x depth (or another swept option)
        figures["phase_diagram"] = phase_diagram(table, rows=rows_axis(table, list(sweep.grid)))
    figures, notes = export_figures(figures, out, formats)
    return {"table": table, "files": files + figures, "warnings": notes}


# --- results -----------------------------------------------------------------------------


def results_table(sweep: Sweep, root: Path) -> pd.DataFrame:
    """One row per grid point: gamma, n_layers, seed and the other swept values, its state
    and error, and the read-outs of finished runs (`preference_row`, `readout_row`)."""
    rows = []
    for (name, cfg), (_, values) in zip(sweep.configs(), sweep.points()):
        run = Run(root / "runs" / name)
        status = run.status if run.path.exists() else {"state": "missing"}
        row = {
            "run": name,
            "gamma": cfg.model.gamma,
            "n_layers": cfg.model.n_layers,
            "seed": cfg.train.seed,
            **{k: value_text(v) if isinstance(v, tuple) else v for k, v in values.items()},
            "state": status.get("state", "unknown"),
            "error": status.get("reason", ""),
        }
        if run.done:
            row.update({k: v for k, v in preference_row(run).items() if k not in row})
            row.update(readout_row(run))
            row["train_seconds"] = run.summary.get("train_seconds_last_session")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.astype({c: "Int64" for c in table if c.startswith("step_to_")})


__all__ = [
    "GRIDS",
    "Sweep",
    "load_sweep",
    "make_sweep",
    "pending",
    "plan",
    "report_sweep",
    "results_table",
    "run_sweep",
    "section_of",
    "train_together",
    "train_unit",
]
