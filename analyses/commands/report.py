"""`probe report`: (re)build the report of a study or a run, or a sweep's table and figures."""

from __future__ import annotations

from pathlib import Path

from initlens.analyses.figures.export import check_folder_path, figure_formats
from initlens.analyses.studies.report import write_report
from initlens.analyses.studies.run_analysis import AnalysisConfig, analyze_runs
from initlens.analyses.studies.study import report_study
from initlens.analyses.studies.sweep import report_sweep
from initlens.models.progress import Progress
from initlens.models.run import Run


def report_command(
    target: str | Path,
    out: str | Path | None = None,
    analysis: AnalysisConfig | None = AnalysisConfig(),
    formats: tuple[str, ...] = (),
    progress: Progress | None = None,
) -> dict[str, object]:
    """A sweep folder: its results table and figures; a study folder (without `out`): its
    tables and report; a run directory: its report (default RUN/report.html)."""
    target = Path(target)
    figure_formats(formats)
    if out is not None:
        check_folder_path(Path(out).parent)
    if (target / "sweep.json").exists():
        return report_sweep(target, formats or ("html",))
    if (target / "study.json").exists() and out is None:
        return report_study(target, analysis, formats, progress)
    run = Run.open(target)
    tables, problems = analyze_runs([run], analysis, progress) if analysis else ({}, {})
    return write_report(
        [run],
        Path(out) if out else target / "report.html",
        f"InitLens run {run.name}",
        problems,
        tables,
        formats,
    )
