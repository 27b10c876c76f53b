"""`probe circuit`: path patching of every sender x receiver path of one or more runs.

Writes the edge table `circuit.csv/.parquet` (one row per path, experiment and checkpoint:
value, normalized effect, the edge-attribution estimate), `circuit_agreement.csv/.parquet`,
with --per-position also `circuit_by_position.csv/.parquet` (one row per sender position),
and the figures `circuit_graph` (the strongest paths as a layer graph) and, over several
checkpoints, `circuit_over_training`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from initlens.analyses.figures.circuit import circuit_graph, edges_over_training
from initlens.analyses.figures.export import (
    check_folder_path,
    export_figures,
    export_table,
    figure_formats,
)
from initlens.analyses.studies.circuit import not_applicable, trace_run
from initlens.analyses.studies.over_training import named_steps, open_runs
from initlens.models.errors import UserError, check_count
from initlens.models.progress import Progress
from initlens.probes.corruptions import check_pairs


def circuit_command(
    runs: Sequence[str | Path],
    out: str | Path,
    steps="last",
    pairs: int = 256,
    per_position: bool = False,
    top: int = 8,
    formats: Sequence[str] = ("html",),
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, object]:
    """Path patching and edge attribution of every path at the chosen checkpoints of each
    run (its task's experiments: the key corruption on each task type)."""
    figure_formats(formats)
    check_folder_path(out)
    check_pairs(pairs, "pairs")
    check_count(top, "top")
    runs = open_runs(runs)
    for run in runs:
        why = not_applicable(run)
        if why:
            raise UserError(f"{run.name}: path patching does not apply: {why}")
    tables: dict[str, list[pd.DataFrame]] = {"circuit": [], "circuit_agreement": []}
    if per_position:
        tables["circuit_by_position"] = []
    for run in runs:
        chosen = named_steps(run, steps)
        edges, agreement = trace_run(run, chosen, pairs, seed, progress=progress)
        if edges.empty:
            raise UserError(
                f"{run.name}: its task has no clean/corrupted prompt pairs to patch; "
                f"path patching needs a task with a key corruption (mixture, composite)"
            )
        tables["circuit"].append(edges)
        tables["circuit_agreement"].append(agreement)
        if per_position:
            tables["circuit_by_position"].append(
                trace_run(run, chosen, pairs, seed, per_position=True, progress=progress)[0]
            )
    stacked = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
    out = Path(out)
    files = [f for name, t in stacked.items() for f in export_table(t, out, name)]
    edges = stacked["circuit"]
    figures = {"circuit_graph": circuit_graph(edges, top)}
    if edges.step.nunique() > 1:
        figures["circuit_over_training"] = edges_over_training(edges)
    more, notes = export_figures(figures, out, formats)
    return {
        "table": edges,
        "agreement": stacked["circuit_agreement"],
        "files": [str(f) for f in files + more],
        "warnings": notes,
    }
