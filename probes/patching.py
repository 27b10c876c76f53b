"""Exact activation patching, batched: the numbers of `transformer_lens.patching`, faster.

Every patch of one layer becomes a row block of one batched forward pass. The run starts
at the patched layer from the target run's cached residual stream (nothing below it is
recomputed), the patch is a `torch.where` between target and source activations under a
per-variant mask, and the last block computes only the label position. Metric values stay
on the device until the end.

Denoising (the default) runs the corrupted prompt with clean activations patched in;
noising runs the clean prompt with corrupted activations patched in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from models.errors import UserError
from models.train import show_progress
from probes.forward import Weights, block, hook_name, run_with_cache, unembed

# A metric maps label-position logits [..., batch, vocab] to per-example values [..., batch].
Metric = Callable[[torch.Tensor], torch.Tensor]

# component -> axes of one patch, in the order of the result tensor (after "layer").
AXES = {
    "resid_pre": ("pos",), "resid_mid": ("pos",), "resid_post": ("pos",),
    "attn_out": ("pos",), "mlp_out": ("pos",),
    "z": ("pos", "head"), "q": ("pos", "head"), "k": ("pos", "head"), "v": ("pos", "head"),
    "pattern": ("head", "dest_pos"),
}
COMPONENTS = tuple(AXES)
MLP_COMPONENTS = ("resid_mid", "mlp_out")  # absent from attention-only models
DIRECTIONS = ("denoising", "noising")


# ---------------------------------------------------------------- metrics

def _pick(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    labels = labels.to(logits.device).expand(logits.shape[:-1])
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def logit_diff(correct: Int[torch.Tensor, " batch"], alternative: Int[torch.Tensor, " batch"]
               ) -> Metric:
    """Logit of the correct label minus that of a named alternative, per example."""
    return lambda logits: _pick(logits, correct) - _pick(logits, alternative)


def label_logprob(correct: Int[torch.Tensor, " batch"]) -> Metric:
    """Log probability of the correct label, per example."""
    return lambda logits: _pick(logits.log_softmax(-1), correct)


def accuracy(correct: Int[torch.Tensor, " batch"]) -> Metric:
    """1 where the top logit is the correct label, else 0."""
    return lambda logits: (logits.argmax(-1) == correct.to(logits.device)).float()


METRICS = {"logit_diff": logit_diff, "logprob": label_logprob, "accuracy": accuracy}


def _apply_metric(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    values = metric(logits)
    if not torch.is_tensor(values) or values.shape != logits.shape[:-1]:
        shape = tuple(values.shape) if torch.is_tensor(values) else type(values).__name__
        raise UserError(f"the metric returned shape {shape}; it must return one value per "
                        f"example, shape {tuple(logits.shape[:-1])} for logits of shape "
                        f"{tuple(logits.shape)}")
    return values


# ---------------------------------------------------------------- the engine

@dataclass(frozen=True)
class Patched:
    """Result of a patching sweep: values indexed like TransformerLens's, plus baselines."""

    values: torch.Tensor  # [layer, *axes] (mean over the batch)
    component: str
    axes: tuple[str, ...]
    clean: float  # metric on the clean run
    corrupted: float  # metric on the corrupted run

    def normalized(self) -> torch.Tensor:
        """0 = corrupted baseline, 1 = clean (for noising: 1 = clean, 0 = corrupted too)."""
        return (self.values - self.corrupted) / (self.clean - self.corrupted)

    def table(self, value: str = "value", **labels) -> pd.DataFrame:
        """Tidy rows: component, layer, position, head, value (+ any labels, e.g. run/step).
        Position -1 means all positions; head -1 means not a per-head component."""
        idx = torch.cartesian_prod(*[torch.arange(n) for n in self.values.shape])
        idx = idx.reshape(len(idx), -1)
        names = ("layer",) + self.axes
        cols = {n: idx[:, i].tolist() for i, n in enumerate(names)}
        n = len(idx)
        df = pd.DataFrame({**{k: [v] * n for k, v in labels.items()},
                           "component": [self.component] * n, "layer": cols["layer"],
                           "position": cols.get("pos", cols.get("dest_pos", [-1] * n)),
                           "head": cols.get("head", [-1] * n),
                           value: self.values.flatten().tolist()})
        return df


def _variant_masks(component: str, shape: tuple[int, ...], per_position: bool,
                   device) -> tuple[torch.Tensor, tuple[int, ...], tuple[str, ...]]:
    """Boolean masks [variant, *activation shape without batch], one per patch, and the
    result shape (without the layer axis) and its axis names."""
    axes = AXES[component] if per_position else tuple(a for a in AXES[component]
                                                      if a not in ("pos", "dest_pos"))
    if component == "pattern":  # activation [head, dest, src]
        heads, seq = shape[0], shape[1]
        sizes = {"head": heads, "dest_pos": seq}
    else:  # [pos, d] or [pos, head, d_head]
        sizes = {"pos": shape[0], "head": shape[1] if len(shape) == 3 else 1}
    out_shape = tuple(sizes[a] for a in axes)
    n = max(1, int(torch.tensor(out_shape).prod())) if out_shape else 1
    masks = torch.zeros((n,) + shape, dtype=torch.bool, device=device)
    for v, index in enumerate(torch.cartesian_prod(*[torch.arange(s) for s in out_shape])
                              .reshape(n, -1).tolist() if out_shape else [[]]):
        where = dict(zip(axes, index))
        if component == "pattern":
            masks[v, where["head"], where.get("dest_pos", slice(None))] = True
        elif len(shape) == 3:
            masks[v, where.get("pos", slice(None)), where["head"]] = True
        else:
            masks[v, where.get("pos", slice(None))] = True
    return masks, out_shape, axes


def _check_inputs(w: Weights, clean: torch.Tensor, corrupted: torch.Tensor, component: str,
                  direction: str) -> None:
    if component not in COMPONENTS:
        raise UserError(f"unknown component {component!r}; choose one of "
                        f"{', '.join(COMPONENTS)}")
    if w.attn_only and component in MLP_COMPONENTS:
        raise UserError(f"component {component!r} does not exist in an attention-only model; "
                        f"choose one of resid_pre, resid_post, attn_out, z, q, k, v, pattern")
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; choose denoising or noising")
    if clean.shape != corrupted.shape or clean.ndim != 2:
        raise UserError(f"clean tokens {tuple(clean.shape)} and corrupted tokens "
                        f"{tuple(corrupted.shape)} must have the same [batch, seq] shape")


@torch.inference_mode()
def activation_patch(model, clean: Int[torch.Tensor, "batch seq"],
                     corrupted: Int[torch.Tensor, "batch seq"], metric: Metric,
                     component: str = "resid_pre", per_position: bool = True,
                     direction: str = "denoising", max_memory_mb: float = 256,
                     only: torch.Tensor | None = None) -> Patched:
    """Patch `component` at every layer (x position, x head) and measure `metric`.

    Matches `transformer_lens.patching.get_act_patch_*` (for denoising: run on `corrupted`,
    patch from `clean`) with the metric averaged over the batch. Shapes: per-position
    residual/attn_out/mlp_out [layer, pos]; z/q/k/v [layer, pos, head]; pattern
    [layer, head, dest_pos]; without positions [layer] or [layer, head].
    `max_memory_mb` bounds the activations of one batched chunk of patched variants.
    `only`: a boolean tensor shaped like the result; unselected patches are skipped (NaN).
    """
    w = Weights.of(model)
    device = w["embed.weight"].device
    clean, corrupted = clean.to(device), corrupted.to(device)
    _check_inputs(w, clean, corrupted, component, direction)
    batch, seq = clean.shape
    # One forward over clean and corrupted together: both baselines and both caches.
    logits, cache = run_with_cache(w, torch.cat([clean, corrupted]), ("resid_pre", component),
                                   label_only=True)
    halves = {k: v.split(batch) for k, v in cache.items()}
    src, tgt = (0, 1) if direction == "denoising" else (1, 0)
    base = _apply_metric(metric, logits[:, -1].reshape(2, batch, -1)).mean(-1)

    d_model = w["embed.weight"].shape[1]
    act_shape = ((w.n_heads, seq, seq) if component == "pattern"
                 else (seq, w.n_heads, w.d_head) if "head" in AXES[component]
                 else (seq, d_model))
    masks, out_shape, axes = _variant_masks(component, act_shape, per_position, device)
    width = max(d_model, w.n_heads * seq,
                0 if w.attn_only else w["blocks.0.mlp.in.weight"].shape[0])
    per_variant = w.n_layers * batch * seq * width * 4 * 12  # bytes, ~12 live tensors
    chunk = max(1, int(max_memory_mb * 2**20 // per_variant))
    resid = [halves[hook_name("resid_pre", layer)][tgt] for layer in range(w.n_layers)]
    sources = [halves[hook_name(component, layer)][src] for layer in range(w.n_layers)]
    keep = (torch.ones(w.n_layers, len(masks), dtype=torch.bool, device=device) if only is None
            else only.to(device).reshape(w.n_layers, len(masks)))
    values = torch.full((w.n_layers, len(masks)), float("nan"), device=device)
    parts = torch.arange(len(masks), device=device).split(chunk)
    for part in tqdm(parts, desc=f"patching {component}", unit="chunk", leave=False,
                     disable=not show_progress() or len(parts) < 2):
        picked = [part[keep[layer, part]] for layer in range(w.n_layers)]
        results = _sweep(w, metric, resid, sources, [masks[i] for i in picked], component)
        for layer, (i, v) in enumerate(zip(picked, results)):
            values[layer, i] = v
    return Patched(values.view(w.n_layers, *out_shape), component, axes, float(base[0]),
                   float(base[1]))


def _sweep(w: Weights, metric: Metric, resid_pre: list[torch.Tensor],
           sources: list[torch.Tensor], masks: list[torch.Tensor], component: str
           ) -> list[torch.Tensor]:
    """Mean metric of each variant of each layer (masks[L]: the variants patched in block
    L), in one pass: at layer L the target's cached resid_pre joins the batch once per
    variant of that layer and is patched in block L. The final block computes only the
    label position (masks and sources sliced to match)."""
    batch = resid_pre[0].shape[0]
    pos = 2 if component == "pattern" else 1  # the (destination) position axis

    def patcher(m_all: torch.Tensor, src: torch.Tensor):
        n = len(m_all)
        new = n * batch

        def patch(name: str, act: torch.Tensor) -> torch.Tensor:
            if name != component or n == 0:
                return act
            p = act.shape[pos]  # the last p positions were computed
            m = m_all.narrow(pos, m_all.shape[pos] - p, p)
            s = src.narrow(pos, src.shape[pos] - p, p)
            fresh = act[-new:].view(n, batch, *act.shape[1:])
            fresh = torch.where(m[:, None], s, fresh).view(new, *act.shape[1:])
            return torch.cat([act[:-new], fresh]) if len(act) > new else fresh
        return patch

    x = resid_pre[0][:0]
    for layer in range(w.n_layers):
        n, r = len(masks[layer]), resid_pre[layer]
        x = torch.cat([x, r.unsqueeze(0).expand(n, *r.shape).reshape(n * batch, *r.shape[1:])])
        x = block(w, layer, x, patcher(masks[layer], sources[layer]),
                  last_only=layer == w.n_layers - 1)
    logits = unembed(w, x[:, -1]).split([len(m) * batch for m in masks])
    return [_apply_metric(metric, lg.view(len(m), batch, lg.shape[-1])).mean(-1)
            for lg, m in zip(logits, masks)]


def patch_all(model, clean, corrupted, metric, components=COMPONENTS, per_position=True,
              direction="denoising", max_memory_mb=256, **labels) -> pd.DataFrame:
    """One tidy table of several components' patching sweeps (skipping ones the model
    lacks), with a normalized column (0 = corrupted, 1 = clean)."""
    w = Weights.of(model)
    frames = []
    for component in tqdm(components, desc="patching", unit="component",
                          disable=not show_progress()):
        if w.attn_only and component in MLP_COMPONENTS:
            continue
        result = activation_patch(model, clean, corrupted, metric, component, per_position,
                                  direction, max_memory_mb)
        df = result.table(**labels)
        df["normalized"] = result.normalized().flatten().tolist()
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


__all__ = ["COMPONENTS", "METRICS", "Patched", "accuracy", "activation_patch",
           "label_logprob", "logit_diff", "patch_all"]
