"""The one training loop, for a single run and for an ensemble alike.

What is trained is a `Members`: k models updated in lockstep by one step function (a
single run is one member; an ensemble is k members with stacked weights). The loop owns
everything else: the learning-rate schedule, the evaluation and checkpoint cadence, the
running train loss, divergence checks, progress and the final summary, and writes each
member's run directory through its `RunWriter`.
"""

from __future__ import annotations

import math
import time
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float

from initlens.models.config import TrainConfig
from initlens.models.progress import progress_bar
from initlens.models.run import Run
from initlens.models.run_writer import RunWriter


def lr_at(step: int, cfg) -> float:
    """The learning rate of update `step` (0-based) under cfg.schedule.

    warmup_cosine: linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio.
    gradual_warmup: the same cosine after a linear warm-up from cfg.lr / warmup_multiplier
    (GradualWarmupScheduler + CosineAnnealingLR as the anchor-function authors chain them,
    in closed form). inverse_sqrt: linear warm-up, then cfg.lr * sqrt(warmup_steps / step).
    """
    schedule = cfg.schedule
    if schedule == "inverse_sqrt":
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return cfg.lr * (max(cfg.warmup_steps, 1) / max(step, 1)) ** 0.5
    if step < cfg.warmup_steps:
        if schedule == "gradual_warmup":
            start = 1 / cfg.warmup_multiplier
            return cfg.lr * (start + (1 - start) * step / cfg.warmup_steps)
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def eval_steps(steps: int, every: int) -> list[int]:
    """Every `every` steps, plus log-spaced steps early on, where curves move fastest."""
    early = np.geomspace(1, max(min(steps, 5 * every), 1), 20).round().astype(int)
    return sorted({0, steps, *range(0, steps + 1, every), *early.tolist()})


def checkpoint_steps(steps: int, every: int, n: int) -> list[int]:
    """Step 0, the last step, and `n` log-spaced steps in between."""
    inner = np.geomspace(max(min(every, steps), 1), steps, max(n, 1)).round().astype(int)
    return sorted({0, steps, *inner.tolist()})


def batch_indices(step: int, n_rows: int, batch_size: int, seed: int) -> torch.Tensor:
    """Rows for update `step`: epoch-wise shuffles, each a function of (seed, epoch) only."""
    per_epoch = max(n_rows // batch_size, 1)
    epoch, offset = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7)
    perm = torch.randperm(n_rows, generator=gen)
    start = offset * batch_size
    return perm[start : start + batch_size]


def adamw(params: list[torch.Tensor], cfg, matrix_ndim: int = 2) -> torch.optim.AdamW:
    """AdamW over the trainable `params`; weight decay on matrices only (biases and
    LayerNorm weights are not decayed), or on all of them when cfg.decay is "all".

    matrix_ndim: dimensions of a matrix parameter (3 when members are stacked)."""
    params = [p for p in params if p.requires_grad]
    floor = 0 if cfg.decay == "all" else matrix_ndim
    groups = [
        {"params": [p for p in params if p.ndim >= floor], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < floor], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


@runtime_checkable  # so that a runtime type checker (the tests' beartype) can check it
class Members(Protocol):
    """k models trained in lockstep: what differs between a single run and an ensemble."""

    optimizer: torch.optim.Optimizer  # the trainer sets its learning rate
    n_params: int  # parameters of one member
    device: torch.device

    def step(self, update: int) -> Float[torch.Tensor, " k"]:
        """One optimizer update on the batches of update `update` (0-based); the losses."""

    def evaluate(self, members: list[int]) -> list[dict[tuple[str, str], float]]:
        """Evaluation scores, {(group, metric): value}, of the given members."""

    def checkpoint(self, member: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """A member's weights and optimizer state, as a standalone run would save them."""

    def finite(self) -> list[bool]:
        """Per member: whether all its weights are finite."""


def diverged(out, step: int, what: str) -> str:
    """Why a run stopped: something it computed is no longer finite."""
    kept = Run(out).checkpoint_steps()
    return f"training diverged at step {step}: {what}; lower the learning rate or raise gamma (" + (
        f"checkpoints up to step {kept[-1]} are kept)" if kept else "no checkpoint was kept)"
    )


def run_training(
    members: Members,
    writers: list[RunWriter],
    tc: TrainConfig,
    start: int = 0,
    stop_at: int | None = None,
    desc: str = "training",
    progress: bool | None = None,
) -> list[str | None]:
    """Train `members` from update `start` to `stop_at` (default: tc.steps), writing member
    i's run directory through writers[i]; per member, why it failed, or None.

    A member whose training loss, weights or evaluation scores stop being finite (checked
    at every evaluation, before its checkpoint is saved) is marked failed and diverged, and
    its files stop changing; the others go on. An optimizer overflow stops every member.
    Reaching tc.steps finishes each remaining run (summary, done status).
    """
    k = len(writers)
    evals = set(eval_steps(tc.steps, tc.eval_every))
    ckpts = set(checkpoint_steps(tc.steps, tc.eval_every, tc.n_checkpoints))
    last = tc.steps if stop_at is None else min(stop_at, tc.steps)
    failed: list[str | None] = [None] * k
    t0 = time.time()

    def alive() -> list[int]:
        return [i for i in range(k) if failed[i] is None]

    def stop(i: int, step: int, what: str) -> None:
        failed[i] = diverged(writers[i].path, step, what)
        writers[i].fail(step, failed[i], diverged=True)

    def record(step: int, losses: list[float] | None) -> list[dict]:
        finite = members.finite()
        for i in alive():
            if losses is not None and not math.isfinite(losses[i]):
                stop(i, step, f"the training loss became {losses[i]}")
            elif not finite[i]:
                stop(i, step, "the weights are no longer finite")
        which = alive()
        scores = members.evaluate(which)
        for i, values in zip(which, scores):
            bad = [f"{g}/{m}" for (g, m), v in values.items() if not math.isfinite(v)]
            if bad:
                stop(i, step, f"the evaluation gave non-finite {', '.join(bad)}")
                continue
            values = dict(values)
            if losses is not None:
                values[("train", "loss")] = losses[i]
            values[("train", "lr")] = lr_at(max(step - 1, 0), tc)
            writers[i].append_metrics(step, values)
        return scores

    def save(step: int) -> None:
        for i in alive():
            writers[i].save_checkpoint(step, *members.checkpoint(i))

    if start == 0:
        record(0, None)
        save(0)
    bar = progress_bar(last, desc, "step", progress, initial=start)
    loss_sum, n_loss = torch.zeros(k, device=members.device), 0
    try:
        for step in range(start + 1, last + 1):
            for group in members.optimizer.param_groups:
                group["lr"] = lr_at(step - 1, tc)
            try:
                loss_sum += members.step(step - 1)
            except RuntimeError as e:  # AdamW: "value cannot be converted ... overflow"
                if "overflow" not in str(e):
                    raise
                for i in alive():
                    stop(i, step, f"the optimizer overflowed ({str(e).splitlines()[0]})")
                break
            n_loss += 1
            bar.update(1)
            if step in evals or step in ckpts or step == last:
                means = [total / n_loss for total in loss_sum.tolist()]  # in float64
                loss_sum.zero_()
                n_loss = 0
                scores = record(step, means)
                if not alive():
                    break
                if k == 1:
                    bar.set_postfix(
                        {g: f"{v:.2f}" for (g, m), v in scores[0].items() if m == "accuracy"}
                    )
            if step in ckpts or step == last:
                save(step)
    finally:
        bar.close()
        for writer in writers:
            writer.close()
    seconds = time.time() - t0
    if last == tc.steps:
        for i in alive():
            writers[i].finish(members.n_params, members.device, seconds)
    return failed
