"""Text labels of figures and tables: token positions, config values, patched components."""

from __future__ import annotations

import numpy as np

from initlens.probes.corruptions import PatchPairs


def position_labels(
    pairs: PatchPairs, seq: int, names: tuple[str, ...] = ("key", "a1", "a2")
) -> list[str]:
    """The task's names of the key, a1 and a2 positions (`Task.position_names`) where
    every pair puts them at the same positions, else numbers."""
    labels = [str(i) for i in range(seq)]
    key_pos = np.unique(pairs.meta["key_pos"])
    if len(key_pos) == 1:
        k = int(key_pos[0])
        labels = ["noise"] * seq
        labels[k : k + 3] = list(names)
    return labels


def value_text(value) -> str:
    """A config value as text: 0.3, 21-60 (a pair), 11-13+13-11 (pairs)."""
    if isinstance(value, tuple):
        nested = bool(value) and isinstance(value[0], tuple)
        return ("+" if nested else "-").join(value_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def component_label(row) -> str:
    """'head L1 H0 @a2' style name of one patch."""
    name = {"z": "head"}.get(row.component, row.component)
    head = f" H{int(row.head)}" if row.head >= 0 else ""
    return f"{name} L{int(row.layer)}{head} @{row.token}"


def step_positions(steps) -> dict[int, float]:
    """Where each checkpoint step sits on a log step axis: itself, and init (step 0, which
    a log axis cannot show) half the first positive step to its left."""
    steps = sorted({int(s) for s in steps})
    positive = [s for s in steps if s > 0]
    init = positive[0] / 2 if positive else 1.0
    return {s: float(s) if s > 0 else init for s in steps}


def step_axis(steps) -> dict:
    """Plotly x-axis settings for `step_positions`: a log axis titled "step (log scale)"
    with ticks at the decades (and 2x, 5x within a span of two decades or less) and at
    init, labelled "init". Checkpoints are log-spaced, so every figure of them uses it."""
    where = step_positions(steps)
    lo, hi = min(where.values()), max(where.values())
    span = np.log10(hi) - np.log10(lo)
    mantissas = (1, 2, 5) if span <= 2 else (1,)
    ticks = [
        m * 10**e
        for e in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
        for m in mantissas
        if lo * 1.3 <= m * 10**e <= hi * 1.05
    ]
    vals, text = [float(v) for v in ticks], [f"{v:g}" for v in ticks]
    if 0 in where:
        vals, text = [where[0], *vals], ["init", *text]
    pad = max(span, 1) * 0.04
    return dict(
        type="log",
        title_text="step (log scale)",
        tickmode="array",
        tickvals=vals,
        ticktext=text,
        range=[float(np.log10(lo) - pad), float(np.log10(hi) + pad)],
    )
