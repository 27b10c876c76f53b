"""A study: the same run trained at several init scales, then one report comparing them.

STUDY/study.json           the gammas and the shared RunConfig
STUDY/gamma_<g>/           one run directory per gamma
STUDY/preference.csv       the preference summary, one row per gamma
STUDY/metrics.csv          every run's tidy metrics, stacked
STUDY/<table>.csv          each analysis table of the runs, stacked (localization,
                           agreement, probes, geometry; see analyses.studies.run_analysis)
STUDY/report.html          the self-contained report
STUDY/report_figures/      every figure as PNG/SVG/PDF, when asked for
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from initlens.analyses.figures.export import check_folder_path, export_table, figure_formats
from initlens.analyses.studies.preference import preference_table
from initlens.analyses.studies.report import write_report
from initlens.analyses.studies.run_analysis import AnalysisConfig, analyze_runs
from initlens.models.checkpoint import read_json, write_json
from initlens.models.config import RunConfig
from initlens.models.errors import UserError
from initlens.models.progress import Log, Progress
from initlens.models.run import Run
from initlens.models.run_writer import LOCK
from initlens.models.train import train

DEMO_GAMMAS = (0.3, 0.8)


def run_dir(study: Path, gamma: float) -> Path:
    """The run directory of `gamma` in a study folder."""
    return Path(study) / f"gamma_{gamma:g}"


def check_folder(
    out: Path,
    marker: str,
    spec: dict,
    overwrite: bool,
    normalize: Callable[[dict], dict] = lambda d: d,
) -> None:
    """Refuse to mix work: `out` must be new, empty, or hold the same spec in its `marker`
    file (then it resumes; `normalize` fills in config fields added since it was written);
    `overwrite` empties only a folder with that marker (keeping the lock file of the
    process that holds it)."""
    check_folder_path(out)
    kind, file = Path(marker).stem, out / marker
    content = [p for p in out.iterdir() if p.name != LOCK] if out.is_dir() else []
    if overwrite and file.exists():
        for path in content:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif overwrite and content:
        raise UserError(
            f"{out} is not a {kind} folder (no {marker}); refusing to overwrite "
            f"it: choose another folder",
            option="out",
        )
    elif file.exists() and normalize(read_json(file, f"{kind} file")) != spec:
        raise UserError(
            f"{out} holds a different {kind}; set overwrite to replace it, "
            f"or choose another folder",
            option="out",
        )
    elif content and not file.exists():
        raise UserError(f"{out} exists and is not empty; choose a new folder", option="out")


def _study_spec(gammas: list[float], base: RunConfig) -> dict:
    """study.json's content, as it reads back from disk."""
    return json.loads(json.dumps({"gammas": gammas, "base": base.to_dict()}))


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
) -> dict[str, object]:
    """Train `base` at each gamma into `out` (resuming unfinished runs), then analyse and
    report (`report_study`). `progress`: training step bars (None: on a terminal);
    `analysis_progress` hears of the analyses' checkpoints; `log` of runs that failed.

    A run that fails is listed in the report with its reason; the others still report.
    """
    out = Path(out)
    figure_formats(formats)
    if not gammas:
        raise UserError("a study needs at least one gamma", option="gammas")
    configs = [base.replace(model={"gamma": float(g)}).validate() for g in gammas]
    spec = _study_spec([float(g) for g in gammas], base)
    check_folder(
        out,
        "study.json",
        spec,
        overwrite,
        lambda d: _study_spec(d.get("gammas"), RunConfig.from_dict(d.get("base", {}))),
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study.json", spec)
    for cfg in configs:
        folder = run_dir(out, cfg.model.gamma)
        resume = (folder / "config.json").exists()
        try:
            train(None if resume else cfg, folder, resume=resume, progress=progress)
        except UserError as e:  # e.g. diverged: keep going, the report says so
            if log is not None:
                log(f"gamma={cfg.model.gamma:g}: {e}")
    return report_study(out, analysis, formats, analysis_progress)


def collect(study: str | Path) -> tuple[list[Run], dict[str, str]]:
    """The finished runs of a study, and {name: reason} for each missing or failed one."""
    study = Path(study)
    spec = read_json(study / "study.json", "study file")
    runs, problems = [], {}
    for gamma in spec["gammas"]:
        folder = run_dir(study, gamma)
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


def report_study(
    study: str | Path,
    analysis: AnalysisConfig | None = AnalysisConfig(),
    formats: tuple[str, ...] = (),
    progress: Progress | None = None,
) -> dict[str, object]:
    """(Re)write the tables and report.html of a study folder from what is on disk;
    `analysis=None` leaves out the analysis sections (localization, probes, geometry)."""
    study = Path(study)
    runs, problems = collect(study)
    tables: dict[str, pd.DataFrame] = {}
    if runs:
        export_table(preference_table(runs), study, "preference", formats=("csv",))
        metrics = pd.concat([r.metrics() for r in runs], ignore_index=True)
        export_table(metrics, study, "metrics", formats=("csv",))
        if analysis is not None:
            tables, failed = analyze_runs(runs, analysis, progress)
            problems.update(failed)
            for name, table in tables.items():
                export_table(table, study, name, formats=("csv",))
    task = runs[0].config.task.name if runs else "?"
    return write_report(
        runs,
        study / "report.html",
        title=f"InitLens study: {task} task at init scales "
        f"{', '.join(f'{r.config.model.gamma:g}' for r in runs)}",
        problems=problems,
        analysis=tables,
        formats=formats,
    )
