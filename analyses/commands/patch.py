"""Patch a run's checkpoint on task corruption pairs: tidy tables and heatmaps on disk.

The orchestration behind `probe patch`: load the model at a step, build clean/corrupted
pairs for the task, run exact (and optionally attribution) patching, and write
`patch_<component>_<corruption>.csv/.parquet` plus one figure per heatmap.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from initlens.analyses.export import export_figure
from initlens.analyses.patch_figures import layer_head_heatmap, layer_position_heatmap
from initlens.models.checkpoint import atomic_write
from initlens.models.errors import UserError
from initlens.models.run import Run
from initlens.probes.attribution import agreement, attribution_patch
from initlens.probes.corruptions import PatchPairs, make_pairs
from initlens.probes.patching import METRICS, activation_patch


def position_labels(pairs: PatchPairs, seq: int,
                    names: tuple[str, ...] = ("key", "a1", "a2")) -> list[str]:
    """The task's names of the key, a1 and a2 positions (`Task.position_names`) where
    every pair puts them at the same positions, else numbers."""
    labels = [str(i) for i in range(seq)]
    key_pos = np.unique(pairs.meta["key_pos"])
    if len(key_pos) == 1:
        k = int(key_pos[0])
        labels = ["noise"] * seq
        labels[k:k + 3] = list(names)
    return labels


def make_metric(name: str, pairs: PatchPairs):
    """A built-in metric on the pairs' labels (logit_diff compares clean vs corrupted label)."""
    if name not in METRICS:
        raise UserError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    if name == "logit_diff":
        return METRICS[name](pairs.clean_label, pairs.corrupted_label)
    return METRICS[name](pairs.clean_label)


def figures_for(table: pd.DataFrame, component: str, labels: list[str]) -> dict[str, go.Figure]:
    """Layer x position for residual-type components; layer x head per position for heads."""
    name = f"{component}"
    if (table["head"] < 0).all():
        if (table.position < 0).all():
            return {}
        return {name: layer_position_heatmap(table, component, tokens=labels)}
    positions = sorted(table.position.unique())
    return {f"{name}_pos{p}" if p >= 0 else name:
            layer_head_heatmap(table, component, position=None if p < 0 else int(p),
                               title=f"{component} by layer and head"
                               + ("" if p < 0 else f", position {p} ({labels[p]})"))
            for p in positions}


def patch_run(run_dir: str | Path, component: str, corruption: str, out: str | Path,
              step: int | str | None = None, n: int = 256, metric: str = "logit_diff",
              direction: str = "denoising", source: str = "reasoning",
              per_position: bool = True, formats: tuple[str, ...] = ("html",),
              attribution: bool = False, seed: int = 0,
              max_memory_mb: float = 256) -> dict[str, object]:
    """Run one patching experiment on a run directory; returns what was written."""
    run = Run.open(run_dir)
    step = run.resolve_step(step)
    model = run.load_model(step)
    cfg = run.config
    pairs = make_pairs(cfg.task, corruption, n=n, seed=seed, data_seed=cfg.train.data_seed,
                       source=source).to(next(model.parameters()).device)
    fn = make_metric(metric, pairs)
    result = activation_patch(model, pairs.clean, pairs.corrupted, fn, component, per_position,
                              direction, max_memory_mb)
    table = result.table(run=run.name, step=step)
    table["normalized"] = result.normalized().flatten().tolist()
    info: dict[str, object] = {"clean": result.clean, "corrupted": result.corrupted}
    if attribution:
        estimate = attribution_patch(model, pairs.clean, pairs.corrupted, fn, component,
                                     per_position, direction)
        table["attribution"] = estimate.values.flatten().tolist()
        info["agreement"] = agreement(result, estimate)
    table = table.assign(corruption=corruption, metric=metric, direction=direction,
                         gamma=cfg.model.gamma)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"patch_{component}_{corruption}"
    atomic_write(out / f"{stem}.csv", table.to_csv(index=False))
    atomic_write(out / f"{stem}.parquet", table.to_parquet(index=False))
    files = [out / f"{stem}.csv", out / f"{stem}.parquet"]
    labels = position_labels(pairs, pairs.clean.shape[1], cfg.task.position_names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, fig in figures_for(table, component, labels).items():
            fig.update_layout(title=f"{name}: {corruption} corruption, {metric}, {direction}"
                              f"<br><sup>{run.name}, step {step}, gamma {cfg.model.gamma:g}, "
                              f"{len(pairs)} pairs</sup>")
            files += export_figure(fig, out / f"{stem}_{name}", formats, strict=False)
    info["warnings"] = sorted({str(w.message) for w in caught})
    info["files"] = [str(f) for f in files]
    info["table"] = table
    return info
