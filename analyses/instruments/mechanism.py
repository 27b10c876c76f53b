"""Mechanism: each published mechanistic claim as a number per checkpoint, judged per init
scale against a stated threshold (docs/SCIENCE.md sections 1.5 and 2.5).

The numbers come from `probes.mechanism.mechanism_metrics`. The thresholds below are ours,
not the papers' (the papers show figures, not cut-offs): each is chosen so that a
hand-built model with the claimed structure clears it by a wide margin and a random one
does not; tests/test_mechanism.py checks both directions.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import torch

from initlens.analyses.figures.page import Report, table_html
from initlens.analyses.instruments.registry import Context, Instrument, Measured
from initlens.analyses.studies.over_training import eval_rows, last_steps, over_training
from initlens.models.run import Run
from initlens.probes.mechanism import (
    CONDENSATION_COSINE,
    LOW_RANK_K,
    MECHANISM_COLUMNS,
    mechanism_metrics,
    unmeasured,
)

TABLE_COLUMNS = ("run", "gamma", "step", *MECHANISM_COLUMNS)
VERDICT_COLUMNS = ("claim", "statement", "gamma", "runs", "number", "threshold", "verdict")

# Thresholds (ours; see the module docstring). An ordered arc of anchors gives -1 and 1;
# random embeddings give a Spearman near 0.
ORDERED_SPEARMAN = -0.7  # order_spearman at most this: cosine falls off with distance
PC1_ORDERED = 0.9  # |Spearman(PC1, value)| at least this: PCA orders the anchors
# Memory anchors' mean cosine above the reasoning anchors' by at least this (random
# embeddings: 0 on average, but each pair's cosine spreads by about 1/sqrt(d_model), so
# with few anchors a random init can clear it: read it with the change from init).
TOGETHER_GAP = 0.2
# Mean total-variation distance from the causal average at most this (one-hot attention
# gives 1 - 1/(q+1), 0.5 or more; the tests' tiny model, d_model 16: about 0.25 at a
# gamma = 0.5 init, after 30 steps 0.52 at gamma 0.3 and 0.10 at gamma 0.8).
AVERAGING_TV = 0.1
OV_DOMINANCE = 2.0  # s1 / s2 of W_V W_O at least this (rank 1: inf; random: 1.2-1.8)
OV_ALIGNED = 0.5  # |cosine| of its input direction with the mean reasoning anchor, at least
OV_ORTHOGONAL = 0.2  # ... and with the mean memory anchor, at most (random, d=64: ~0.1)
# Share of the embeddings' variance in their top LOW_RANK_K components, at least this.
LOW_RANK_VARIANCE = 0.8
# Share of first-layer W_Q neurons in a group (|cosine| > CONDENSATION_COSINE, the paper's
# grouping threshold) at least this: most neurons have condensed.
CONDENSED_FRACTION = 0.5
# Centered cosine among last-token vectors of rows with the same target, at least this
# (parallel: 1; vectors that ignore the target: about 0).
SAME_TARGET_PARALLEL = 0.8


@dataclass(frozen=True)
class Condition:
    """One threshold on one metric: value <= threshold (at_most) or value >= threshold."""

    metric: str
    threshold: float
    at_most: bool

    def holds(self, value: float) -> bool:
        """Whether `value` meets the threshold."""
        return bool(value <= self.threshold if self.at_most else value >= self.threshold)

    def text(self) -> str:
        """The threshold as the report states it."""
        return f"{self.metric} {'<=' if self.at_most else '>='} {self.threshold:g}"


@dataclass(frozen=True)
class MechanismClaim:
    """A published claim: what it says, the conditions that make it hold, and the metrics
    shown beside them. Its first condition's metric is the one compared across init scales
    (smaller at small init when that condition is at_most, larger otherwise)."""

    key: str
    statement: str
    conditions: tuple[Condition, ...]
    shown: tuple[str, ...] = ()


CLAIMS = (
    MechanismClaim(
        "ordered",
        "Mixture task: reasoning-anchor embeddings are ordered by value (cosine falls off "
        "with numeric distance; the first principal component orders them)",
        (
            Condition("order_spearman", ORDERED_SPEARMAN, at_most=True),
            Condition("pc1_spearman", PC1_ORDERED, at_most=False),
        ),
    ),
    MechanismClaim(
        "memory_together",
        "Mixture task: memory-anchor embeddings move together and stay alike, reasoning "
        "anchors separate (mean pairwise cosine, memory minus reasoning)",
        (Condition("together_gap", TOGETHER_GAP, at_most=False),),
        ("memory_cosine_change", "reasoning_cosine_change"),
    ),
    MechanismClaim(
        "attention_averages",
        "The first attention layer is a causal averaging operator (mean total-variation "
        "distance of its rows, positions >= 1, from the uniform average over 0..q)",
        (Condition("averaging_distance", AVERAGING_TV, at_most=True),),
    ),
    MechanismClaim(
        "value_direction",
        "Mixture task: the first layer's W_V W_O has one dominant singular direction, "
        "reading the mean reasoning-anchor embedding and nearly orthogonal to the memory "
        "one (dominant head)",
        (
            Condition("ov_top_ratio", OV_DOMINANCE, at_most=False),
            Condition("ov_read_reasoning", OV_ALIGNED, at_most=False),
            Condition("ov_read_memory", OV_ORTHOGONAL, at_most=True),
        ),
    ),
    MechanismClaim(
        "embedding_low_rank",
        f"The token embedding matrix is low-rank (share of variance in the top "
        f"{LOW_RANK_K} principal components)",
        (Condition(f"top{LOW_RANK_K}_variance", LOW_RANK_VARIANCE, at_most=False),),
        ("effective_rank",),
    ),
    MechanismClaim(
        "wq_condensed",
        f"Composite task: first-layer W_Q neurons condense (share of neurons with another "
        f"at |cosine| > {CONDENSATION_COSINE:g})",
        (Condition("condensed_fraction", CONDENSED_FRACTION, at_most=False),),
        ("n_directions",),
    ),
    MechanismClaim(
        "same_target_parallel",
        "Composite task: the last layer's last-token vectors are nearly parallel for rows "
        "with the same target (mean centered cosine; other targets shown beside)",
        (Condition("same_target_cosine", SAME_TARGET_PARALLEL, at_most=False),),
        ("other_target_cosine",),
    ),
)


def measure(context: Context) -> Measured:
    """`mechanism_metrics` at every checkpoint, with changes from the first checkpoint.
    Claims that do not apply (another task, the Emb-MLP) are left out of the table, and the
    section says why, once for all runs, rather than a note per run."""
    run, settings = context.run, context.settings
    task = run.config.task
    init = run.load_model(run.checkpoint_steps()[0], "cpu")
    rows = eval_rows(run, settings.geometry_rows, settings.seed)
    tokens, labels = torch.as_tensor(rows["tokens"]), torch.as_tensor(rows["label"])
    table = over_training(
        [run],
        lambda model, run, step: mechanism_metrics(model, task, tokens, init, labels),
        "all",
        progress=context.progress,
    )
    return Measured({"mechanism": table})


def _number(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.3g}"


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """One value per run, gamma and metric at each run's last step (head summaries)."""
    last = last_steps(table)
    summaries = last[last["head"].isna()]
    return summaries.groupby(["run", "gamma", "metric"]).value.mean().unstack("metric")


def _compare(summary: pd.DataFrame, first: Condition, small: float, large: float) -> dict:
    """The smallest init against the largest on `first`'s metric (means over runs)."""
    at = {g: summary.xs(g, level="gamma")[first.metric] for g in (small, large)}
    a, b = at[small].mean(), at[large].mean()
    if pd.isna(a) or pd.isna(b):
        verdict = "not measured"
    else:
        verdict = "holds" if (a < b if first.at_most else a > b) else "does not hold"
    return {
        "gamma": f"{small:g} vs {large:g}",
        "runs": len(at[small]) + len(at[large]),
        "number": f"{first.metric} = {_number(a)} vs {_number(b)}",
        "threshold": f"{first.metric} {'lower' if first.at_most else 'higher'} at small init "
        "(the larger gamma)",
        "verdict": verdict,
    }


def judge(table: pd.DataFrame) -> pd.DataFrame:
    """Per claim and init scale, at each run's last checkpoint: the numbers (means over
    runs), the threshold and whether it holds (in a strict majority of the runs); and per
    claim, the smallest init (largest gamma) against the largest on its first metric."""
    if table.empty:
        return pd.DataFrame(columns=list(VERDICT_COLUMNS))
    summary = _summary(table)
    gammas = sorted(summary.index.get_level_values("gamma").unique())
    rows = []
    for claim in CLAIMS:
        metrics = [c.metric for c in claim.conditions]
        if not set(metrics) <= set(summary.columns):
            continue  # not measured on these runs (the section says why)
        shown = [m for m in (*metrics, *claim.shown) if m in summary.columns]
        base = {"claim": claim.key, "statement": claim.statement}
        for gamma in gammas:
            runs = summary.xs(gamma, level="gamma")
            measured = runs[metrics].notna().all(axis=1)
            held = int(
                sum(
                    all(c.holds(r[c.metric]) for c in claim.conditions)
                    for _, r in runs[measured].iterrows()
                )
            )
            n = int(measured.sum())
            verdict = (
                "not measured"
                if n == 0
                else ("holds" if 2 * held > n else "does not hold")
                + (f" ({held} of {n} runs)" if n > 1 else "")
            )
            means = runs[shown].mean()
            rows.append(
                {
                    **base,
                    "gamma": f"{gamma:g}",
                    "runs": len(runs),
                    "number": "; ".join(f"{m} = {_number(means[m])}" for m in shown),
                    "threshold": " and ".join(c.text() for c in claim.conditions),
                    "verdict": verdict,
                }
            )
        if len(gammas) > 1:
            rows.append({**base, **_compare(summary, claim.conditions[0], gammas[-1], gammas[0])})
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))


def _not_measured(runs: list[Run], measured: set[str]) -> dict[str, str]:
    """{claim: why} for the claims with no verdict (`unmeasured` on each run's model)."""
    reasons: dict[str, set[str]] = {c.key: set() for c in CLAIMS if c.key not in measured}
    for run in runs if reasons else []:
        for claim, why in unmeasured(run.load_model(device="cpu"), run.config.task).items():
            if claim in reasons:
                reasons[claim].add(why)
    return {c: "; ".join(sorted(why)) or "no value at the last step" for c, why in reasons.items()}


def section(doc: Report, runs: list[Run], tables: Mapping[str, pd.DataFrame]) -> None:
    """Whether each published mechanistic claim holds, per init scale."""
    table = tables.get("mechanism", pd.DataFrame())
    if table.empty:
        return
    verdicts = judge(table)
    statements = verdicts.drop_duplicates("claim")
    doc.add(
        "<h2>Does the published mechanism hold?</h2>",
        "<ul>"
        + "".join(
            f"<li><b>{html.escape(r.claim)}</b>: {html.escape(r.statement)}</li>"
            for r in statements.itertuples()
        )
        + "</ul>",
        table_html(verdicts.drop(columns="statement")),
        '<p class="caption">At each run\'s last checkpoint, one line per claim and init '
        "scale (numbers: means over the runs at that gamma; a claim holds when every "
        "threshold is met, in a strict majority of the runs), then the smallest init "
        "against the largest. The thresholds are InitLens's, not the papers' (see "
        "analyses/instruments/mechanism.py); claims about the first attention layer read "
        "layer 0, value_direction its dominant head.</p>",
    )
    missing = _not_measured(runs, set(verdicts.claim))
    if missing:
        doc.add(
            "<p>Not measured: "
            + "; ".join(f"{html.escape(c)} ({html.escape(why)})" for c, why in missing.items())
            + ".</p>"
        )
    key = [c.conditions[0].metric for c in CLAIMS]
    heads = table[table["head"].isna() & table.metric.isin(key)]
    ends = heads[
        (heads.step == heads.groupby("run").step.transform("min"))
        | (heads.step == heads.groupby("run").step.transform("max"))
    ]
    wide = ends.pivot_table(index=["gamma", "step"], columns="metric", values="value")
    doc.add(
        "<h3>Each claim's number at init and at the end</h3>",
        table_html(wide[[m for m in key if m in wide]].reset_index()),
        '<p class="caption">Means over runs at the first and the last checkpoint.</p>',
    )


INSTRUMENT = Instrument(
    name="mechanism",
    description="claim checks: a number per published mechanistic claim at every "
    "checkpoint, judged per init scale",
    needs=frozenset({"model", "weights", "activations", "checkpoints"}),
    tables={"mechanism": TABLE_COLUMNS},
    measure=measure,
    section=section,
)
