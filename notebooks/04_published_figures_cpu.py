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
# # The published figures, at CPU scale
#
# Yao, Zhang & Xu (ICML 2025) show that initialization scale decides whether a
# transformer learns to reason or to memorize on the mixture task. This notebook redraws
# their main figures from a study (`run_study`: one run per init scale plus the HTML
# report), at the CPU-sized defaults described in the README:
#
# 1. accuracy over training per evaluation group, one panel per gamma (reasoning is
#    learned first at small init, and generalizes to the held-out anchor pairs);
# 2. the relative loss gap (L_memory - L_reasoning) / L_reasoning over training;
# 3. steps to 90% accuracy per group and gamma, and the preference table;
# 4. the token-embedding cosine matrix and PCA at large vs small init (small init condenses
#    the embeddings into an ordered structure).
#
# The published layout itself (keys 21..120, sequence length 9 with noise tokens,
# `MixtureTask.published()`) needs a GPU; see README "Tasks" and BENCHMARKS.md for why the
# CPU default drops the noise tokens.
#
# `SMALL = True` only checks that every figure builds (two gammas, 100 steps on
# a smaller task: too short to show the effect). `SMALL = False` is the demo's setting at
# three init scales (gamma = 0.3, 0.5, 0.8; about 2 minutes per gamma on a 2-core CPU) and
# reproduces the numbers in BENCHMARKS.md.

# %% tags=["parameters"]
SMALL = True  # False: the full setting (the demo's defaults at gamma 0.3, 0.5, 0.8; about 6 minutes on 2 CPU cores)

# %%
from pathlib import Path

import pandas as pd

from initlens.analyses.figures.curves import group_curves, loss_gap_curves, steps_to_threshold
from initlens.analyses.figures.export import export_figure
from initlens.analyses.figures.representations import cosine_heatmap, pca_scatter
from initlens.analyses.studies.preference import preference_table
from initlens.analyses.studies.study import run_dir, run_study
from initlens.models import Run, RunConfig

GAMMAS = (0.3, 0.8) if SMALL else (0.3, 0.5, 0.8)
OUT = Path("notebook_out") / ("04_published_figures_small" if SMALL else "04_published_figures")
STUDY = OUT / "study"
FIGURES = OUT / "figures"

base = RunConfig()  # the demo's defaults (`make demo`)
if SMALL:
    base = base.replace(
        task={"keys": (21, 30), "samples_per_pair": 50},
        train={
            "steps": 100,
            "eval_every": 25,
            "eval_size": 200,
            "n_checkpoints": 3,
            "warmup_steps": 10,
        },
    )
base

# %% [markdown]
# ## The study
#
# `run_study` trains each gamma into `STUDY/gamma_<g>/` (a finished run is reused when the
# notebook runs again with the same settings) and writes `preference.csv`, `metrics.csv`
# and the self-contained `report.html`.

# %%
# SMALL leaves out the report's analysis sections (localization, probes, geometry: minutes)
run_study(base, GAMMAS, STUDY, progress=False, **({"analysis": None} if SMALL else {}))
report = STUDY / "report.html"
runs = [Run.open(run_dir(STUDY, g)) for g in GAMMAS]
print(f"report: {report}")
[(r.name, r.status["state"]) for r in runs]

# %% [markdown]
# ## Figure 1: accuracy over training, per evaluation group

# %%
figures = {}
figures["accuracy"] = group_curves(runs)
figures["accuracy"]

# %%
figures["loss"] = group_curves(runs, metric="loss")
figures["loss"]

# %% [markdown]
# ## Figure 2: the relative loss gap

# %%
figures["loss_gap"] = loss_gap_curves(runs)
figures["loss_gap"]

# %% [markdown]
# ## Figure 3: steps to 90% accuracy, and the preference table
#
# Hatched bars never reached 90% (drawn at the last step).

# %%
table = preference_table(runs)
figures["steps_to_90"] = steps_to_threshold(table)
figures["steps_to_90"]

# %%
table

# %% [markdown]
# ## Figure 4: token embeddings at large and small init

# %%
for r in runs:
    g = r.config.model.gamma
    figures[f"cosine_gamma_{g:g}"] = cosine_heatmap(
        r.load_model(), r.config.task, title=f"token-embedding cosine, gamma = {g:g}"
    )
    figures[f"cosine_gamma_{g:g}"].show()

# %%
for r in runs:
    g = r.config.model.gamma
    figures[f"pca_gamma_{g:g}"] = pca_scatter(
        r.load_model(), r.config.task, title=f"token embeddings, gamma = {g:g}: PCA"
    )
    figures[f"pca_gamma_{g:g}"].show()

# %% [markdown]
# ## Save the figures
#
# Interactive HTML always; add `"png"`, `"svg"` or `"pdf"` to `FORMATS` where Chromium is
# installed (`make` installs it where it can).

# %%
FORMATS = ("html",)
written = [
    p
    for name, fig in figures.items()
    for p in export_figure(fig, FIGURES / name, FORMATS, strict=False)
]
pd.DataFrame({"file": [str(p) for p in written]})

# %% [markdown]
# ## Summary (also what the test suite checks)

# %%
saved = pd.read_csv(STUDY / "preference.csv")
RESULT = {
    "gammas": [float(g) for g in table.gamma],
    "report_bytes": report.stat().st_size,
    "preference_csv_rows": len(saved),
    "figures": sorted(figures),
    "files": len(written),
    "final_acc": table.set_index("gamma")[
        [c for c in table.columns if c.startswith("final_acc_")]
    ].to_dict("index"),
}
assert RESULT["gammas"] == list(GAMMAS) and RESULT["preference_csv_rows"] == len(GAMMAS)
RESULT
