"""The training loop: AdamW, warm-up + cosine decay, loss at the label position (or, for
next-token tasks, at every position).

Batches are a pure function of (seed, step), and the optimizer state is checkpointed with
the weights, so `resume=True` continues from the last checkpoint and ends with exactly the
weights an uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from initlens.models.build import build_model, n_params, realized_init, resolve_device
from initlens.models.checkpoint import (atomic_write, load_optimizer_tensors, load_tensors,
                               optimizer_tensors, save_tensors, write_json)
from initlens.models.config import RunConfig
from initlens.models.errors import UserError
from initlens.models.evaluate import evaluate, make_eval_set, next_token_loss
from initlens.models.progress import show_progress
from initlens.models.run import Run, checkpoint_path
from initlens.models.tasks import as_tensors, dataset_arrays


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
    if step < cfg.warmup_steps:
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
    return perm[start:start + batch_size]


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases and LayerNorm weights are not decayed)."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def prepare_dir(out: Path, resume: bool) -> None:
    if resume:
        return
    if (out / "config.json").exists():
        state = Run(out).status.get("state", "unknown")
        raise UserError(f"{out} already holds a run (state: {state}); pass --resume to "
                        f"continue it, or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new --out folder")


def train(cfg: RunConfig | None, out: str | Path, resume: bool = False,
          stop_at: int | None = None, progress: bool | None = None) -> Run:
    """Train one model into run directory `out` and return it.

    resume: continue the run in `out` from its last checkpoint (cfg may be None).
    stop_at: stop resumably after this step (for training in chunks, and tests).
    """
    out = Path(out)
    prepare_dir(out, resume)
    if resume:
        saved = Run.open(out)
        if cfg is not None and cfg != saved.config:
            raise UserError(f"the given options differ from {out}/config.json; resume with "
                            f"no other options, or train into a new --out")
        cfg = saved.config
        if saved.done:
            return saved
    cfg.validate()
    tc = cfg.train
    device = resolve_device(tc.device)

    rows, x_train, y_train = training_data(cfg, device)
    evalset = make_eval_set(cfg.task, rows, tc.eval_size, tc.seed).to(device)

    model = build_model(cfg, device)
    opt = make_optimizer(model, tc)
    start = 0
    if resume and (state_file := out / "checkpoints" / "optimizer.safetensors").exists():
        opt_tensors, meta = load_tensors(state_file)
        start = int(meta["step"])
        weights, _ = load_tensors(checkpoint_path(out, start))
        model.load_state_dict(weights, strict=True)
        load_optimizer_tensors(opt, opt_tensors)
        _truncate_metrics(out / "metrics.jsonl", start)
    else:  # a new run, or one that died before its first checkpoint
        start_run_dir(out, cfg, model)
    model.train()

    evals = set(eval_steps(tc.steps, tc.eval_every))
    ckpts = set(checkpoint_steps(tc.steps, tc.eval_every, tc.n_checkpoints))
    last = tc.steps if stop_at is None else min(stop_at, tc.steps)
    metrics_file = (out / "metrics.jsonl").open("a")
    t0 = time.time()

    def record(step: int, train_loss: float | None) -> dict:
        scores = evaluate(model, cfg.task, evalset)
        write_scores(metrics_file, step, scores, train_loss, tc)
        return scores

    def save(step: int) -> None:
        save_checkpoint(out, step, model.state_dict(), optimizer_tensors(opt))

    if start == 0:
        record(0, None)
        save(0)
    bar = tqdm(total=last, initial=start, desc=f"gamma={cfg.model.gamma}", unit="step",
               disable=not (show_progress() if progress is None else progress))
    loss_sum, n_loss = torch.zeros((), device=device), 0
    try:
        for step in range(start + 1, last + 1):
            for g in opt.param_groups:
                g["lr"] = lr_at(step - 1, tc)
            idx = batch_indices(step - 1, len(x_train), tc.batch_size,
                                tc.batch_order_seed).to(device)
            loss = batch_loss(cfg.task, model, x_train[idx], y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            loss_sum += loss.detach()
            n_loss += 1
            bar.update(1)
            if step in evals or step in ckpts or step == last:
                train_loss = float(loss_sum) / n_loss
                if not math.isfinite(train_loss):
                    _fail(out, step, diverged(out, step, train_loss))
                loss_sum.zero_()
                n_loss = 0
                scores = record(step, train_loss)
                bar.set_postfix({g: f"{v:.2f}" for (g, m), v in scores.items()
                                 if m == "accuracy"})
            if step in ckpts or step == last:
                save(step)
    finally:
        bar.close()
        metrics_file.close()

    if last == tc.steps:
        finish(out, n_params(model), device, time.time() - t0)
    return Run(out)


def batch_loss(task, model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at the label (last) position; next-token tasks: at every position."""
    if task.next_token:
        return next_token_loss(model(tokens), tokens)
    return F.cross_entropy(model(tokens)[:, -1], labels)


def training_data(cfg: RunConfig, device) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The task's rows (all splits) and the training split's tokens and labels on `device`."""
    rows = dataset_arrays(cfg.task.generate(cfg.train.data_seed))
    train_rows = {k: v[rows["split"] == "train"] for k, v in rows.items()}
    return (rows, *as_tensors(train_rows, device))


def start_run_dir(out: Path, cfg: RunConfig, model) -> None:
    """config.json, the realized init and an empty metrics file of a new run."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.json", cfg.to_json() + "\n")
    write_json(out / "init.json", realized_init(model, cfg.model))
    atomic_write(out / "metrics.jsonl", "")


def write_scores(file, step: int, scores: dict, train_loss: float | None, tc) -> None:
    """Append one evaluation (plus the train loss and lr) to metrics.jsonl as tidy rows."""
    scores = dict(scores)
    if train_loss is not None:
        scores[("train", "loss")] = train_loss
    scores[("train", "lr")] = lr_at(max(step - 1, 0), tc)
    for (group, metric), value in scores.items():
        file.write(json.dumps({"step": step, "group": group, "metric": metric,
                               "value": value}) + "\n")
    file.flush()


def save_checkpoint(out: Path, step: int, weights: dict, opt_tensors: dict) -> None:
    """Weights at `step`, the optimizer state to resume from, and the status."""
    save_tensors(checkpoint_path(out, step), weights, {"step": str(step)})
    save_tensors(out / "checkpoints" / "optimizer.safetensors", opt_tensors,
                 {"step": str(step)})
    write_json(out / "status.json", {"state": "running", "step": step})


def finish(out: Path, n_params: int, device, seconds: float) -> None:
    """summary.json (final metrics) and the done status of a run that reached its last step."""
    steps = Run(out).config.train.steps
    final = Run(out).metrics().query("step == @steps")
    write_json(out / "summary.json", {
        "final": {f"{r.group}/{r.metric}": r.value for r in final.itertuples()},
        "steps": steps, "n_params": n_params, "device": str(device),
        "train_seconds_last_session": round(seconds, 2)})
    write_json(out / "status.json", {"state": "done", "step": steps})


def diverged(out: Path, step: int, train_loss: float) -> str:
    return (f"training diverged: the loss became {train_loss} by step {step}; lower --lr or "
            f"raise --gamma (checkpoints up to step {Run(out).resolve_step()} are kept)")


def mark_failed(out: Path, step: int, message: str) -> None:
    write_json(out / "status.json", {"state": "failed", "step": step, "reason": message})


def _fail(out: Path, step: int, message: str) -> None:
    mark_failed(out, step, message)
    raise UserError(message)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics written after the checkpoint we resume from (they will be redone)."""
    lines = path.read_text().splitlines() if path.exists() else []
    keep = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    atomic_write(path, "".join(line + "\n" for line in keep))
