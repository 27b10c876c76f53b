"""Train K models that differ only in init scale and/or seed at once, with stacked weights.

Each member's weights live in one [K, ...] tensor per TransformerLens parameter; the
forward pass is `torch.func.vmap` of the functional forward in `models.forward` over that
leading axis, so one batched matmul does the work of K small ones (on a CPU, in groups
of members small enough to stay in cache). AdamW and weight decay
are elementwise and gradient clipping is done per member, so every member follows exactly
the updates it would get trained alone (`train()`, same seed and gamma) up to float32
rounding, and is written as an ordinary run directory (resumable on its own by `train`;
`train_ensemble(..., resume=True)` resumes the members together, bit for bit as if never
stopped).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch.func import vmap

from initlens.models.build import build_model, n_params, realized_init, resolve_device
from initlens.models.checkpoint import load_optimizer_tensors, optimizer_tensors
from initlens.models.config import RunConfig
from initlens.models.errors import UserError
from initlens.models.evaluate import EvalSet, make_eval_set, score_logits
from initlens.models.forward import Weights, block, embed, unembed
from initlens.models.run import Run
from initlens.models.run_writer import LOCK, RunWriter
from initlens.models.train import checkpoint_fits, training_data
from initlens.models.trainer import adamw, batch_indices, run_training

EVAL_ROWS = 2048  # evaluation rows per member in one pass
# On a CPU, batching members only pays while their activations stay in cache: beyond about
# this many floats per layer (rows x width) a pass runs one member at a time, which also
# lets the final block compute the label position alone (measured: benchmarks/ensemble.py).
CPU_FLOATS_PER_PASS = 1 << 20


# Fields that only change the initial weights: ensemble members may differ in them.
INIT_FIELDS = {"gamma": 1.0, "readout_scale": 1.0, "init_rank": None}


def can_ensemble(cfg: RunConfig) -> bool:
    """Ensembles stack transformers trained on the label position (the functional
    forward); next-token tasks and the Emb-MLP train one run at a time."""
    return not cfg.task.next_token and cfg.model.architecture == "transformer"


def ensemble_key(cfg: RunConfig) -> RunConfig:
    """What members of one ensemble share: everything but their init and seed."""
    return cfg.replace(model=INIT_FIELDS, train={"seed": 0})


def label_logits(
    template: Weights,
    params: dict[str, torch.Tensor],
    tokens: Int[torch.Tensor, "n seq"],
    last_only: bool = True,
) -> Float[torch.Tensor, "n vocab"]:
    """One member's logits at the label (last) position.

    last_only: the final block computes the label position alone (off under vmap, whose
    batching of that backward pass is slow)."""
    w = dataclasses.replace(template, params=params)
    x = embed(w, tokens)
    for layer in range(w.n_layers):
        x = block(w, layer, x, last_only=last_only and layer == w.n_layers - 1)
    return unembed(w, x[:, -1])


def stacked_logits(
    template: Weights, params: dict[str, torch.Tensor], tokens: Int[torch.Tensor, "k n seq"]
) -> Float[torch.Tensor, "k n vocab"]:
    """Label logits of k members (weights stacked along the first axis), each on its rows."""
    if len(tokens) == 1:
        return label_logits(template, {n: t[0] for n, t in params.items()}, tokens[0])[None]
    return vmap(label_logits, in_dims=(None, 0, 0, None))(template, params, tokens, False)


def members_per_pass(k: int, rows: int, width: int, device: torch.device) -> int:
    """How many members share one forward pass: all on a GPU; on a CPU, as many as keep
    the activations of `rows` rows x `width` floats per member in cache."""
    if device.type != "cpu":
        return k
    return max(1, min(k, CPU_FLOATS_PER_PASS // max(rows * width, 1)))


def train_ensemble(
    cfgs: list[RunConfig],
    outs: list[str | Path],
    progress: bool | None = None,
    resume: bool = False,
    stop_at: int | None = None,
) -> list[Run]:
    """Train every config in `cfgs` into its run directory in `outs`, as one ensemble.

    Each member draws its batches as it would alone (members with the same seed, or the
    same `train.batch_seed`, see the same batches). A member that diverges (its loss,
    weights or scores stop being finite) is marked failed and diverged (status.json says
    why) and its files stop changing; the others go on.

    resume: continue what the folders hold (finished runs are left alone), ending with the
    files of an uninterrupted ensemble: from the members' last checkpoint when they all
    stopped at the same one, else from the start (a kill between two members' checkpoint
    saves leaves them a step apart, and only the newest optimizer state is kept; resuming
    each member alone would differ in the last bits). Empty folders start fresh.
    stop_at: stop resumably after this step (for training in chunks, and tests).
    """
    outs = [Path(o) for o in outs]
    if not cfgs or len(cfgs) != len(outs) or len(set(outs)) != len(outs):
        raise UserError("train_ensemble needs one distinct output folder per config", option="outs")
    for cfg in cfgs:
        cfg.validate()
        if not can_ensemble(cfg):
            raise UserError(
                "ensembles train transformers on the label position; next-token "
                "tasks and the Emb-MLP train one run at a time"
            )
        if ensemble_key(cfg) != ensemble_key(cfgs[0]):
            raise UserError(
                "ensemble members may differ only in their init (gamma, "
                "readout_scale, init_rank) and seed; train the "
                "others in another ensemble (probe sweep groups them for you)"
            )
    writers = [RunWriter(out) for out in outs]
    try:
        for writer in writers:
            writer.lock()
        todo = [i for i, out in enumerate(outs) if not (resume and Run(out).done)]
        cfgs, members = [cfgs[i] for i in todo], [writers[i] for i in todo]
        points = None
        if resume and members:
            points = _resume_points(cfgs, members)
        elif not resume:
            for writer in members:
                writer.check_free()
        if members:
            _train_members(cfgs, members, progress, points, stop_at)
    finally:
        for writer in writers:
            writer.unlock()
    return [Run(out) for out in outs]


def _resume_points(cfgs: list[RunConfig], writers: list[RunWriter]) -> list[tuple] | None:
    """Each member's (step, weights, optimizer state) when all hold a checkpoint of the
    same step; else None, with the started members' folders emptied to start afresh."""
    started = []
    for cfg, writer in zip(cfgs, writers):
        if not (writer.path / "config.json").exists():
            writer.check_free()
            continue
        saved = Run(writer.path)
        if saved.config != cfg:
            raise UserError(
                f"the given config differs from {writer.path}/config.json; train "
                f"into another output folder",
                option="outs",
            )
        saved.metrics()  # readable, or a UserError before anything is written
        started.append(writer)
    points = [Run(w.path).resume_point() for w in started]
    steps = {p[0] if p else None for p in points}
    if len(started) == len(writers) and len(steps) == 1 and None not in steps:
        return points
    for writer in started:  # out of step, or no checkpoint yet: all start again
        for path in writer.path.iterdir():
            if path.name != LOCK:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None


def _train_members(
    cfgs: list[RunConfig],
    writers: list[RunWriter],
    progress: bool | None,
    points: list[tuple] | None = None,
    stop_at: int | None = None,
) -> None:
    """`train_ensemble` once it holds every member's run directory; `points`: each
    member's checkpoint to resume from (all of one step)."""
    tc = cfgs[0].train
    device = resolve_device(tc.device)
    rows, x_train, y_train = training_data(cfgs[0], device)
    evalsets = [
        make_eval_set(cfgs[0].task, rows, tc.eval_size, c.train.seed).to(device) for c in cfgs
    ]
    models = [build_model(cfg, "cpu") for cfg in cfgs]  # exactly the standalone init
    inits = [realized_init(model, cfg.model) for cfg, model in zip(cfgs, models)]
    start = points[0][0] if points else 0
    for writer, model, (_, weights, _) in zip(writers, models, points or []):
        with checkpoint_fits(writer.path, start, option="outs"):
            model.load_state_dict(weights, strict=True)
    members = StackedMembers(cfgs, models, x_train, y_train, evalsets, device)
    del models
    if points:
        with checkpoint_fits(writers[0].path, start, option="outs"):
            members.load_optimizer([optimizer for _, _, optimizer in points])
    for cfg, writer, init in zip(cfgs, writers, inits):
        if points:
            writer.resume(init)
        else:
            writer.start(cfg, init)
    run_training(
        members, writers, tc, start, stop_at, desc=f"ensemble of {len(cfgs)}", progress=progress
    )


class StackedMembers:
    """An ensemble as the trainer's `Members`: k models with weights stacked along a first
    axis, updated together by one vmapped forward and backward pass."""

    def __init__(
        self,
        cfgs: list[RunConfig],
        models: list[torch.nn.Module],
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        evalsets: list[EvalSet],
        device: torch.device,
    ):
        self.tc, self.task, self.device = cfgs[0].train, cfgs[0].task, device
        self.x_train, self.y_train, self.evalsets = x_train, y_train, evalsets
        self.seeds = [c.train.batch_order_seed for c in cfgs]
        self.order = _optimizer_order(models[0])  # state-dict names in `adamw`'s order
        states = [m.state_dict() for m in models]
        self.stacked = {
            name: torch.stack([s[name] for s in states]).to(device) for name in states[0]
        }
        for name in self.order:
            self.stacked[name].requires_grad_(True)
        self.template = Weights.of(models[0])
        self.n_params = n_params(models[0])
        self.optimizer = adamw([self.stacked[n] for n in self.order], self.tc, matrix_ndim=3)
        k, seq = len(cfgs), x_train.shape[1]
        width = max(t.shape[0] for t in self.template.params.values())  # widest layer/vocab
        self.per_pass = members_per_pass(k, self.tc.batch_size * seq, width, device)
        self.eval_pass = members_per_pass(k, EVAL_ROWS * seq, width, device)

    def step(self, update: int) -> Float[torch.Tensor, " k"]:
        tc, k = self.tc, len(self.seeds)
        idx = torch.stack(
            [batch_indices(update, len(self.x_train), tc.batch_size, s) for s in self.seeds]
        ).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        losses = torch.cat(
            [
                _backward(self.template, self.stacked, self.x_train[i], self.y_train[i], start)
                for start, i in zip(range(0, k, self.per_pass), idx.split(self.per_pass))
            ]
        )
        if tc.grad_clip > 0:
            _clip_per_member([self.stacked[n] for n in self.order], tc.grad_clip)
        self.optimizer.step()
        return losses

    def evaluate(self, members: list[int]) -> list[dict[tuple[str, str], float]]:
        logits = _eval_logits(self.template, self.stacked, self.evalsets, self.eval_pass)
        return [score_logits(logits[i], self.task, self.evalsets[i]) for i in members]

    def checkpoint(self, member: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        weights = {name: t[member].detach() for name, t in self.stacked.items()}
        return weights, optimizer_tensors(self.optimizer, member)

    def load_optimizer(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Put each member's saved optimizer state (a standalone run's layout) back,
        stacked; their step counts are equal (saved at one step)."""
        load_optimizer_tensors(
            self.optimizer,
            {
                key: value if key.endswith(".step") else torch.stack([s[key] for s in states])
                for key, value in states[0].items()
            },
        )

    @torch.no_grad()
    def finite(self) -> list[bool]:
        return (
            torch.stack([torch.isfinite(t.flatten(1)).all(1) for t in self.stacked.values()])
            .all(0)
            .tolist()
        )


def _optimizer_order(model: torch.nn.Module) -> list[str]:
    """State-dict names of the trainable parameters, in `model.parameters()` order."""
    names = {t.data_ptr(): name for name, t in model.state_dict().items()}
    return [names[p.data_ptr()] for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def _clip_per_member(params: list[torch.Tensor], max_norm: float) -> None:
    """`clip_grad_norm_` applied to each member's gradients on its own."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], 1).norm(dim=1)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))


def _members(stacked: dict[str, torch.Tensor], start: int, n: int) -> dict[str, torch.Tensor]:
    return {name: t[start : start + n] for name, t in stacked.items()}


def _backward(
    template: Weights,
    stacked: dict[str, torch.Tensor],
    tokens: Int[torch.Tensor, "k batch seq"],
    labels: Int[torch.Tensor, "k batch"],
    start: int = 0,
) -> Float[torch.Tensor, " k"]:
    """Mean cross-entropy of k consecutive members from `start`; gradients accumulate."""
    k = len(tokens)
    logits = stacked_logits(template, _members(stacked, start, k), tokens)
    losses = (
        F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        .view(k, -1)
        .mean(1)
    )
    losses.sum().backward()
    return losses.detach()


@torch.no_grad()
def _eval_logits(
    template: Weights, stacked: dict[str, torch.Tensor], evalsets: list, per_pass: int
) -> list[torch.Tensor]:
    """Label logits of every member on its own evaluation rows (all the same size)."""
    tokens = torch.stack([e.tokens for e in evalsets])  # [k, n, seq]
    params = {name: t.detach() for name, t in stacked.items()}
    out = []
    for start in range(0, len(tokens), per_pass):
        members = _members(params, start, per_pass)
        rows = tokens[start : start + per_pass]
        out += torch.cat(
            [
                stacked_logits(template, members, rows[:, i : i + EVAL_ROWS])
                for i in range(0, rows.shape[1], EVAL_ROWS)
            ],
            1,
        )
    return out
