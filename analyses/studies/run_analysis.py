"""The analyses behind a report, computed once per finished run and kept in RUN/analysis/.

    <table>.csv       each chosen instrument's tables (`analyses.instruments`), by default
                      localization.csv, agreement.csv (patching at the stage checkpoints),
                      probes.csv (linear probes) and geometry.csv (every checkpoint)
    analysis.json     what they were computed from (last step, settings, code); written last

A report reuses these files while the run's last checkpoint, the settings and the code
that computes tables are the same, so `probe report` is quick after `probe study`, and a
resumed run or new code is analysed again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from initlens.analyses.figures.export import export_table
from initlens.analyses.instruments import Context, Instrument, instruments, tables_of
from initlens.analyses.studies.localization import stage_steps
from initlens.models.checkpoint import read_json, write_json
from initlens.models.errors import UserError
from initlens.models.progress import Progress
from initlens.models.run import Run
from initlens.probes.linear import TARGETS

ROOT = Path(__file__).resolve().parents[2]  # the initlens package (the repository root)
# The code that computes tables: a change to any of it makes cached tables stale.
TABLE_CODE = ("models", "probes", "analyses/instruments", "analyses/studies")
TABLES = tables_of(instruments())  # the default instruments' tables


@dataclass(frozen=True)
class AnalysisConfig:
    """How much of each analysis to run (CPU-sized defaults), and which instruments."""

    pairs: int = 256  # clean/corrupted prompt pairs per patching experiment
    probe_rows: int = 8000  # task rows for the probes (80% fit, 20% held out)
    probe_targets: tuple[str, ...] = ("label", "task_type")
    geometry_rows: int = 512  # task rows for attention entropy and information flow
    seed: int = 0
    instruments: tuple[str, ...] | None = None  # None: every default instrument

    def __post_init__(self):
        bad = [t for t in self.probe_targets if t not in TARGETS]
        if bad:
            raise UserError(
                f"unknown probe target(s) {', '.join(bad)}; choose from {', '.join(TARGETS)}",
                option="probe_targets",
            )
        if min(self.pairs, self.probe_rows, self.geometry_rows) < 1:
            raise UserError("analysis pairs and rows must be at least 1")
        instruments(self.instruments)  # known names only

    def chosen(self) -> list[Instrument]:
        """The instruments this analysis applies, in report order."""
        return instruments(self.instruments)


@functools.cache
def code_version(extra: tuple[str, ...] = ()) -> str:
    """A hash of the source that computes tables (TABLE_CODE, and the `extra` files of
    instruments defined elsewhere), computed once per process."""
    files = sorted(f for folder in TABLE_CODE for f in (ROOT / folder).rglob("*.py"))
    digest = hashlib.sha256()
    for path in [*files, *map(Path, extra)]:
        digest.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _outside_code(chosen: list[Instrument]) -> tuple[str, ...]:
    """Source files of chosen instruments that live outside TABLE_CODE."""
    files = {Path(inspect.getsourcefile(i.measure)).resolve() for i in chosen}
    inside = [ROOT / folder for folder in TABLE_CODE]
    return tuple(
        sorted(str(f) for f in files if not any(f.is_relative_to(folder) for folder in inside))
    )


def _stamp(run: Run, cfg: AnalysisConfig) -> dict:
    chosen = cfg.chosen()
    settings = {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()
    }
    settings["instruments"] = [i.name for i in chosen]
    return {
        "last_step": run.checkpoint_steps()[-1],
        "config": settings,
        "code": code_version(_outside_code(chosen)),
    }


def _read(path) -> pd.DataFrame:
    """A table as written, index columns back to (nullable) integers."""
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:  # e.g. no patching on a task without corruptions
        return pd.DataFrame()
    return table.astype(
        {c: "Int64" for c in ("step", "layer", "position", "head") if c in table}
    ).astype({"token": str} if "token" in table else {})


def _same(record: dict, stamp: dict) -> bool:
    return {k: record.get(k) for k in stamp} == stamp


def analyze_run(
    run: Run, cfg: AnalysisConfig = AnalysisConfig(), progress: Progress | None = None
) -> dict[str, pd.DataFrame]:
    """The chosen instruments' tables of `run` (and "notes": parts left out, e.g. a probe
    target with too few rows), read from RUN/analysis/ when up to date, else computed and
    written; `progress` hears of the checkpoints measured."""
    folder = run.path / "analysis"
    chosen = cfg.chosen()
    names = tables_of(chosen)
    stamp = _stamp(run, cfg)
    marker = folder / "analysis.json"
    if (
        marker.exists()
        and _same(read_json(marker, "analysis record"), stamp)
        and all((folder / f"{name}.csv").exists() for name in names)
    ):
        return _load(folder, names)
    context = Context(run, cfg, stage_steps(run), progress)
    tables: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    for instrument in chosen:
        measured = instrument.measure(context)
        tables.update(
            {name: measured.tables.get(name, pd.DataFrame()) for name in instrument.tables}
        )
        notes += measured.notes
    for name, table in tables.items():
        export_table(table, folder, name, formats=("csv",))
    write_json(marker, {**stamp, "notes": notes})
    return _load(folder, names)


def _load(folder, names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The tables as reports see them (read back from disk), and "notes": what was left
    out and why."""
    notes = read_json(folder / "analysis.json", "analysis record").get("notes", [])
    return {**{name: _read(folder / f"{name}.csv") for name in names}, "notes": notes}


def analyze_runs(
    runs: list[Run], cfg: AnalysisConfig = AnalysisConfig(), progress: Progress | None = None
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The tables of all `runs` stacked, and {run: reason} for any whose analysis failed
    (the report says so and goes on with the others)."""
    names = tables_of(cfg.chosen())
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in names}
    problems = {}
    for run in runs:
        try:
            tables = analyze_run(run, cfg, progress)
        except Exception as e:  # a report is still written for what could be analysed
            problems[run.name] = f"analysis failed: {type(e).__name__}: {e}"
            continue
        if tables["notes"]:
            problems[run.name] = "; ".join(tables["notes"])
        for name in names:
            if not tables[name].empty:
                parts[name].append(tables[name])
    return {name: pd.concat(p, ignore_index=True) for name, p in parts.items() if p}, problems
