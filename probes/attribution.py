"""Attribution patching: a first-order estimate of every activation patch at once.

Two forward passes (source and target) and one backward pass: the change of the metric
from patching an activation is estimated as (source - target) . d metric / d activation,
summed over the patched entries. Good for head outputs, weaker for the residual stream,
so every use should report its agreement with exact patching (`agreement`) and can
confirm the strongest candidates exactly (`guided_patch`).
"""

from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Int

from initlens.models.forward import Weights, block, embed, hook_name, run_with_cache, unembed
from initlens.probes.patching import (
    Metric,
    Patched,
    _apply_metric,
    _check_inputs,
    _variant_masks,
    activation_patch,
)
from initlens.probes.paths import PathPatched


def attribution_patch(
    model,
    clean: Int[torch.Tensor, "batch seq"],
    corrupted: Int[torch.Tensor, "batch seq"],
    metric: Metric,
    component: str = "resid_pre",
    per_position: bool = True,
    direction: str = "denoising",
) -> Patched:
    """Estimated patched metric for every patch `activation_patch` would run (same shape)."""
    w = Weights.of(model)
    w.require_attention("attribution patching")
    device = w["embed.weight"].device
    clean, corrupted = clean.to(device), corrupted.to(device)
    _check_inputs(w, clean, corrupted, component, direction)
    target, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    with torch.no_grad():
        source_logits, source_cache = run_with_cache(w, source, (component,))
        source_value = _apply_metric(metric, source_logits[:, -1]).mean()
    acts: dict[int, torch.Tensor] = {}
    with torch.enable_grad():
        x = embed(w, target).requires_grad_(True)
        for layer in range(w.n_layers):

            def keep(name: str, t: torch.Tensor, layer=layer) -> torch.Tensor:
                if name == component:
                    t.retain_grad()
                    acts[layer] = t
                return t

            x = block(w, layer, x, keep)
        target_value = _apply_metric(metric, unembed(w, x[:, -1])).mean()
        target_value.backward()
    target_value = target_value.detach()
    masks, out_shape, axes = _variant_masks(
        component, tuple(acts[0].shape[1:]), per_position, device
    )
    estimates = []
    for layer in range(w.n_layers):
        act = acts[layer]
        delta = ((source_cache[hook_name(component, layer)] - act.detach()) * act.grad).sum(0)
        estimates.append((masks * delta).flatten(1).sum(1))
    values = target_value + torch.stack(estimates)
    clean_value, corrupted_value = (
        (source_value, target_value) if direction == "denoising" else (target_value, source_value)
    )
    return Patched(
        values.view(w.n_layers, *out_shape),
        component,
        axes,
        float(clean_value),
        float(corrupted_value),
    )


def _ranks(x: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty_like(x)
    ranks[x.argsort()] = torch.arange(len(x), dtype=x.dtype, device=x.device)
    return ranks


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def agreement(
    exact: Patched | PathPatched, estimate: Patched | PathPatched, k: int = 10
) -> dict[str, float]:
    """How well attribution matches exact patching (activation or path patching): Pearson
    and Spearman correlation of the effects, and the overlap of their top-k patches by
    absolute effect, over the n_patches entries both measured."""
    base = exact.corrupted if exact.clean != exact.corrupted else 0.0
    e = (exact.values - base).flatten().double()
    a = (estimate.values - base).flatten().double()
    measured = e.isfinite() & a.isfinite()  # (path patching: NaN where there is no path)
    e, a = e[measured], a[measured]
    k = min(k, len(e))
    top_e = set(e.abs().topk(k).indices.tolist())
    top_a = set(a.abs().topk(k).indices.tolist())
    return {
        "pearson": _pearson(e, a),
        "spearman": _pearson(_ranks(e), _ranks(a)),
        f"top{k}_overlap": len(top_e & top_a) / k,
        "n_patches": len(e),
    }


def guided_patch(
    model,
    clean,
    corrupted,
    metric: Metric,
    component: str = "resid_pre",
    k: int = 10,
    per_position: bool = True,
    direction: str = "denoising",
    **labels,
) -> pd.DataFrame:
    """Exact patching of only the k patches attribution ranks strongest: a tidy table with
    both the estimate and the exact value for each."""
    estimate = attribution_patch(
        model, clean, corrupted, metric, component, per_position, direction
    )
    target = estimate.corrupted if direction == "denoising" else estimate.clean
    effect = (estimate.values - target).abs().flatten()
    only = torch.zeros_like(effect, dtype=torch.bool)
    only[effect.topk(min(k, len(effect))).indices] = True
    exact = activation_patch(
        model,
        clean,
        corrupted,
        metric,
        component,
        per_position,
        direction,
        only=only.view(estimate.values.shape),
    )
    table = estimate.table(value="attribution", **labels)
    table["exact"] = exact.values.flatten().tolist()
    table["attribution_effect"] = table.attribution - target
    table["exact_effect"] = table.exact - target
    return table[only.cpu().numpy()].sort_values(
        "attribution_effect", key=abs, ascending=False, ignore_index=True
    )
