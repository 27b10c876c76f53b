"""Linear probes (with control tasks) for the chosen targets at the stage checkpoints."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from initlens.analyses.figures.page import Report
from initlens.analyses.figures.representations import metric_over_steps, probes_by_layer
from initlens.analyses.instruments.registry import Context, Instrument, Measured
from initlens.analyses.studies.over_training import best_selectivity, probes_over_training
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


def section(doc: Report, runs: list[Run], tables: Mapping[str, pd.DataFrame]) -> None:
    """What the layers represent: probes by layer, and their best selectivity over steps."""
    probes = tables.get("probes", pd.DataFrame())
    if not probes.empty:
        doc.add("<h2>What do the layers represent?</h2>")
        for target in dict.fromkeys(probes.target):
            doc.figure(
                f"probes_{target}",
                probes_by_layer(probes, target),
                f"Linear probes for the {target} at the label position, at each "
                f"run's last step: held-out accuracy (solid) and the accuracy of the "
                f"same probe on a control task (dotted: random labels tied to the "
                f"token identity, Hewitt & Liang); selectivity is the gap.",
            )
        best = best_selectivity(probes)
        for target in dict.fromkeys(best.target):
            doc.figure(
                f"selectivity_over_training_{target}",
                metric_over_steps(
                    best, "selectivity", target=target, title=f"Best selectivity for {target}"
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
