"""The phase diagram of a sweep: init scale (gamma) x depth, coloured by the preference.

Mixture runs are coloured by the signed area between the reasoning and memory accuracy
curves (> 0: reasoning learned first), composite runs by the inferential fraction on the
held-out (4,3) pair (REFERENCE section 1), formal-language runs by the rule-extrapolation
score at their best validation step (section 4). One panel per seed, then their mean. The rows
are the depths, or another swept option when depth is fixed (e.g. weight decay).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

VALUES = {"signed_area": ("reasoning - memory accuracy area", -1.0, 1.0, "RdBu"),
          "inferential_fraction": ("inferential fraction on (4,3)", 0.0, 1.0, "Viridis"),
          "final_acc_reasoning_test": ("held-out reasoning accuracy", 0.0, 1.0, "Viridis"),
          "rule_extrapolation_at_best": ("rule extrapolation (best validation step)", 0.0,
                                         1.0, "Viridis")}
HEADLINES = ("inferential_fraction", "rule_extrapolation_at_best")  # tasks' own read-outs


def default_value(table: pd.DataFrame) -> str:
    """The task's headline read-out when the table has one (composite: inferential_fraction;
    formal languages: rule_extrapolation_at_best), else signed_area."""
    return next((c for c in HEADLINES if c in table and table[c].notna().any()), "signed_area")


def rows_axis(table: pd.DataFrame, swept: Sequence[str] = ()) -> str:
    """The diagram's rows: n_layers when it varies, else the first other swept field that
    does, else n_layers."""
    for name in ["n_layers", *swept]:
        if name not in ("gamma", "seed") and name in table and table[name].nunique() > 1:
            return name
    return "n_layers"


def phase_grid(table: pd.DataFrame, value: str, seed=None, rows: str = "n_layers"
               ) -> pd.DataFrame:
    """`rows` (default n_layers) x gamma (columns) of `value` for one seed (None: mean over
    seeds), averaged over any other swept option; unfinished runs count as missing."""
    sub = table if seed is None else table[table.seed == seed]
    values = pd.to_numeric(sub[value], errors="coerce") if value in sub else float("nan")
    return (sub.assign(v=values).groupby([rows, "gamma"]).v.mean()
            .unstack("gamma").sort_index().sort_index(axis=1))


def phase_diagram(table: pd.DataFrame, value: str | None = None, rows: str = "n_layers"
                  ) -> go.Figure:
    """Heatmaps of gamma (x) x `rows` (y; default depth) coloured by `value` (default:
    `default_value`), one per seed and one of their mean, from `results_table`."""
    value = value or default_value(table)
    title, zmin, zmax, scale = VALUES.get(value, (value, None, None, "Viridis"))
    panels = [(s, f"seed {s}") for s in sorted(table.seed.unique())]
    if len(panels) > 1:
        panels.append((None, f"mean over {len(panels)} seeds"))
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                        subplot_titles=[label for _, label in panels], horizontal_spacing=0.04)
    for col, (seed, label) in enumerate(panels, start=1):
        grid = phase_grid(table, value, seed, rows)
        fig.add_trace(go.Heatmap(
            z=grid.to_numpy(dtype=float), x=[f"{g:g}" for g in grid.columns],
            y=[_row_label(rows, v) for v in grid.index],
            coloraxis="coloraxis", texttemplate="%{z:.2f}", xgap=1, ygap=1, name=label,
            hovertemplate=f"gamma %{{x}}, %{{y}}<br>{label}<br>{value} %{{z:.3f}}"
                          "<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="init scale gamma (std = d_in^-gamma)", type="category",
                         row=1, col=col)
    fig.update_yaxes(title_text="depth" if rows == "n_layers" else rows, type="category",
                     row=1, col=1)
    fig.update_layout(
        title=f"Phase diagram: {title}", height=360, width=max(480, 330 * len(panels)),
        coloraxis=dict(colorscale=scale, cmin=zmin, cmax=zmax, cmid=0 if zmin == -1 else None,
                       colorbar=dict(title=value)))
    return fig


def _row_label(rows: str, v) -> str:
    if rows == "n_layers":
        return f"{int(v)} layer{'s' * (v != 1)}"
    return f"{v:g}" if isinstance(v, float) else str(v)
