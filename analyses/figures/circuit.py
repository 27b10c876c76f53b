"""Figures of the circuit study: the strongest paths as a layer graph, and over training.

Input is the edge table of `analyses.studies.circuit`, stacked over runs. Nodes sit in
forward order from left to right (embeddings, then each layer's heads and MLP, then the
logits); a path into a head's query, key or value input ends just below, at, or just above
that head.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from initlens.analyses.figures.colors import gammas_of
from initlens.analyses.figures.localization import lines_over_training, undefined_note
from initlens.analyses.studies.circuit import strongest_edges

POSITIVE, NEGATIVE = "#2b6cb0", "#c53030"  # restores the clean answer / pushes away
INPUT_OFFSET = {"q": -0.18, "k": 0.0, "v": 0.18}


def _node(name: str) -> tuple[float, float, str]:
    """(x, y, node) of a sender or receiver name: x in forward order, heads spread in y."""
    base, _, part = name.partition(".")
    if base == "embed":
        return 0.0, 0.0, base
    if base == "logits":
        return float("inf"), 0.0, base
    if base.startswith("MLP"):
        return 2.0 * int(base[3:]) + 2, 0.0, base
    layer, head = base[1:].split("H")
    return 2.0 * int(layer) + 1, float(head) + 1 + INPUT_OFFSET.get(part, 0.0), base


def _nodes(senders, receivers) -> dict[str, tuple[float, float]]:
    """Every node's position (the logits one column after the last)."""
    places = {}
    for name in list(senders) + list(receivers):
        x, y, node = _node(name)
        places[node] = (x, round(y))
    last = max(x for x, _ in places.values() if x != float("inf"))
    return {n: (last + 1 if x == float("inf") else x, y) for n, (x, y) in places.items()}


def _point(name: str, places: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """Where a path starts or ends: its node's place, a head's q/k/v input offset in y."""
    _, y, node = _node(name)
    return places[node][0], y


def _column_name(x: float, last: float) -> str:
    """The tick label of a column of the graph."""
    if x == 0:
        return "embed"
    if x == last:
        return "logits"
    layer = int((x - 1) // 2)
    return f"L{layer} attn" if x % 2 == 1 else f"L{layer} MLP"


def _curve(x0: float, y0: float, x1: float, y1: float, n: int = 24) -> tuple[list, list]:
    """A quadratic curve from (x0, y0) to (x1, y1), bowed by its span so that paths over
    several columns pass above the nodes between."""
    t = np.linspace(0, 1, n)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.35 * max(0.0, x1 - x0 - 1)
    xs = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t**2 * x1
    ys = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y1
    return xs.tolist(), ys.tolist()


def circuit_graph(table: pd.DataFrame, top: int = 8) -> go.Figure:
    """The `top` paths by |normalized effect| at each run's last step as a layer graph,
    one panel per init scale (rows) and experiment (columns): edge width is the effect,
    blue restores the clean answer, red pushes away from it."""
    rows = strongest_edges(table, top)
    gammas, exps = gammas_of(table), list(dict.fromkeys(table.experiment))
    fig = make_subplots(
        rows=max(1, len(gammas)),
        cols=max(1, len(exps)),
        vertical_spacing=0.2,
        horizontal_spacing=0.06,
        subplot_titles=[f"gamma = {g:g}: {e} prompts" for g in gammas for e in exps],
    )
    scale = max(rows.normalized.abs().max(), 1e-12) if len(rows) else 1.0
    for i, gamma in enumerate(gammas, start=1):
        for j, exp in enumerate(exps, start=1):
            cell = rows[(rows.gamma == gamma) & (rows.experiment == exp)]
            every = table[(table.gamma == gamma) & (table.experiment == exp)]
            places = _nodes(every.sender.unique(), every.receiver.unique())
            if cell.empty and len(every):
                undefined_note(fig, every, i, j)
            for r in cell.itertuples():
                xs, ys = _curve(*_point(r.sender, places), *_point(r.receiver, places))
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines",
                        line={
                            "width": 1 + 11 * abs(r.normalized) / scale,
                            "color": POSITIVE if r.normalized >= 0 else NEGATIVE,
                        },
                        opacity=0.75,
                        hovertext=f"{r.sender} -> {r.receiver}: {r.normalized:+.2f} "
                        f"of the gap (attribution {r.attribution_normalized:+.2f})",
                        hoverinfo="text",
                        showlegend=False,
                    ),
                    row=i,
                    col=j,
                )
                middle = len(xs) // 2
                fig.add_annotation(
                    x=xs[middle],
                    y=ys[middle],
                    text=f"{r.normalized:+.2f}",
                    showarrow=False,
                    font={"size": 9, "color": "#4a5568"},
                    bgcolor="rgba(255,255,255,0.7)",
                    row=i,
                    col=j,
                )
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in places.values()],
                    y=[p[1] for p in places.values()],
                    mode="markers+text",
                    text=list(places),
                    textposition="top center",
                    marker={
                        "size": 14,
                        "color": "#f7fafc",
                        "line": {"width": 1.5, "color": "#2d3748"},
                    },
                    hoverinfo="text",
                    showlegend=False,
                ),
                row=i,
                col=j,
            )
            columns = sorted({x for x, _ in places.values()})
            fig.update_xaxes(
                title_text="forward pass",
                tickvals=columns,
                ticktext=[_column_name(x, columns[-1]) for x in columns],
                showgrid=False,
                zeroline=False,
                row=i,
                col=j,
            )
            rows_y = sorted({y for _, y in places.values()})
            fig.update_yaxes(
                title_text="head",
                tickvals=rows_y,
                ticktext=[f"H{y - 1:g}" if y > 0 else "" for y in rows_y],
                showgrid=False,
                zeroline=False,
                row=i,
                col=j,
            )
    fig.update_layout(
        height=360 * max(1, len(gammas)) + 60,
        width=max(560, 480 * len(exps)),
        plot_bgcolor="white",
        title=f"Strongest paths (top {top} by |normalized effect|)<br><sup>width and label: "
        "normalized effect; blue restores the clean answer, red pushes away; into a head: "
        "query from below, key level, value from above</sup>",
    )
    return fig


def edges_over_training(table: pd.DataFrame, top: int = 2) -> go.Figure:
    """Normalized effect, over the analysed checkpoints, of the `top` strongest paths of each
    init scale at its last step; one panel per experiment (log step axis)."""

    def named(t: pd.DataFrame) -> pd.DataFrame:
        return t.assign(patch=t.sender + " -> " + t.receiver)

    return lines_over_training(named(table[table.position < 0]), named(strongest_edges(table, top)))
