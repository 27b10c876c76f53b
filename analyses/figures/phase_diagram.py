"""The phase-diagram figure of a sweep: init scale (gamma) x depth, coloured by the preference.

Mixture runs are coloured by the signed area between the reasoning and memory accuracy
curves (> 0: reasoning learned first), composite runs by the inferential fraction on the
held-out (4,3) pair (docs/SCIENCE.md section 2.2), formal-language runs by the rule-extrapolation
score at their best validation step (section 4). One panel per seed, then their mean. The rows
are the depths, or another swept option when depth is fixed (e.g. weight decay).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from initlens.analyses.studies.phase import default_value, phase_grid

VALUES = {
    "signed_area": ("reasoning - memory accuracy area", -1.0, 1.0, "RdBu"),
    "inferential_fraction": ("inferential fraction on (4,3)", 0.0, 1.0, "Viridis"),
    "final_acc_reasoning_test": ("held-out reasoning accuracy", 0.0, 1.0, "Viridis"),
    "rule_extrapolation_at_best": (
        "rule extrapolation (best validation step)",
        0.0,
        1.0,
        "Viridis",
    ),
}


def phase_diagram(
    table: pd.DataFrame, value: str | None = None, rows: str = "n_layers"
) -> go.Figure:
    """Heatmaps of gamma (x) x `rows` (y; default depth) coloured by `value` (default:
    `default_value`), one per seed and one of their mean, from `results_table`."""
    value = value or default_value(table)
    title, zmin, zmax, scale = VALUES.get(value, (value, None, None, "Viridis"))
    panels = [(s, f"seed {s}") for s in sorted(table.seed.unique())]
    if len(panels) > 1:
        panels.append((None, f"mean over {len(panels)} seeds"))
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        shared_yaxes=True,
        subplot_titles=[label for _, label in panels],
        horizontal_spacing=0.04,
    )
    for col, (seed, label) in enumerate(panels, start=1):
        grid = phase_grid(table, value, seed, rows)
        fig.add_trace(
            go.Heatmap(
                z=grid.to_numpy(dtype=float),
                x=[f"{g:g}" for g in grid.columns],
                y=[_row_label(rows, v) for v in grid.index],
                coloraxis="coloraxis",
                texttemplate="%{z:.2f}",
                xgap=1,
                ygap=1,
                name=label,
                hovertemplate=f"gamma %{{x}}, %{{y}}<br>{label}<br>{value} %{{z:.3f}}"
                "<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(
            title_text="init scale gamma (std = d_in^-gamma)", type="category", row=1, col=col
        )
    fig.update_yaxes(
        title_text="depth" if rows == "n_layers" else rows, type="category", row=1, col=1
    )
    fig.update_layout(
        title=f"Phase diagram: {title}",
        height=360,
        width=max(480, 330 * len(panels)),
        coloraxis=dict(
            colorscale=scale,
            cmin=zmin,
            cmax=zmax,
            cmid=0 if zmin == -1 else None,
            colorbar=dict(title=value),
        ),
    )
    return fig


def _row_label(rows: str, v) -> str:
    if rows == "n_layers":
        return f"{int(v)} layer{'s' * (v != 1)}"
    return f"{v:g}" if isinstance(v, float) else str(v)
