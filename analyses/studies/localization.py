"""The localization study: which components carry each task type, at each init scale.

For one run at a few telling checkpoints (init, early, where each task type first reaches
90%, the end), exact activation patching of a key corruption on reasoning prompts and on
memorization prompts (on `composite` also the held-out (4,3) against the twisted (3,4)),
the attribution-patching estimate of the same patches and its agreement with exact
patching, then the components ranked by their effect, compared between task types and
between init scales, and said in sentences that quote the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from initlens.analyses.figures.labels import component_label, position_labels
from initlens.analyses.studies.over_training import (  # stage_steps: imported from here too
    last_steps,
    named_steps,
    stage_steps,  # noqa: F401
)
from initlens.models.progress import Progress, tracked
from initlens.models.run import Run
from initlens.probes.attribution import agreement, attribution_patch
from initlens.probes.corruptions import make_pairs
from initlens.probes.patching import MLP_COMPONENTS, activation_patch, logit_diff

# Components whose patches are ranked: the outputs that write into the residual stream
# (per position), and each head's output. The residual stream itself is patched and drawn
# (it shows where the information sits) but not ranked: restoring it restores everything.
RANKED = ("attn_out", "mlp_out", "z")
LOCALIZED = ("resid_pre",) + RANKED
# Below this clean-corrupted gap (in logits) the normalized score is noise over noise.
MIN_GAP = 0.1
# The top-k overlap is reported only over at least TOP_K_MIN * k patches: over fewer, the
# top k are most of the patches and any two rankings overlap (chance alone gives k / n).
TOP_K_MIN = 4
# In a model whose attention layers have one head, that head's patch is the attention
# output's (the head's output through W_O, plus a bias both runs share): rankings list it
# once, as the attention output, named with this suffix.
ONLY_HEAD = " (= its only head)"


@dataclass(frozen=True)
class Experiment:
    """One patching experiment: clean rows of `source`, corrupted by `corruption`."""

    name: str  # what the report calls it: the task type (group) it probes
    corruption: str
    source: str = "reasoning"


def experiments(task) -> list[Experiment]:
    """The task's localization experiments (`Task.patch_experiments`): key corruption on
    each task type, plus (4,3) vs (3,4) on composite; none for tasks without corruptions."""
    return [Experiment(*e) for e in task.patch_experiments()]


def localize(
    model,
    task,
    experiment: Experiment,
    components: Sequence[str] = LOCALIZED,
    n: int = 256,
    seed: int = 0,
    data_seed: int = 0,
    top_k: int = 5,
    **labels,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact and attribution patching of `components` for one experiment (denoising, logit
    difference between the clean and the corrupted answer): a tidy table (value,
    normalized, attribution, attribution_normalized) and one agreement row per component."""
    device = next(model.parameters()).device
    pairs = make_pairs(
        task, experiment.corruption, n=n, seed=seed, data_seed=data_seed, source=experiment.source
    ).to(device)
    metric = logit_diff(pairs.clean_label, pairs.corrupted_label)
    tokens = position_labels(pairs, pairs.clean.shape[1], task.position_names)
    tables, agreements = [], []
    for component in components:
        if component in MLP_COMPONENTS and model.cfg.attn_only:
            continue
        exact = activation_patch(model, pairs.clean, pairs.corrupted, metric, component)
        estimate = attribution_patch(model, pairs.clean, pairs.corrupted, metric, component)
        gap = exact.clean - exact.corrupted
        ok = abs(gap) >= MIN_GAP
        table = exact.table(**labels, experiment=experiment.name, corruption=experiment.corruption)
        table["attribution"] = estimate.values.flatten().tolist()
        table["normalized"] = exact.normalized().flatten().tolist() if ok else float("nan")
        table["attribution_normalized"] = (
            (table.attribution - exact.corrupted) / gap if ok else float("nan")
        )
        table["clean"], table["corrupted"] = exact.clean, exact.corrupted
        table["token"] = [tokens[p] if p >= 0 else "all" for p in table.position]
        tables.append(table)
        k = min(top_k, exact.values.numel())
        agree = agreement(exact, estimate, k=k)
        effect = (exact.values - exact.corrupted).flatten().abs()
        guess = (estimate.values - exact.corrupted).flatten().abs()
        error = (table.attribution_normalized - table.normalized).abs().mean()
        agreements.append(
            {
                **labels,
                "experiment": experiment.name,
                "component": component,
                "pearson": agree["pearson"],
                "spearman": agree["spearman"],
                # With few patches the top k are most of them (chance alone: k / n).
                "top_k_overlap": agree[f"top{k}_overlap"]
                if agree["n_patches"] >= TOP_K_MIN * k
                else float("nan"),
                "top_patch_match": float(int(effect.argmax()) == int(guess.argmax())),
                "mean_abs_error": float(error) if ok else float("nan"),
                "n_patches": agree["n_patches"],
                "clean": exact.clean,
                "corrupted": exact.corrupted,
            }
        )
    return pd.concat(tables, ignore_index=True), pd.DataFrame(agreements)


def localize_run(
    run: Run,
    steps: dict[int, str] | Sequence[int] | None = None,
    components: Sequence[str] = LOCALIZED,
    n: int = 256,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`localize` for every experiment of the run's task at each step (default: the
    `stage_steps`; a list of steps gets their stage names where they have one), with run,
    gamma, step and stage columns."""
    return per_experiment(
        run,
        steps,
        lambda model, experiment, data_seed, **labels: localize(
            model, run.config.task, experiment, components, n, seed, data_seed, **labels
        ),
        "localizing",
        progress,
    )


def per_experiment(run: Run, steps, measure, what: str, progress: Progress | None = None):
    """measure(model, experiment, data_seed, **labels) -> (table, agreement) for every
    experiment of the run's task at each of `steps` (`named_steps`), labels run, gamma, step
    and stage; the tables and the agreements stacked (empty tables when there are none)."""
    steps = named_steps(run, steps)
    tables, agreements = [], []
    for step, stage in tracked(steps.items(), progress, len(steps), what):
        model = run.load_model(step)
        for experiment in experiments(run.config.task):
            table, agreement = measure(
                model,
                experiment,
                run.config.train.data_seed,
                run=run.name,
                gamma=run.config.model.gamma,
                step=step,
                stage=stage,
            )
            tables.append(table)
            agreements.append(
                pd.DataFrame([agreement]) if isinstance(agreement, dict) else agreement
            )
    if not tables:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(tables, ignore_index=True), pd.concat(agreements, ignore_index=True)


def single_head_runs(table: pd.DataFrame) -> set[str]:
    """The runs whose every attention layer has one head (head patches: head 0 only)."""
    heads = table[table.component == "z"].groupby("run")["head"].max()
    return set(heads[heads == 0].index)


def patch_names(table: pd.DataFrame, single: set[str] | None = None) -> list[str]:
    """Each row's patch name ('mlp_out L1 @a2'); in a single-head run (`single`, default
    `single_head_runs(table)`) the attention output is named as its only head too
    ('attn_out L0 @a2 (= its only head)')."""
    single = single_head_runs(table) if single is None else single
    return [
        component_label(r) + (ONLY_HEAD if r.component == "attn_out" and r.run in single else "")
        for r in table.itertuples()
    ]


def ranked_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the ranked components (attention/MLP outputs and heads, not the residual
    stream) with their `patch` name, a single-head run's head rows left out: they repeat
    its attention output (`ONLY_HEAD`)."""
    single = single_head_runs(table)
    rows = table[table.component.isin(RANKED)]
    rows = rows[~((rows.component == "z") & rows.run.isin(single))]
    return rows.assign(patch=patch_names(rows, single) if len(rows) else [])


def rank_components(table: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """The `top` component patches by |normalized effect| per run (gamma) and experiment,
    at each run's last analysed step, among attention/MLP outputs and heads (not the
    residual stream; a single-head run's head once, as its attention output)."""
    rows = ranked_rows(last_steps(table))
    rows = rows[rows.normalized.notna()]
    rows = rows.assign(effect=rows.normalized.abs())
    keys = ["gamma", "run", "experiment"]
    ranked = (
        rows.sort_values("effect", ascending=False)
        .groupby(keys, sort=False)
        .head(top)
        .sort_values(keys + ["effect"], ascending=[True, True, True, False])
    )
    ranked["rank"] = ranked.groupby(keys).cumcount() + 1
    return ranked[
        [
            "gamma",
            "run",
            "step",
            "experiment",
            "rank",
            "patch",
            "component",
            "layer",
            "position",
            "head",
            "normalized",
            "attribution_normalized",
        ]
    ].reset_index(drop=True)


def undefined_steps(table: pd.DataFrame) -> list[str]:
    """Why lines over training have gaps: per run and experiment, the analysed steps where
    the clean and corrupted logit differences lie within MIN_GAP of each other (the
    normalized effect is undefined there), with their gaps; [] when there are none."""
    out = []
    rows = table.drop_duplicates(["run", "step", "experiment"]).sort_values(["gamma", "step"])
    for (gamma, run, experiment), part in rows.groupby(["gamma", "run", "experiment"], sort=False):
        gap = part.clean - part.corrupted
        missing = part[gap.abs() < MIN_GAP]
        if missing.empty:
            continue
        steps = ", ".join(f"{int(r.step)} ({r.stage})" for r in missing.itertuples())
        gaps = ", ".join(f"{g:+.2f}" for g in (missing.clean - missing.corrupted))
        name = f" ({run})" if (rows.drop_duplicates("run").gamma == gamma).sum() > 1 else ""
        where = (
            "at any analysed step (no line)"
            if len(missing) == len(part)
            else f"at step{'s' if len(missing) > 1 else ''} {steps}"
        )
        yet = "yet " if missing.step.max() < part.step.max() else ""
        out.append(
            f"gamma = {gamma:g}{name}, {experiment} prompts: no normalized effect {where}. "
            f"There the clean and corrupted logit differences are within {MIN_GAP:g} of "
            f"each other (clean minus corrupted: {gaps}): the model does not {yet}tell "
            f"the clean answer from the corrupted one, so there is no gap for a patch to "
            f"restore and the normalized effect is undefined."
        )
    return out


def compare_tasks(table: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Per run (gamma) and ranked patch at the last step: normalized effect on `first` and
    on `second` prompts and their difference, largest |difference| first."""
    rows = ranked_rows(last_steps(table))
    rows = rows[rows.experiment.isin([first, second])]
    wide = (
        rows.pivot_table(index=["gamma", "run", "patch"], columns="experiment", values="normalized")
        .reset_index()
        .rename_axis(columns=None)
    )
    if first not in wide or second not in wide:
        return pd.DataFrame(columns=["gamma", "run", "patch", first, second, "difference"])
    wide["difference"] = wide[first] - wide[second]
    wide = wide.dropna(subset=["difference"])
    return (
        wide.assign(size=wide.difference.abs())
        .sort_values(["gamma", "run", "size"], ascending=[True, True, False])
        .drop(columns="size")
        .reset_index(drop=True)[["gamma", "run", "patch", first, second, "difference"]]
    )


def summary(table: pd.DataFrame, first: str, second: str) -> list[str]:
    """Sentences stating the ranking and the differences, each with its numbers: one per
    run (at its last analysed step), then the small-init top patches at large init."""
    if table.empty:
        return ["No patching results: this task has no clean/corrupted pairs."]
    ranked = rank_components(table, top=1)
    diffs = compare_tasks(table, first, second)
    finals = last_steps(table)
    finals = finals.assign(patch=patch_names(finals))
    runs = finals[["gamma", "run"]].drop_duplicates().sort_values(["gamma", "run"])
    many = runs.gamma.duplicated().any()  # several runs per gamma: name them
    out = []
    for gamma, run in runs.itertuples(index=False, name=None):
        rows = finals[finals.run == run]
        parts = []
        for experiment in rows.experiment.unique():
            top = ranked[(ranked.run == run) & (ranked.experiment == experiment)]
            gap = rows[rows.experiment == experiment].iloc[0]
            if top.empty:
                parts.append(
                    f"on {experiment} prompts the clean and corrupted logit "
                    f"differences ({gap.clean:.2f} vs {gap.corrupted:.2f}) are too "
                    f"close to localize anything"
                )
                continue
            t = top.iloc[0]
            parts.append(
                f"on {experiment} prompts the strongest single patch is {t.patch} "
                f"(restores {t.normalized:.0%} of the clean-corrupted logit "
                f"difference gap of {gap.clean - gap.corrupted:.2f})"
            )
        name = f" ({run})" if many else ""
        sentence = (
            f"Gamma = {gamma:g}{name}, step {int(rows.step.iloc[0])}: " + "; ".join(parts) + "."
        )
        d = diffs[diffs.run == run]
        if not d.empty:
            r = d.iloc[0]
            sentence += (
                f" The patch that differs most between the two task types is "
                f"{r.patch}: {r[first]:.0%} on {first} vs {r[second]:.0%} on "
                f"{second} prompts."
            )
        out.append(sentence)
    if runs.gamma.nunique() < 2:
        return out
    (small, small_run), (large, large_run) = runs.iloc[-1], runs.iloc[0]
    for experiment in finals.experiment.unique():
        top = ranked[(ranked.run == small_run) & (ranked.experiment == experiment)]
        if top.empty:
            continue
        patch = top.iloc[0].patch
        match = finals[
            (finals.run == large_run) & (finals.experiment == experiment) & (finals.patch == patch)
        ].normalized
        if len(match) and pd.notna(match.iloc[0]):
            out.append(
                f"Across init scales, {experiment} prompts: {patch} restores "
                f"{top.iloc[0].normalized:.0%} at small init (gamma = {small:g}) "
                f"and {match.iloc[0]:.0%} at large init (gamma = {large:g})."
            )
    return out
