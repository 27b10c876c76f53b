"""Plotly heatmaps of activation-patching results, from a tidy table.

The table has one row per patched cell: run (str), step (int), component (str: "resid_pre",
"attn_out", "mlp_out", "z", "q", "k", "v", "pattern", ...), layer (int), position (int; -1
means "all positions"), head (int; -1 means "no head / all heads") and value (float). A
figure shows one (run, step): filter the table first when it holds several.

Layout follows TransformerLens: layer 0 at the top, a diverging RdBu scale centred at 0.
Axes are categorical (one equal cell per layer, position or head present in the table), so
gaps in positions and repeated tokens are drawn correctly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from initlens.models.errors import UserError

PATCH_TABLE_COLUMNS = ("run", "step", "component", "layer", "position", "head", "value")


def _component_rows(table: pd.DataFrame, component: str) -> pd.DataFrame:
    """The table's rows for `component`, after checking columns, name and (run, step)."""
    missing = [c for c in PATCH_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(
            f"patching table lacks column(s) {', '.join(missing)}; "
            f"it needs {', '.join(PATCH_TABLE_COLUMNS)}"
        )
    components = sorted(map(str, table["component"].unique()))
    if component not in components:
        raise UserError(
            f"component {component!r} is not in the table; choose one of: "
            f"{', '.join(components) or '(the table is empty)'}"
        )
    rows = table[table["component"] == component]
    pairs = rows[["run", "step"]].drop_duplicates()
    if len(pairs) > 1:
        listed = ", ".join(f"{r}@{s}" for r, s in pairs.itertuples(index=False, name=None))
        raise UserError(
            f"component {component!r} has rows from several (run, step) pairs "
            f"({listed}); filter the table to one run and step first"
        )
    return rows


def _grid(rows: pd.DataFrame, col: str, what: str) -> pd.DataFrame:
    """Pivot to layers x `col`, refusing duplicate cells."""
    dup = rows.duplicated(["layer", col], keep=False)
    if dup.any():
        first = rows[dup].iloc[0]
        raise UserError(
            f"{what}: several rows for layer {int(first.layer)}, {col} "
            f"{int(first[col])}; keep one row per cell"
        )
    return rows.pivot(index="layer", columns=col, values="value").sort_index().sort_index(axis=1)


def _fmt(v: float) -> str:
    return "no data" if np.isnan(v) else f"{v:.4f}"


def _heatmap(
    grid: pd.DataFrame,
    text: list[list[str]],
    x_ticktext: list[str] | None,
    x_title: str,
    title: str,
) -> go.Figure:
    z = grid.to_numpy(dtype=float)
    finite = z[np.isfinite(z)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    bound = bound or 1.0
    layers = [int(v) for v in grid.index]
    cols = [int(v) for v in grid.columns]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=cols,
            y=layers,
            text=text,
            hovertemplate="%{text}<extra></extra>",
            colorscale="RdBu",
            zmid=0,
            zmin=-bound,
            zmax=bound,
            xgap=1,
            ygap=1,
            colorbar=dict(title=dict(text="value")),
        )
    )
    xaxis = dict(
        title_text=x_title,
        type="category",
        tickmode="array",
        tickvals=cols,
        ticktext=x_ticktext or [str(c) for c in cols],
    )
    fig.update_layout(
        title=dict(text=title),
        xaxis=xaxis,
        yaxis=dict(
            title_text="layer",
            type="category",
            autorange="reversed",
            tickmode="array",
            tickvals=layers,
            ticktext=[str(v) for v in layers],
        ),
        height=max(320, 140 + 36 * len(layers)),
        margin=dict(t=50, b=50, l=60, r=20),
        plot_bgcolor="#f0f0f0",
    )
    return fig


def _where(rows: pd.DataFrame) -> str:
    run, step = rows[["run", "step"]].iloc[0]
    return f"run {run}, step {int(step)}"


def layer_position_heatmap(
    table: pd.DataFrame,
    component: str,
    title: str | None = None,
    tokens: Sequence[str] | None = None,
) -> go.Figure:
    """Heatmap of `component` over layers (rows, layer 0 at top) and positions (columns)."""
    rows = _component_rows(table, component)
    cells = rows[(rows["head"] == -1) & (rows["position"] >= 0)]
    if cells.empty:
        kinds = []
        if (rows["head"] >= 0).any():
            kinds.append("per-head rows (head >= 0): use layer_head_heatmap")
        if (rows["position"] == -1).any():
            kinds.append("all-position rows (position == -1)")
        raise UserError(
            f"component {component!r} has no per-position rows with head == -1; "
            f"it has {' and '.join(kinds)}"
        )
    grid = _grid(cells, "position", f"component {component!r}")
    positions = [int(p) for p in grid.columns]
    if tokens is not None:
        tokens = [str(t) for t in tokens]
        if positions[-1] >= len(tokens):
            raise UserError(
                f"tokens has {len(tokens)} entries but the table has position "
                f"{positions[-1]}; pass one token per position"
            )
        labels = [tokens[p] for p in positions]
    else:
        labels = [str(p) for p in positions]
    text = [
        [
            f"layer {layer}<br>position {p} ({lab})<br>value {_fmt(v)}"
            if tokens is not None
            else f"layer {layer}<br>position {p}<br>value {_fmt(v)}"
            for p, lab, v in zip(positions, labels, grid.loc[layer])
        ]
        for layer in grid.index
    ]
    title = title if title is not None else f"{component}: layer x position ({_where(cells)})"
    return _heatmap(grid, text, labels, "position", title)


def layer_head_heatmap(
    table: pd.DataFrame, component: str, position: int | None = None, title: str | None = None
) -> go.Figure:
    """Heatmap of a per-head `component` over layers (rows, layer 0 at top) and heads."""
    rows = _component_rows(table, component)
    per_head = rows[rows["head"] >= 0]
    if per_head.empty:
        raise UserError(
            f"component {component!r} has no per-head rows (head >= 0); use layer_position_heatmap"
        )
    available = sorted(int(p) for p in per_head["position"].unique())
    if position is None:
        if -1 not in available:
            raise UserError(
                f"component {component!r} has per-head rows at positions "
                f"{', '.join(map(str, available))} but none for all positions "
                f"(-1); pass position= one of them"
            )
        position = -1
    elif int(position) not in available:
        raise UserError(
            f"component {component!r} has no per-head rows at position "
            f"{position}; choose one of: {', '.join(map(str, available))}"
        )
    cells = per_head[per_head["position"] == int(position)]
    grid = _grid(cells, "head", f"component {component!r}, position {position}")
    where = "all positions" if position == -1 else f"position {position}"
    text = [
        [
            f"layer {layer}<br>head {int(h)}<br>{where}<br>value {_fmt(v)}"
            for h, v in zip(grid.columns, grid.loc[layer])
        ]
        for layer in grid.index
    ]
    title = (
        title if title is not None else (f"{component}: layer x head, {where} ({_where(cells)})")
    )
    return _heatmap(grid, text, None, "head", title)
