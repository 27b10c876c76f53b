"""How strongly a run prefers reasoning over memorization, from its tidy metrics.

Three read-outs per run (docs/SCIENCE.md section 1.4):
- the first step at which each group reaches an accuracy threshold (90% by default);
- the signed area between the reasoning and memory accuracy curves over normalized
  training time (positive: reasoning ahead; in [-1, 1]);
- the paper's relative loss gap (L_memory - L_reasoning) / L_reasoning at every step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from initlens.models.run import Run


def curves(metrics: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """One column per group, indexed by step, for one run's metrics."""
    sub = metrics[metrics.metric == metric]
    return sub.pivot_table(index="step", columns="group", values="value").sort_index()


def first_step_reaching(curve: pd.Series, threshold: float = 0.9) -> int | None:
    """First evaluated step with value >= threshold, or None if never reached."""
    hit = curve.index[curve.to_numpy() >= threshold]
    return int(hit[0]) if len(hit) else None


def signed_area(reasoning: pd.Series, memory: pd.Series) -> float:
    """Integral of (reasoning - memory) accuracy over training time scaled to [0, 1]."""
    steps = reasoning.index.to_numpy(dtype=float)
    if len(steps) < 2 or steps[-1] == steps[0]:
        return 0.0
    t = (steps - steps[0]) / (steps[-1] - steps[0])
    diff = reasoning.to_numpy() - memory.reindex(reasoning.index).to_numpy()
    return float(np.sum((diff[1:] + diff[:-1]) / 2 * np.diff(t)))


def relative_loss_gap(
    metrics: pd.DataFrame, reasoning: str = "reasoning", memory: str = "memory"
) -> pd.Series:
    """(L_memory - L_reasoning) / L_reasoning per step; > 0 means reasoning is ahead."""
    loss = curves(metrics, "loss")
    if reasoning not in loss or memory not in loss:  # no evaluation logged yet
        return pd.Series(dtype=float, name="relative_loss_gap")
    return ((loss[memory] - loss[reasoning]) / loss[reasoning]).rename("relative_loss_gap")


def preference_row(run: Run, threshold: float = 0.9) -> dict:
    """The preference summary of one run, as one tidy row."""
    task = run.config.task
    r, m = task.reasoning_group, task.memory_group
    metrics = run.metrics()
    acc = curves(metrics)
    row = {
        "run": run.name,
        "gamma": run.config.model.gamma,
        "seed": run.config.train.seed,
        "task": task.name,
        "steps": int(acc.index.max()) if len(acc) else 0,
    }
    groups = [g.name for g in task.eval_groups()]  # every group, evaluated yet or not
    for group in dict.fromkeys([*groups, *acc.columns]):
        curve = acc[group] if group in acc else pd.Series(dtype=float)
        row[f"step_to_{int(threshold * 100)}_{group}"] = first_step_reaching(curve, threshold)
        row[f"final_acc_{group}"] = float(curve.iloc[-1]) if len(curve) else float("nan")
    t_r, t_m = (
        row.get(f"step_to_{int(threshold * 100)}_{r}"),
        row.get(f"step_to_{int(threshold * 100)}_{m}"),
    )
    # Lead of reasoning over memory in steps (a never-reached group counts as the end).
    end = row["steps"]
    row["reasoning_lead_steps"] = (t_m if t_m is not None else end) - (
        t_r if t_r is not None else end
    )
    row["signed_area"] = signed_area(acc[r], acc[m]) if r in acc and m in acc else float("nan")
    gap = relative_loss_gap(metrics, r, m)
    row["mean_relative_loss_gap"] = float(gap.mean()) if len(gap) else float("nan")
    return row


def preference_table(runs: list[Run], threshold: float = 0.9) -> pd.DataFrame:
    """One row per run, sorted by gamma."""
    table = pd.DataFrame([preference_row(run, threshold) for run in runs])
    steps = [c for c in table.columns if c.startswith("step_to_")]
    table = table.astype({c: "Int64" for c in steps})  # integers, with <NA> for never
    return table.sort_values(["gamma", "run"]).reset_index(drop=True)


def readout_row(run: Run) -> dict:
    """The task's read-outs (`Task.readouts`) at the last step and at the evaluation step
    of lowest held-out (reasoning-group) loss: e.g. rule_extrapolation and
    rule_extrapolation_at_best (the score Reizinger et al. report), and that best_step."""
    task = run.config.task
    if not task.readouts:
        return {}
    metrics = run.metrics()
    loss = curves(metrics, "loss").get(task.reasoning_group)
    best = int(loss.idxmin()) if loss is not None and loss.notna().any() else None
    row = {"best_step": best}
    for group, metric in task.readouts:
        column = f"{group}_{metric}" if metric in ("loss", "accuracy") else metric
        values = (
            metrics[(metrics.group == group) & (metrics.metric == metric)]
            .set_index("step")
            .value.sort_index()
        )
        row[column] = float(values.iloc[-1]) if len(values) else float("nan")
        row[f"{column}_at_best"] = float(values.get(best, float("nan")))
    return row
