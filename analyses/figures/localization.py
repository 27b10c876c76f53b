"""Figures of the localization study (which components carry each task type), comparing
init scales side by side.

Input is the localization table of `analyses.studies.run_analysis`, stacked over runs.
Every function returns a plotly figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from initlens.analyses.figures.colors import gamma_color, gammas_of
from initlens.analyses.figures.labels import step_axis, step_positions
from initlens.analyses.studies.localization import (
    patch_names,
    rank_components,
    single_head_runs,
)
from initlens.analyses.studies.over_training import last_steps

SYMBOLS = {"attn_out": "circle", "mlp_out": "square", "z": "diamond", "resid_pre": "x"}


def undefined_note(fig: go.Figure, cell: pd.DataFrame, row: int, col: int) -> None:
    """Say in a panel that its normalized effects are undefined: the clean and corrupted
    runs' logit differences (cell's clean and corrupted columns) are too close."""
    fig.add_annotation(
        text=f"undefined: clean {cell.clean.iloc[0]:.2f} vs corrupted "
        f"{cell.corrupted.iloc[0]:.2f} logit diff (gap too small)",
        xref="x domain",
        yref="y domain",
        x=0.5,
        y=0.5,
        showarrow=False,
        row=row,
        col=col,
    )


def patching_grid(table: pd.DataFrame, component: str) -> go.Figure:
    """Normalized effect of patching `component` at each run's last step: a heatmap of
    layer (rows) x token position (and head) per init scale (rows of panels) and
    experiment (columns of panels); 1 = restores the clean answer, 0 = no effect."""
    rows = last_steps(table)
    rows = rows[rows.component == component]
    gammas, exps = gammas_of(rows), list(dict.fromkeys(rows.experiment))
    fig = make_subplots(
        rows=len(gammas),
        cols=len(exps),
        shared_yaxes=True,
        vertical_spacing=0.12,
        horizontal_spacing=0.06,
        subplot_titles=[f"gamma = {g:g}: {e} prompts" for g in gammas for e in exps],
    )
    per_head = (rows["head"] >= 0).any() and rows["head"].nunique() > 1
    for i, gamma in enumerate(gammas, start=1):
        for j, exp in enumerate(exps, start=1):
            cell = rows[(rows.gamma == gamma) & (rows.experiment == exp)]
            if cell.empty:
                continue
            if cell.normalized.isna().all():
                undefined_note(fig, cell, i, j)
            x = (
                cell.token.astype(str) + (" H" + cell["head"].astype(str) if per_head else "")
            ).tolist()
            cell = cell.assign(x=x)
            grid = cell.pivot_table(
                index="layer", columns="x", values="normalized", sort=False, dropna=False
            )
            fig.add_trace(
                go.Heatmap(
                    z=grid.to_numpy(dtype=float),
                    x=list(grid.columns),
                    y=[f"L{int(v)}" for v in grid.index],
                    coloraxis="coloraxis",
                    texttemplate="%{z:.2f}",
                    xgap=1,
                    ygap=1,
                    hovertemplate="layer %{y}, %{x}<br>normalized effect %{z:.3f}<extra></extra>",
                ),
                row=i,
                col=j,
            )
            fig.update_yaxes(autorange="reversed", row=i, col=j)
    for j in range(1, len(exps) + 1):
        fig.update_xaxes(
            title_text="token position" + (" and head" if per_head else ""),
            row=len(gammas),
            col=j,
        )
    for i in range(1, len(gammas) + 1):
        fig.update_yaxes(title_text="layer", row=i, col=1)
    fig.update_layout(
        coloraxis=dict(
            colorscale="RdBu", cmid=0, cmin=-1, cmax=1, colorbar=dict(title=dict(text="normalized"))
        ),
        height=170 + 170 * len(gammas),
        margin=dict(t=60, b=60, l=70, r=20),
        plot_bgcolor="#f0f0f0",
    )
    return fig


def effect_over_training(table: pd.DataFrame, top: int = 2) -> go.Figure:
    """Normalized effect, over the stage checkpoints, of the `top` strongest component
    patches of each init scale at its last step; one panel per experiment."""
    return lines_over_training(table.assign(patch=patch_names(table)), rank_components(table, top))


def lines_over_training(rows: pd.DataFrame, ranked: pd.DataFrame) -> go.Figure:
    """Normalized effect over the checkpoints of each `patch` that `ranked` picks per init
    scale and experiment (rows: gamma, experiment, patch, step, stage, normalized); one
    panel per experiment, log step axis."""
    exps = list(dict.fromkeys(rows.experiment))
    gammas = gammas_of(rows)
    where = step_positions(rows.step)
    fig = make_subplots(
        rows=1, cols=len(exps), shared_yaxes=True, subplot_titles=[f"{e} prompts" for e in exps]
    )
    for j, exp in enumerate(exps, start=1):
        for gamma in gammas:
            picks = ranked[(ranked.gamma == gamma) & (ranked.experiment == exp)]
            for dash, patch in zip(("solid", "dot", "dash"), picks.patch):
                line = rows[
                    (rows.gamma == gamma) & (rows.experiment == exp) & (rows.patch == patch)
                ].sort_values("step")
                fig.add_trace(
                    go.Scatter(
                        x=line.step.map(where),
                        y=line.normalized,
                        mode="lines+markers",
                        name=f"gamma {gamma:g}: {patch}",
                        line=dict(color=gamma_color(gammas, gamma), dash=dash),
                        text=line.stage,
                        customdata=line.step,
                        hovertemplate="step %{customdata} (%{text})<br>normalized %{y:.3f}"
                        "<extra></extra>",
                    ),
                    row=1,
                    col=j,
                )
        fig.update_xaxes(**step_axis(rows.step), row=1, col=j)
    fig.update_yaxes(title_text="normalized effect (1 = restores the clean run)", row=1, col=1)
    fig.update_layout(
        height=400, margin=dict(t=50, b=40, l=60, r=20), legend=dict(orientation="h", y=-0.25)
    )
    return fig


def attribution_scatter(table: pd.DataFrame) -> go.Figure:
    """Attribution estimate against the exact effect of every patch at the last step
    (both normalized); points on the diagonal are estimated exactly."""
    rows = last_steps(table).dropna(subset=["normalized", "attribution_normalized"])
    rows = rows[~((rows.component == "z") & rows.run.isin(single_head_runs(rows)))]
    rows = rows.assign(patch=patch_names(rows) if len(rows) else [])  # a head once: as attn_out
    gammas = gammas_of(rows)
    fig = go.Figure()
    for gamma in gammas:
        for component, part in rows[rows.gamma == gamma].groupby("component", sort=False):
            fig.add_trace(
                go.Scatter(
                    x=part.normalized,
                    y=part.attribution_normalized,
                    mode="markers",
                    name=f"gamma {gamma:g}, {component}",
                    marker=dict(
                        color=gamma_color(gammas, gamma),
                        symbol=SYMBOLS.get(component),
                        size=8,
                        opacity=0.8,
                    ),
                    text=[f"{r.patch}, {r.experiment}" for r in part.itertuples()],
                    hovertemplate="%{text}<br>exact %{x:.3f}<br>attribution %{y:.3f}"
                    "<extra></extra>",
                )
            )
    values = (
        np.concatenate([rows.normalized, rows.attribution_normalized])
        if len(rows)
        else np.array([0.0, 1.0])
    )
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    fig.add_trace(
        go.Scatter(
            x=[lo, hi],
            y=[lo, hi],
            mode="lines",
            name="exact = estimate",
            line=dict(color="#999", dash="dot"),
        )
    )
    fig.update_layout(
        height=460,
        xaxis_title="exact patching (normalized)",
        yaxis_title="attribution estimate (normalized)",
        margin=dict(t=30, b=40, l=60, r=20),
    )
    return fig
