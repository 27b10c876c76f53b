"""A self-contained HTML report of one or more runs (plotly.js inlined: opens offline).

Sections follow the questions in the order a reader asks them: are the published claims
reproduced over seeds (a study's report); does small init prefer reasoning; how each task
type is learned; which components carry each task type (exact patching, ranked and
compared); when they form; whether attribution patching finds them; what the layers
represent (probes); how key and anchor tokens are embedded; how attention and the weights
move. The last five are the sections of the instruments (`analyses.instruments`) whose
tables `analyses.studies.run_analysis` computed; without them the report has the first
two. Every figure can also be exported (PNG/SVG/PDF).
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path

import pandas as pd

from initlens.analyses.figures import curves
from initlens.analyses.figures.export import export_figures, export_html
from initlens.analyses.figures.page import Report, paragraphs, table_html
from initlens.analyses.instruments import INSTRUMENTS
from initlens.analyses.studies.preference import preference_table
from initlens.models.run import Run


def _reached(step) -> str:
    return (
        "never reached 90%" if step is None or pd.isna(step) else f"reached 90% at step {int(step)}"
    )


def verdict(table: pd.DataFrame, reasoning: str, memory: str) -> list[str]:
    """Sentences stating what the numbers show, and nothing they do not: one per run, then
    (one run per gamma) the comparison of the smallest and the largest init."""
    test = f"{reasoning}_test"
    has_test = f"final_acc_{test}" in table.columns
    seeds = "seed" in table.columns and table.seed.nunique() > 1
    out = []
    for row in table.itertuples(index=False):
        d = row._asdict()
        seed = f", seed {d['seed']}" if seeds else ""
        test_txt = (
            (
                f"; held-out {reasoning} pairs {_reached(d[f'step_to_90_{test}'])}"
                f" (final accuracy {d[f'final_acc_{test}']:.0%})"
            )
            if has_test
            else ""
        )
        out.append(
            f"gamma = {row.gamma:g}{seed}, within {row.steps} steps: {reasoning} "
            f"{_reached(d[f'step_to_90_{reasoning}'])} and {memory} "
            f"{_reached(d[f'step_to_90_{memory}'])} "
            f"(reasoning lead {row.reasoning_lead_steps:+d} steps; signed area "
            f"{row.signed_area:+.3f}; mean relative loss gap "
            f"{row.mean_relative_loss_gap:+.3f}){test_txt}."
        )
    if table.gamma.nunique() < 2:
        return out
    if len(table) > table.gamma.nunique():  # several seeds: compared over them, above
        out.append(
            "With several runs per init scale, small and large init are compared over "
            'seeds in "Published claims, over seeds" above.'
        )
        return out
    small, large = table.iloc[-1], table.iloc[0]  # sorted by gamma: last = smallest init
    lead_s, lead_l = small.reasoning_lead_steps, large.reasoning_lead_steps
    if lead_s > 0 and lead_s > lead_l:
        out.append(
            f"Published direction reproduced: at small init (gamma = {small.gamma:g}) "
            f"reasoning leads memorization by {lead_s} steps, at large init "
            f"(gamma = {large.gamma:g}) by {lead_l} steps; the signed area goes from "
            f"{large.signed_area:+.3f} to {small.signed_area:+.3f}."
        )
    else:
        out.append(
            f"Published direction NOT reproduced in these runs: the reasoning lead is "
            f"{lead_s} steps at gamma = {small.gamma:g} and {lead_l} steps at gamma = "
            f"{large.gamma:g} (the paper expects a positive lead that grows as init "
            f"shrinks). Try more steps, other seeds, or the published settings on a GPU."
        )
    if has_test:
        a_s, a_l = small[f"final_acc_{test}"], large[f"final_acc_{test}"]
        out.append(
            f"Generalization to held-out {reasoning} pairs: final accuracy {a_s:.0%} at "
            f"gamma = {small.gamma:g} versus {a_l:.0%} at gamma = {large.gamma:g}"
            + (" (the paper expects it higher at small init)." if a_s <= a_l else ".")
        )
    return out


def _number(value: float) -> str:
    """A claim's number: whole numbers (steps) and large ones as integers, fractions and
    accuracies to 3 decimals."""
    if pd.isna(value):
        return "n/a"
    return f"{value:.0f}" if value == round(value) or abs(value) >= 100 else f"{value:.3f}"


def claim_lines(claims: pd.DataFrame) -> list[str]:
    """One sentence per claim of `analyses.studies.claims.claims_table`: per gamma (small
    init first) the mean and spread over seeds and the per-seed values, in how many seeds
    the direction holds, and the verdict; or why it was not judged."""
    out = []
    for key, rows in claims.groupby("claim", sort=False):
        first = rows.iloc[0]
        if first.verdict == "not judged":
            out.append(f"({key}) {first.statement}: not judged ({first.why}).")
            continue
        numbers = []
        for row in rows.sort_values("gamma", ascending=False).itertuples(index=False):
            role = f" ({row.init} init)" if row.init else ""
            seeds = "seed" if row.n_seeds == 1 else "seeds"
            numbers.append(
                f"gamma = {row.gamma:g}{role}: mean {_number(row.mean)} over {row.n_seeds} "
                f"{seeds} (min {_number(row.min)}, max {_number(row.max)}, sd "
                f"{_number(row.std)}; by seed {row.per_seed})"
            )
        verdict_text = "reproduced" if first.verdict == "reproduced" else "NOT reproduced"
        out.append(
            f"({key}) {first.statement}. {first.quantity}: {'; '.join(numbers)}. Direction "
            f"holds by seed: {first.holds}. Reproduced in {first.reproduced_in} of "
            f"{first.of_seeds} seeds (needs a strict majority, at least {first.needed} of "
            f"{first.of_seeds}): {verdict_text}."
        )
    return out


def _claims(doc: Report, claims: pd.DataFrame) -> None:
    doc.add(
        "<h2>Published claims, over seeds</h2>",
        paragraphs(claim_lines(claims)),
        '<p class="caption">Each claim compares the smallest init (the largest gamma) '
        "with the largest init (the smallest gamma), seed by seed, and counts as "
        "reproduced when its direction holds in a strict majority (more than half) of "
        "the seeds judged. Spread: min, max and sample standard deviation over seeds. "
        "The table is claims.csv.</p>",
    )


def _analysed_note(runs: list[Run], analysed: list[Run]) -> str | None:
    """The sentence saying which seed the analysis sections show, when not every run."""
    if {r.path for r in analysed} == {r.path for r in runs}:
        return None
    seeds = {r.config.train.seed for r in analysed}
    if len(seeds) == 1:
        shown = f"seed {seeds.pop()}"
    else:
        shown = ", ".join(
            f"seed {r.config.train.seed} at gamma = {r.config.model.gamma:g}"
            for r in sorted(analysed, key=lambda r: r.config.model.gamma)
        )
    return f"The analyses below are shown for {shown}; the claims use all seeds."


def _settings(run: Run) -> str:
    cfg = run.config.to_dict()
    rows = [
        (section, key, value)
        for section in ("task", "model", "train")
        for key, value in cfg[section].items()
    ]
    return table_html(
        pd.DataFrame(rows, columns=["section", "field", "value"]).astype({"value": str})
    )


def _init_table(run: Run) -> str:
    init = pd.DataFrame(run.init)
    init = init[init.d_in.notna()][["param", "shape", "d_in", "target_std", "realized_std"]]
    return table_html(init.astype({"shape": str, "d_in": int}))


def _by_run(table: pd.DataFrame) -> pd.DataFrame:
    """The preference table with one column per run (a step never reached reads "never")."""
    steps = [c for c in table.columns if c.startswith("step_to_")]
    table = table.astype({c: object for c in steps})
    table[steps] = table[steps].where(table[steps].notna(), "never")
    return table.set_index("run").T.rename_axis(columns=None).reset_index(names="")


def _behaviour(doc: Report, runs: list[Run]) -> None:
    task = runs[0].config.task
    table = preference_table(runs)
    r, m = task.reasoning_group, task.memory_group
    doc.add(
        "<h2>Does small init prefer reasoning?</h2>",
        paragraphs(verdict(table, r, m)),
        "<h3>Preference summary</h3>",
        table_html(_by_run(table)),
        '<p class="caption">One column per run. step_to_90_G: first evaluated step at '
        "which group G reached 90% accuracy. reasoning_lead_steps: memory step minus "
        "reasoning step (a group that never got there counts as the last step). "
        "signed_area: integral of (reasoning - memory) accuracy over training time "
        "scaled to [0, 1]. mean_relative_loss_gap: mean over evaluations of "
        "(L_memory - L_reasoning) / L_reasoning.</p>",
    )
    doc.figure(
        "steps_to_90",
        curves.steps_to_threshold(table),
        "Step at which each group first reached 90% accuracy, per init scale "
        "(hatched bars: never reached; drawn at the last step).",
    )
    doc.add("<h2>How is each task type learned?</h2>")
    doc.figure(
        "accuracy",
        curves.group_curves(runs, "accuracy"),
        f"Accuracy at the label position per evaluation group, one panel per init "
        f"scale. {r}: rule-following training pairs; {m}: memorized pairs (recall on "
        f"training data); *_test / held_out: pairs or positions never seen in "
        f"training.",
    )
    doc.figure(
        "loss",
        curves.group_curves(runs, "loss"),
        "Cross-entropy loss at the label position per group (log scale); train: "
        "running mean of the training batches.",
    )
    doc.figure(
        "loss_gap",
        curves.loss_gap_curves(runs),
        "The paper's relative loss gap (L_memory - L_reasoning) / L_reasoning over "
        "steps, one line per init scale; above zero means reasoning loss is lower.",
    )
    extra = sorted(
        {m for r in runs for m in r.metrics().metric.unique()} - {"loss", "accuracy", "lr"}
    )
    if extra:
        doc.figure(
            "task_readouts",
            curves.task_metric_curves(runs, tuple(extra)),
            "Task-specific read-outs over steps, one colour per init scale. On the "
            "composite task: inferential_fraction = answers x - 10 on the held-out "
            "pair (4,3) (composing the rules), symmetric_fraction = answers x - 6 "
            "(copying the memorized (3,4)).",
        )


def build_report(
    runs: list[Run],
    title: str = "InitLens report",
    problems: dict[str, str] | None = None,
    analysis: dict[str, pd.DataFrame] | None = None,
    claims: pd.DataFrame | None = None,
    analysed: list[Run] | None = None,
) -> Report:
    """The report of `runs` (sorted by gamma, large init first); `analysis` holds the
    stacked `analyses.studies.run_analysis` tables (sections without them are left out)
    of the runs in `analysed` (default: all); `claims` the published claims judged over
    seeds (`analyses.studies.claims.claims_table`), shown first when given."""
    runs = sorted(runs, key=lambda r: (r.config.model.gamma, r.name))
    analysed = sorted(analysed or runs, key=lambda r: (r.config.model.gamma, r.name))
    doc = Report()
    doc.add(
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {_dt.datetime.now():%Y-%m-%d %H:%M} by InitLens. Runs: "
        f"{', '.join(html.escape(r.name) for r in runs) or 'none'}.</p>",
    )
    if problems:
        items = "".join(
            f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in problems.items()
        )
        doc.add(
            '<div class="warn"><b>Missing or failed runs, and analyses left out</b>'
            f"<ul>{items}</ul></div>"
        )
    if not runs:
        return doc
    if claims is not None and len(claims):
        _claims(doc, claims)
    _behaviour(doc, runs)
    sections = [
        instrument
        for instrument in INSTRUMENTS.values()  # each instrument's section, if it has tables
        if instrument.section is not None and any(t in (analysis or {}) for t in instrument.tables)
    ]
    note = _analysed_note(runs, analysed)
    if sections and note:
        doc.add(f"<p><b>{html.escape(note)}</b></p>")
    for instrument in sections:
        instrument.section(doc, analysed, analysis)
    doc.add("<h2>Runs</h2>")
    for run in runs:
        doc.add(
            f"<details><summary><b>{html.escape(run.name)}</b> (gamma = "
            f"{run.config.model.gamma:g}, state: {run.status.get('state')}, "
            f"{html.escape(str(run.path))})</summary>"
            f"<h4>Settings</h4>{_settings(run)}"
            f"<h4>Realized initialization</h4>{_init_table(run)}</details>"
        )
    return doc


def write_report(
    runs: list[Run],
    path: str | Path,
    title: str = "InitLens report",
    problems: dict[str, str] | None = None,
    analysis: dict[str, pd.DataFrame] | None = None,
    formats: tuple[str, ...] = (),
    claims: pd.DataFrame | None = None,
    analysed: list[Run] | None = None,
) -> dict[str, object]:
    """Write the report (`build_report`) atomically to `path`; with `formats` (png, svg,
    pdf, html) also every figure into PATH_figures/. Returns {"report", "files",
    "warnings"}."""
    path = Path(path)
    doc = build_report(runs, title, problems, analysis, claims, analysed)
    export_html(doc.html(title), path)
    files, notes = (
        export_figures(doc.figures, path.parent / f"{path.stem}_figures", formats)
        if formats
        else ([], [])
    )
    return {"report": path, "files": [str(f) for f in files], "warnings": notes}
