"""Any probe or metric over every checkpoint of one or several runs, as one tidy table.

`over_training(runs, measure)` loads each checkpoint in turn, calls
`measure(model, run, step)` (a DataFrame or a dict of scalars) and stacks the results with
run, gamma and step columns, so comparing init scales over training is a group-by.
`geometry_over_training` and `cka_over_training` are the two read-outs the CLI writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from initlens.models.errors import UserError
from initlens.models.forward import Weights, hook_name, run_with_cache
from initlens.models.progress import Progress, tracked
from initlens.models.run import Run
from initlens.models.tasks.base import dataset_arrays
from initlens.probes.geometry import geometry_metrics, linear_cka, weight_change_table

Measure = Callable[[object, Run, int], "pd.DataFrame | dict"]


def open_runs(runs: Sequence[str | Path | Run]) -> list[Run]:
    """Run objects for paths (or runs), refusing an empty list."""
    if not runs:
        raise UserError("no runs given; pass one or more run directories")
    return [r if isinstance(r, Run) else Run.open(r) for r in runs]


def select_steps(run: Run, steps: str | int | Sequence[int | str] | None) -> list[int]:
    """'all' (or None): every checkpoint; 'last'/an int/a list: those (checked to exist)."""
    if steps is None or steps == "all":
        return run.checkpoint_steps()
    if isinstance(steps, (str, int)):
        return [run.resolve_step(steps)]
    return [run.resolve_step(s) for s in steps]


def over_training(
    runs: Sequence[str | Path | Run],
    measure: Measure,
    steps: str | int | Sequence[int | str] | None = "all",
    device: str | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """measure(model, run, step) at each selected checkpoint of each run, stacked into
    one table with run, gamma and step first (a dict result becomes metric/value rows);
    `progress` hears of each checkpoint done."""
    frames = []
    todo = [(run, step) for run in open_runs(runs) for step in select_steps(run, steps)]
    for run, step in tracked(todo, progress, len(todo), "checkpoints"):
        result = measure(run.load_model(step, device), run, step)
        if isinstance(result, dict):
            result = pd.DataFrame({"metric": list(result), "value": list(result.values())})
        frames.append(result.assign(run=run.name, gamma=run.config.model.gamma, step=step))
    table = pd.concat(frames, ignore_index=True)
    first = ["run", "gamma", "step"]
    return table[first + [c for c in table.columns if c not in first]]


def last_steps(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last step in a tidy over-training table."""
    return table[table.step == table.groupby("run").step.transform("max")]


def best_selectivity(probes: pd.DataFrame) -> pd.DataFrame:
    """Per run, step and target: the best probe selectivity over hooks and positions."""
    return probes.groupby(["run", "gamma", "step", "target"], as_index=False).selectivity.max()


def eval_rows(run: Run, n: int = 512, seed: int = 0) -> dict:
    """A fixed sample of the run's task rows (numpy columns), the same at every step."""
    rows = dataset_arrays(run.config.task.generate(run.config.train.data_seed))
    pick = torch.randperm(len(rows["label"]), generator=torch.Generator().manual_seed(seed))
    pick = pick[: min(n, len(pick))].numpy()
    return {k: v[pick] for k, v in rows.items()}


def geometry_over_training(
    runs: Sequence[str | Path | Run],
    steps="all",
    n: int = 512,
    seed: int = 0,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """`geometry_metrics` at each checkpoint (on n fixed task rows; with the compressibility
    of the label-position features entering the unembedding: the last block's resid_post),
    plus each weight matrix's relative change from its init (relative_weight_change)."""
    runs = open_runs(runs)
    rows = {run.name: eval_rows(run, n, seed) for run in runs}
    inits: dict[str, object] = {}

    def measure(model, run, step):
        last = hook_name("resid_post", Weights.of(model).n_layers - 1)
        table = geometry_metrics(model, run.config.task, rows[run.name]["tokens"], [last])
        if run.name not in inits:
            inits[run.name] = run.load_model(0, "cpu")
        change = weight_change_table(model, inits[run.name])
        change = change[change.norm_0 > 0]  # biases start at zero: no relative change
        change = pd.DataFrame(
            {
                "metric": "relative_weight_change",
                "hook": change.parameter,
                "layer": change.layer,
                "value": change.relative_change,
            }
        )
        return pd.concat([table, change], ignore_index=True)

    return over_training(runs, measure, steps, progress=progress)


def label_activations(
    model, tokens: torch.Tensor | np.ndarray, component: str = "resid_post"
) -> dict[int, torch.Tensor]:
    """{layer: [batch, d]} activations of `component` at the label (last) position."""
    w = Weights.of(model)
    with torch.inference_mode():
        _, cache = run_with_cache(
            w, torch.as_tensor(tokens).to(w["embed.weight"].device), (component,)
        )
    return {
        layer: cache[hook_name(component, layer)][:, -1].flatten(1).cpu()
        for layer in range(w.n_layers)
    }


def cka_over_training(
    runs: Sequence[str | Path | Run],
    steps="all",
    component: str = "resid_post",
    n: int = 512,
    seed: int = 0,
    debiased: bool = True,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Linear CKA between every pair of (run, step, layer) representations of the label
    position, on the same n task rows (taken from the first run's task, so runs must share
    a task to be compared): between layers, between checkpoints, and across init scales."""
    runs = open_runs(runs)
    tokens = eval_rows(runs[0], n, seed)["tokens"]
    seq = tokens.shape[1]
    for run in runs[1:]:
        if run.config.task.seq_len != seq:
            raise UserError(
                f"run {run.name} has seq_len {run.config.task.seq_len}, not {seq}:"
                f" CKA compares runs on the same inputs"
            )
    todo = [(run, step) for run in runs for step in select_steps(run, steps)]
    reps = {}
    for run, step in tracked(todo, progress, len(todo), "checkpoints"):
        for layer, acts in label_activations(run.load_model(step), tokens, component).items():
            reps[(run.name, run.config.model.gamma, step, layer)] = acts
    keys = list(reps)
    out = []
    for i, a in enumerate(keys):
        for b in keys[i:]:
            value = linear_cka(reps[a], reps[b], debiased=debiased)
            for x, y in ((a, b), (b, a)) if a != b else ((a, b),):
                out.append(
                    dict(
                        run_a=x[0],
                        gamma_a=x[1],
                        step_a=x[2],
                        layer_a=x[3],
                        run_b=y[0],
                        gamma_b=y[1],
                        step_b=y[2],
                        layer_b=y[3],
                        cka=value,
                    )
                )
    return pd.DataFrame(out)


def probes_over_training(
    runs: Sequence[str | Path | Run],
    targets=("key",),
    components=("resid_pre", "resid_mid", "resid_post"),
    steps="all",
    n: int = 20000,
    seed: int = 0,
    C: float = 1.0,
    test_fraction: float = 0.2,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Linear probes (with control tasks) at every (component, layer, position) for each
    target, at each checkpoint; each fit starts from the previous checkpoint's solution."""
    from initlens.probes.linear import check_request, probe_model

    check_request(targets, components)
    runs = open_runs(runs)
    rows = {run.name: eval_rows(run, n, seed) for run in runs}
    states: dict[str, dict] = {run.name: {} for run in runs}

    def measure(model, run, step):  # the components this model has (Emb-MLP: two)
        present = [c for c in components if Weights.of(model).has(c)]
        return probe_model(
            model,
            rows[run.name],
            run.config.task,
            targets,
            present,
            test_fraction=test_fraction,
            seed=seed,
            C=C,
            state=states[run.name],
        )

    return over_training(runs, measure, steps, progress=progress)
