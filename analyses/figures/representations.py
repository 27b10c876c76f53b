"""Plotly figures of probes and geometry: what components represent, and how it forms.

- `cosine_heatmap` / `pca_scatter`: token-embedding geometry of one checkpoint, tokens
  ordered by value and grouped by role (keys, memory anchors, reasoning anchors).
- `metric_over_steps`: any metric of a tidy over-training table, one line per run (gamma).
- `probe_heatmap`: probe accuracy, control accuracy or selectivity by layer x position.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from initlens.analyses.figures import GAMMA_COLORS
from initlens.models.errors import UserError
from initlens.probes.geometry import cosine_matrix, pca, token_embeddings, token_roles

ROLE_COLORS = {"key": "#7f7f7f", "memory_anchor": "#d62728", "reasoning_anchor": "#1f77b4",
               "anchor": "#1f77b4"}


def _role_tokens(task) -> tuple[list[int], list[str]]:
    """Anchor roles first (they are few and the point of the figure), then the keys."""
    roles = token_roles(task)
    order = [r for r in roles if r != "key"] + [r for r in roles if r == "key"]
    ids = [t for r in order for t in roles[r]]
    return ids, [r for r in order for _ in roles[r]]


def cosine_heatmap(model, task, title: str = "Token-embedding cosine similarity"
                   ) -> go.Figure:
    """Cosine similarity of the task's token embeddings, grouped by role, ordered by value;
    lines separate the roles."""
    ids, roles = _role_tokens(task)
    C = cosine_matrix(token_embeddings(model, ids)).numpy()
    labels = [f"{r}:{t}" for r, t in zip(roles, ids)]
    fig = go.Figure(go.Heatmap(
        z=C, x=labels, y=labels, zmin=-1, zmax=1, zmid=0, colorscale="RdBu_r",
        hovertemplate="%{y} vs %{x}<br>cosine %{z:.3f}<extra></extra>",
        colorbar=dict(title=dict(text="cosine"))))
    bounds = [i for i in range(1, len(roles)) if roles[i] != roles[i - 1]]
    for b in bounds:
        for axis in ("x", "y"):
            line = dict(type="line", line=dict(color="black", width=1),
                        xref="x" if axis == "x" else "paper",
                        yref="y" if axis == "y" else "paper")
            line.update(x0=b - 0.5, x1=b - 0.5, y0=0, y1=1) if axis == "x" else \
                line.update(y0=b - 0.5, y1=b - 0.5, x0=0, x1=1)
            fig.add_shape(**line)
    ticks = [str(t) for t in ids]
    fig.update_layout(title=dict(text=title), height=640, width=700,
                      xaxis=dict(tickmode="array", tickvals=labels, ticktext=ticks,
                                 tickfont=dict(size=8), title_text="token (grouped by role)"),
                      yaxis=dict(tickmode="array", tickvals=labels, ticktext=ticks,
                                 tickfont=dict(size=8), autorange="reversed"),
                      margin=dict(t=60, b=60, l=60, r=20))
    return fig


def pca_scatter(model, task, title: str = "Token embeddings: first two principal components"
                ) -> go.Figure:
    """The task's token embeddings on their top two principal axes, coloured by role and
    labelled with the token value (ordered anchors show up as an ordered curve)."""
    ids, roles = _role_tokens(task)
    coords, ratio = pca(token_embeddings(model, ids), k=2)
    fig = go.Figure()
    for role in dict.fromkeys(roles):
        pick = [i for i, r in enumerate(roles) if r == role]
        fig.add_trace(go.Scatter(
            x=coords[pick, 0].numpy(), y=coords[pick, 1].numpy(), mode="markers+text",
            name=role, text=[str(ids[i]) for i in pick], textposition="top center",
            marker=dict(color=ROLE_COLORS.get(role), size=9 if role != "key" else 5),
            hovertemplate=f"{role} %{{text}}<br>PC1 %{{x:.3f}}<br>PC2 %{{y:.3f}}"
                          "<extra></extra>"))
    fig.update_layout(title=dict(text=title), height=520,
                      xaxis_title=f"PC1 ({100 * float(ratio[0]):.0f}% of variance)",
                      yaxis_title=f"PC2 ({100 * float(ratio[1]):.0f}% of variance)",
                      margin=dict(t=60, b=50, l=60, r=20))
    return fig


def _select(table: pd.DataFrame, where: dict) -> pd.DataFrame:
    for column, value in where.items():
        if column not in table.columns:
            raise UserError(f"the table has no column {column!r}; it has "
                            f"{', '.join(map(str, table.columns))}")
        choices = sorted(map(str, table[column].dropna().unique()))
        table = table[table[column].astype(str) == str(value)]
        if table.empty:
            raise UserError(f"no rows with {column} = {value!r}; choose one of "
                            f"{', '.join(choices)}")
    return table


def metric_over_steps(table: pd.DataFrame, value: str = "value", title: str | None = None,
                      **where) -> go.Figure:
    """`value` over training steps, one line per run coloured by gamma, from a tidy
    over-training table (filter with where=..., e.g. metric="within_cosine",
    group="reasoning_anchor"; what remains is averaged per step)."""
    rows = _select(table, where)
    fig = go.Figure()
    runs = rows[["run", "gamma"]].drop_duplicates().sort_values("gamma")
    for i, (run, gamma) in enumerate(runs.itertuples(index=False, name=None)):
        line = rows[rows.run == run].groupby("step")[value].mean()
        fig.add_trace(go.Scatter(
            x=line.index, y=line.to_numpy(), mode="lines+markers",
            name=f"gamma = {gamma:g}" + (f" ({run})" if (runs.gamma == gamma).sum() > 1
                                         else ""),
            line=dict(color=GAMMA_COLORS[i % len(GAMMA_COLORS)]),
            hovertemplate=f"{run}<br>step %{{x}}<br>{value} %{{y:.4f}}<extra></extra>"))
    what = ", ".join(f"{k} {v}" for k, v in where.items())
    fig.update_layout(title=dict(text=title or f"{what or value} over training"),
                      xaxis_title="step", yaxis_title=value, height=380,
                      margin=dict(t=50, b=40, l=60, r=20))
    return fig


def probe_heatmap(table: pd.DataFrame, value: str = "selectivity", component: str | None = None,
                  title: str | None = None, **where) -> go.Figure:
    """Probe `value` (accuracy, control_accuracy or selectivity) by layer (rows, layer 0
    at top) and position, for one component of one (run, step, target) slice."""
    rows = _select(table, where)
    if component is not None:
        rows = _select(rows, {"component": component})
    keys = [c for c in ("run", "step", "target", "component") if c in rows.columns]
    slices = rows[keys].drop_duplicates()
    if len(slices) > 1:
        raise UserError(f"the probe table holds {len(slices)} (" + ", ".join(keys) + ") "
                        f"slices; pick one with where=... (e.g. target='key', step=...)")
    grid = rows.pivot_table(index="layer", columns="position", values=value)
    z = grid.to_numpy(dtype=float)
    text = [[f"layer {layer}<br>position {p}<br>{value} {v:.3f}" for p, v in zip(grid.columns,
                                                                              z[i])]
            for i, layer in enumerate(grid.index)]
    signed = value == "selectivity"
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(p) for p in grid.columns], y=[str(layer) for layer in grid.index],
        text=text, hovertemplate="%{text}<extra></extra>", xgap=1, ygap=1,
        colorscale="RdBu" if signed else "Viridis", zmid=0 if signed else None,
        zmin=None if signed else 0, zmax=None if signed else 1,
        colorbar=dict(title=dict(text=value))))
    first = rows.iloc[0]
    label = ", ".join(f"{k} {first[k]}" for k in keys)
    fig.update_layout(title=dict(text=title or f"probe {value}: {label}"),
                      xaxis=dict(title_text="position", type="category"),
                      yaxis=dict(title_text="layer", type="category", autorange="reversed"),
                      height=max(300, 140 + 40 * len(grid.index)),
                      margin=dict(t=50, b=50, l=60, r=20))
    if not np.isfinite(z).any():
        raise UserError(f"probe table has no finite {value} values for {label}")
    return fig
