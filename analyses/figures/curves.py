"""Plotly figures of runs' learning curves. Each function returns a figure; `export` writes them."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from initlens.analyses.figures.colors import GAMMA_COLORS, GROUP_COLORS
from initlens.analyses.figures.labels import value_text
from initlens.analyses.studies.preference import curves, relative_loss_gap
from initlens.models.run import Run


def _label(run: Run, seed: bool = False) -> str:
    """A run's name in a figure: its gamma, and its seed when runs differ in seed."""
    text = f"gamma = {run.config.model.gamma:g}"
    return f"{text}, seed {run.config.train.seed}" if seed else text


def _seeds_differ(runs: list[Run]) -> bool:
    return len({r.config.train.seed for r in runs}) > 1


def group_curves(runs: list[Run], metric: str = "accuracy") -> go.Figure:
    """One panel per run (gamma, and seed), one line per evaluation group, `metric` over
    steps."""
    seed = _seeds_differ(runs)
    fig = make_subplots(
        rows=1, cols=len(runs), shared_yaxes=True, subplot_titles=[_label(r, seed) for r in runs]
    )
    seen = set()
    for col, run in enumerate(runs, start=1):
        table = curves(run.metrics(), metric)
        for group in table.columns:
            if group == "train" and metric == "accuracy":
                continue
            fig.add_trace(
                go.Scatter(
                    x=table.index,
                    y=table[group],
                    mode="lines",
                    name=group,
                    legendgroup=group,
                    showlegend=group not in seen,
                    line=dict(color=GROUP_COLORS.get(group)),
                    hovertemplate=f"{group}<br>step %{{x}}<br>{metric} %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            seen.add(group)
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    if metric == "loss":
        fig.update_yaxes(type="log")
    fig.update_layout(
        height=380, margin=dict(t=50, b=40, l=60, r=20), legend=dict(orientation="h", y=-0.2)
    )
    return fig


def loss_gap_curves(runs: list[Run]) -> go.Figure:
    """The relative loss gap (L_mem - L_reason) / L_reason over steps, one line per run."""
    fig = go.Figure()
    seed = _seeds_differ(runs)
    for i, run in enumerate(runs):
        task = run.config.task
        gap = relative_loss_gap(run.metrics(), task.reasoning_group, task.memory_group)
        fig.add_trace(
            go.Scatter(
                x=gap.index,
                y=gap.values,
                mode="lines",
                name=_label(run, seed),
                line=dict(color=GAMMA_COLORS[i % len(GAMMA_COLORS)]),
                hovertemplate="step %{x}<br>gap %{y:.3f}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line=dict(color="#999", dash="dot"))
    fig.update_layout(
        height=360,
        xaxis_title="step",
        yaxis_title="(L_memory - L_reasoning) / L_reasoning",
        margin=dict(t=30, b=40, l=60, r=20),
    )
    return fig


def steps_to_threshold(table: pd.DataFrame, threshold: int = 90, by: str = "gamma") -> go.Figure:
    """Grouped bars: step at which each group first reached the threshold, per value of
    `by` (a column: gamma, or e.g. normalization in a sweep's results table)."""
    fig = go.Figure()
    prefix = f"step_to_{threshold}_"
    labels = [f"{by} = {value_text(v)}" for v in table[by]]
    if "seed" in table and table.seed.nunique() > 1 and by != "seed":  # one bar per run
        labels = [f"{label}, seed {s}" for label, s in zip(labels, table.seed)]
    for col in [c for c in table.columns if c.startswith(prefix)]:
        group = col[len(prefix) :]
        reached = table[col].notna()
        fig.add_trace(
            go.Bar(
                x=labels,
                y=table[col].fillna(table.steps),
                name=group,
                marker_color=GROUP_COLORS.get(group),
                marker_pattern_shape=["" if r else "/" for r in reached],
                text=[str(int(v)) if r else "never" for v, r in zip(table[col].fillna(0), reached)],
                hovertemplate=f"{group}: %{{text}}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        height=360,
        yaxis_title=f"step to {threshold}% accuracy",
        xaxis_title="init scale (gamma)" if by == "gamma" else by,
        margin=dict(t=30, b=50, l=60, r=20),
    )
    return fig


def task_metric_curves(runs: list[Run], metrics: tuple[str, ...]) -> go.Figure:
    """Task-specific read-outs over steps (e.g. inferential vs symmetric fraction on the
    composite task's held-out pair): one colour per gamma, one dash style per metric."""
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    seed = _seeds_differ(runs)
    for i, run in enumerate(runs):
        df = run.metrics()
        for j, metric in enumerate(metrics):
            sub = df[df.metric == metric].sort_values("step")
            if sub.empty:
                continue
            name = f"{metric} ({sub.group.iloc[0]}), {_label(run, seed)}"
            fig.add_trace(
                go.Scatter(
                    x=sub.step,
                    y=sub.value,
                    mode="lines",
                    name=name,
                    line=dict(
                        color=GAMMA_COLORS[i % len(GAMMA_COLORS)], dash=dashes[j % len(dashes)]
                    ),
                    hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.3f}}<extra></extra>",
                )
            )
    fig.update_layout(
        height=360,
        xaxis_title="step",
        yaxis_title="fraction",
        yaxis_range=[0, 1.02],
        margin=dict(t=30, b=40, l=60, r=20),
    )
    return fig


def sweep_curves(runs: list[Run], labels: list[str], metric: str = "accuracy") -> go.Figure:
    """Every run's reasoning group (solid) and memory group (dotted) over steps, one colour
    per run: e.g. when test accuracy rises under each LayerNorm placement."""
    fig = go.Figure()
    for i, (run, label) in enumerate(zip(runs, labels)):
        task = run.config.task
        table = curves(run.metrics(), metric)
        color = (
            GAMMA_COLORS[i % len(GAMMA_COLORS)]
            if len(runs) <= len(GAMMA_COLORS)
            else f"hsl({int(360 * i / len(runs))},65%,45%)"
        )
        for group, dash in ((task.reasoning_group, "solid"), (task.memory_group, "dot")):
            if group in table:
                fig.add_trace(
                    go.Scatter(
                        x=table.index,
                        y=table[group],
                        mode="lines",
                        name=f"{label}: {group}",
                        legendgroup=label,
                        line=dict(color=color, dash=dash),
                        hovertemplate=f"{label}<br>{group}<br>step %{{x}}<br>{metric} "
                        f"%{{y:.3f}}<extra></extra>",
                    )
                )
    fig.update_layout(
        height=420, xaxis_title="step", yaxis_title=metric, margin=dict(t=30, b=40, l=60, r=20)
    )
    if metric == "loss":
        fig.update_yaxes(type="log")
    return fig
