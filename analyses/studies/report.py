"""A self-contained HTML report of one or more runs (plotly.js inlined: opens offline).

Sections follow the questions in the order a reader asks them: does small init prefer
reasoning; how each task type is learned; which components carry each task type (exact
patching, ranked and compared); when they form; whether attribution patching finds them;
what the layers represent (probes); how key and anchor tokens are embedded; how attention
and the weights move. The last five come from `analyses.run_analysis` tables; without
them the report has the first two. Every figure can also be exported (PNG/SVG/PDF).
"""

from __future__ import annotations

import datetime as _dt
import html
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from initlens.analyses import figures, study_figures
from initlens.analyses.export import export_figure
from initlens.analyses.localization import compare_tasks, rank_components, summary
from initlens.analyses.over_training import best_selectivity, last_steps
from initlens.analyses.preference import preference_table
from initlens.analyses.representation_figures import cosine_heatmap, metric_over_steps, pca_scatter
from initlens.models.checkpoint import atomic_write
from initlens.models.run import Run

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.caption { color: #555; font-size: 0.92em; margin: 0.2em 0 1.5em; }
.verdict { background: #f6f8fa; border-left: 4px solid #1f77b4; padding: 0.6em 1em; }
.warn { background: #fff4e5; border-left: 4px solid #ff7f0e; padding: 0.6em 1em; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _reached(step) -> str:
    return "never reached 90%" if step is None or pd.isna(step) else \
        f"reached 90% at step {int(step)}"


def verdict(table: pd.DataFrame, reasoning: str, memory: str) -> list[str]:
    """Sentences stating what the numbers show, and nothing they do not."""
    test = f"{reasoning}_test"
    has_test = f"final_acc_{test}" in table.columns
    out = []
    for row in table.itertuples(index=False):
        d = row._asdict()
        test_txt = (f"; held-out {reasoning} pairs {_reached(d[f'step_to_90_{test}'])}"
                    f" (final accuracy {d[f'final_acc_{test}']:.0%})") if has_test else ""
        out.append(
            f"gamma = {row.gamma:g}, within {row.steps} steps: {reasoning} "
            f"{_reached(d[f'step_to_90_{reasoning}'])} and {memory} "
            f"{_reached(d[f'step_to_90_{memory}'])} "
            f"(reasoning lead {row.reasoning_lead_steps:+d} steps; signed area "
            f"{row.signed_area:+.3f}; mean relative loss gap "
            f"{row.mean_relative_loss_gap:+.3f}){test_txt}.")
    if len(table) < 2:
        return out
    small, large = table.iloc[-1], table.iloc[0]  # sorted by gamma: last = smallest init
    lead_s, lead_l = small.reasoning_lead_steps, large.reasoning_lead_steps
    if lead_s > 0 and lead_s > lead_l:
        out.append(
            f"Published direction reproduced: at small init (gamma = {small.gamma:g}) "
            f"reasoning leads memorization by {lead_s} steps, at large init "
            f"(gamma = {large.gamma:g}) by {lead_l} steps; the signed area goes from "
            f"{large.signed_area:+.3f} to {small.signed_area:+.3f}.")
    else:
        out.append(
            f"Published direction NOT reproduced in these runs: the reasoning lead is "
            f"{lead_s} steps at gamma = {small.gamma:g} and {lead_l} steps at gamma = "
            f"{large.gamma:g} (the paper expects a positive lead that grows as init "
            f"shrinks). Try more steps, other seeds, or the published settings on a GPU.")
    if has_test:
        a_s, a_l = small[f"final_acc_{test}"], large[f"final_acc_{test}"]
        out.append(
            f"Generalization to held-out {reasoning} pairs: final accuracy {a_s:.0%} at "
            f"gamma = {small.gamma:g} versus {a_l:.0%} at gamma = {large.gamma:g}"
            + (" (the paper expects it higher at small init)." if a_s <= a_l else "."))
    return out


def _cell(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return "never"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _table_html(df: pd.DataFrame) -> str:
    """A plain HTML table; missing steps read "never", floats get 3 decimals."""
    return '<div style="overflow-x:auto">' + df.map(_cell).to_html(
        index=False, border=0, escape=True) + "</div>"


def _settings(run: Run) -> str:
    cfg = run.config.to_dict()
    rows = [(section, key, value) for section in ("task", "model", "train")
            for key, value in cfg[section].items()]
    return _table_html(pd.DataFrame(rows, columns=["section", "field", "value"])
                       .astype({"value": str}))


def _init_table(run: Run) -> str:
    init = pd.DataFrame(run.init)
    init = init[init.d_in.notna()][["param", "shape", "d_in", "target_std", "realized_std"]]
    return _table_html(init.astype({"shape": str, "d_in": int}))


@dataclass
class Report:
    """The report's HTML parts in order, and its figures by file name (for export)."""

    parts: list[str] = field(default_factory=list)
    figures: dict[str, go.Figure] = field(default_factory=dict)

    def add(self, *html_parts: str) -> None:
        self.parts += html_parts

    def figure(self, name: str, fig: go.Figure, caption: str) -> None:
        """Append `fig` with its caption (also the exported file's subject)."""
        self.figures[name] = fig
        self.add(fig.to_html(full_html=False, include_plotlyjs=False,
                             config={"responsive": True}),
                 f'<p class="caption">{html.escape(caption)}</p>')

    def html(self, title: str) -> str:
        return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(title)}</title><style>{CSS}</style>"
                f"<script>{plotly.offline.get_plotlyjs()}</script></head><body>"
                + "\n".join(self.parts) + "</body></html>")


def _paragraphs(sentences: list[str], css: str = "verdict") -> str:
    return f'<div class="{css}">' + "".join(f"<p>{html.escape(s)}</p>"
                                            for s in sentences) + "</div>"


def _behaviour(doc: Report, runs: list[Run]) -> None:
    task = runs[0].config.task
    table = preference_table(runs)
    r, m = task.reasoning_group, task.memory_group
    doc.add("<h2>Does small init prefer reasoning?</h2>", _paragraphs(verdict(table, r, m)),
            "<h3>Preference summary</h3>",
            _table_html(table.set_index("run").T.rename_axis(columns=None)
                        .reset_index(names="")),
            '<p class="caption">One column per run. step_to_90_G: first evaluated step at '
            'which group G reached 90% accuracy. reasoning_lead_steps: memory step minus '
            'reasoning step (a group that never got there counts as the last step). '
            'signed_area: integral of (reasoning - memory) accuracy over training time '
            'scaled to [0, 1]. mean_relative_loss_gap: mean over evaluations of '
            '(L_memory - L_reasoning) / L_reasoning.</p>')
    doc.figure("steps_to_90", figures.steps_to_threshold(table),
               "Step at which each group first reached 90% accuracy, per init scale "
               "(hatched bars: never reached; drawn at the last step).")
    doc.add("<h2>How is each task type learned?</h2>")
    doc.figure("accuracy", figures.group_curves(runs, "accuracy"),
               f"Accuracy at the label position per evaluation group, one panel per init "
               f"scale. {r}: rule-following training pairs; {m}: memorized pairs (recall on "
               f"training data); *_test / held_out: pairs or positions never seen in "
               f"training.")
    doc.figure("loss", figures.group_curves(runs, "loss"),
               "Cross-entropy loss at the label position per group (log scale); train: "
               "running mean of the training batches.")
    doc.figure("loss_gap", figures.loss_gap_curves(runs),
               "The paper's relative loss gap (L_memory - L_reasoning) / L_reasoning over "
               "steps, one line per init scale; above zero means reasoning loss is lower.")
    extra = sorted({m for r in runs for m in r.metrics().metric.unique()}
                   - {"loss", "accuracy", "lr"})
    if extra:
        doc.figure("task_readouts", figures.task_metric_curves(runs, tuple(extra)),
                   "Task-specific read-outs over steps, one colour per init scale. On the "
                   "composite task: inferential_fraction = answers x - 10 on the held-out "
                   "pair (4,3) (composing the rules), symmetric_fraction = answers x - 6 "
                   "(copying the memorized (3,4)).")


PATCH_CAPTIONS = {
    "resid_pre": "the residual stream entering each layer (where the information sits)",
    "attn_out": "each layer's attention output",
    "mlp_out": "each layer's MLP output",
    "z": "each attention head's output",
}


def _localization(doc: Report, runs: list[Run], loc: pd.DataFrame, agree: pd.DataFrame
                  ) -> None:
    task = runs[0].config.task
    r, m = task.reasoning_group, task.memory_group
    doc.add("<h2>Which components carry each task type?</h2>")
    if loc.empty:
        doc.add("<p>No patching: this task has no clean/corrupted prompt pairs.</p>")
        return
    doc.add(_paragraphs(summary(loc, r, m)),
            "<p>Method: denoising activation patching at each run's last checkpoint. Clean "
            "prompts of one task type, corrupted by changing the key token (so the answer "
            "changes); the corrupted run is patched with one clean activation at a time and "
            "the logit difference (clean answer minus corrupted answer) is measured. "
            "Normalized effect: 0 = the corrupted run, 1 = the clean run.</p>",
            "<h3>Strongest component patches</h3>", _table_html(rank_components(loc)),
            '<p class="caption">The five attention-output, MLP-output and head patches with '
            'the largest |normalized effect| per init scale and task type, at the last step; '
            'attribution_normalized is the attribution-patching estimate of the same '
            'patch.</p>',
            f"<h3>{html.escape(r)} vs {html.escape(m)} prompts</h3>",
            _table_html(compare_tasks(loc, r, m).groupby("run").head(6)),
            '<p class="caption">Normalized effect of the same patch on each task type and '
            'their difference, largest |difference| first (six per init scale).</p>')
    for component in dict.fromkeys(loc.component):
        doc.figure(f"patching_{component}", study_figures.patching_grid(loc, component),
                   f"Normalized effect of patching {PATCH_CAPTIONS.get(component, component)}"
                   f", by layer (rows) and token position (columns), one panel per init "
                   f"scale (rows of panels) and task type (columns), at each run's last "
                   f"step.")
    doc.add("<h2>When do these components form?</h2>")
    stages = loc[["gamma", "step", "stage"]].drop_duplicates().sort_values(["gamma", "step"])
    doc.add(_table_html(stages),
            '<p class="caption">The checkpoints analysed: init, early (nearest a tenth of '
            'training), the first checkpoint after each task type reached 90%, and the '
            'end.</p>')
    doc.figure("patching_over_training", study_figures.effect_over_training(loc),
               "Normalized effect of each init scale's two strongest component patches (at "
               "the last step) over the analysed checkpoints, one panel per task type.")
    doc.add("<h2>Can attribution patching find them?</h2>")
    if not agree.empty:
        doc.add(_table_html(last_steps(agree)[["gamma", "experiment", "component", "pearson", "spearman",
                                  "top_k_overlap", "n_patches"]]),
                '<p class="caption">Agreement of attribution patching (one forward and '
                'backward pass) with exact patching at the last step: Pearson and Spearman '
                'correlation of the effects, and the share of the top 5 patches (by '
                '|effect|) both methods pick.</p>')
    doc.figure("attribution_vs_exact", study_figures.attribution_scatter(loc),
               "Attribution estimate against exact effect for every patch at the last step "
               "(normalized); the dotted diagonal is perfect agreement.")


def _representations(doc: Report, runs: list[Run], probes: pd.DataFrame,
                     geometry: pd.DataFrame) -> None:
    if not probes.empty:
        doc.add("<h2>What do the layers represent?</h2>")
        for target in dict.fromkeys(probes.target):
            doc.figure(f"probes_{target}", study_figures.probes_by_layer(probes, target),
                       f"Linear probes for the {target} at the label position, at each "
                       f"run's last step: held-out accuracy (solid) and the accuracy of the "
                       f"same probe on a control task (dotted: random labels tied to the "
                       f"token identity, Hewitt & Liang); selectivity is the gap.")
        best = best_selectivity(probes)
        for target in dict.fromkeys(best.target):
            doc.figure(f"selectivity_over_training_{target}",
                       metric_over_steps(best, "selectivity", target=target,
                                         title=f"Best selectivity for {target}"),
                       f"Best probe selectivity for the {target} (max over hooks and "
                       f"positions) at the analysed checkpoints.")
    doc.add("<h2>How are key and anchor tokens embedded?</h2>")
    for run in runs:
        model, g = run.load_model(device="cpu"), f"gamma = {run.config.model.gamma:g}"
        doc.figure(f"cosine_{run.name}", cosine_heatmap(model, run.config.task,
                                                        title=f"Embedding cosines, {g}"),
                   f"Cosine similarity of the token embeddings at the last step ({g}), "
                   f"tokens grouped by role and ordered by value.")
        doc.figure(f"pca_{run.name}", pca_scatter(model, run.config.task,
                                                  title=f"Embedding PCA, {g}"),
                   f"The same embeddings on their two principal axes ({g}).")
    if geometry.empty:
        return
    dist = geometry[geometry.metric.isin(["within_cosine", "between_cosine", "separability",
                                          "separability_chance"])]
    ends = dist[(dist.step == dist.groupby("run").step.transform("min"))
                | (dist.step == dist.groupby("run").step.transform("max"))]
    wide = ends.assign(measure=ends.metric + " " + ends.group.astype(str)).pivot_table(
        index=["gamma", "step"], columns="measure", values="value").reset_index()
    doc.add("<h3>Distinguishability of reasoning and memorization tokens</h3>",
            _table_html(wide.rename_axis(columns=None)),
            '<p class="caption">At init and at the end: mean cosine within each token group, '
            'between the two anchor groups, and leave-one-out nearest-centroid separability '
            'of the two groups (with its chance level).</p>')
    doc.add("<h2>How do attention and the weights move?</h2>")
    if (geometry.metric == "attention_entropy").any():  # not the Emb-MLP: no attention
        _attention_figures(doc, geometry)
    doc.figure("weight_change", study_figures.weight_change_bars(geometry),
               "Relative change ||W_T - W_0|| / ||W_0|| of each weight matrix from init to "
               "the last step (log scale).")


def _attention_figures(doc: Report, geometry: pd.DataFrame) -> None:
    doc.figure("attention_entropy_layer0",
               metric_over_steps(geometry, metric="attention_entropy", layer=0,
                                 title="First-layer attention entropy at the label position"),
               "Entropy of the first layer's attention from the label position, averaged "
               "over heads and prompts (uniform attention = log of the sequence length).")
    doc.figure("information_flow_layer0",
               study_figures.facet_over_steps(
                   geometry, "position", "First-layer attention from the label position, "
                   "by source position", metric="information_flow", layer=0),
               "Share of the first layer's attention that the label position pays to each "
               "source position over training (log step axis), averaged over heads.")


def build_report(runs: list[Run], title: str = "InitLens report",
                 problems: dict[str, str] | None = None,
                 analysis: dict[str, pd.DataFrame] | None = None) -> Report:
    """The report of `runs` (sorted by gamma, large init first); `analysis` holds the
    stacked `analyses.run_analysis` tables (sections without them are left out)."""
    runs = sorted(runs, key=lambda r: (r.config.model.gamma, r.name))
    doc = Report()
    doc.add(f"<h1>{html.escape(title)}</h1>",
            f"<p>Generated {_dt.datetime.now():%Y-%m-%d %H:%M} by InitLens. Runs: "
            f"{', '.join(html.escape(r.name) for r in runs) or 'none'}.</p>")
    if problems:
        items = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
                        for k, v in problems.items())
        doc.add(f'<div class="warn"><b>Missing or failed runs, and analyses left out</b><ul>{items}</ul></div>')
    if not runs:
        return doc
    _behaviour(doc, runs)
    if analysis:
        empty = pd.DataFrame()
        if "localization" in analysis:
            _localization(doc, runs, analysis["localization"], analysis.get("agreement", empty))
        _representations(doc, runs, analysis.get("probes", empty),
                         analysis.get("geometry", empty))
    doc.add("<h2>Runs</h2>")
    for run in runs:
        doc.add(f"<details><summary><b>{html.escape(run.name)}</b> (gamma = "
                f"{run.config.model.gamma:g}, state: {run.status.get('state')}, "
                f"{html.escape(str(run.path))})</summary>"
                f"<h4>Settings</h4>{_settings(run)}"
                f"<h4>Realized initialization</h4>{_init_table(run)}</details>")
    return doc


def write_report(runs: list[Run], path: str | Path, title: str = "InitLens report",
                 problems: dict[str, str] | None = None,
                 analysis: dict[str, pd.DataFrame] | None = None,
                 formats: tuple[str, ...] = ()) -> dict[str, object]:
    """Write the report atomically to `path`; with `formats` (png, svg, pdf, html) also
    every figure into PATH_figures/. Returns {"report", "files", "warnings"}."""
    path = Path(path)
    doc = build_report(runs, title, problems, analysis)
    atomic_write(path, doc.html(title))
    files: list[Path] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, fig in doc.figures.items() if formats else ():
            files += export_figure(fig, path.parent / f"{path.stem}_figures" / name, formats,
                                   strict=False)
    return {"report": path, "files": [str(f) for f in files],
            "warnings": sorted({str(w.message) for w in caught})}
