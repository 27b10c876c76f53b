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
# # Where LayerNorm sits decides when modular addition groks
#
# On (a + b) mod p a transformer first memorizes the training pairs, then (maybe much
# later) generalizes to the test pairs: grokking. Singh, Misra and Orvieto (docs/SCIENCE.md
# section 3) report that where LayerNorm sits moves that second step: LayerNorm before the
# MLP only groks fastest, then both (pre-LN), then attention-only, then none; LayerNorm on
# queries and keys only fails to grok and lowers attention entropy. This notebook runs the
# same comparison with the toolkit's own sweep, figures and read-outs. From the shell:
# `probe sweep --grid analyses/grids/layernorm_grokking.json --out ln_grok`.
#
# `SMALL = True` checks that everything builds (p = 11, 150 steps: too short to grok).
# `SMALL = False` is the shipped grid (p = 31, 60% of pairs for training, one layer,
# full-batch AdamW with weight decay 1, 2000 steps, seven placements); the numbers it
# gives (three seeds) are in README.md ("LayerNorm placement and grokking").

# %% tags=["parameters"]
SMALL = True  # False: the shipped grid, 7 runs of 2000 steps (about 8 minutes on 2 CPUs)

# %%
from pathlib import Path

import pandas as pd

from initlens.analyses.figures.curves import steps_to_threshold, sweep_curves
from initlens.analyses.figures.export import export_figure
from initlens.analyses.figures.representations import metric_over_steps
from initlens.analyses.studies.over_training import geometry_over_training
from initlens.analyses.studies.sweep import GRIDS, Sweep, load_sweep, run_sweep
from initlens.models import Run

OUT = Path("notebook_out") / ("06_layernorm_grokking_small" if SMALL else "06_layernorm_grokking")
sweep = load_sweep(GRIDS / "layernorm_grokking.json")  # the shipped grid
if SMALL:
    base = sweep.base.replace(
        task={"p": 11},
        model={"d_model": 32, "d_mlp": 128},
        train={"steps": 150, "batch_size": 73, "eval_every": 25, "n_checkpoints": 3},
    )
    sweep = Sweep(base, sweep.grid)
sweep.base.task, sweep.grid

# %% [markdown]
# ## The sweep
#
# One run per placement (they differ in architecture, so they train one after another).
# `train_pairs` is accuracy on the training pairs (fitting, memorizable), `test_pairs` on
# the pairs never trained on (generalizing).

# %%
info = run_sweep(sweep, OUT, progress=False)
table = info["table"]
table["grok_delay"] = table.step_to_90_test_pairs - table.step_to_90_train_pairs
table[
    [
        "run",
        "normalization",
        "state",
        "step_to_90_train_pairs",
        "step_to_90_test_pairs",
        "grok_delay",
        "final_acc_train_pairs",
        "final_acc_test_pairs",
    ]
]

# %% [markdown]
# ## When test accuracy rises
#
# Solid: test pairs; dotted: training pairs. Then the step at which each first reached
# 90% (hatched bars: never, within the run).

# %%
runs = [Run(OUT / "runs" / name) for name in table.run]
labels = [f"normalization={n}" for n in table.normalization]
figures = {
    "learning_curves": sweep_curves(runs, labels),
    "steps_to_90": steps_to_threshold(table, by="normalization"),
}
figures["learning_curves"]

# %%
figures["steps_to_90"]

# %% [markdown]
# ## Attention entropy and feature compressibility over training
#
# At every checkpoint: the entropy of each head's attention from the `=` position (mean
# over heads; uniform over `a b =` is log 3 = 1.10) and how many principal components
# hold 90% of the variance of the features entering the unembedding (the last block's
# `resid_post` at `=`): fewer means more compressible. Settings that generalize earlier
# are reported to become compressible earlier.

# %%
geometry = geometry_over_training(runs, n=min(512, sweep.base.task.p**2))
geometry["run"] = geometry.run.map(dict(zip(table.run, labels)))
figures["attention_entropy"] = metric_over_steps(
    geometry, title="Attention entropy at '=' (mean over heads)", metric="attention_entropy"
)
figures["attention_entropy"]

# %%
figures["components_90"] = metric_over_steps(
    geometry,
    title="Principal components for 90% of the label-position variance",
    metric="components_90",
)
figures["components_90"]

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
last = geometry[geometry.step == geometry.groupby("run").step.transform("max")]
RESULT = {
    "placements": list(table.normalization),
    "done": int((table.state == "done").sum()),
    "step_to_90_test": {
        n: (None if pd.isna(v) else int(v))
        for n, v in zip(table.normalization, table.step_to_90_test_pairs)
    },
    "final_test": dict(zip(table.normalization, table.final_acc_test_pairs.round(3))),
    "entropy_end": last[last.metric == "attention_entropy"]
    .groupby("run")
    .value.mean()
    .round(3)
    .to_dict(),
    "components_90_end": last[last.metric == "components_90"].groupby("run").value.mean().to_dict(),
    "traces": len(figures["learning_curves"].data),
    "files": len(written),
}
RESULT
