"""Plotly figures of probes and geometry: what components represent, and how it forms.

- `cosine_heatmap` / `pca_scatter`: token-embedding geometry of one checkpoint, tokens
  ordered by value and grouped by role (keys, memory anchors, reasoning anchors).
- `metric_over_steps`: any metric of a tidy over-training table, one line per run (gamma).
- `probe_heatmap`: probe accuracy, control accuracy or selectivity by layer x position.
- `probes_by_layer`, `facet_over_steps`, `weight_change_bars`: the report's figures of the
  per-run analysis tables (probes, geometry), one line or bar per init scale.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from initlens.analyses.figures.colors import GAMMA_COLORS, ROLE_COLORS, gamma_color, gammas_of
from initlens.analyses.figures.labels import step_axis, step_positions
from initlens.analyses.studies.over_training import last_steps
from initlens.models.errors import UserError
from initlens.probes.geometry import cosine_matrix, pca, token_embeddings, token_roles


def _role_tokens(task) -> tuple[list[int], list[str]]:
    """Anchor roles first (they are few and the point of the figure), then the keys."""
    roles = token_roles(task)
    order = [r for r in roles if r != "key"] + [r for r in roles if r == "key"]
    ids = [t for r in order for t in roles[r]]
    return ids, [r for r in order for _ in roles[r]]


def cosine_heatmap(model, task, title: str = "Token-embedding cosine similarity") -> go.Figure:
    """Cosine similarity of the task's token embeddings, grouped by role, ordered by value;
    lines separate the roles."""
    ids, roles = _role_tokens(task)
    C = cosine_matrix(token_embeddings(model, ids)).numpy()
    labels = [f"{r}:{t}" for r, t in zip(roles, ids)]
    fig = go.Figure(
        go.Heatmap(
            z=C,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            zmid=0,
            colorscale="RdBu_r",
            hovertemplate="%{y} vs %{x}<br>cosine %{z:.3f}<extra></extra>",
            colorbar=dict(title=dict(text="cosine")),
        )
    )
    bounds = [i for i in range(1, len(roles)) if roles[i] != roles[i - 1]]
    for b in bounds:
        for axis in ("x", "y"):
            line = dict(
                type="line",
                line=dict(color="black", width=1),
                xref="x" if axis == "x" else "paper",
                yref="y" if axis == "y" else "paper",
            )
            line.update(x0=b - 0.5, x1=b - 0.5, y0=0, y1=1) if axis == "x" else line.update(
                y0=b - 0.5, y1=b - 0.5, x0=0, x1=1
            )
            fig.add_shape(**line)
    side = min(max(TICK_PX["y"] * len(ids), 480), 720)  # the plot's side in pixels
    axes = {}
    for axis in ("x", "y"):
        shown = _tick_subset(roles, side / len(ids), TICK_PX[axis])
        axes[axis] = dict(
            tickmode="array",
            tickvals=[labels[i] for i in shown],
            ticktext=[str(ids[i]) for i in shown],
            tickfont=dict(size=TICK_FONT),
            tickangle=0,
            title_text="token: " + " | ".join(dict.fromkeys(roles)) + " (lines separate them)",
        )
    margin = dict(t=60, b=70, l=80, r=110)  # r: the colour bar
    fig.update_layout(
        title=dict(text=title),
        height=side + margin["t"] + margin["b"],
        width=side + margin["l"] + margin["r"],
        xaxis=axes["x"],
        yaxis=dict(axes["y"], autorange="reversed"),
        margin=margin,
    )
    return fig


TICK_FONT = 11  # the smallest tick label a report figure uses
# Pixels between tick labels (two digits at TICK_FONT): side by side on the x axis, one
# above the other on the y axis.
TICK_PX = {"x": 20, "y": 13}


def _tick_subset(roles: list[str], cell_px: float, need_px: float) -> list[int]:
    """Which tokens get a tick label when each takes `cell_px` pixels and a label
    `need_px`: all of them when their labels fit, else every k-th of each role, its
    first included (hover names every token)."""
    every = max(1, math.ceil(need_px / cell_px - 1e-9))
    out: list[int] = []
    for role in dict.fromkeys(roles):
        for i in [i for i, r in enumerate(roles) if r == role][::every]:
            if out and i - out[-1] < every:  # a role's first crowding the last one's tick
                out.pop()
            out.append(i)
    return out


def pca_scatter(
    model, task, title: str = "Token embeddings: first two principal components"
) -> go.Figure:
    """The task's token embeddings on their top two principal axes, coloured by role and
    labelled with the token value (ordered anchors show up as an ordered curve)."""
    ids, roles = _role_tokens(task)
    coords, ratio = pca(token_embeddings(model, ids), k=2)
    labelled = _spread_out(coords.numpy())
    fig = go.Figure()
    for role in dict.fromkeys(roles):
        pick = [i for i, r in enumerate(roles) if r == role]
        fig.add_trace(
            go.Scatter(
                x=coords[pick, 0].numpy(),
                y=coords[pick, 1].numpy(),
                mode="markers+text",
                name=role,
                text=[str(ids[i]) if i in labelled else "" for i in pick],
                customdata=[str(ids[i]) for i in pick],
                textposition="top center",
                textfont=dict(size=TICK_FONT),
                marker=dict(color=ROLE_COLORS.get(role), size=9 if role != "key" else 6),
                hovertemplate=f"{role} %{{customdata}}<br>PC1 %{{x:.3f}}<br>PC2 %{{y:.3f}}"
                "<extra></extra>",
            )
        )
    fig.update_layout(
        title=dict(text=title),
        height=520,
        xaxis_title=f"PC1 ({100 * float(ratio[0]):.0f}% of variance)",
        yaxis_title=f"PC2 ({100 * float(ratio[1]):.0f}% of variance)",
        margin=dict(t=60, b=50, l=60, r=20),
    )
    return fig


def _spread_out(xy: np.ndarray, gap: tuple[float, float] = (0.06, 0.05)) -> set[int]:
    """Points (in order: anchors first) whose text label clears every label already placed
    by `gap` (a share of each axis's range): labels never pile up; the rest show on hover."""
    span = np.ptp(xy, axis=0)
    unit = xy / np.where(span > 0, span, 1)
    placed: list[int] = []
    for i in range(len(xy)):
        if all(
            abs(unit[i, 0] - unit[j, 0]) > gap[0] or abs(unit[i, 1] - unit[j, 1]) > gap[1]
            for j in placed
        ):
            placed.append(i)
    return set(placed)


def _select(table: pd.DataFrame, where: dict) -> pd.DataFrame:
    for column, value in where.items():
        if column not in table.columns:
            raise UserError(
                f"the table has no column {column!r}; it has {', '.join(map(str, table.columns))}"
            )
        choices = sorted(map(str, table[column].dropna().unique()))
        table = table[table[column].astype(str) == str(value)]
        if table.empty:
            raise UserError(
                f"no rows with {column} = {value!r}; choose one of {', '.join(choices)}"
            )
    return table


def metric_over_steps(
    table: pd.DataFrame,
    value: str = "value",
    title: str | None = None,
    y_title: str | None = None,
    log_steps: bool = True,
    **where,
) -> go.Figure:
    """`value` over training steps, one line per run coloured by gamma, from a tidy
    over-training table (filter with where=..., e.g. metric="within_cosine",
    group="reasoning_anchor"; what remains is averaged per step). The y axis is titled
    `y_title`, else the metric filtered on (or `value`); checkpoints are log-spaced, so
    the step axis is too (`step_axis`: init drawn left of the first step), unless
    `log_steps=False`."""
    rows = _select(table, where)
    fig = go.Figure()
    runs = rows[["run", "gamma"]].drop_duplicates().sort_values("gamma")
    where_x = step_positions(rows.step) if log_steps else None
    for i, (run, gamma) in enumerate(runs.itertuples(index=False, name=None)):
        line = rows[rows.run == run].groupby("step")[value].mean()
        fig.add_trace(
            go.Scatter(
                x=[where_x[int(s)] for s in line.index] if log_steps else line.index,
                y=line.to_numpy(),
                customdata=list(line.index),
                mode="lines+markers",
                name=f"gamma = {gamma:g}"
                + (f" ({run})" if (runs.gamma == gamma).sum() > 1 else ""),
                line=dict(color=GAMMA_COLORS[i % len(GAMMA_COLORS)]),
                hovertemplate=f"{run}<br>step %{{customdata}}<br>{value} %{{y:.4f}}<extra></extra>",
            )
        )
    what = ", ".join(f"{k} {v}" for k, v in where.items())
    metric = where.get("metric") if value == "value" else None
    fig.update_layout(
        title=dict(text=title or f"{what or value} over training"),
        xaxis=step_axis(rows.step) if log_steps else dict(title_text="step"),
        yaxis_title=y_title or str(metric or value).replace("_", " "),
        height=380,
        margin=dict(t=50, b=50, l=70, r=20),
    )
    return fig


def probe_heatmap(
    table: pd.DataFrame,
    value: str = "selectivity",
    component: str | None = None,
    title: str | None = None,
    **where,
) -> go.Figure:
    """Probe `value` (accuracy, control_accuracy or selectivity) by layer (rows, layer 0
    at top) and position, for one component of one (run, step, target) slice."""
    rows = _select(table, where)
    if component is not None:
        rows = _select(rows, {"component": component})
    keys = [c for c in ("run", "step", "target", "component") if c in rows.columns]
    slices = rows[keys].drop_duplicates()
    if len(slices) > 1:
        raise UserError(
            f"the probe table holds {len(slices)} (" + ", ".join(keys) + ") "
            "slices; pick one with where=... (e.g. target='key', step=...)"
        )
    grid = rows.pivot_table(index="layer", columns="position", values=value)
    z = grid.to_numpy(dtype=float)
    text = [
        [f"layer {layer}<br>position {p}<br>{value} {v:.3f}" for p, v in zip(grid.columns, z[i])]
        for i, layer in enumerate(grid.index)
    ]
    signed = value == "selectivity"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(p) for p in grid.columns],
            y=[str(layer) for layer in grid.index],
            text=text,
            hovertemplate="%{text}<extra></extra>",
            xgap=1,
            ygap=1,
            colorscale="RdBu" if signed else "Viridis",
            zmid=0 if signed else None,
            zmin=None if signed else 0,
            zmax=None if signed else 1,
            colorbar=dict(title=dict(text=value)),
        )
    )
    first = rows.iloc[0]
    label = ", ".join(f"{k} {first[k]}" for k in keys)
    fig.update_layout(
        title=dict(text=title or f"probe {value}: {label}"),
        xaxis=dict(title_text="position", type="category"),
        yaxis=dict(title_text="layer", type="category", autorange="reversed"),
        height=max(300, 140 + 40 * len(grid.index)),
        margin=dict(t=50, b=50, l=60, r=20),
    )
    if not np.isfinite(z).any():
        raise UserError(f"probe table has no finite {value} values for {label}")
    return fig


def probes_by_layer(probes: pd.DataFrame, target: str = "label") -> go.Figure:
    """Held-out probe accuracy (solid) and control-task accuracy (dotted) of `target` at
    the label position, hook by hook in forward order, at each run's last step."""
    rows = last_steps(probes[probes.target == target])
    rows = rows[rows.position == rows.position.max()]
    order = (
        rows.sort_values(
            ["layer", "component"],
            key=lambda c: (
                c.map(
                    {"resid_pre": 0, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4}
                )
                if c.name == "component"
                else c
            ),
        )
        .hook.drop_duplicates()
        .tolist()
    )
    gammas = gammas_of(rows)
    fig = go.Figure()
    for gamma in gammas:
        part = rows[rows.gamma == gamma].set_index("hook").loc[order]
        for value, dash in (("accuracy", "solid"), ("control_accuracy", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=order,
                    y=part[value],
                    mode="lines+markers",
                    name=f"gamma {gamma:g}: " + value.replace("_", " "),
                    line=dict(color=gamma_color(gammas, gamma), dash=dash),
                    hovertemplate="%{x}<br>" + value + " %{y:.3f}<extra></extra>",
                )
            )
    fig.update_layout(
        height=400,
        yaxis=dict(title_text="held-out accuracy (probe, control task)", range=[0, 1.02]),
        xaxis=dict(title_text="hook (label position)", tickangle=-30),
        margin=dict(t=30, b=110, l=60, r=20),
    )
    return fig


def facet_over_steps(
    table: pd.DataFrame, facet: str, title: str, y_title: str | None = None, **where
) -> go.Figure:
    """A tidy metric over steps, one panel per value of `facet` (e.g. source position),
    one line per init scale; rows are filtered by `where` and averaged per step. The step
    axis is `step_axis` (log, init at its left), as in `metric_over_steps`; the y axis is
    titled `y_title`, else the metric."""
    rows = table
    for column, value in where.items():
        rows = rows[rows[column] == value]
    facets = sorted(rows[facet].dropna().unique())
    gammas = gammas_of(rows)
    where_x = step_positions(rows.step)
    fig = make_subplots(
        rows=1,
        cols=max(1, len(facets)),
        shared_yaxes=True,
        subplot_titles=[f"{facet} {f}" for f in facets],
    )
    for j, f in enumerate(facets, start=1):
        for gamma in gammas:
            line = rows[(rows[facet] == f) & (rows.gamma == gamma)].groupby("step").value.mean()
            fig.add_trace(
                go.Scatter(
                    x=[where_x[int(s)] for s in line.index],
                    y=line.to_numpy(),
                    customdata=list(line.index),
                    mode="lines+markers",
                    name=f"gamma = {gamma:g}",
                    legendgroup=str(gamma),
                    showlegend=j == 1,
                    line=dict(color=gamma_color(gammas, gamma)),
                    hovertemplate=f"gamma {gamma:g}<br>step %{{customdata}}<br>%{{y:.3f}}"
                    "<extra></extra>",
                ),
                row=1,
                col=j,
            )
        fig.update_xaxes(**step_axis(rows.step), row=1, col=j)
    metric = where.get("metric", "value")
    fig.update_yaxes(title_text=y_title or str(metric).replace("_", " "), row=1, col=1)
    fig.update_layout(title=dict(text=title), height=380, margin=dict(t=70, b=50, l=70, r=20))
    return fig


def weight_change_bars(geometry: pd.DataFrame) -> go.Figure:
    """Relative weight change ||W_T - W_0|| / ||W_0|| of each weight matrix at each run's
    last step, one bar per init scale."""
    rows = last_steps(geometry[geometry.metric == "relative_weight_change"])
    gammas = gammas_of(rows)
    fig = go.Figure()
    for gamma in gammas:
        part = rows[rows.gamma == gamma]
        fig.add_trace(
            go.Bar(
                x=part.hook,
                y=part.value,
                name=f"gamma = {gamma:g}",
                marker_color=gamma_color(gammas, gamma),
                hovertemplate="%{x}<br>relative change %{y:.3f}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        height=420,
        yaxis=dict(title_text="||W_T - W_0|| / ||W_0|| (log scale)", type="log"),
        xaxis=dict(tickangle=-40, title_text="weight matrix"),
        margin=dict(t=30, b=140, l=60, r=20),
    )
    return fig


def cka_to_final(cka: pd.DataFrame) -> go.Figure:
    """Linear CKA of each layer's label-position representation with the same layer at the
    run's last step, over training: one line per init scale and layer."""
    rows = cka[(cka.run_a == cka.run_b) & (cka.layer_a == cka.layer_b)]
    rows = rows[rows.step_b == rows.groupby("run_b").step_b.transform("max")]
    gammas = sorted(rows.gamma_a.unique())
    dashes = ["solid", "dot", "dash", "dashdot"]
    where = step_positions(rows.step_a)
    fig = go.Figure()
    for (run, gamma, layer), line in rows.groupby(["run_a", "gamma_a", "layer_a"]):
        line = line.sort_values("step_a")
        fig.add_trace(
            go.Scatter(
                x=[where[int(s)] for s in line.step_a],
                y=line.cka,
                customdata=list(line.step_a),
                mode="lines+markers",
                name=f"gamma = {gamma:g}, layer {layer}",
                line=dict(color=gamma_color(gammas, gamma), dash=dashes[int(layer) % len(dashes)]),
                hovertemplate=f"{run}<br>step %{{customdata}}<br>CKA %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(
        height=380,
        xaxis=step_axis(rows.step_a),
        yaxis=dict(title_text="CKA with the last step", range=[0, 1.02]),
        margin=dict(t=30, b=40, l=60, r=20),
    )
    return fig
