"""Figures of the localization study, one per question, comparing init scales side by side.

Inputs are the tidy tables of `analyses.run_analysis` (localization, agreement, probes,
geometry), stacked over runs. Every function returns a plotly figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from initlens.analyses.figures import GAMMA_COLORS
from initlens.analyses.localization import component_label, rank_components
from initlens.analyses.over_training import last_steps as _last

SYMBOLS = {"attn_out": "circle", "mlp_out": "square", "z": "diamond", "resid_pre": "x"}


def _gammas(table: pd.DataFrame) -> list[float]:
    return sorted(table.gamma.unique())


def _color(gammas: list[float], gamma: float) -> str:
    return GAMMA_COLORS[gammas.index(gamma) % len(GAMMA_COLORS)]


def patching_grid(table: pd.DataFrame, component: str) -> go.Figure:
    """Normalized effect of patching `component` at each run's last step: a heatmap of
    layer (rows) x token position (and head) per init scale (rows of panels) and
    experiment (columns of panels); 1 = restores the clean answer, 0 = no effect."""
    rows = _last(table)
    rows = rows[rows.component == component]
    gammas, exps = _gammas(rows), list(dict.fromkeys(rows.experiment))
    fig = make_subplots(rows=len(gammas), cols=len(exps), shared_yaxes=True,
                        vertical_spacing=0.12, horizontal_spacing=0.06,
                        subplot_titles=[f"gamma = {g:g}: {e} prompts"
                                        for g in gammas for e in exps])
    per_head = (rows["head"] >= 0).any() and rows["head"].nunique() > 1
    for i, gamma in enumerate(gammas, start=1):
        for j, exp in enumerate(exps, start=1):
            cell = rows[(rows.gamma == gamma) & (rows.experiment == exp)]
            if cell.empty:
                continue
            if cell.normalized.isna().all():
                fig.add_annotation(text=f"undefined: clean {cell.clean.iloc[0]:.2f} vs "
                                   f"corrupted {cell.corrupted.iloc[0]:.2f} logit diff",
                                   xref="x domain", yref="y domain", x=0.5, y=0.5,
                                   showarrow=False, row=i, col=j)
            x = (cell.token.astype(str)
                 + (" H" + cell["head"].astype(str) if per_head else "")).tolist()
            cell = cell.assign(x=x)
            grid = cell.pivot_table(index="layer", columns="x", values="normalized",
                                    sort=False, dropna=False)
            fig.add_trace(go.Heatmap(
                z=grid.to_numpy(dtype=float), x=list(grid.columns),
                y=[f"L{int(v)}" for v in grid.index], coloraxis="coloraxis",
                texttemplate="%{z:.2f}", xgap=1, ygap=1,
                hovertemplate="layer %{y}, %{x}<br>normalized effect %{z:.3f}"
                              "<extra></extra>"), row=i, col=j)
            fig.update_yaxes(autorange="reversed", row=i, col=j)
    fig.update_layout(coloraxis=dict(colorscale="RdBu", cmid=0, cmin=-1, cmax=1,
                                     colorbar=dict(title=dict(text="normalized"))),
                      height=150 + 170 * len(gammas), margin=dict(t=60, b=40, l=60, r=20),
                      plot_bgcolor="#f0f0f0")
    return fig


def effect_over_training(table: pd.DataFrame, top: int = 2) -> go.Figure:
    """Normalized effect, over the stage checkpoints, of the `top` strongest component
    patches of each init scale at its last step; one panel per experiment."""
    ranked = rank_components(table, top=top)
    rows = table.assign(patch=[component_label(r) for r in table.itertuples()])
    exps = list(dict.fromkeys(rows.experiment))
    gammas = _gammas(rows)
    fig = make_subplots(rows=1, cols=len(exps), shared_yaxes=True,
                        subplot_titles=[f"{e} prompts" for e in exps])
    for j, exp in enumerate(exps, start=1):
        for gamma in gammas:
            picks = ranked[(ranked.gamma == gamma) & (ranked.experiment == exp)]
            for dash, patch in zip(("solid", "dot", "dash"), picks.patch):
                line = rows[(rows.gamma == gamma) & (rows.experiment == exp)
                            & (rows.patch == patch)].sort_values("step")
                fig.add_trace(go.Scatter(
                    x=line.step, y=line.normalized, mode="lines+markers",
                    name=f"gamma {gamma:g}: {patch}", line=dict(
                        color=_color(gammas, gamma), dash=dash),
                    text=line.stage, hovertemplate="step %{x} (%{text})<br>normalized "
                                                   "%{y:.3f}<extra></extra>"), row=1, col=j)
        fig.update_xaxes(title_text="step", row=1, col=j)
    fig.update_yaxes(title_text="normalized effect", row=1, col=1)
    fig.update_layout(height=400, margin=dict(t=50, b=40, l=60, r=20),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def attribution_scatter(table: pd.DataFrame) -> go.Figure:
    """Attribution estimate against the exact effect of every patch at the last step
    (both normalized); points on the diagonal are estimated exactly."""
    rows = _last(table).dropna(subset=["normalized", "attribution_normalized"])
    gammas = _gammas(rows)
    fig = go.Figure()
    for gamma in gammas:
        for component, part in rows[rows.gamma == gamma].groupby("component", sort=False):
            fig.add_trace(go.Scatter(
                x=part.normalized, y=part.attribution_normalized, mode="markers",
                name=f"gamma {gamma:g}, {component}",
                marker=dict(color=_color(gammas, gamma), symbol=SYMBOLS.get(component),
                            size=8, opacity=0.8),
                text=[f"{component_label(r)}, {r.experiment}" for r in part.itertuples()],
                hovertemplate="%{text}<br>exact %{x:.3f}<br>attribution %{y:.3f}"
                              "<extra></extra>"))
    values = np.concatenate([rows.normalized, rows.attribution_normalized]) if len(rows) \
        else np.array([0.0, 1.0])
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="exact = estimate",
                             line=dict(color="#999", dash="dot")))
    fig.update_layout(height=460, xaxis_title="exact patching (normalized)",
                      yaxis_title="attribution estimate (normalized)",
                      margin=dict(t=30, b=40, l=60, r=20))
    return fig


def probes_by_layer(probes: pd.DataFrame, target: str = "label") -> go.Figure:
    """Held-out probe accuracy (solid) and control-task accuracy (dotted) of `target` at
    the label position, hook by hook in forward order, at each run's last step."""
    rows = _last(probes[probes.target == target])
    rows = rows[rows.position == rows.position.max()]
    order = rows.sort_values(["layer", "component"], key=lambda c: c.map(
        {"resid_pre": 0, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4})
        if c.name == "component" else c).hook.drop_duplicates().tolist()
    gammas = _gammas(rows)
    fig = go.Figure()
    for gamma in gammas:
        part = rows[rows.gamma == gamma].set_index("hook").loc[order]
        for value, dash in (("accuracy", "solid"), ("control_accuracy", "dot")):
            fig.add_trace(go.Scatter(
                x=order, y=part[value], mode="lines+markers", name=f"gamma {gamma:g}: "
                + value.replace("_", " "), line=dict(color=_color(gammas, gamma), dash=dash),
                hovertemplate="%{x}<br>" + value + " %{y:.3f}<extra></extra>"))
    fig.update_layout(height=400, yaxis=dict(title_text="held-out accuracy", range=[0, 1.02]),
                      xaxis=dict(title_text="hook (label position)", tickangle=-30),
                      margin=dict(t=30, b=110, l=60, r=20))
    return fig


def facet_over_steps(table: pd.DataFrame, facet: str, title: str, **where) -> go.Figure:
    """A tidy metric over steps, one panel per value of `facet` (e.g. source position),
    one line per init scale; rows are filtered by `where` and averaged per step."""
    rows = table
    for column, value in where.items():
        rows = rows[rows[column] == value]
    facets = sorted(rows[facet].dropna().unique())
    gammas = _gammas(rows)
    fig = make_subplots(rows=1, cols=max(1, len(facets)), shared_yaxes=True,
                        subplot_titles=[f"{facet} {f}" for f in facets])
    for j, f in enumerate(facets, start=1):
        for gamma in gammas:
            line = rows[(rows[facet] == f) & (rows.gamma == gamma)].groupby("step").value.mean()
            fig.add_trace(go.Scatter(x=line.index, y=line.to_numpy(), mode="lines+markers",
                                     name=f"gamma = {gamma:g}", legendgroup=str(gamma),
                                     showlegend=j == 1,
                                     line=dict(color=_color(gammas, gamma))), row=1, col=j)
        fig.update_xaxes(title_text="step", type="log", row=1, col=j)
    fig.update_layout(title=dict(text=title), height=360, margin=dict(t=70, b=40, l=60, r=20))
    return fig


def weight_change_bars(geometry: pd.DataFrame) -> go.Figure:
    """Relative weight change ||W_T - W_0|| / ||W_0|| of each weight matrix at each run's
    last step, one bar per init scale."""
    rows = _last(geometry[geometry.metric == "relative_weight_change"])
    gammas = _gammas(rows)
    fig = go.Figure()
    for gamma in gammas:
        part = rows[rows.gamma == gamma]
        fig.add_trace(go.Bar(x=part.hook, y=part.value, name=f"gamma = {gamma:g}",
                             marker_color=_color(gammas, gamma),
                             hovertemplate="%{x}<br>relative change %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="group", height=420, yaxis=dict(title_text="relative change",
                                                              type="log"),
                      xaxis=dict(tickangle=-40), margin=dict(t=30, b=140, l=60, r=20))
    return fig
