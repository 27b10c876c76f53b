"""Circuit: path patching of every sender x receiver path at the stage checkpoints (which
paths between layers carry each task type), with edge attribution's agreement."""

from __future__ import annotations

import html
from collections.abc import Mapping

import pandas as pd

from initlens.analyses.figures.circuit import circuit_graph, edges_over_training
from initlens.analyses.figures.page import Report, paragraphs, table_html
from initlens.analyses.instruments.registry import Context, Instrument, Measured
from initlens.analyses.studies.circuit import (
    EDGE_AGREEMENT_COLUMNS,
    EDGE_COLUMNS,
    edge_sentences,
    not_applicable,
    strongest_edges,
    trace_run,
)
from initlens.analyses.studies.localization import TOP_K_MIN
from initlens.analyses.studies.over_training import last_steps
from initlens.models.run import Run

EDGES_SHOWN = ("gamma", "experiment", "sender", "receiver", "normalized", "attribution_normalized")
AGREEMENT_SHOWN = (
    "gamma",
    "experiment",
    "n_paths",
    "pearson",
    "spearman",
    "top_edge_match",
    "top_k_overlap",
)


def measure(context: Context) -> Measured:
    """Path patching and edge attribution at the stage checkpoints (none where paths are
    not defined: `not_applicable`)."""
    why = not_applicable(context.run)
    if why:
        return Measured({}, (f"path patching not applicable: {why}",))
    edges, agreement = trace_run(
        context.run,
        context.stages,
        n=context.settings.pairs,
        seed=context.settings.seed,
        progress=context.progress,
    )
    return Measured({"circuit": edges, "circuit_agreement": agreement})


def section(doc: Report, runs: list[Run], tables: Mapping[str, pd.DataFrame]) -> None:
    """The strongest paths per init scale and task type, as a layer graph and over training,
    and how well edge attribution finds them."""
    edges = tables.get("circuit", pd.DataFrame())
    agree = tables.get("circuit_agreement", pd.DataFrame())
    doc.add("<h2>Which paths carry each task type?</h2>")
    skipped = {run.name: why for run in runs if (why := not_applicable(run))}
    if skipped:
        doc.add(
            "<p>Not applicable: "
            + "; ".join(f"{html.escape(r)} ({html.escape(w)})" for r, w in skipped.items())
            + ".</p>"
        )
    if edges.empty:
        if not skipped:
            doc.add("<p>No path patching: this task has no clean/corrupted prompt pairs.</p>")
        return
    doc.add(
        paragraphs(edge_sentences(edges)),
        "<p>Method: path patching (Wang et al. 2022) of the same key corruption as the "
        "component patching above. A path runs from a sender (the embeddings, a head's "
        "output, an MLP's output) to a later receiver (a head's query, key or value input, "
        "an MLP, the logits): the corrupted run is patched with the clean sender's output "
        "in that receiver's input only, everything else frozen, and the model runs on from "
        "the receiver. Normalized effect: the share of the clean-corrupted logit-difference "
        "gap that this one path restores.</p>",
    )
    strongest = strongest_edges(edges)
    if len(strongest):
        doc.add(
            table_html(strongest[list(EDGES_SHOWN)]),
            '<p class="caption">The five paths with the largest |normalized effect| per init '
            "scale and task type at the last step; attribution_normalized is the "
            "edge-attribution estimate of the same path.</p>",
        )
    doc.figure(
        "circuit_graph",
        circuit_graph(edges),
        "The strongest paths at each run's last step as a layer graph (left to right: "
        "embeddings, each layer's heads and MLP, the logits), one panel per init scale "
        "(rows) and task type (columns); hover an edge for its effect.",
    )
    doc.figure(
        "circuit_over_training",
        edges_over_training(edges),
        "Normalized effect of each init scale's two strongest paths (at the last step) over "
        "the analysed checkpoints, one panel per task type.",
    )
    if not agree.empty:
        last = last_steps(agree)
        doc.add(
            table_html(last[[c for c in AGREEMENT_SHOWN if c in last]]),
            '<p class="caption">Agreement of edge attribution patching (two forward passes '
            "and one backward pass) with exact path patching at the last step, over each "
            "experiment's n_paths paths: Pearson and Spearman correlation of the effects; "
            "top_edge_match 1 when both find the same strongest path (chance 1 / n_paths); "
            f"the top-5 overlap only over at least {TOP_K_MIN * 5} paths.</p>",
        )


INSTRUMENT = Instrument(
    name="circuit",
    description="path patching of every sender x receiver path at the stage checkpoints "
    "(which paths between layers carry each task type), with edge attribution",
    needs=frozenset({"model", "activations", "checkpoints"}),
    tables={"circuit": EDGE_COLUMNS, "circuit_agreement": EDGE_AGREEMENT_COLUMNS},
    measure=measure,
    section=section,
)
