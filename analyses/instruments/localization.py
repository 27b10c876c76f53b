"""Localization: exact and attribution patching of the task's corruptions at the stages."""

from __future__ import annotations

import html
from collections.abc import Mapping

import pandas as pd

from initlens.analyses.figures.localization import (
    attribution_scatter,
    effect_over_training,
    patching_grid,
)
from initlens.analyses.figures.page import Report, paragraphs, table_html
from initlens.analyses.instruments.registry import Context, Instrument, Measured
from initlens.analyses.studies.localization import (
    ONLY_HEAD,
    TOP_K_MIN,
    compare_tasks,
    localize_run,
    rank_components,
    single_head_runs,
    summary,
    undefined_steps,
)
from initlens.analyses.studies.over_training import last_steps
from initlens.models.run import Run

LOCALIZATION_COLUMNS = (
    "run",
    "gamma",
    "step",
    "stage",
    "experiment",
    "corruption",
    "component",
    "layer",
    "position",
    "head",
    "value",
    "attribution",
    "normalized",
    "attribution_normalized",
    "clean",
    "corrupted",
    "token",
)
AGREEMENT_COLUMNS = (
    "run",
    "gamma",
    "step",
    "stage",
    "experiment",
    "component",
    "pearson",
    "spearman",
    "top_k_overlap",
    "top_patch_match",
    "mean_abs_error",
    "n_patches",
    "clean",
    "corrupted",
)

AGREEMENT_SHOWN = (
    "gamma",
    "experiment",
    "component",
    "n_patches",
    "pearson",
    "spearman",
    "top_patch_match",
    "mean_abs_error",
    "top_k_overlap",
)


def measure(context: Context) -> Measured:
    """Patching at the stage checkpoints (none on the Emb-MLP: it has no attention)."""
    run = context.run
    if run.config.model.architecture != "transformer":
        return Measured({}, ("patching skipped: the Emb-MLP has no attention blocks",))
    localization, agreement = localize_run(
        run,
        context.stages,
        n=context.settings.pairs,
        seed=context.settings.seed,
        progress=context.progress,
    )
    return Measured({"localization": localization, "agreement": agreement})


PATCH_CAPTIONS = {
    "resid_pre": "the residual stream entering each layer (where the information sits)",
    "attn_out": "each layer's attention output",
    "mlp_out": "each layer's MLP output",
    "z": "each attention head's output",
}


def _no_head(table: pd.DataFrame) -> pd.DataFrame:
    """The head column blank on rows that are no head (a column of heads only if any)."""
    return table.assign(head=table["head"].astype("Int64").where(table["head"] >= 0))


def section(doc: Report, runs: list[Run], tables: Mapping[str, pd.DataFrame]) -> None:
    """Which components carry each task type, when they form, whether attribution finds
    them."""
    loc, agree = tables.get("localization", pd.DataFrame()), tables.get("agreement", pd.DataFrame())
    task = runs[0].config.task
    r, m = task.reasoning_group, task.memory_group
    doc.add("<h2>Which components carry each task type?</h2>")
    if loc.empty:
        doc.add("<p>No patching: this task has no clean/corrupted prompt pairs.</p>")
        return
    single = single_head_runs(loc)
    every_single = single == set(loc.run)
    one_head = (
        f" In {'these runs' if every_single else ', '.join(sorted(single))} every attention "
        f"layer has one head, whose patch is the attention output's (its output through "
        f"W_O plus a bias both runs share): it is listed once, as the attention output "
        f"marked {ONLY_HEAD.strip()}."
        if single
        else ""
    )
    doc.add(
        paragraphs(summary(loc, r, m)),
        "<p>Method: denoising activation patching at each run's last checkpoint. Clean "
        "prompts of one task type, corrupted by changing the key token (so the answer "
        "changes); the corrupted run is patched with one clean activation at a time and "
        "the logit difference (clean answer minus corrupted answer) is measured. "
        "Normalized effect: 0 = the corrupted run, 1 = the clean run.</p>",
        "<h3>Strongest component patches</h3>",
        table_html(_no_head(rank_components(loc))),
        '<p class="caption">The five attention-output, MLP-output and head patches with '
        "the largest |normalized effect| per init scale and task type, at the last step; "
        "attribution_normalized is the attribution-patching estimate of the same "
        f"patch.{html.escape(one_head)}</p>",
        f"<h3>{html.escape(r)} vs {html.escape(m)} prompts</h3>",
        table_html(compare_tasks(loc, r, m).groupby("run").head(6)),
        '<p class="caption">Normalized effect of the same patch on each task type and '
        "their difference, largest |difference| first (six per init scale)."
        f"{html.escape(one_head)}</p>",
    )
    for component in dict.fromkeys(loc.component):
        if component == "z" and every_single:
            continue  # the attention output's grid again
        same = (
            " Every layer has one head here: this is also that head's output."
            if component == "attn_out" and every_single
            else ""
        )
        doc.figure(
            f"patching_{component}",
            patching_grid(loc, component),
            f"Normalized effect of patching {PATCH_CAPTIONS.get(component, component)}"
            f", by layer (rows) and token position (columns), one panel per init "
            f"scale (rows of panels) and task type (columns), at each run's last "
            f"step.{same}",
        )
    doc.add("<h2>When do these components form?</h2>")
    stages = loc[["gamma", "step", "stage"]].drop_duplicates().sort_values(["gamma", "step"])
    doc.add(
        table_html(stages),
        '<p class="caption">The checkpoints analysed: init, early (nearest a tenth of '
        "training), the first checkpoint after each task type reached 90%, and the "
        "end.</p>",
    )
    doc.figure(
        "patching_over_training",
        effect_over_training(loc),
        "Normalized effect of each init scale's two strongest component patches (at "
        "the last step) over the analysed checkpoints, one panel per task type (log "
        "step axis, init at its left, as in every figure over checkpoints).",
    )
    gaps = undefined_steps(loc)
    if gaps:
        doc.add(
            '<p class="caption"><b>Missing points:</b> '
            + " ".join(html.escape(g) for g in gaps)
            + "</p>"
        )
    doc.add("<h2>Can attribution patching find them?</h2>")
    if not agree.empty:
        agree = last_steps(agree)
        agree = agree[~((agree.component == "z") & agree.run.isin(single))]
        few = agree.n_patches.max() < TOP_K_MIN * 5
        doc.add(
            table_html(agree[[c for c in AGREEMENT_SHOWN if c in agree]]),
            '<p class="caption">Agreement of attribution patching (one forward and '
            "backward pass) with exact patching at the last step, over each component's "
            "n_patches patches (layers x positions, and heads): Pearson and Spearman "
            "correlation of the effects (few patches: read them with n in mind); "
            "top_patch_match: 1 when both methods find the same strongest patch (chance "
            "1 / n_patches); mean_abs_error: the mean |attribution - exact| of the "
            "normalized effects, in units of the clean-corrupted gap (- where the gap "
            f"is too small to normalize). The top-5 overlap is shown only over at least "
            f"{TOP_K_MIN * 5} patches: over fewer, the top 5 are most of them and any "
            f"two rankings share them (chance alone: 5 / n)"
            + (
                f"; here a component has at most {agree.n_patches.max()} patches, so "
                "it is left out."
                if few
                else "."
            )
            + (
                " A single-head run's head rows are left out: they repeat its attention output."
                if single
                else ""
            )
            + "</p>",
        )
    doc.figure(
        "attribution_vs_exact",
        attribution_scatter(loc),
        "Attribution estimate against exact effect for every patch at the last step "
        "(normalized); the dotted diagonal is perfect agreement.",
    )


INSTRUMENT = Instrument(
    name="localization",
    description="exact and attribution patching of the task's corruptions at the stage "
    "checkpoints (which components carry each task type)",
    needs=frozenset({"model", "activations", "checkpoints"}),
    tables={"localization": LOCALIZATION_COLUMNS, "agreement": AGREEMENT_COLUMNS},
    measure=measure,
    section=section,
)
