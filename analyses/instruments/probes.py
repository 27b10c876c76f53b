"""Linear probes (with control tasks) for the chosen targets at the stage checkpoints."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from initlens.analyses.figures.page import Report, paragraphs
from initlens.analyses.figures.representations import metric_over_steps, probes_by_layer
from initlens.analyses.instruments.registry import Context, Instrument, Measured
from initlens.analyses.studies.over_training import (
    best_selectivity,
    last_steps,
    probes_over_training,
)
from initlens.models.errors import UserError
from initlens.models.run import Run

PROBE_TABLE_COLUMNS = (
    "run",
    "gamma",
    "step",
    "stage",
    "hook",
    "component",
    "layer",
    "position",
    "target",
    "accuracy",
    "control_accuracy",
    "selectivity",
    "train_accuracy",
    "n_train",
    "n_test",
    "n_classes",
    "control_types",
    "converged",
)


def measure(context: Context) -> Measured:
    """Probes per target; a target the rows cannot support is noted, not fatal."""
    settings, stages = context.settings, context.stages
    parts, notes = [], []
    for target in settings.probe_targets:
        try:
            parts.append(
                probes_over_training(
                    [context.run],
                    (target,),
                    steps=list(stages),
                    n=settings.probe_rows,
                    seed=settings.seed,
                    progress=context.progress,
                )
            )
        except UserError as e:
            notes.append(f"probes for {target!r} skipped: {e}")
    probes = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if not probes.empty:
        probes.insert(3, "stage", probes.step.map(stages))
    return Measured({"probes": probes}, tuple(notes))


# Control accuracy at or above this at every hook: the control task is at its ceiling.
CEILING = 0.9


def selectivity_notes(probes: pd.DataFrame, target: str) -> list[str]:
    """Sentences reading the `target` probes at the label position at each run's last
    step: accuracy and control ranges over hooks, the best selectivity, and what it can
    mean: the control near its ceiling or not, the best at the bare embedding or not."""
    rows = last_steps(probes[probes.target == target])
    rows = rows[rows.position == rows.position.max()].dropna(subset=["selectivity"])
    if rows.empty:
        return []
    out, ceiling, embedding = [], [], []
    many = rows.drop_duplicates("run").gamma.duplicated().any()  # name the runs
    for (gamma, run), part in rows.groupby(["gamma", "run"]):
        best = part.loc[part.selectivity.idxmax()]
        lo = part.control_accuracy.min()
        types = (
            f" (random labels over {int(part.control_types.max())} input types)"
            if "control_types" in part and part.control_types.notna().any()
            else ""
        )
        name = f"gamma = {gamma:g}{f' ({run})' if many else ''}"
        out.append(
            f"{target}, {name} (step {int(best.step)}): probe accuracy "
            f"{part.accuracy.min():.2f}-{part.accuracy.max():.2f} over the {len(part)} "
            f"hooks at the label position, control task {lo:.2f}-"
            f"{part.control_accuracy.max():.2f}{types}; best selectivity "
            f"{best.selectivity:.2f} at {best.hook} ({best.accuracy:.2f} vs control "
            f"{best.control_accuracy:.2f})."
        )
        if lo >= CEILING:
            ceiling.append((name, 1 - lo))
        if best.component == "resid_pre" and best.layer == 0 and best.accuracy >= CEILING:
            embedding.append(name)
    if ceiling:
        out.append(
            f"The control task is near its ceiling for {', '.join(n for n, _ in ceiling)} "
            f"(at least {CEILING:.0%} at every hook): the probe memorizes the random label "
            "of each input type there (few types for the dimensions it reads), so "
            "selectivity cannot exceed 1 - control accuracy (at most "
            + ", ".join(f"{m:.2f}" for _, m in ceiling)
            + "), and a small selectivity says the control is easy, not that the layer "
            "lacks the target."
        )
    else:
        out.append(
            f"The control task stays below its ceiling for {target}: its labels are drawn "
            "per combination of the token at the position with the key and anchor tokens "
            "before it, too many for a linear probe to memorize (a control per token "
            "alone is at its ceiling wherever the position holds a handful of distinct "
            "tokens, such as a few anchors). So selectivity is how much better the layer "
            "lets a probe read the target than an arbitrary lookup of the same inputs: "
            "about 0, no better; large, the target is laid out linearly."
        )
    if embedding:
        out.append(
            f"For {', '.join(embedding)} the best {target} selectivity is at the bare "
            "embedding (blocks.0.hook_resid_pre, before any attention), where the probe "
            f"sees only the token at the position: {target} is a function of that token "
            "there, and the selectivity says the token is readable, not that the model "
            f"computed {target}."
        )
    return out


def section(doc: Report, runs: list[Run], tables: Mapping[str, pd.DataFrame]) -> None:
    """What the layers represent: probes by layer, and their best selectivity over steps."""
    probes = tables.get("probes", pd.DataFrame())
    if not probes.empty:
        doc.add(
            "<h2>What do the layers represent?</h2>",
            paragraphs(
                [n for t in dict.fromkeys(probes.target) for n in selectivity_notes(probes, t)]
            ),
        )
        for target in dict.fromkeys(probes.target):
            doc.figure(
                f"probes_{target}",
                probes_by_layer(probes, target),
                f"Linear probes for the {target} at the label position, at each "
                f"run's last step: held-out accuracy (solid) and the accuracy of the "
                f"same probe on a control task (dotted; Hewitt & Liang: a fixed random "
                f"label per input type, the token at the position with the key and "
                f"anchor tokens before it, drawn from the {target}'s own values); "
                f"selectivity is the gap.",
            )
        best = best_selectivity(probes)
        for target in dict.fromkeys(best.target):
            doc.figure(
                f"selectivity_over_training_{target}",
                metric_over_steps(
                    best,
                    "selectivity",
                    target=target,
                    title=f"Best selectivity for {target}",
                    y_title="best selectivity (accuracy - control)",
                ),
                f"Best probe selectivity for the {target} (max over hooks and "
                f"positions) at the analysed checkpoints.",
            )


INSTRUMENT = Instrument(
    name="probes",
    description="linear probes with control tasks for the probe targets at every hook and "
    "position, at the stage checkpoints",
    needs=frozenset({"model", "activations", "checkpoints"}),
    tables={"probes": PROBE_TABLE_COLUMNS},
    measure=measure,
    section=section,
)
