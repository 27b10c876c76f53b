"""CKA: how similar each layer's representation is across checkpoints (opt-in)."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from initlens.analyses.figures.page import Report
from initlens.analyses.figures.representations import cka_to_final
from initlens.analyses.instruments.registry import Context, Instrument, Measured
from initlens.analyses.studies.over_training import cka_over_training
from initlens.models.run import Run

CKA_COLUMNS = (
    "run_a",
    "gamma_a",
    "step_a",
    "layer_a",
    "run_b",
    "gamma_b",
    "step_b",
    "layer_b",
    "cka",
)


def measure(context: Context) -> Measured:
    """Debiased linear CKA between every (step, layer) pair of the stage checkpoints."""
    settings = context.settings
    return Measured(
        {
            "cka": cka_over_training(
                [context.run],
                list(context.stages),
                n=settings.geometry_rows,
                seed=settings.seed,
                progress=context.progress,
            )
        }
    )


def section(doc: Report, runs: list[Run], tables: Mapping[str, pd.DataFrame]) -> None:
    """How early each layer's representation settles."""
    doc.add("<h2>When do the representations settle?</h2>")
    doc.figure(
        "cka_to_final",
        cka_to_final(tables["cka"]),
        "Linear CKA (debiased) between each layer's label-position representation at "
        "an analysed checkpoint and at the last step, one line per init scale and "
        "layer: 1 means the representation already has its final geometry.",
    )


INSTRUMENT = Instrument(
    name="cka",
    description="linear CKA of each layer's representation between the stage checkpoints",
    needs=frozenset({"model", "activations", "checkpoints"}),
    tables={"cka": CKA_COLUMNS},
    measure=measure,
    section=section,
    default=False,
)
