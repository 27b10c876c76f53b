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
# # Quick start: train two init scales and compare them
#
# This notebook trains the same 2-layer transformer on the **mixture** task (reasoning
# anchors follow the rule `label = key + a1 + a2`, memory anchors are a random lookup
# table) at a **large** init scale (gamma = 0.3) and a **small** one (gamma = 0.8), then
# compares them: accuracy curves per evaluation group, the preference table (steps to 90%,
# reasoning lead, signed area, relative loss gap) and the relative loss gap over training.
#
# The headline result of Yao, Zhang & Xu (ICML 2025) is that small init learns the
# reasoning rule first (and generalizes it to the held-out anchor pairs,
# `reasoning_test`), while large init learns both at a similar pace and does not
# generalize. With `SMALL = True` the runs are far too short to show that: they only check
# that everything runs. Set `SMALL = False` for the demo's settings (a few minutes on a
# 2-core CPU).

# %% tags=["parameters"]
SMALL = True  # False: the full setting (the demo's defaults: 3000 steps, about 2 minutes per run on 2 CPU cores)

# %%
from pathlib import Path

from initlens.analyses.figures.curves import group_curves, loss_gap_curves, steps_to_threshold
from initlens.analyses.studies.preference import preference_table
from initlens.models import Run, RunConfig, train

GAMMAS = (0.3, 0.8)  # large init, small init
OUT = Path("notebook_out") / ("01_quick_start_small" if SMALL else "01_quick_start")

base = RunConfig()  # the demo's defaults: CPU-sized mixture task, 2 layers, d_model 64
if SMALL:  # a smaller task and 100 steps: seconds instead of minutes
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
# ## Train
#
# `train` writes one run directory per gamma (config, realized init, tidy metrics and
# every checkpoint). A finished run is reused when the notebook runs again (`resume=True`
# on a done run returns it unchanged).

# %%
runs = []
for gamma in GAMMAS:
    folder = OUT / f"gamma_{gamma:g}"
    runs.append(
        train(
            base.replace(model={"gamma": gamma}),
            folder,
            resume=(folder / "config.json").exists(),
            progress=False,
        )
    )
[(run.name, run.status["state"], run.checkpoint_steps()) for run in runs]

# %% [markdown]
# Every run can be reopened later from disk, e.g. `Run.open(OUT / "gamma_0.8")`; its
# metrics are a tidy table (step, group, metric, value, run, gamma).

# %%
run = Run.open(OUT / f"gamma_{GAMMAS[-1]:g}")
run.metrics().query("metric == 'accuracy'").tail(8)

# %% [markdown]
# ## Compare
#
# Accuracy per evaluation group (`reasoning`: seen reasoning pairs, `reasoning_test`:
# held-out reasoning pairs, `memory`: the memorized lookup table), one panel per gamma.

# %%
group_curves(runs)

# %%
group_curves(runs, metric="loss")

# %% [markdown]
# The preference table: one row per run. `reasoning_lead_steps` > 0 and `signed_area` > 0
# mean that reasoning was learned ahead of memorization.

# %%
table = preference_table(runs)
table

# %%
steps_to_threshold(table)

# %% [markdown]
# The paper's relative loss gap `(L_memory - L_reasoning) / L_reasoning`: above zero while
# reasoning is ahead.

# %%
loss_gap_curves(runs)

# %% [markdown]
# ## What the numbers say
#
# A small summary (also what the test suite checks): final accuracy per group and gamma.

# %%
final = table.set_index("gamma")[[c for c in table.columns if c.startswith("final_acc_")]]
RESULT = {
    "gammas": [float(g) for g in table.gamma],
    "steps": [int(s) for s in table.steps],
    "final_acc": {f"{g:g}": row.to_dict() for g, row in final.iterrows()},
}
assert RESULT["gammas"] == list(GAMMAS) and set(RESULT["steps"]) == {base.train.steps}
final
