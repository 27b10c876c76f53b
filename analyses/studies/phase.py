"""The phase-diagram read-outs of a sweep's results table: which value, which rows, the grid.

Mixture runs are read by the signed area between the reasoning and memory accuracy curves,
composite runs by the inferential fraction on the held-out (4,3) pair, formal-language runs
by the rule-extrapolation score at their best validation step.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

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


def phase_grid(table: pd.DataFrame, value: str, seed=None, rows: str = "n_layers") -> pd.DataFrame:
    """`rows` (default n_layers) x gamma (columns) of `value` for one seed (None: mean over
    seeds), averaged over any other swept option; unfinished runs count as missing."""
    sub = table if seed is None else table[table.seed == seed]
    values = pd.to_numeric(sub[value], errors="coerce") if value in sub else float("nan")
    return (
        sub.assign(v=values)
        .groupby([rows, "gamma"])
        .v.mean()
        .unstack("gamma")
        .sort_index()
        .sort_index(axis=1)
    )
