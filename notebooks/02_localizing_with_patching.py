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
# # Localizing with patching: which components carry each task type
#
# Activation patching runs a *corrupted* prompt (here: the key replaced by another key)
# with one activation taken from the *clean* prompt, and measures how much of the
# clean-vs-corrupted logit difference that one activation restores (0 = none, 1 = all).
# Sweeping every layer, position and head localizes where the model reads the key.
#
# This notebook
# 1. patches one checkpoint by hand (`make_pairs`, `activation_patch`, `patch_all`) and
#    draws the heatmaps (`analyses.figures.patching`);
# 2. checks the cheap first-order estimate (`probes.attribution`) against exact patching;
# 3. runs the localization study (`analyses.studies.localization`) at a few telling checkpoints
#    of a large-init (gamma = 0.3) and a small-init (gamma = 0.8) run, on reasoning and on
#    memorization prompts, ranks the components and compares task types and init scales.
#
# With `SMALL = True` the models train for 100 steps on a smaller task (seconds)
# and each experiment uses 64 prompt pairs. `SMALL = False` trains with the demo's
# defaults and uses 256 pairs (a few minutes on a 2-core CPU).

# %% tags=["parameters"]
SMALL = True  # False: the full setting (the demo's defaults: 3000 steps, 256 pairs; minutes on 2 CPU cores)

# %%
from pathlib import Path

import pandas as pd

from initlens.analyses.figures.labels import position_labels
from initlens.analyses.figures.patching import layer_head_heatmap, layer_position_heatmap
from initlens.analyses.studies.localization import (
    compare_tasks,
    localize_run,
    rank_components,
    stage_steps,
    summary,
)
from initlens.models import RunConfig, train
from initlens.probes.attribution import agreement, attribution_patch, guided_patch
from initlens.probes.corruptions import make_pairs
from initlens.probes.patching import activation_patch, logit_diff, patch_all

GAMMAS = (0.3, 0.8)  # large init, small init
N_PAIRS = 64 if SMALL else 256
OUT = Path("notebook_out") / ("02_localizing_small" if SMALL else "02_localizing")

base = RunConfig()  # the demo's defaults
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
run = runs[-1]  # the small-init run
task = run.config.task
[(r.name, r.checkpoint_steps()) for r in runs]

# %% [markdown]
# ## 1. One patching sweep by hand
#
# Clean reasoning prompts and the same prompts with the key replaced; the metric is the
# logit of the clean answer minus that of the corrupted answer, per example.

# %%
step = run.resolve_step("last")
model = run.load_model(step)
pairs = make_pairs(task, "key", n=N_PAIRS, data_seed=run.config.train.data_seed)
metric = logit_diff(pairs.clean_label, pairs.corrupted_label)
tokens = position_labels(pairs, pairs.clean.shape[1])  # ["key", "a1", "a2"]
pd.DataFrame(
    {
        "clean": pairs.clean[:4].tolist(),
        "corrupted": pairs.corrupted[:4].tolist(),
        "clean_label": pairs.clean_label[:4].tolist(),
        "corrupted_label": pairs.corrupted_label[:4].tolist(),
    }
)

# %%
exact = activation_patch(model, pairs.clean, pairs.corrupted, metric, "resid_pre")
resid = exact.table(run=run.name, step=step)
resid["normalized"] = exact.normalized().flatten().tolist()
print(f"logit difference: clean {exact.clean:.3f}, corrupted {exact.corrupted:.3f}")
resid

# %% [markdown]
# Patching the residual stream at the key position in layer 0 replaces the whole
# difference between the two prompts, so it restores the clean run exactly (normalized 1);
# the other positions hold nothing from the key yet at layer 0 (normalized 0). Where the
# key's information moves by the last layer is the interesting part.

# %%
layer_position_heatmap(
    resid.assign(value=resid.normalized),
    "resid_pre",
    tokens=tokens,
    title=f"resid_pre, normalized ({run.name}, step {step})",
)

# %% [markdown]
# `patch_all` sweeps several components into one tidy table. Per-head outputs (`z`) are
# drawn by layer and head at the label position.

# %%
sweep = patch_all(
    model,
    pairs.clean,
    pairs.corrupted,
    metric,
    components=("resid_pre", "attn_out", "mlp_out", "z"),
    run=run.name,
    step=step,
)
sweep.groupby(["component", "layer"]).normalized.agg(["min", "max"]).round(3)

# %%
last = pairs.clean.shape[1] - 1
layer_head_heatmap(
    sweep.assign(value=sweep.normalized),
    "z",
    position=last,
    title=f"head outputs (z) at the label position, normalized ({run.name})",
)

# %% [markdown]
# ## 2. Attribution patching against exact patching
#
# Attribution patching estimates all patches from two forward passes and one backward
# pass. Always check how well it agrees before trusting it; `guided_patch` confirms its
# strongest candidates exactly.

# %%
rows = []
for component in ("resid_pre", "attn_out", "z"):
    e = activation_patch(model, pairs.clean, pairs.corrupted, metric, component)
    a = attribution_patch(model, pairs.clean, pairs.corrupted, metric, component)
    rows.append({"component": component, **agreement(e, a, k=3)})
pd.DataFrame(rows)

# %%
guided_patch(model, pairs.clean, pairs.corrupted, metric, "z", k=3)

# %% [markdown]
# ## 3. The localization study over training, at both init scales
#
# `stage_steps` picks the telling checkpoints of a run: init, early, where each task type
# first reaches 90% accuracy, and the end.

# %%
{r.name: stage_steps(r) for r in runs}

# %% [markdown]
# `localize_run` patches (exactly and by attribution) the residual stream, attention and
# MLP outputs and every head at each of those steps, with the key corrupted on reasoning
# prompts and on memorization prompts.

# %%
results = [localize_run(r, n=N_PAIRS) for r in runs]
table = pd.concat([t for t, _ in results], ignore_index=True)
agreements = pd.concat([a for _, a in results], ignore_index=True)
table.head()

# %%
agreements.round(3)

# %% [markdown]
# The strongest single patches at each run's last step, per init scale and task type
# (attention/MLP outputs and heads; the residual stream is not ranked).

# %%
rank_components(table)

# %%
compare_tasks(table, task.reasoning_group, task.memory_group)

# %%
sentences = summary(table, task.reasoning_group, task.memory_group)
print("\n\n".join(sentences))

# %% [markdown]
# The residual stream at each stage of the small-init run, on reasoning prompts: where the
# key's information sits as training goes on.

# %%
for (s, stage), rows in table[
    (table.run == run.name)
    & (table.component == "resid_pre")
    & (table.experiment == task.reasoning_group)
].groupby(["step", "stage"]):
    layer_position_heatmap(
        rows.assign(value=rows.value - rows.corrupted),
        "resid_pre",
        tokens=tokens,
        title=f"{run.name}, step {s} ({stage}): resid_pre, logit difference restored",
    ).show()

# %% [markdown]
# ## Summary (also what the test suite checks)

# %%
key_pos = tokens.index("key")
layer0 = resid[resid.layer == 0].set_index("position").value
RESULT = {
    "clean": exact.clean,
    "corrupted": exact.corrupted,
    "layer0_key_restores": float(layer0[key_pos]),
    "layer0_other_max_change": float((layer0.drop(key_pos) - exact.corrupted).abs().max()),
    "gammas": sorted(float(g) for g in table.gamma.unique()),
    "experiments": sorted(table.experiment.unique()),
    "stages": {r.name: list(stage_steps(r).values()) for r in runs},
    "summary": sentences,
}
RESULT
