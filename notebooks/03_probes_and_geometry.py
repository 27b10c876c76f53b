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
# # Probes and geometry over training
#
# How the representations of a large-init (gamma = 0.3) and a small-init (gamma = 0.8)
# model form over training, read at every checkpoint:
#
# - **geometry** (`geometry_over_training`): effective rank of the token embeddings,
#   within-role cosine and its ordering by token value, how distinguishable reasoning and
#   memory anchors are, condensation of the weight rows, attention entropy, and the
#   relative change of every weight matrix from its initialization;
# - **linear probes** with control tasks (`probes_over_training`): can a linear read-out
#   recover the key, the intermediate sum key + a1, or whether a row is memorized, at each
#   layer and position; selectivity = accuracy - control accuracy;
# - **CKA** (`cka_over_training`): how similar the label-position representations are
#   between layers, checkpoints and init scales;
# - the token-embedding cosine matrix and PCA of the final checkpoints
#   (`analyses.figures.representations`).
#
# `SMALL = True` trains for 100 steps on a smaller task and probes 500 rows on two targets
# (seconds); `SMALL = False` uses the demo's defaults and 20,000 rows (minutes on a 2-core
# CPU).

# %% tags=["parameters"]
SMALL = True  # False: the full setting (the demo's defaults: 3000 steps, 20,000 probe rows; minutes on 2 CPU cores)

# %%
from pathlib import Path

from initlens.analyses.figures.representations import (
    cosine_heatmap,
    metric_over_steps,
    pca_scatter,
    probe_heatmap,
)
from initlens.analyses.studies.over_training import (
    cka_over_training,
    geometry_over_training,
    probes_over_training,
)
from initlens.models import RunConfig, train

GAMMAS = (0.3, 0.8)  # large init, small init
N_ROWS = 500 if SMALL else 20000  # rows per probe fit (80% train, 20% held out)
TARGETS = ("key", "memorized") if SMALL else ("key", "intermediate", "memorized")
COMPONENTS = ("resid_pre", "resid_post") if SMALL else ("resid_pre", "resid_mid", "resid_post")
OUT = Path("notebook_out") / ("03_probes_small" if SMALL else "03_probes")

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
task = base.task
[(r.name, r.checkpoint_steps()) for r in runs]

# %% [markdown]
# ## Geometry at every checkpoint
#
# One tidy table: run, gamma, step, metric, hook, layer, head, group, position, value.

# %%
geometry = geometry_over_training(runs)
geometry.groupby("metric").size().rename("rows").to_frame()

# %% [markdown]
# Small init is known to *condense*: embeddings of tokens with the same role line up, and
# ordered tokens (the reasoning anchors) get an ordered geometry. Within-role cosine of the
# reasoning anchors, and its correlation with the distance between token values (negative
# when cosine falls off with numeric distance):

# %%
metric_over_steps(geometry, metric="within_cosine", group="reasoning_anchor")

# %%
metric_over_steps(geometry, metric="order_correlation", group="reasoning_anchor")

# %%
metric_over_steps(
    geometry,
    metric="separability",
    group="reasoning_anchor vs memory_anchor",
    title="reasoning vs memory anchors: nearest-centroid separability",
)

# %% [markdown]
# How far the weights move from their initialization (mean over weight matrices): small
# init moves relatively much further.

# %%
metric_over_steps(
    geometry,
    metric="relative_weight_change",
    title="relative weight change from init (mean over matrices)",
)

# %% [markdown]
# ## Linear probes with control tasks, at every checkpoint
#
# One probe per (component, layer, position, target), each with its control task (the
# same probe on labels that are a fixed random function of the input type at that position:
# the token there with the key and anchor tokens seen up to it).

# %%
probes = probes_over_training(runs, targets=TARGETS, components=COMPONENTS, n=N_ROWS)
probes.head()

# %% [markdown]
# The best selectivity over all layers and positions, per target, over training:

# %%
best = probes.groupby(["run", "gamma", "step", "target"], as_index=False).selectivity.max()
best.pivot_table(index=["target", "step"], columns="gamma", values="selectivity").round(3)

# %%
metric_over_steps(
    best,
    value="selectivity",
    target=TARGETS[-1],
    title=f"best selectivity of {TARGETS[-1]}, over training",
)

# %% [markdown]
# Where that target is readable at the end of the small-init run (layer x position of
# the residual stream after each block):

# %%
small = runs[-1]
last = small.resolve_step("last")
probe_heatmap(
    probes,
    value="selectivity",
    component="resid_post",
    run=small.name,
    step=last,
    target=TARGETS[-1],
)

# %% [markdown]
# ## CKA between layers, checkpoints and init scales
#
# Debiased linear CKA of the label-position residual stream (1 = the same representation
# up to rotation and scale). Here: the last checkpoint of each run, every layer against
# every layer.

# %%
cka = cka_over_training(runs, steps="last")
cka.pivot_table(index=["gamma_a", "layer_a"], columns=["gamma_b", "layer_b"], values="cka").round(3)

# %% [markdown]
# ## Token embeddings at the end of training
#
# Cosine similarity of the token embeddings, grouped by role and ordered by value, and
# their first two principal components, at large and at small init.

# %%
for r in runs:
    cosine_heatmap(
        r.load_model(), task, title=f"token-embedding cosine, gamma = {r.config.model.gamma:g}"
    ).show()

# %%
pca_scatter(
    small.load_model(), task, title=f"token embeddings, gamma = {small.config.model.gamma:g}: PCA"
)

# %% [markdown]
# ## Summary (also what the test suite checks)
#
# Two sanity checks that hold at any checkpoint: the key is linearly readable from the
# residual stream at its own position in layer 0 (it is the token embedding there), and
# weights have not moved at step 0.

# %%
key0 = probes[
    (probes.target == "key")
    & (probes.component == "resid_pre")
    & (probes.layer == 0)
    & (probes.position == 0)
]
change = (
    geometry[geometry.metric == "relative_weight_change"].groupby(["gamma", "step"]).value.mean()
)
RESULT = {
    "steps": {r.name: r.checkpoint_steps() for r in runs},
    "key_layer0_min_accuracy": float(key0.accuracy.min()),
    "weight_change_at_init": float(change.xs(0, level="step").abs().max()),
    "weight_change_at_end": {f"{g:g}": float(change.loc[(g, last)]) for g in GAMMAS},
    "best_selectivity_end": {
        f"{g:g} {t}": float(v)
        for (g, t), v in best[best.step == last].set_index(["gamma", "target"]).selectivity.items()
    },
    "cka_self": float(cka[(cka.run_a == cka.run_b) & (cka.layer_a == cka.layer_b)].cka.min()),
}
RESULT
