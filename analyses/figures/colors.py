"""The colours figures share: per evaluation group, per init scale, per token role."""

from __future__ import annotations

import pandas as pd

GROUP_COLORS = {
    "reasoning": "#1f77b4",
    "reasoning_test": "#17becf",
    "memory": "#d62728",
    "seen": "#1f77b4",
    "seen_test": "#17becf",
    "twist": "#d62728",
    "held_out": "#9467bd",
    "train": "#7f7f7f",
}
GAMMA_COLORS = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b"]
ROLE_COLORS = {
    "key": "#7f7f7f",
    "memory_anchor": "#d62728",
    "reasoning_anchor": "#1f77b4",
    "anchor": "#1f77b4",
}


def gammas_of(table: pd.DataFrame) -> list[float]:
    """The table's init scales, smallest first."""
    return sorted(table.gamma.unique())


def gamma_color(gammas: list[float], gamma: float) -> str:
    """The colour of `gamma` among `gammas`."""
    return GAMMA_COLORS[gammas.index(gamma) % len(GAMMA_COLORS)]
