"""The analyses behind a report, computed once per finished run and kept in RUN/analysis/.

    localization.csv  exact and attribution patching at the stage checkpoints
    agreement.csv     attribution vs exact patching per stage, experiment and component
    probes.csv        linear probes (with control tasks) at the stage checkpoints
    geometry.csv      embedding/attention geometry and weight change at every checkpoint
    analysis.json     what they were computed from (last step, settings); written last

A report reuses these files while the run's last checkpoint and the settings are the same,
so `probe report` is quick after `probe study`, and a resumed run is analysed again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from initlens.analyses.localization import localize_run, stage_steps
from initlens.analyses.over_training import geometry_over_training, probes_over_training
from initlens.models.checkpoint import atomic_write, read_json, write_json
from initlens.models.errors import UserError
from initlens.models.run import Run
from initlens.probes.linear import TARGETS

TABLES = ("localization", "agreement", "probes", "geometry")


@dataclass(frozen=True)
class AnalysisConfig:
    """How much of each analysis to run (CPU-sized defaults)."""

    pairs: int = 256  # clean/corrupted prompt pairs per patching experiment
    probe_rows: int = 8000  # task rows for the probes (80% fit, 20% held out)
    probe_targets: tuple[str, ...] = ("label", "task_type")
    geometry_rows: int = 512  # task rows for attention entropy and information flow
    seed: int = 0

    def __post_init__(self):
        bad = [t for t in self.probe_targets if t not in TARGETS]
        if bad:
            raise UserError(f"unknown probe target(s) {', '.join(bad)}; choose from "
                            f"{', '.join(TARGETS)}")
        if min(self.pairs, self.probe_rows, self.geometry_rows) < 1:
            raise UserError("analysis pairs and rows must be at least 1")


def _stamp(run: Run, cfg: AnalysisConfig) -> dict:
    return {"last_step": run.checkpoint_steps()[-1],
            "config": {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(cfg).items()}}


def _read(path) -> pd.DataFrame:
    """A table as written, index columns back to (nullable) integers."""
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:  # e.g. no patching on a task without corruptions
        return pd.DataFrame()
    return table.astype({c: "Int64" for c in ("step", "layer", "position", "head")
                         if c in table}).astype({"token": str} if "token" in table else {})


def _same(record: dict, stamp: dict) -> bool:
    return {k: record.get(k) for k in stamp} == stamp


def analyze_run(run: Run, cfg: AnalysisConfig = AnalysisConfig()) -> dict[str, pd.DataFrame]:
    """The four tables of `run` (and "notes": parts left out, e.g. a probe target with
    too few rows), read from RUN/analysis/ when up to date, else computed and written."""
    folder = run.path / "analysis"
    stamp = _stamp(run, cfg)
    marker = folder / "analysis.json"
    if marker.exists() and _same(read_json(marker, "analysis record"), stamp) and all(
            (folder / f"{name}.csv").exists() for name in TABLES):
        return _load(folder)
    stages = stage_steps(run)
    probes, notes = [], []
    if run.config.model.architecture == "transformer":
        localization, agreement = localize_run(run, stages, n=cfg.pairs, seed=cfg.seed)
    else:
        localization, agreement = pd.DataFrame(), pd.DataFrame()
        notes.append("patching skipped: the Emb-MLP has no attention blocks")
    for target in cfg.probe_targets:  # a target the rows cannot support is noted, not fatal
        try:
            probes.append(probes_over_training([run], (target,), steps=list(stages),
                                               n=cfg.probe_rows, seed=cfg.seed))
        except UserError as e:
            notes.append(f"probes for {target!r} skipped: {e}")
    probes = pd.concat(probes, ignore_index=True) if probes else pd.DataFrame()
    if not probes.empty:
        probes.insert(3, "stage", probes.step.map(stages))
    tables = {"localization": localization, "agreement": agreement, "probes": probes,
              "geometry": geometry_over_training([run], "all", cfg.geometry_rows, cfg.seed)}
    folder.mkdir(exist_ok=True)
    for name, table in tables.items():
        atomic_write(folder / f"{name}.csv", table.to_csv(index=False))
    write_json(marker, {**stamp, "notes": notes})
    return _load(folder)


def _load(folder) -> dict[str, pd.DataFrame]:
    """The tables as reports see them (read back from disk), and "notes": what was left
    out and why."""
    notes = read_json(folder / "analysis.json", "analysis record").get("notes", [])
    return {**{name: _read(folder / f"{name}.csv") for name in TABLES}, "notes": notes}


def analyze_runs(runs: list[Run], cfg: AnalysisConfig = AnalysisConfig()
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The tables of all `runs` stacked, and {run: reason} for any whose analysis failed
    (the report says so and goes on with the others)."""
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    problems = {}
    for run in runs:
        try:
            tables = analyze_run(run, cfg)
        except Exception as e:  # a report is still written for what could be analysed
            problems[run.name] = f"analysis failed: {type(e).__name__}: {e}"
            continue
        if tables["notes"]:
            problems[run.name] = "; ".join(tables["notes"])
        for name in TABLES:
            if not tables[name].empty:
                parts[name].append(tables[name])
    return {name: pd.concat(p, ignore_index=True) for name, p in parts.items() if p}, problems
