"""Geometry: embedding and attention geometry, and each weight matrix's change from init,
at every checkpoint."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from initlens.analyses.figures.page import Report, table_html
from initlens.analyses.figures.representations import (
    cosine_heatmap,
    facet_over_steps,
    metric_over_steps,
    pca_scatter,
    weight_change_bars,
)
from initlens.analyses.instruments.registry import Context, Instrument, Measured
from initlens.analyses.studies.over_training import geometry_over_training
from initlens.models.run import Run
from initlens.probes.geometry import GEOMETRY_COLUMNS

TABLE_COLUMNS = ("run", "gamma", "step", *GEOMETRY_COLUMNS)


def measure(context: Context) -> Measured:
    """`geometry_metrics` and relative weight change at every checkpoint."""
    settings = context.settings
    return Measured(
        {
            "geometry": geometry_over_training(
                [context.run],
                "all",
                settings.geometry_rows,
                settings.seed,
                progress=context.progress,
            )
        }
    )


def section(doc: Report, runs: list[Run], tables: Mapping[str, pd.DataFrame]) -> None:
    """How tokens are embedded, how distinguishable the task types are, how attention and
    the weights move."""
    geometry = tables.get("geometry", pd.DataFrame())
    doc.add("<h2>How are key and anchor tokens embedded?</h2>")
    for run in runs:
        model, g = run.load_model(device="cpu"), f"gamma = {run.config.model.gamma:g}"
        doc.figure(
            f"cosine_{run.name}",
            cosine_heatmap(model, run.config.task, title=f"Embedding cosines, {g}"),
            f"Cosine similarity of the token embeddings at the last step ({g}), "
            f"tokens grouped by role and ordered by value.",
        )
        doc.figure(
            f"pca_{run.name}",
            pca_scatter(model, run.config.task, title=f"Embedding PCA, {g}"),
            f"The same embeddings on their two principal axes ({g}).",
        )
    if geometry.empty:
        return
    dist = geometry[
        geometry.metric.isin(
            ["within_cosine", "between_cosine", "separability", "separability_chance"]
        )
    ]
    ends = dist[
        (dist.step == dist.groupby("run").step.transform("min"))
        | (dist.step == dist.groupby("run").step.transform("max"))
    ]
    wide = (
        ends.assign(measure=ends.metric + " " + ends.group.astype(str))
        .pivot_table(index=["gamma", "step"], columns="measure", values="value")
        .reset_index()
    )
    doc.add(
        "<h3>Distinguishability of reasoning and memorization tokens</h3>",
        table_html(wide.rename_axis(columns=None)),
        '<p class="caption">At init and at the end: mean cosine within each token group, '
        "between the two anchor groups, and leave-one-out nearest-centroid separability "
        "of the two groups (with its chance level).</p>",
    )
    doc.add("<h2>How do attention and the weights move?</h2>")
    if (geometry.metric == "attention_entropy").any():  # not the Emb-MLP: no attention
        _attention_figures(doc, geometry)
    doc.figure(
        "weight_change",
        weight_change_bars(geometry),
        "Relative change ||W_T - W_0|| / ||W_0|| of each weight matrix from init to "
        "the last step (log scale).",
    )


def _attention_figures(doc: Report, geometry: pd.DataFrame) -> None:
    doc.figure(
        "attention_entropy_layer0",
        metric_over_steps(
            geometry,
            metric="attention_entropy",
            layer=0,
            title="First-layer attention entropy at the label position",
            y_title="attention entropy (nats)",
        ),
        "Entropy of the first layer's attention from the label position, averaged "
        "over heads and prompts (uniform attention = log of the sequence length), at "
        "every checkpoint (log step axis, init at its left, as in every figure over "
        "checkpoints).",
    )
    doc.figure(
        "information_flow_layer0",
        facet_over_steps(
            geometry,
            "position",
            "First-layer attention from the label position, by source position",
            y_title="share of attention",
            metric="information_flow",
            layer=0,
        ),
        "Share of the first layer's attention that the label position pays to each "
        "source position, averaged over heads, at every checkpoint (the same log step "
        "axis as the entropy above).",
    )


INSTRUMENT = Instrument(
    name="geometry",
    description="embedding and attention geometry, information flow and relative weight "
    "change at every checkpoint",
    needs=frozenset({"model", "weights", "activations", "checkpoints"}),
    tables={"geometry": TABLE_COLUMNS},
    measure=measure,
    section=section,
)
