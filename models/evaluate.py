"""Score a model on a task's evaluation groups: loss and accuracy at the label position
(next-token tasks: over every non-PAD target), plus greedy completions of prompt sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from initlens.models.tasks import Task, group_mask
from initlens.models.tasks.base import PAD


@dataclass(frozen=True)
class EvalSet:
    """Fixed rows per evaluation group, stacked; `group` indexes into `names`."""

    tokens: Int[torch.Tensor, "n seq"]
    labels: Int[torch.Tensor, " n"]
    group: Int[torch.Tensor, " n"]
    names: tuple[str, ...]
    rows: dict[str, np.ndarray]  # the same rows' metadata, for task-specific read-outs
    prompts: dict[str, torch.Tensor] = field(default_factory=dict)  # completed greedily

    def to(self, device) -> EvalSet:
        return EvalSet(
            self.tokens.to(device),
            self.labels.to(device),
            self.group.to(device),
            self.names,
            self.rows,
            {k: v.to(device) for k, v in self.prompts.items()},
        )


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
    prompts = {k: torch.as_tensor(v) for k, v in task.prompt_sets(rows).items()}
    return EvalSet(
        torch.as_tensor(sub["tokens"]),
        torch.as_tensor(sub["label"]),
        torch.as_tensor(np.concatenate(gid)),
        tuple(g.name for g in groups),
        sub,
        prompts,
    )


def next_token_loss(
    logits: Float[torch.Tensor, "n seq vocab"],
    tokens: Int[torch.Tensor, "n seq"],
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of predicting each next token, PAD targets ignored: the mean over
    real targets, or ("none") [n, seq - 1] with zeros at PAD targets."""
    targets = tokens[:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=PAD,
        reduction="none" if reduction == "none" else "mean",
    )
    return loss.view(targets.shape) if reduction == "none" else loss


def greedy_complete(
    model: torch.nn.Module, prompts: Int[torch.Tensor, "n p"], length: int
) -> Int[torch.Tensor, "n length"]:
    """`prompts` continued greedily (argmax) to `length` tokens, without gradients."""
    tokens = prompts
    with torch.inference_mode():
        while tokens.shape[1] < length:
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
    return tokens


def label_logits(
    model: torch.nn.Module, tokens: Int[torch.Tensor, "n seq"], chunk: int = 4096
) -> torch.Tensor:
    """Logits at the last position, computed in chunks without gradients."""
    with torch.inference_mode():
        return torch.cat(
            [model(tokens[i : i + chunk])[:, -1] for i in range(0, len(tokens), chunk)]
        )


def evaluate(model: torch.nn.Module, task: Task, data: EvalSet) -> dict[tuple[str, str], float]:
    """{(group, metric): value} with metrics loss and accuracy, plus task extras."""
    was_training = model.training
    model.eval()
    if task.next_token:
        scores = score_next_token(model, data)
        scores.update(
            task.completion_scores(
                {
                    name: [
                        task.decode(row[1:])
                        for row in greedy_complete(model, prompts, task.seq_len).tolist()
                    ]
                    for name, prompts in data.prompts.items()
                }
            )
        )
    else:
        scores = score_logits(label_logits(model, data.tokens), task, data)
    model.train(was_training)
    return scores


def score_next_token(model: torch.nn.Module, data: EvalSet) -> dict[tuple[str, str], float]:
    """Per group: mean next-token loss and accuracy over the real (non-PAD) targets."""
    with torch.inference_mode():
        logits = model(data.tokens)
    loss = next_token_loss(logits, data.tokens, "none")
    real = data.tokens[:, 1:] != PAD
    correct = (logits[:, :-1].argmax(-1) == data.tokens[:, 1:]) & real
    out = {}
    for i, name in enumerate(data.names):
        mine = data.group == i
        n = real[mine].sum().clamp(min=1)
        out[(name, "loss")] = float(loss[mine].sum() / n)
        out[(name, "accuracy")] = float(correct[mine].sum() / n)
    return out


def score_logits(
    logits: Float[torch.Tensor, "n vocab"], task: Task, data: EvalSet
) -> dict[tuple[str, str], float]:
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
