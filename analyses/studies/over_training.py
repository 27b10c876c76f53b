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

from initlens.analyses.studies.preference import curves, first_step_reaching
from initlens.models.errors import UserError
from initlens.models.forward import Weights, hook_name, run_with_cache
from initlens.models.progress import Progress, tracked
from initlens.models.run import Run
from initlens.models.tasks.base import dataset_arrays
from initlens.probes.geometry import cka_matrix, geometry_metrics, weight_change_table

Measure = Callable[[object, Run, int], "pd.DataFrame | dict"]


def open_runs(runs: Sequence[str | Path | Run]) -> list[Run]:
    """Run objects for paths (or runs), refusing an empty list."""
    if not runs:
        raise UserError("no runs given; pass one or more run directories")
    return [r if isinstance(r, Run) else Run.open(r) for r in runs]


def stage_steps(run: Run, threshold: float = 0.9) -> dict[int, str]:
    """{checkpoint step: stage} for init, early (the checkpoint nearest a tenth of
    training), the first checkpoint at or after each task type reaches `threshold`, and the
    end. Stages that fall on one checkpoint share it ("end, reasoning 90%")."""
    steps = run.checkpoint_steps()
    stages: dict[int, list[str]] = {}

    def add(step: int, label: str) -> None:
        stages.setdefault(step, []).append(label)

    add(steps[0], "init")
    if len(steps) > 2:
        add(min(steps[1:-1], key=lambda s: abs(s - steps[-1] / 10)), "early")
    task = run.config.task
    acc = curves(run.metrics(), "accuracy")
    for group in (task.reasoning_group, task.memory_group):
        if group in acc:
            reached = first_step_reaching(acc[group], threshold)
            if reached is not None:
                add(
                    next(s for s in steps if s >= reached) if reached <= steps[-1] else steps[-1],
                    f"{group} {threshold:.0%}",
                )
    add(steps[-1], "end")
    return {s: ", ".join(stages[s]) for s in sorted(stages)}


def named_steps(
    run: Run, steps: dict[int, str] | str | int | Sequence[int | str] | None = None
) -> dict[int, str]:
    """{step: stage name} of the chosen checkpoints (default: the `stage_steps`; any
    `select_steps` choice, each step named by its stage where it has one, else "step N")."""
    if isinstance(steps, dict):
        return steps
    stages = stage_steps(run)
    if steps is None:
        return stages
    return {s: stages.get(s, f"step {s}") for s in select_steps(run, steps)}


def select_steps(run: Run, steps: str | int | Sequence[int | str] | None) -> list[int]:
    """'all' (or None): every checkpoint; 'stages': those of `stage_steps`; 'last'/an
    int/a list: those (checked to exist)."""
    if steps is None or steps == "all":
        return run.checkpoint_steps()
    if steps == "stages":
        return list(stage_steps(run))
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
    cka = cka_matrix(list(reps.values()), debiased=debiased).tolist()
    return pd.DataFrame(
        [
            dict(
                run_a=a[0],
                gamma_a=a[1],
                step_a=a[2],
                layer_a=a[3],
                run_b=b[0],
                gamma_b=b[1],
                step_b=b[2],
                layer_b=b[3],
                cka=cka[i][j],
            )
            for i, a in enumerate(keys)
            for j, b in enumerate(keys)
        ]
    )


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
