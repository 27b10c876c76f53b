"""The circuit study: which paths between layers carry each task type, at each init scale.

For each of the task's patching experiments (a key corruption on reasoning prompts and on
memorization prompts), exact path patching of every sender x receiver pair
(probes/paths.py) at the analysed checkpoints, its edge-attribution estimate, and their
agreement; then the strongest edges per init scale and task type.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from initlens.analyses.studies.localization import MIN_GAP, TOP_K_MIN, Experiment, per_experiment
from initlens.analyses.studies.over_training import last_steps
from initlens.models.progress import Progress
from initlens.models.run import Run
from initlens.probes.attribution import agreement
from initlens.probes.corruptions import make_pairs
from initlens.probes.patching import logit_diff
from initlens.probes.paths import edge_attribution, path_patch

EDGE_COLUMNS = (
    "run",
    "gamma",
    "step",
    "stage",
    "experiment",
    "sender",
    "receiver",
    "position",
    "value",
    "normalized",
    "attribution",
    "attribution_normalized",
    "clean",
    "corrupted",
)
EDGE_AGREEMENT_COLUMNS = (
    "run",
    "gamma",
    "step",
    "stage",
    "experiment",
    "n_paths",
    "pearson",
    "spearman",
    "top_edge_match",
    "top_k_overlap",
    "clean",
    "corrupted",
)


def not_applicable(run: Run) -> str | None:
    """Why path patching does not apply to this run's model, or None when it does."""
    model = run.config.model
    if model.architecture != "transformer":
        return "the Emb-MLP has no attention heads or layers between which paths run"
    if model.normalization == "post":
        return (
            "post-LN models normalize the residual stream after each sublayer, so it is "
            "not a sum of the nodes' outputs and a path's effect is not defined"
        )
    return None


def trace(
    model,
    task,
    experiment: Experiment,
    n: int = 256,
    seed: int = 0,
    data_seed: int = 0,
    per_position: bool = False,
    top_k: int = 5,
    **labels,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact path patching and edge attribution of every path for one experiment (denoising,
    logit difference of the clean and corrupted answers): a tidy edge table and a one-row
    agreement table."""
    device = next(model.parameters()).device
    pairs = make_pairs(
        task, experiment.corruption, n=n, seed=seed, data_seed=data_seed, source=experiment.source
    ).to(device)
    metric = logit_diff(pairs.clean_label, pairs.corrupted_label)
    exact = path_patch(model, pairs.clean, pairs.corrupted, metric, per_position=per_position)
    estimate = edge_attribution(
        model, pairs.clean, pairs.corrupted, metric, per_position=per_position
    )
    gap = exact.clean - exact.corrupted
    ok = abs(gap) >= MIN_GAP  # below it the normalized effect is noise over noise
    table = exact.table(**labels, experiment=experiment.name)
    table["normalized"] = (table.value - exact.corrupted) / gap if ok else float("nan")
    table["attribution"] = estimate.table().value.to_numpy()
    table["attribution_normalized"] = (
        (table.attribution - exact.corrupted) / gap if ok else float("nan")
    )
    table["clean"], table["corrupted"] = exact.clean, exact.corrupted
    k = min(top_k, len(table))
    agree = agreement(exact, estimate, k=k)
    effect, guess = (
        (table.value - exact.corrupted).abs(),
        (table.attribution - exact.corrupted).abs(),
    )
    row = {
        **labels,
        "experiment": experiment.name,
        "n_paths": agree["n_patches"],
        "pearson": agree["pearson"],
        "spearman": agree["spearman"],
        "top_edge_match": float(effect.idxmax() == guess.idxmax()),
        # With few paths the top k are most of them (chance alone: k / n).
        "top_k_overlap": agree[f"top{k}_overlap"]
        if agree["n_patches"] >= TOP_K_MIN * k
        else float("nan"),
        "clean": exact.clean,
        "corrupted": exact.corrupted,
    }
    return table, pd.DataFrame([row])


def trace_run(
    run: Run,
    steps: dict[int, str] | Sequence[int] | None = None,
    n: int = 256,
    seed: int = 0,
    per_position: bool = False,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`trace` for every experiment of the run's task at each step (default: the
    `stage_steps`), with run, gamma, step and stage columns; empty tables when path
    patching does not apply (`not_applicable`) or the task has no corruptions."""
    if not_applicable(run):
        return pd.DataFrame(), pd.DataFrame()
    return per_experiment(
        run,
        steps,
        lambda model, experiment, data_seed, **labels: trace(
            model, run.config.task, experiment, n, seed, data_seed, per_position, **labels
        ),
        "tracing paths",
        progress,
    )


def strongest_edges(table: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """The `top` paths by |normalized effect| per init scale (run) and experiment at each
    run's last analysed step (all sender positions together)."""
    rows = last_steps(table)
    rows = rows[(rows.position < 0) & rows.normalized.notna()]
    rows = rows.assign(effect=rows.normalized.abs())
    keys = ["gamma", "run", "experiment"]
    return (
        rows.sort_values("effect", ascending=False)
        .groupby(keys, sort=False)
        .head(top)
        .sort_values(keys + ["effect"], ascending=[True, True, True, False])
        .drop(columns="effect")
    )


def edge_sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per init scale and experiment at the last step: its strongest path and
    how much of the clean-corrupted gap it restores on its own (or why none is ranked)."""
    top = strongest_edges(table, top=2)
    out = []
    for (gamma, exp), group in last_steps(table).groupby(["gamma", "experiment"], sort=False):
        best = top[(top.gamma == gamma) & (top.experiment == exp)]
        where = f"gamma {gamma:g}, {exp} prompts"
        if best.empty:
            gap = group.clean.iloc[0] - group.corrupted.iloc[0]
            out.append(
                f"{where}: the clean and corrupted runs differ by {gap:.3f} in logit "
                f"difference, below {MIN_GAP:g}: no path is ranked."
            )
            continue
        first = best.iloc[0]
        text = (
            f"{where}: the strongest path is {first.sender} -> {first.receiver}, restoring "
            f"{first.normalized:.0%} of the gap on its own"
        )
        if len(best) > 1:
            second = best.iloc[1]
            text += f" (next: {second.sender} -> {second.receiver}, {second.normalized:.0%})"
        out.append(text + ".")
    return out
