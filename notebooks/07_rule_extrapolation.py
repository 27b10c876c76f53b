# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Rule extrapolation across init scales
#
# Four formal languages, each the strings that obey two rules (docs/SCIENCE.md section 4):
# a^n b^n, a^n b^n c^n, Dyck brackets and a regular language. Models learn next-token
# prediction on valid strings; then prompts that break rule 1 are completed greedily, and
# the rule-extrapolation score is the fraction of completions that still obey rule 2,
# read at the checkpoint of lowest validation loss. Does the init scale change it? From
# the shell: `probe sweep --grid analyses/grids/rule_extrapolation.json --out rules`.
#
# `SMALL = True` checks that everything builds (two languages, 60 steps: too short to
# learn them). `SMALL = False` is the shipped grid (4 languages x gamma 0.3, 0.5, 0.8 x 2
# seeds, 600 steps each); its numbers are in README.md ("Rule extrapolation across init
# scales").

# %% tags=["parameters"]
SMALL = True  # False: the shipped grid, 24 runs of 600 steps (about 15 minutes on 2 CPUs)

# %%
from pathlib import Path

import pandas as pd

from initlens.analyses.figures.export import export_figure
from initlens.analyses.figures.phase_diagram import phase_diagram
from initlens.analyses.figures.representations import metric_over_steps
from initlens.analyses.studies.phase import phase_grid
from initlens.analyses.studies.sweep import GRIDS, Sweep, load_sweep, run_sweep
from initlens.models import Run

OUT = Path("notebook_out") / ("07_rule_extrapolation_small" if SMALL else "07_rule_extrapolation")
sweep = load_sweep(GRIDS / "rule_extrapolation.json")  # the shipped grid
if SMALL:
    base = sweep.base.replace(
        task={"max_len": 8, "prompt_len": 3, "samples": 200},
        train={
            "steps": 60,
            "eval_every": 20,
            "n_checkpoints": 2,
            "warmup_steps": 5,
            "eval_size": 100,
        },
    )
    sweep = Sweep(base, {"gamma": (0.3, 0.8), "seed": (0,), "language": ("anbn", "dyck")})
dict(sweep.grid)

# %% [markdown]
# ## The sweep
#
# Next-token runs train one after another (ensembles train on the label position only).
# Per run: the step of lowest held-out loss (`best_step`), the rule-extrapolation score
# and the in-distribution accuracy (valid completions of prefixes of valid strings)
# there, and at the end.

# %%
info = run_sweep(sweep, OUT, progress=False)
table = info["table"]
table[
    [
        "run",
        "language",
        "gamma",
        "seed",
        "state",
        "best_step",
        "rule_extrapolation_at_best",
        "id_prompts_accuracy_at_best",
        "rule_extrapolation",
        "id_prompts_accuracy",
    ]
]

# %% [markdown]
# ## Language x init scale
#
# The sweep's phase diagram, coloured by the rule-extrapolation score at the best
# validation step (rows: languages; one panel per seed and their mean), and the same for
# in-distribution accuracy: a score only means something where the language was learned.

# %%
figures = {"rule_extrapolation": phase_diagram(table, rows="language")}
figures["rule_extrapolation"]

# %%
figures["id_accuracy"] = phase_diagram(table, "id_prompts_accuracy_at_best", rows="language")
figures["id_accuracy"]

# %% [markdown]
# ## Over training
#
# The score at every evaluation of every run (mean over seeds per language and gamma).

# %%
curves = pd.concat(
    [
        Run(OUT / "runs" / name).metrics().assign(run=f"{lang}, gamma {g:g}", gamma=g)
        for name, lang, g in zip(table.run, table.language, table.gamma)
    ]
)
figures["rule_extrapolation_over_training"] = metric_over_steps(
    curves, title="Rule extrapolation over training", metric="rule_extrapolation"
)
figures["rule_extrapolation_over_training"]

# %% [markdown]
# ## Save the figures
#
# Interactive HTML always; add `"png"`, `"svg"` or `"pdf"` to `FORMATS` where Chromium is
# installed.

# %%
FORMATS = ("html",)
written = [
    p
    for name, fig in figures.items()
    for p in export_figure(fig, OUT / name, FORMATS, strict=False)
]
[str(p) for p in written]

# %% [markdown]
# ## Summary (also what the test suite checks)

# %%
grid = phase_grid(table, "rule_extrapolation_at_best", rows="language")
RESULT = {
    "runs": len(table),
    "done": int((table.state == "done").sum()),
    "by_language_gamma": {f"{lang} {g:g}": float(v) for (lang, g), v in grid.stack().items()},
    "table_mean": {
        f"{lang} {g:g}": float(v)
        for (lang, g), v in table.groupby(["language", "gamma"])
        .rule_extrapolation_at_best.mean()
        .items()
    },
    "id_accuracy": {
        f"{lang} {g:g}": float(v)
        for (lang, g), v in table.groupby(["language", "gamma"])
        .id_prompts_accuracy_at_best.mean()
        .items()
    },
    "files": len(written),
}
RESULT
