"""A study: the same run trained at several init scales and seeds, then one report.

STUDY/study.json           the gammas, the seeds and the shared RunConfig
STUDY/gamma_<g>/           one run directory per gamma (a study of one seed)
STUDY/gamma_<g>_seed_<s>/  one run directory per gamma and seed (a study of several)
STUDY/preference.csv       the preference summary, one row per run
STUDY/claims.csv           the published claims judged over seeds (analyses.studies.claims)
STUDY/metrics.csv          every run's tidy metrics, stacked
STUDY/<table>.csv          each analysis table of the runs, stacked (localization,
                           agreement, probes, geometry; see analyses.studies.run_analysis);
                           with several seeds, of each gamma's first seed only
STUDY/report.html          the self-contained report
STUDY/report_figures/      every figure as PNG/SVG/PDF, when asked for

The runs that can share an ensemble (`models.ensemble`: all of them, but for the Emb-MLP
and next-token tasks) train together, as a sweep's units do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from initlens.analyses.figures.export import export_table, figure_formats
from initlens.analyses.studies.claims import claims_table
from initlens.analyses.studies.folders import check_folder
from initlens.analyses.studies.preference import preference_table, readout_row
from initlens.analyses.studies.report import write_report
from initlens.analyses.studies.run_analysis import AnalysisConfig, analyze_runs
from initlens.analyses.studies.sweep import plan, train_together
from initlens.models.checkpoint import read_json, write_json
from initlens.models.config import RunConfig
from initlens.models.errors import UserError
from initlens.models.progress import Log, Progress
from initlens.models.run import Run

DEMO_GAMMAS = (0.3, 0.8)

__all__ = [
    "DEMO_GAMMAS",
    "StudySpec",
    "check_folder",
    "collect",
    "first_seed_runs",
    "report_study",
    "run_dir",
    "run_study",
    "study_table",
]


def run_dir(study: str | Path, gamma: float, seed: int | None = None) -> Path:
    """The run directory of `gamma` in a study folder; with `seed`, of that gamma and seed
    (a study of several seeds)."""
    name = f"gamma_{gamma:g}" if seed is None else f"gamma_{gamma:g}_seed_{seed}"
    return Path(study) / name


def check_seeds(seeds) -> tuple[int, ...]:
    """The seeds of a study, checked: a non-empty list of distinct integers >= 0."""
    seeds = tuple(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if not seeds or bad:
        raise UserError(
            f"seeds must be integers >= 0, at least one (got {list(seeds)})", option="seeds"
        )
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {list(seeds)} repeat a seed; give each once", option="seeds")
    return seeds


@dataclass(frozen=True)
class StudySpec:
    """What a study trains: `base` at every gamma x seed (study.json)."""

    base: RunConfig
    gammas: tuple[float, ...]
    seeds: tuple[int, ...]

    def runs(self) -> list[tuple[float, int, str]]:
        """(gamma, seed, folder name) of every run, gamma by gamma; one seed keeps the
        folder names of a study without seeds (gamma_<g>)."""
        several = len(self.seeds) > 1
        return [
            (g, s, run_dir(".", g, s if several else None).name)
            for g in self.gammas
            for s in self.seeds
        ]

    def configs(self) -> list[tuple[RunConfig, str]]:
        """Every run's validated config and folder name."""
        return [
            (self.base.replace(model={"gamma": g}, train={"seed": s}).validate(), name)
            for g, s, name in self.runs()
        ]

    def to_dict(self) -> dict:
        """study.json's content, as it reads back from disk."""
        return json.loads(
            json.dumps({"gammas": self.gammas, "seeds": self.seeds, "base": self.base.to_dict()})
        )

    @classmethod
    def from_dict(cls, data: dict) -> StudySpec:
        """A study from study.json; one written before studies had seeds has the base
        config's seed."""
        base = RunConfig.from_dict(data.get("base", {}), "study file")
        seeds = data.get("seeds") or [base.train.seed]
        return cls(base, tuple(float(g) for g in data.get("gammas", [])), tuple(seeds))


def run_study(
    base: RunConfig,
    gammas: tuple[float, ...],
    out: str | Path,
    overwrite: bool = False,
    progress: bool | None = None,
    analysis: AnalysisConfig | None = AnalysisConfig(),
    formats: tuple[str, ...] = (),
    analysis_progress: Progress | None = None,
    log: Log | None = None,
    seeds: tuple[int, ...] | None = None,
) -> dict[str, object]:
    """Train `base` at each gamma and seed into `out` (resuming unfinished runs), then
    analyse and report (`report_study`). `seeds`: default the base config's one seed.
    Runs that differ only in gamma and seed train together as one ensemble where they
    can. `progress`: training step bars (None: on a terminal); `analysis_progress` hears
    of the analyses' checkpoints; `log` of runs that failed.

    A run that fails is listed in the report with its reason; the others still report.
    """
    out = Path(out)
    figure_formats(formats)
    if not gammas:
        raise UserError("a study needs at least one gamma", option="gammas")
    seeds = check_seeds((base.train.seed,) if seeds is None else seeds)
    spec = StudySpec(base, tuple(float(g) for g in gammas), seeds)
    runs = [(cfg, out / name) for cfg, name in spec.configs()]  # all valid before training
    check_folder(
        out, "study.json", spec.to_dict(), overwrite, lambda d: StudySpec.from_dict(d).to_dict()
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study.json", spec.to_dict())
    for unit in plan(runs, "auto"):
        try:
            train_together(unit, progress)
        except UserError as e:  # e.g. diverged, or a folder in use: the report says so
            if log is not None:
                log(f"{', '.join(path.name for _, path in unit)}: {e}")
            continue
        if log is not None:  # ensemble members that diverged (the others went on)
            for _, path in unit:
                status = Run(path).status
                if status.get("state") == "failed":
                    log(f"{path.name}: {status.get('reason', 'failed')}")
    return report_study(out, analysis, formats, analysis_progress)


def _spec(study: Path) -> StudySpec:
    return StudySpec.from_dict(read_json(study / "study.json", "study file"))


def collect(study: str | Path) -> tuple[list[Run], dict[str, str]]:
    """The finished runs of a study (every gamma and seed), and {name: reason} for each
    missing or failed one."""
    study = Path(study)
    runs, problems = [], {}
    for _, _, name in _spec(study).runs():
        folder = study / name
        if not (folder / "config.json").exists():
            problems[folder.name] = "missing: never started (re-run `probe study`)"
            continue
        run = Run.open(folder)
        status = run.status
        if status.get("state") == "done":
            runs.append(run)
        else:
            problems[folder.name] = (
                f"{status.get('state', 'unknown')} at step "
                f"{status.get('step', '?')}: "
                f"{status.get('reason', 'unfinished; re-run to resume')}"
            )
    return runs, problems


def first_seed_runs(runs: list[Run], seeds: tuple[int, ...]) -> list[Run]:
    """Per gamma, the run of the first of `seeds` that finished: the runs a study of
    several seeds analyses (the analyses cost far more than the claims)."""
    order = {s: i for i, s in enumerate(seeds)}
    first: dict[float, Run] = {}
    for run in sorted(runs, key=lambda r: order.get(r.config.train.seed, len(order))):
        first.setdefault(run.config.model.gamma, run)
    chosen = {run.name for run in first.values()}
    return [run for run in runs if run.name in chosen]


def study_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: the preference summary (`preference_table`) and the task's
    read-outs (`readout_row`, e.g. the composite task's inferential and symmetric
    fractions), the table the claims are judged from."""
    table = preference_table(runs)
    readouts = pd.DataFrame(
        [
            {"run": r.name, "architecture": r.config.model.architecture, **readout_row(r)}
            for r in runs
        ]
    )
    return table.merge(readouts, on="run", how="left")


def report_study(
    study: str | Path,
    analysis: AnalysisConfig | None = AnalysisConfig(),
    formats: tuple[str, ...] = (),
    progress: Progress | None = None,
) -> dict[str, object]:
    """(Re)write the tables and report.html of a study folder from what is on disk;
    `analysis=None` leaves out the analysis sections (localization, probes, geometry),
    which a study of several seeds runs on each gamma's first seed only."""
    study = Path(study)
    spec = _spec(study)
    runs, problems = collect(study)
    tables: dict[str, pd.DataFrame] = {}
    claims = None
    analysed = first_seed_runs(runs, spec.seeds)
    if runs:
        export_table(preference_table(runs), study, "preference", formats=("csv",))
        task = runs[0].config.task
        claims = claims_table(study_table(runs), task.reasoning_group, task.memory_group)
        export_table(claims, study, "claims", formats=("csv",))
        metrics = pd.concat([r.metrics() for r in runs], ignore_index=True)
        export_table(metrics, study, "metrics", formats=("csv",))
        if analysis is not None:
            tables, failed = analyze_runs(analysed, analysis, progress)
            problems.update(failed)
            for name, table in tables.items():
                export_table(table, study, name, formats=("csv",))
    task_name = runs[0].config.task.name if runs else "?"
    gammas = sorted({r.config.model.gamma for r in runs})
    over = f" over seeds {', '.join(map(str, spec.seeds))}" if len(spec.seeds) > 1 else ""
    return write_report(
        runs,
        study / "report.html",
        title=f"InitLens study: {task_name} task at init scales "
        f"{', '.join(f'{g:g}' for g in gammas)}{over}",
        problems=problems,
        analysis=tables,
        formats=formats,
        claims=claims,
        analysed=analysed,
    )
