"""Training one model: AdamW, warm-up + cosine decay, loss at the label position (or, for
next-token tasks, at every position).

Batches are a pure function of (seed, step), and the optimizer state is checkpointed with
the weights, so `resume=True` continues from the last checkpoint and ends with exactly the
weights an uninterrupted run would have. The loop itself is `models.trainer`'s, shared
with ensembles; this module supplies the one member and its step.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from initlens.models.build import build_model, n_params, realized_init, resolve_device
from initlens.models.checkpoint import load_optimizer_tensors, optimizer_tensors
from initlens.models.config import RunConfig
from initlens.models.errors import UserError
from initlens.models.evaluate import EvalSet, evaluate, make_eval_set, next_token_loss
from initlens.models.progress import show_progress
from initlens.models.run import Run
from initlens.models.run_writer import RunWriter
from initlens.models.tasks import as_tensors, dataset_arrays
from initlens.models.trainer import (
    adamw,
    batch_indices,
    checkpoint_steps,
    eval_steps,
    lr_at,
    run_training,
)

__all__ = [
    "batch_indices",
    "checkpoint_steps",
    "eval_steps",
    "lr_at",
    "mark_failed",
    "show_progress",
    "train",
    "training_data",
]


@contextmanager
def checkpoint_fits(out: Path, step: int, option: str = "out"):
    """Loading a checkpoint (or its optimizer state) that does not fit the model becomes a
    UserError saying which."""
    try:
        yield
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(
            f"the checkpoint of step {step} in {out} does not match its config.json "
            f"({first}); restore the checkpoint, or delete "
            f"checkpoints/optimizer.safetensors to retrain from the start",
            option=option,
        ) from None


def train(
    cfg: RunConfig | None,
    out: str | Path,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool | None = None,
) -> Run:
    """Train one model into run directory `out` and return it.

    resume: continue the run in `out` from its last checkpoint (cfg may be None).
    stop_at: stop resumably after this step (for training in chunks, and tests).
    """
    if cfg is not None:
        cfg.validate()
    # The lock comes first: a run that another process is still starting has no
    # config.json yet, and "in use by another process" is the error that helps.
    with RunWriter(out) as writer:
        if resume:
            saved = Run.open(out)
            if cfg is not None and cfg != saved.config:
                raise UserError(
                    f"the given config differs from {out}/config.json; resume "
                    f"without giving a config or options, or train into another "
                    f"output folder"
                )
            cfg = saved.config.validate()  # a config.json edited by hand is checked too
            if saved.done:
                return saved
        return _train(cfg, writer, resume, stop_at, progress)


def _train(
    cfg: RunConfig, writer: RunWriter, resume: bool, stop_at: int | None, progress: bool | None
) -> Run:
    """`train` as the one writer of the run: everything is checked before anything is
    written."""
    out = writer.path
    point = None
    if resume:
        saved = Run(out)
        saved.metrics()  # readable, or a UserError before anything is written
        point = saved.resume_point()
    else:
        writer.check_free()
    tc = cfg.train
    device = resolve_device(tc.device)

    rows, x_train, y_train = training_data(cfg, device)
    evalset = make_eval_set(cfg.task, rows, tc.eval_size, tc.seed).to(device)

    model = build_model(cfg, device)
    opt = adamw(list(model.parameters()), tc)
    init = realized_init(model, cfg.model)
    start = 0
    if point is not None:
        start, weights, opt_tensors = point
        with checkpoint_fits(out, start):
            model.load_state_dict(weights, strict=True)
            load_optimizer_tensors(opt, opt_tensors)
    if resume:  # metrics written so far are kept; redone evaluations are not rewritten
        writer.resume(init)
    else:
        writer.start(cfg, init)
    model.train()

    member = OneModel(cfg, model, opt, x_train, y_train, evalset, device)
    [failed] = run_training(
        member, [writer], tc, start, stop_at, desc=f"gamma={cfg.model.gamma}", progress=progress
    )
    if failed:
        raise UserError(failed, option="lr")
    return Run(out)


class OneModel:
    """A single run as the trainer's `Members`: one model, updated by plain backprop."""

    def __init__(
        self,
        cfg: RunConfig,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        evalset: EvalSet,
        device,
    ):
        self.cfg, self.model, self.optimizer = cfg, model, optimizer
        self.x_train, self.y_train, self.evalset = x_train, y_train, evalset
        self.device = device
        self.n_params = n_params(model)

    def step(self, update: int) -> Float[torch.Tensor, " 1"]:
        tc = self.cfg.train
        idx = batch_indices(update, len(self.x_train), tc.batch_size, tc.batch_order_seed).to(
            self.device
        )
        loss = batch_loss(self.cfg.task, self.model, self.x_train[idx], self.y_train[idx])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        return loss.detach().reshape(1)

    def evaluate(self, members: list[int]) -> list[dict[tuple[str, str], float]]:
        return [evaluate(self.model, self.cfg.task, self.evalset) for _ in members]

    def checkpoint(self, member: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self.model.state_dict(), optimizer_tensors(self.optimizer)

    def finite(self) -> list[bool]:
        return [bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all())]


def batch_loss(
    task, model, tokens: Int[torch.Tensor, "batch seq"], labels: Int[torch.Tensor, " batch"]
) -> Float[torch.Tensor, ""]:
    """Cross-entropy at the label (last) position; next-token tasks: at every position."""
    if task.next_token:
        return next_token_loss(model(tokens), tokens)
    return F.cross_entropy(model(tokens)[:, -1], labels)


def training_data(cfg: RunConfig, device) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The task's rows (all splits) and the training split's tokens and labels on `device`."""
    rows = dataset_arrays(cfg.task.generate(cfg.train.data_seed))
    train_rows = {k: v[rows["split"] == "train"] for k, v in rows.items()}
    return (rows, *as_tensors(train_rows, device))


def mark_failed(out: str | Path, step: int, message: str) -> None:
    """Mark the run in `out` failed at `step`, saying why (for runs that died elsewhere)."""
    RunWriter(out).fail(step, message)
