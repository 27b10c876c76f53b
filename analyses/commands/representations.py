"""`probe geometry` and `probe linear`: read-outs over a run's checkpoints, written to disk.

Each writes a tidy table (CSV and parquet) with run, gamma and step columns, and plotly
figures (HTML by default; PNG/SVG/PDF as asked, when Chromium is there). `steps`: "all",
"stages" (init, early, each task type learned, end: the default of `probe linear`, whose
fits cost seconds per checkpoint), "last", a step number or a list of them; `rows`: task
rows; `inverse_l2`: scikit-learn's C.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from initlens.analyses.commands import run_label
from initlens.analyses.figures.export import (
    check_folder_path,
    export_figures,
    export_table,
    figure_formats,
)
from initlens.analyses.figures.representations import (
    cosine_heatmap,
    metric_over_steps,
    pca_scatter,
    probe_heatmap,
)
from initlens.analyses.studies.over_training import (
    best_selectivity,
    cka_over_training,
    geometry_over_training,
    open_runs,
    probes_over_training,
    select_steps,
)
from initlens.models.errors import UserError, check_count, check_positive
from initlens.models.progress import Progress

# (file stem, filter) of the geometry lines drawn over training, when the table has them.
GEOMETRY_LINES = (
    ("within_cosine_reasoning", dict(metric="within_cosine", group="reasoning_anchor")),
    ("within_cosine_memory", dict(metric="within_cosine", group="memory_anchor")),
    ("separability", dict(metric="separability")),
    ("embedding_effective_rank", dict(metric="effective_rank", hook="embed.weight", group="all")),
    ("attention_entropy_layer0", dict(metric="attention_entropy", layer=0)),
    ("label_components_90", dict(metric="components_90")),  # compressibility (grokking)
    ("condensation_layer0_q", dict(metric="n_directions", hook="blocks.0.attn.q.weight")),
    ("relative_weight_change", dict(metric="relative_weight_change")),
)


def geometry_command(
    runs: Sequence[str | Path],
    out: str | Path,
    steps="all",
    rows: int = 512,
    cka: bool = True,
    formats: Sequence[str] = ("html",),
    progress: Progress | None = None,
) -> dict[str, object]:
    """Geometry over training (and CKA between layers, steps and runs) for `runs`: tables
    geometry.csv/.parquet and cka.csv/.parquet, cosine and PCA figures of each run's last
    selected checkpoint, and metric-over-steps lines (one per gamma)."""
    check_count(rows, "rows")
    figure_formats(formats)
    check_folder_path(out)
    runs = open_runs(runs)
    out = Path(out)
    table = geometry_over_training(runs, steps, rows, progress=progress)
    files = export_table(table, out, "geometry")
    if cka:
        files += export_table(cka_over_training(runs, steps, n=rows, progress=progress), out, "cka")
    figures: dict[str, go.Figure] = {}
    for run in runs:
        step = select_steps(run, steps)[-1]
        model = run.load_model(step)
        where = f"{run_label(run.name, run.config.model.gamma)}, step {step}"
        figures[f"cosine_{run.name}"] = cosine_heatmap(
            model, run.config.task, title=f"Token-embedding cosine similarity ({where})"
        )
        figures[f"pca_{run.name}"] = pca_scatter(
            model, run.config.task, title=f"Token embeddings, PCA ({where})"
        )
    for name, where in GEOMETRY_LINES:
        try:
            figures[f"over_steps_{name}"] = metric_over_steps(table, **where)
        except UserError:  # not measured for this task (composite has no memory anchors)
            pass
    more, notes = export_figures(figures, out, formats)
    return {"table": table, "files": [str(f) for f in files + more], "warnings": notes}


def linear_command(
    runs: Sequence[str | Path],
    out: str | Path,
    targets=("key",),
    components=("resid_pre", "resid_mid", "resid_post"),
    steps="stages",
    rows: int = 20000,
    inverse_l2: float = 1.0,
    formats: Sequence[str] = ("html",),
    progress: Progress | None = None,
) -> dict[str, object]:
    """Probes over training for `runs`: probes.csv/.parquet, accuracy and selectivity
    heatmaps (layer x position) at each run's last selected step per target and component,
    and selectivity over steps (best layer and position, one line per gamma) per target."""
    check_count(rows, "rows")
    check_positive(inverse_l2, "inverse_l2")
    figure_formats(formats)
    check_folder_path(out)
    runs = open_runs(runs)
    out = Path(out)
    table = probes_over_training(
        runs, targets, components, steps, rows, C=inverse_l2, progress=progress
    )
    files = export_table(table, out, "probes")
    figures: dict[str, go.Figure] = {}
    for run in runs:
        step = select_steps(run, steps)[-1]
        for (target, component), _ in table.groupby(["target", "component"]):
            for value in ("accuracy", "selectivity"):
                figures[f"probe_{value}_{target}_{component}_{run.name}"] = probe_heatmap(
                    table, value, component, run=run.name, step=step, target=target
                )
    best = best_selectivity(table)
    for target in best.target.unique():
        figures[f"over_steps_selectivity_{target}"] = metric_over_steps(
            best,
            "selectivity",
            title=f"Best probe selectivity for {target} over training "
            "(max over components, layers and positions)",
            target=target,
        )
    more, notes = export_figures(figures, out, formats)
    return {"table": table, "files": [str(f) for f in files + more], "warnings": notes}
