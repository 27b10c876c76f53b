"""`probe patch`: patch a run's checkpoint on task corruption pairs; tables and heatmaps.

Load the model at a step, build clean/corrupted pairs for the task, run exact (and
optionally attribution) patching, and write `patch_<component>_<corruption>.csv/.parquet`
plus one figure per heatmap: `patch_<component>_<corruption>` (layer x position, or layer x
head with --all-positions), or `..._pos<P>` (layer x head at each position P).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from initlens.analyses.commands import run_label
from initlens.analyses.figures.export import (
    check_folder_path,
    export_figures,
    export_table,
    figure_formats,
)
from initlens.analyses.figures.labels import position_labels
from initlens.analyses.figures.patching import layer_head_heatmap, layer_position_heatmap
from initlens.models.errors import UserError
from initlens.models.progress import Progress
from initlens.models.run import Run
from initlens.probes.attribution import agreement, attribution_patch
from initlens.probes.corruptions import PatchPairs, check_pairs, make_pairs
from initlens.probes.patching import METRICS, activation_patch


@dataclass(frozen=True)
class PatchOptions:
    """One patching experiment: what is patched, on which pairs, and what is written."""

    component: str = "resid_pre"
    corruption: str = "key"
    step: int | str | None = None  # checkpoint (default: the last)
    pairs: int = 256  # prompt pairs
    metric: str = "logit_diff"
    direction: str = "denoising"
    source: str = "reasoning"  # clean rows from the reasoning or the memory group
    per_position: bool = True
    attribution: bool = False  # also estimate by attribution patching, with its agreement
    formats: tuple[str, ...] = ("html",)
    seed: int = 0
    max_memory_mb: float = 256


def make_metric(name: str, pairs: PatchPairs):
    """A built-in metric on the pairs' labels (logit_diff compares clean vs corrupted label)."""
    if name not in METRICS:
        raise UserError(
            f"unknown metric {name!r}; choose one of {', '.join(METRICS)}", option="metric"
        )
    if name == "logit_diff":
        return METRICS[name](pairs.clean_label, pairs.corrupted_label)
    return METRICS[name](pairs.clean_label)


def figures_for(table: pd.DataFrame, component: str, labels: list[str]) -> dict[str, go.Figure]:
    """Layer x position for residual-type components; layer x head per position for heads.
    Keyed by what tells the figures apart: "" for the one figure, "pos<P>" per position."""
    if (table["head"] < 0).all():
        if (table.position < 0).all():
            return {}
        return {"": layer_position_heatmap(table, component, tokens=labels)}
    positions = sorted(table.position.unique())
    return {
        f"pos{p}" if p >= 0 else "": layer_head_heatmap(
            table,
            component,
            position=None if p < 0 else int(p),
            title=f"{component} by layer and head"
            + ("" if p < 0 else f", position {p} ({labels[p]})"),
        )
        for p in positions
    }


def patch_command(
    run_dir: str | Path,
    out: str | Path,
    options: PatchOptions = PatchOptions(),
    progress: Progress | None = None,
) -> dict[str, object]:
    """Run one patching experiment on a run directory; returns what was written."""
    o = options
    figure_formats(o.formats)
    check_folder_path(out)
    check_pairs(o.pairs, "pairs")
    run = Run.open(run_dir)
    step = run.resolve_step(o.step)
    model = run.load_model(step)
    cfg = run.config
    pairs = make_pairs(
        cfg.task,
        o.corruption,
        n=o.pairs,
        seed=o.seed,
        data_seed=cfg.train.data_seed,
        source=o.source,
    ).to(next(model.parameters()).device)
    fn = make_metric(o.metric, pairs)
    result = activation_patch(
        model,
        pairs.clean,
        pairs.corrupted,
        fn,
        o.component,
        o.per_position,
        o.direction,
        o.max_memory_mb,
        progress=progress,
    )
    table = result.table(run=run.name, step=step)
    table["normalized"] = result.normalized().flatten().tolist()
    info: dict[str, object] = {"clean": result.clean, "corrupted": result.corrupted}
    if o.attribution:
        estimate = attribution_patch(
            model, pairs.clean, pairs.corrupted, fn, o.component, o.per_position, o.direction
        )
        table["attribution"] = estimate.values.flatten().tolist()
        info["agreement"] = agreement(result, estimate)
    table = table.assign(
        corruption=o.corruption, metric=o.metric, direction=o.direction, gamma=cfg.model.gamma
    )
    out = Path(out)
    stem = f"patch_{o.component}_{o.corruption}"
    files = export_table(table, out, stem)
    labels = position_labels(pairs, pairs.clean.shape[1], cfg.task.position_names)
    figures = {}
    for key, fig in figures_for(table, o.component, labels).items():
        where = ""
        if key:  # pos<P>: the position, and its name where it has one
            label = labels[int(key[3:])]
            where = f", position {key[3:]}" + (f" ({label})" if label != key[3:] else "")
        fig.update_layout(
            title=f"{o.component}{where}: {o.corruption} corruption, {o.metric}, "
            f"{o.direction}<br><sup>{run_label(run.name, cfg.model.gamma)}, step {step}, "
            f"{len(pairs)} pairs</sup>"
        )
        figures[f"{stem}_{key}" if key else stem] = fig
    more, notes = export_figures(figures, out, o.formats)
    info["warnings"] = notes
    info["files"] = [str(f) for f in files + more]
    info["table"] = table
    return info
