"""A self-contained HTML report of one or more runs (plotly.js inlined: opens offline)."""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from analyses import figures
from analyses.preference import preference_table
from models.checkpoint import atomic_write
from models.run import Run

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


def _figure(fig: go.Figure, caption: str) -> str:
    return (fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})
            + f'<p class="caption">{html.escape(caption)}</p>')


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


def build_report(runs: list[Run], title: str = "InitLens report",
                 problems: dict[str, str] | None = None) -> str:
    """The report's HTML for `runs` (sorted by gamma, large init first)."""
    runs = sorted(runs, key=lambda r: (r.config.model.gamma, r.name))
    task = runs[0].config.task if runs else None
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Generated {_dt.datetime.now():%Y-%m-%d %H:%M} by InitLens. Runs: "
             f"{', '.join(html.escape(r.name) for r in runs) or 'none'}.</p>"]
    if problems:
        items = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
                        for k, v in problems.items())
        parts.append(f'<div class="warn"><b>Missing or failed runs</b><ul>{items}</ul></div>')
    if not runs:
        return _page(title, parts)

    table = preference_table(runs)
    r, m = task.reasoning_group, task.memory_group
    parts += ["<h2>Does small init prefer reasoning?</h2>",
              '<div class="verdict">' + "".join(f"<p>{html.escape(s)}</p>"
                                                for s in verdict(table, r, m)) + "</div>",
              "<h3>Preference summary</h3>",
              _table_html(table.set_index("run").T.rename_axis(columns=None)
                          .reset_index(names="")),
              '<p class="caption">One column per run. step_to_90_G: first evaluated step at '
              'which group G reached 90% accuracy. reasoning_lead_steps: memory step minus '
              'reasoning step (a group that never got there counts as the last step). '
              'signed_area: integral of (reasoning - memory) accuracy over training time '
              'scaled to [0, 1]. mean_relative_loss_gap: mean over evaluations of '
              '(L_memory - L_reasoning) / L_reasoning.</p>',
              _figure(figures.steps_to_threshold(table),
                      "Step at which each group first reached 90% accuracy, per init scale "
                      "(hatched bars: never reached; drawn at the last step)."),
              "<h2>Accuracy over training</h2>",
              _figure(figures.group_curves(runs, "accuracy"),
                      f"Accuracy at the label position per evaluation group, one panel per "
                      f"init scale. {r}: rule-following training pairs; {m}: memorized "
                      f"pairs (recall on training data); *_test / held_out: pairs or "
                      f"positions never seen in training."),
              "<h2>Loss over training</h2>",
              _figure(figures.group_curves(runs, "loss"),
                      "Cross-entropy loss at the label position per group (log scale); "
                      "train: running mean of the training batches."),
              _figure(figures.loss_gap_curves(runs),
                      "The paper's relative loss gap (L_memory - L_reasoning) / L_reasoning "
                      "over steps, one line per init scale; above zero means reasoning "
                      "loss is lower.")]
    extra = sorted({m for r in runs for m in r.metrics().metric.unique()}
                   - {"loss", "accuracy", "lr"})
    if extra:
        parts += ["<h2>Task read-outs</h2>",
                  _figure(figures.task_metric_curves(runs, tuple(extra)),
                          "Task-specific read-outs over steps, one colour per init scale. On "
                          "the composite task: inferential_fraction = answers x - 10 on the "
                          "held-out pair (4,3) (composing the rules), symmetric_fraction = "
                          "answers x - 6 (copying the memorized (3,4)).")]
    parts.append("<h2>Runs</h2>")
    for run in runs:
        status = run.status
        parts.append(f"<details><summary><b>{html.escape(run.name)}</b> (gamma = "
                     f"{run.config.model.gamma:g}, state: {status.get('state')}, "
                     f"{html.escape(str(run.path))})</summary>"
                     f"<h4>Settings</h4>{_settings(run)}"
                     f"<h4>Realized initialization</h4>{_init_table(run)}</details>")
    return _page(title, parts)


def _page(title: str, parts: list[str]) -> str:
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            f"<script>{plotly.offline.get_plotlyjs()}</script></head><body>"
            + "\n".join(parts) + "</body></html>")


def write_report(runs: list[Run], path: str | Path, title: str = "InitLens report",
                 problems: dict[str, str] | None = None) -> Path:
    """Write the report atomically to `path` and return it."""
    path = Path(path)
    atomic_write(path, build_report(runs, title, problems))
    return path
