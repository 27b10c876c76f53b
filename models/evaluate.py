"""Score a model on a task's evaluation groups: loss and accuracy at the label position."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from models.tasks import Task, group_mask


@dataclass(frozen=True)
class EvalSet:
    """Fixed rows per evaluation group, stacked; `group` indexes into `names`."""

    tokens: Int[torch.Tensor, "n seq"]
    labels: Int[torch.Tensor, " n"]
    group: Int[torch.Tensor, " n"]
    names: tuple[str, ...]
    rows: dict[str, np.ndarray]  # the same rows' metadata, for task-specific read-outs

    def to(self, device) -> "EvalSet":
        return EvalSet(self.tokens.to(device), self.labels.to(device), self.group.to(device),
                       self.names, self.rows)


def make_eval_set(task: Task, rows: dict[str, np.ndarray], size: int, seed: int) -> EvalSet:
    """Up to `size` rows of each of the task's groups, chosen once with `seed`."""
    rng = np.random.default_rng([seed, 2])
    picks, gid = [], []
    groups = task.eval_groups()
    for i, g in enumerate(groups):
        idx = np.flatnonzero(group_mask(rows, g))
        idx = rng.permutation(idx)[:size]
        picks.append(idx)
        gid.append(np.full(len(idx), i))
    idx = np.concatenate(picks)
    sub = {k: v[idx] for k, v in rows.items()}
    return EvalSet(torch.as_tensor(sub["tokens"]), torch.as_tensor(sub["label"]),
                   torch.as_tensor(np.concatenate(gid)), tuple(g.name for g in groups), sub)


def label_logits(model: torch.nn.Module, tokens: Int[torch.Tensor, "n seq"],
                 chunk: int = 4096) -> torch.Tensor:
    """Logits at the last position, computed in chunks without gradients."""
    with torch.inference_mode():
        return torch.cat([model(tokens[i:i + chunk])[:, -1] for i in
                          range(0, len(tokens), chunk)])


def evaluate(model: torch.nn.Module, task: Task, data: EvalSet) -> dict[tuple[str, str], float]:
    """{(group, metric): value} with metrics loss and accuracy, plus task extras."""
    was_training = model.training
    model.eval()
    logits = label_logits(model, data.tokens)
    model.train(was_training)
    return score_logits(logits, task, data)


def score_logits(logits: Float[torch.Tensor, "n vocab"], task: Task,
                 data: EvalSet) -> dict[tuple[str, str], float]:
    """Per-group mean loss and accuracy of label logits for `data`'s rows, plus task extras."""
    loss = F.cross_entropy(logits.float(), data.labels, reduction="none")
    pred = logits.argmax(-1)
    correct = (pred == data.labels).float()
    n = len(data.names)
    counts = torch.bincount(data.group, minlength=n).clamp(min=1)
    mean_loss = torch.zeros(n, device=loss.device).index_add_(0, data.group, loss) / counts
    mean_acc = torch.zeros(n, device=loss.device).index_add_(0, data.group, correct) / counts
    out = {}
    for i, name in enumerate(data.names):
        out[(name, "loss")] = float(mean_loss[i])
        out[(name, "accuracy")] = float(mean_acc[i])
    out.update(task.extra_metrics(data.rows, pred.cpu().numpy()))
    return out
