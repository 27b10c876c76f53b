"""Exact activation patching, batched: the numbers of `transformer_lens.patching`, faster.

Every patch of one layer becomes a row block of one batched forward pass. The run starts
at the patched layer from the target run's cached residual stream (nothing below it is
recomputed), the patch is a `torch.where` between target and source activations under a
per-variant mask, and the last block computes only the label position. More cuts, all
exact: a patch that cannot move the label logits (nothing differs under its mask, or it
touches only non-label positions after attention in the last block) is not run at all; a
patch that makes the state the source's (all of the residual stream that differs, or after
attention where the block input already matches) takes the source run's cached values; a
patch after attention (z, attn_out, resid_mid, mlp_out, resid_post) finishes its own block
at the patched positions only and runs the later blocks from its first patched position on,
reading the target's cached keys and values before it (causal attention leaves them as they
are); and a final block whose input changed at a few positions reuses the target's cached
keys and values elsewhere. Metric values stay on the device until the end.

Denoising (the default) runs the corrupted prompt with clean activations patched in;
noising runs the clean prompt with corrupted activations patched in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Int

from initlens.models.errors import UserError, check_positive
from initlens.models.forward import (
    Hook,
    Weights,
    attend,
    block,
    block_tail,
    heads,
    hook_name,
    no_hook,
    run_with_cache,
    unembed,
)
from initlens.models.progress import Progress, tracked

# A metric maps label-position logits [..., batch, vocab] to per-example values [..., batch].
Metric = Callable[[torch.Tensor], torch.Tensor]

# component -> axes of one patch, in the order of the result tensor (after "layer").
AXES = {
    "resid_pre": ("pos",),
    "resid_mid": ("pos",),
    "resid_post": ("pos",),
    "attn_out": ("pos",),
    "mlp_out": ("pos",),
    "z": ("pos", "head"),
    "q": ("pos", "head"),
    "k": ("pos", "head"),
    "v": ("pos", "head"),
    "pattern": ("head", "dest_pos"),
}
PATCHABLE = tuple(AXES)  # every component activation_patch accepts
MLP_COMPONENTS = ("resid_mid", "mlp_out")  # absent from attention-only models
DIRECTIONS = ("denoising", "noising")


# ---------------------------------------------------------------- metrics


def _pick(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    labels = labels.to(logits.device).expand(logits.shape[:-1])
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def logit_diff(
    correct: Int[torch.Tensor, " batch"], alternative: Int[torch.Tensor, " batch"]
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
        raise UserError(
            f"the metric returned shape {shape}; it must return one value per "
            f"example, shape {tuple(logits.shape[:-1])} for logits of shape "
            f"{tuple(logits.shape)}"
        )
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
        df = pd.DataFrame(
            {
                **{k: [v] * n for k, v in labels.items()},
                "component": [self.component] * n,
                "layer": cols["layer"],
                "position": cols.get("pos", cols.get("dest_pos", [-1] * n)),
                "head": cols.get("head", [-1] * n),
                value: self.values.flatten().tolist(),
            }
        )
        return df


@functools.lru_cache(maxsize=64)
def _variant_masks(
    component: str, shape: tuple[int, ...], per_position: bool, device: torch.device
) -> tuple[torch.Tensor, tuple[int, ...], tuple[str, ...]]:
    """Boolean masks [variant, *activation shape without batch], one per patch, and the
    result shape (without the layer axis) and its axis names. Cached (a pure function of
    its arguments): callers must not modify the masks."""
    axes = (
        AXES[component]
        if per_position
        else tuple(a for a in AXES[component] if a not in ("pos", "dest_pos"))
    )
    if component == "pattern":  # activation [head, dest, src]
        heads, seq = shape[0], shape[1]
        sizes = {"head": heads, "dest_pos": seq}
    else:  # [pos, d] or [pos, head, d_head]
        sizes = {"pos": shape[0], "head": shape[1] if len(shape) == 3 else 1}
    out_shape = tuple(sizes[a] for a in axes)
    n = max(1, int(torch.tensor(out_shape).prod())) if out_shape else 1
    masks = torch.zeros((n,) + shape, dtype=torch.bool, device=device)
    for v, index in enumerate(
        torch.cartesian_prod(*[torch.arange(s) for s in out_shape]).reshape(n, -1).tolist()
        if out_shape
        else [[]]
    ):
        where = dict(zip(axes, index))
        if component == "pattern":
            masks[v, where["head"], where.get("dest_pos", slice(None))] = True
        elif len(shape) == 3:
            masks[v, where.get("pos", slice(None)), where["head"]] = True
        else:
            masks[v, where.get("pos", slice(None))] = True
    return masks, out_shape, axes


def _check_inputs(
    w: Weights, clean: torch.Tensor, corrupted: torch.Tensor, component: str, direction: str
) -> None:
    if component not in PATCHABLE:
        raise UserError(f"unknown component {component!r}; choose one of {', '.join(PATCHABLE)}")
    if w.attn_only and component in MLP_COMPONENTS:
        raise UserError(
            f"component {component!r} does not exist in an attention-only model; "
            f"choose one of resid_pre, resid_post, attn_out, z, q, k, v, pattern"
        )
    check_pair_inputs(clean, corrupted, direction)


def check_pair_inputs(clean: torch.Tensor, corrupted: torch.Tensor, direction: str) -> None:
    """A UserError unless `direction` is known and the two token batches share a shape."""
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; choose denoising or noising")
    if clean.shape != corrupted.shape or clean.ndim != 2:
        raise UserError(
            f"clean tokens {tuple(clean.shape)} and corrupted tokens "
            f"{tuple(corrupted.shape)} must have the same [batch, seq] shape"
        )


@torch.inference_mode()
def activation_patch(
    model,
    clean: Int[torch.Tensor, "batch seq"],
    corrupted: Int[torch.Tensor, "batch seq"],
    metric: Metric,
    component: str = "resid_pre",
    per_position: bool = True,
    direction: str = "denoising",
    max_memory_mb: float = 256,
    only: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> Patched:
    """Patch `component` at every layer (x position, x head) and measure `metric`.

    Matches `transformer_lens.patching.get_act_patch_*` (for denoising: run on `corrupted`,
    patch from `clean`) with the metric averaged over the batch. Shapes: per-position
    residual/attn_out/mlp_out [layer, pos]; z/q/k/v [layer, pos, head]; pattern
    [layer, head, dest_pos]; without positions [layer] or [layer, head].
    `max_memory_mb` bounds the activations of one batched chunk of patched variants; the
    chunk size changes the values by float32 rounding only (a row of a matrix product can
    depend on how many rows share the call).
    `only`: a boolean tensor shaped like the result; unselected patches are skipped (NaN).
    `progress`: called after each chunk of patched variants (e.g. the CLI's `Bar()`).
    """
    w = Weights.of(model)
    w.require_attention("activation patching")
    device = w["embed.weight"].device
    clean, corrupted = clean.to(device), corrupted.to(device)
    _check_inputs(w, clean, corrupted, component, direction)
    check_positive(max_memory_mb, "max_memory_mb")
    batch, seq = clean.shape
    # One forward over clean and corrupted together: both baselines and both caches.
    logits, cache = run_with_cache(
        w,
        torch.cat([clean, corrupted]),
        ("resid_pre", "q", "k", "v", "z", component),
        label_only=True,
    )
    halves = {k: v.split(batch) for k, v in cache.items()}
    src, tgt = (0, 1) if direction == "denoising" else (1, 0)
    base = _apply_metric(metric, logits[:, -1].reshape(2, batch, -1)).mean(-1)

    d_model = w["embed.weight"].shape[1]
    act_shape = (
        (w.n_heads, seq, seq)
        if component == "pattern"
        else (seq, w.n_heads, w.d_head)
        if "head" in AXES[component]
        else (seq, d_model)
    )
    masks, out_shape, axes = _variant_masks(component, act_shape, per_position, device)
    width = max(
        d_model, w.n_heads * seq, 0 if w.attn_only else w["blocks.0.mlp.in.weight"].shape[0]
    )
    per_variant = w.n_layers * batch * seq * width * 4 * 12  # bytes, ~12 live tensors
    chunk = max(1, int(min(max_memory_mb * 2**20 // per_variant, len(masks))))
    target, source = ({k: v[i] for k, v in halves.items()} for i in (tgt, src))
    keep = (
        torch.ones(w.n_layers, len(masks), dtype=torch.bool, device=device)
        if only is None
        else _selection(only, (w.n_layers, *out_shape), device)
    )
    values = torch.full((w.n_layers, len(masks)), float("nan"), device=device)
    # Patches that cannot move the label logits give the target's own value, uncomputed.
    differs = _differs(source, target, component, w.n_layers)
    inert = _inert(masks, component, differs)
    values[keep & inert] = base[tgt]
    keep &= ~inert
    # A residual-stream patch that replaces every entry that differs gives the source run.
    if component in RESIDUAL:
        complete = _complete(masks, differs)
        values[keep & complete] = base[src]
        keep &= ~complete
    sourced = (
        _sourced(masks, component, differs, source, target)
        if component in RUN_ON_AS_SOURCE
        else torch.zeros_like(keep)
    )
    parts = torch.arange(len(masks), device=device).split(chunk)
    for part in tracked(parts if keep.any() else (), progress, len(parts), f"patching {component}"):
        picked = [part[keep[layer, part]] for layer in range(w.n_layers)]
        results = _sweep(
            w,
            metric,
            target,
            source,
            [masks[i] for i in picked],
            component,
            [sourced[layer, i] for layer, i in enumerate(picked)],
        )
        for layer, (i, v) in enumerate(zip(picked, results)):
            if len(i):
                values[layer, i] = v
    return Patched(
        values.view(w.n_layers, *out_shape), component, axes, float(base[0]), float(base[1])
    )


def _selection(only: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A copy of the caller's `only` mask, [layer, variant]: the sweep edits its own."""
    if tuple(only.shape) != shape:
        raise UserError(
            f"only has shape {tuple(only.shape)}; it must be shaped like the result, {shape}"
        )
    return only.to(device=device, dtype=torch.bool, copy=True).reshape(shape[0], -1)


def _differs(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], component: str, n_layers: int
) -> list[torch.Tensor]:
    """Per layer, [*activation] True where source and target differ in some example (the
    max of |s - t| over the batch: a faster reduction than any(s != t); NaN counts)."""
    return [
        (source[h] - target[h]).abs().amax(0) != 0
        for h in (hook_name(component, layer) for layer in range(n_layers))
    ]


def _position_axis(component: str) -> int:
    """Axis of the (destination) position in one example's activation."""
    return 1 if component == "pattern" else 0


def _last_positions(masks: torch.Tensor, like: torch.Tensor, component: str) -> torch.Tensor:
    """`masks` [variant, *activation] cut to the positions `like` [*activation] has: the
    last block computes its later activations at the label position only."""
    axis = _position_axis(component)
    p = like.shape[axis]
    return masks.narrow(axis + 1, masks.shape[axis + 1] - p, p)


def _inert(masks: torch.Tensor, component: str, differs: list[torch.Tensor]) -> torch.Tensor:
    """[layer, variant] True where the patch leaves the target run's label logits exactly
    as they are: it replaces nothing that differs (differs[layer]: source != target in
    some example, [*activation]; none under the mask), or it only touches non-label
    positions of the last block after its keys and values."""
    inert = torch.stack(
        [~(d & _last_positions(masks, d, component)).flatten(1).any(-1) for d in differs]
    )
    if component not in ("resid_pre", "k", "v"):  # these feed later positions' attention
        inert[-1] |= ~_last_positions(masks, differs[-1], component).flatten(1).any(-1)
    return inert


# The whole state of the forward pass at their hook: the run continues from them alone.
RESIDUAL = ("resid_pre", "resid_mid", "resid_post")


def _complete(masks: torch.Tensor, differs: list[torch.Tensor]) -> torch.Tensor:
    """[layer, variant] True where the patch replaces every entry in which source and
    target differ (differs[layer]: [*activation], in any example): the patched state is
    the source run's."""
    return torch.stack(
        [~(d & ~_last_positions(masks, d, "resid_pre")).flatten(1).any(-1) for d in differs]
    )


# Patches after attention that can leave a block's state as the source's (for z and attn_out
# the block input must match too; resid_mid replaces the whole state).
RUN_ON_AS_SOURCE = ("z", "attn_out", "resid_mid")


def _sourced(
    masks: torch.Tensor,
    component: str,
    differs: list[torch.Tensor],
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
) -> torch.Tensor:
    """[layer, variant] True where a patch (of RUN_ON_AS_SOURCE, below the final block)
    leaves the block's state at every position it touches as the source's, in every
    example: it replaces each entry that differs there (differs[layer], [*activation]) and,
    but for resid_mid, the block input (resid_pre) does not differ there. The block's
    output there is then the source's resid_post."""
    below = len(differs) - 1  # the blocks below the final one
    input_gap = (
        [d.any(-1) for d in _differs(source, target, "resid_pre", below)]
        if component != "resid_mid"
        else [False] * below
    )  # [pos] each
    sourced = torch.zeros(len(differs), len(masks), dtype=torch.bool, device=masks.device)
    touched = masks.flatten(2).any(-1)  # [variant, pos]
    for layer in range(below):
        gap = (differs[layer] & ~masks).flatten(2).any(-1) | input_gap[layer]
        sourced[layer] = ~(gap & touched).any(-1)
    return sourced


# Components read per position after attention: a patch changes only its own positions in
# its block, so the block is finished from the target's cached head outputs there alone.
AFTER_ATTENTION = ("z", "attn_out", "resid_mid", "mlp_out", "resid_post")


def _sweep(
    w: Weights,
    metric: Metric,
    target: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    masks: list[torch.Tensor],
    component: str,
    sourced: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Mean metric of each variant of each layer (masks[L]: the variants patched in block
    L), in one pass over the layers: at layer L the variants of L join the batch, the
    target's cached state patched (row block v*batch..(v+1)*batch is variant v). Variants
    whose final-block input differs from the target's at a few positions only (patched in
    the final block before attention, or after attention in the block below it) skip the
    full pass: the final block reuses the target's cached keys and values elsewhere.
    Patches after attention take _after_attention's path (suffixes, not this pass)."""
    last = w.n_layers - 1
    if component in AFTER_ATTENTION:
        x = _after_attention(w, target, source, masks, component, sourced)
        return _metrics(w, metric, target, masks, x)
    x = target[hook_name("resid_pre", 0)][:0]  # variants that run every block above them
    sparse = []  # label-position resid_post of the others, in layer order
    for layer in range(last):
        m, src = masks[layer], source[hook_name(component, layer)]
        if len(m):
            r = target[hook_name("resid_pre", layer)]
            x = torch.cat([x, r.expand(len(m), *r.shape).flatten(0, 1)])
        if len(x):
            x = block(w, layer, x, _patcher(m, src, component))
    if len(masks[last]):
        sparse.append(_final_patched(w, target, source, masks[last], component))
    x = torch.cat([block(w, last, x, last_only=True) if len(x) else x[:, -1:], *sparse])
    return _metrics(w, metric, target, masks, x)


def _metrics(
    w: Weights,
    metric: Metric,
    target: dict[str, torch.Tensor],
    masks: list[torch.Tensor],
    x: torch.Tensor,
) -> list[torch.Tensor]:
    """Mean metric of each variant of each layer from the label-position resid_post x
    [variant * batch, 1, d] of all of them, in layer order (variant-major within one)."""
    batch = len(target[hook_name("resid_pre", 0)])
    logits = unembed(w, x[:, -1]).split([len(m) * batch for m in masks])
    return [
        _apply_metric(metric, lg.view(len(m), batch, lg.shape[-1])).mean(-1)
        if len(m)
        else lg[:0, 0]
        for lg, m in zip(logits, masks)
    ]


def _final_patched(
    w: Weights,
    target: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    m: torch.Tensor,
    component: str,
) -> torch.Tensor:
    """Label-position resid_post of the variants `m` patched in the final block."""
    last = w.n_layers - 1
    if component in AFTER_ATTENTION:  # only the label position matters (kept: _inert)
        return _finish_patched(w, last, target, source, m, component)[0]
    src = source[hook_name(component, last)]
    if component in ("q", "pattern"):  # at the label position only (kept: _inert)
        return _final_block(
            w,
            target,
            m.new_zeros(len(m), 0, dtype=torch.long),
            len(m),
            hook=_patcher(m, src, component),
        )
    # resid_pre, k or v: patched at the positions the masks touch, the target's elsewhere
    own = target[hook_name(component, last)]
    seq = own.shape[1]
    pos = _touched(m, seq)
    patched = _row_patcher(m, src, pos, component)(component, _rows_at(own, pos, seq))
    if component == "resid_pre":
        return _final_block(w, target, pos, len(m), x_at=patched)
    other = _rows_at(target[hook_name("v" if component == "k" else "k", last)], pos, seq)
    return _final_block(
        w, target, pos, len(m), kv_at=(patched, other) if component == "k" else (other, patched)
    )


def _touched(masks: torch.Tensor, seq: int) -> torch.Tensor:
    """[variant, k]: the positions each per-position patch (mask [variant, pos, ...])
    touches; all positions where variants touch different numbers of them."""
    if len(masks) == 0:
        return masks.new_zeros((0, 0), dtype=torch.long)
    touched = masks.flatten(2).any(-1)
    if not (touched.sum(1) == touched[:1].sum(1)).all():
        touched = torch.ones_like(touched)
    return touched.nonzero()[:, 1].view(len(masks), -1)


def _at(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows of t [rows, seq, ...] at their own positions pos [rows, k]: [rows, k, ...]."""
    return t[torch.arange(len(t), device=t.device)[:, None], pos]


def _rows_at(t: torch.Tensor, pos: torch.Tensor, seq: int) -> torch.Tensor:
    """The target's t [batch, p, ...] (its last p of seq positions) for each variant at that
    variant's positions pos [variant, k]: [variant * batch, k, ...]."""
    (n, k), rest = pos.shape, t.shape[2:]
    picked = t.index_select(1, (pos - seq + t.shape[1]).flatten())  # [batch, n * k, ...]
    return picked.view(len(t), n, k, *rest).transpose(0, 1).reshape(n * len(t), k, *rest)


def _row_patcher(masks: torch.Tensor, src: torch.Tensor, pos: torch.Tensor, component: str) -> Hook:
    """Hook patching `component` in rows laid out as _rows_at does ([variant * batch, k, ...]
    at positions pos [variant, k]): the source src [batch, seq, ...] under the masks."""
    m = _at(masks, pos).repeat_interleave(len(src), 0)
    s = _rows_at(src, pos, masks.shape[1])

    def patch(name: str, act: torch.Tensor) -> torch.Tensor:
        return torch.where(m, s, act) if name == component else act

    return patch


def _after_attention(
    w: Weights,
    target: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    masks: list[torch.Tensor],
    component: str,
    sourced: list[torch.Tensor],
) -> torch.Tensor:
    """Label-position resid_post [variant * batch, 1, d] of the variants patching
    `component` (one of AFTER_ATTENTION), in layer order. A patch in layer L first
    patched at position p changes resid_post of L at its own positions only, so every
    later block sees the target's state before p (causal attention): the variants run on
    as suffixes (positions p.. only, grouped by p across layers), attending to the
    target's cached keys and values before p. Patches in the block below the final one
    go to _final_block directly (it needs new keys and values at their positions only)."""
    last = w.n_layers - 1
    resid0 = target[hook_name("resid_pre", 0)]
    batch, seq, d = resid0.shape
    out = [resid0.new_empty(len(m), batch, 1, d) if len(m) else None for m in masks]
    groups: dict[int, tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]] = {}
    for layer in range(last):
        # suffixes: [rows, seq - p, d] resid_pre of this layer at p.., and their owners
        groups = {
            p: (_suffix_block(w, layer, target, x, p), owners) for p, (x, owners) in groups.items()
        }
        m = masks[layer]
        if len(m) == 0:
            continue
        post, pos = _finish_patched(w, layer, target, source, m, component, sourced[layer])
        if layer == last - 1:
            out[layer] = _final_block(w, target, pos, len(m), x_at=post).view_as(out[layer])
            continue
        resid = target[hook_name("resid_pre", layer + 1)]
        post = post.view(len(m), batch, *post.shape[1:])
        first = pos[:, 0]  # positions ascend (_touched)
        for p in first.unique().tolist():
            sel = (first == p).nonzero()[:, 0]
            suffix = resid[:, p:].expand(len(sel), batch, seq - p, d)
            x = _put(suffix, post[sel].flatten(0, 1), pos[sel] - p).flatten(0, 1)
            if p in groups:
                x_p, owners = groups[p]
                groups[p] = (torch.cat([x_p, x]), [*owners, (layer, sel)])
            else:
                groups[p] = (x, [(layer, sel)])
    if len(masks[last]):
        out[last] = _final_patched(w, target, source, masks[last], component).view_as(out[last])
    for p, (x, owners) in groups.items():
        y = _suffix_block(w, last, target, x, p, last_only=True).view(-1, batch, 1, d)
        for (layer, sel), rows in zip(owners, y.split([len(sel) for _, sel in owners])):
            out[layer][sel] = rows
    return torch.cat([o.flatten(0, 1) for o in out if o is not None] or [resid0[:0, -1:]])


def _suffix_block(
    w: Weights,
    layer: int,
    target: dict[str, torch.Tensor],
    x: torch.Tensor,
    p: int,
    last_only: bool = False,
) -> torch.Tensor:
    """Block `layer` of variants whose resid_pre is the target's before position p: x
    [variant * batch, seq - p, d] is theirs at p... Their keys and values before p are the
    target's cached ones. resid_post at p.. (at the label position only if last_only)."""
    k_pre, v_pre = (target[hook_name(c, layer)][:, :p] for c in ("k", "v"))
    n = len(x) // len(k_pre)
    a, a_v = w.attn_inputs(x, layer)
    k = torch.cat([k_pre.repeat(n, 1, 1, 1), heads(w, layer, "k", a)], 1)
    v = torch.cat([v_pre.repeat(n, 1, 1, 1), heads(w, layer, "v", a_v)], 1)
    if last_only:
        a, x = a[:, -1:].contiguous(), x[:, -1:]
    return block_tail(w, layer, x, attend(heads(w, layer, "q", a), k, v))


def _put(t: torch.Tensor, new: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """t [variant, batch, seq, ...] with new [variant * batch, k, ...] written at positions
    pos [variant, k] (one position each: a broadcast select, cheaper than a scatter)."""
    n, batch, seq = t.shape[:3]
    new = new.view(n, batch, *new.shape[1:])
    ones = [1] * (t.dim() - 3)
    if pos.shape[1] == 1:
        return torch.where(F.one_hot(pos[:, 0], seq).bool().view(n, 1, seq, *ones), new, t)
    return t.scatter(2, pos.view(n, 1, -1, *ones).expand(new.shape), new)


def _final_block(
    w: Weights,
    target: dict[str, torch.Tensor],
    pos: torch.Tensor,
    n: int,
    x_at: torch.Tensor | None = None,
    kv_at: tuple[torch.Tensor, torch.Tensor] | None = None,
    hook: Hook = no_hook,
) -> torch.Tensor:
    """Label-position resid_post [variant * batch, 1, d] of n variants whose final block
    sees the target's keys and values except at positions pos [variant, k]. There the keys
    and values are new: from the block input x_at [variant * batch, k, d], or given as
    kv_at (each [variant * batch, k, head, d_head]). The query is the target's unless the
    label position changed; `hook` may still patch q or pattern. Attention reads the
    target's cached keys and values (shared by all variants), corrected at pos."""
    last = w.n_layers - 1
    resid, q, k, v = (target[hook_name(c, last)] for c in ("resid_pre", "q", "k", "v"))
    batch, seq = resid.shape[:2]
    x, q = resid[:, -1:].repeat(n, 1, 1), q.repeat(n, 1, 1, 1)  # label position only
    if x_at is not None:
        a, a_v = w.attn_inputs(x_at, last)
        kv_at = heads(w, last, "k", a), heads(w, last, "v", a_v)
        label = pos.repeat_interleave(batch, 0)[:, -1] == seq - 1  # label position changed
        if label.any():
            x[label] = x_at[label, -1:]
            q[label] = heads(w, last, "q", a[label, -1:])
    q = hook("q", q)
    scale = w.d_head**0.5
    # Elementwise products, not matmuls: cheaper at these sizes.
    scores = ((q.view(n, batch, 1, w.n_heads, w.d_head) * k).sum(-1) / scale).transpose(2, 3)
    scores = scores.reshape(n * batch, w.n_heads, seq)
    changed = kv_at is not None and pos.shape[1] > 0
    if changed:
        where = pos.repeat_interleave(batch, 0)[:, None].expand(-1, w.n_heads, -1)
        scores = scores.scatter(2, where, (q * kv_at[0]).sum(-1).transpose(1, 2) / scale)
    pattern = hook("pattern", scores.softmax(-1).unsqueeze(2))  # [n * batch, head, 1, seq]
    z = (pattern.view(n, batch, w.n_heads, seq).transpose(2, 3).unsqueeze(-1) * v).sum(2)
    z = z.view(n * batch, 1, w.n_heads, w.d_head)
    if changed:  # values that changed: their weighted change
        weight = pattern[:, :, 0].gather(2, where).transpose(1, 2).unsqueeze(-1)
        z = z + (weight * (kv_at[1] - _rows_at(v, pos, seq))).sum(1, keepdim=True)
    return block_tail(w, last, x, z)


def _patcher(masks: torch.Tensor, src: torch.Tensor, component: str):
    """Hook patching `component` in the last len(masks) * batch rows (variant-major)."""
    n, axis = len(masks), _position_axis(component) + 1

    def patch(name: str, act: torch.Tensor) -> torch.Tensor:
        if name != component or n == 0:
            return act
        m = masks.narrow(axis, masks.shape[axis] - act.shape[axis], act.shape[axis])
        s = src.narrow(axis, src.shape[axis] - act.shape[axis], act.shape[axis])
        new = n * len(src)
        fresh = torch.where(m[:, None], s, act[-new:].view(n, len(src), *act.shape[1:]))
        return (
            torch.cat([act[:-new], fresh.flatten(0, 1)]) if len(act) > new else fresh.flatten(0, 1)
        )

    return patch


def _finish_patched(
    w: Weights,
    layer: int,
    target: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    masks: torch.Tensor,
    component: str,
    sourced: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """resid_post of each variant patching `component` (one of AFTER_ATTENTION) in `layer`
    at the positions it touches, [variant * batch, k, d], and those positions [variant, k]
    (the label position only in the final block): the block's tail there only, from the
    target's cached resid_pre and z. Everywhere else resid_post is the target's own.
    Variants flagged `sourced` (see _sourced) take the source's resid_post there instead."""
    (batch, seq, d), n = target[hook_name("resid_pre", layer)].shape, len(masks)
    # only the label position matters in the final block (and was kept: _inert)
    pos = (
        torch.full((n, 1), seq - 1, device=masks.device)
        if layer == w.n_layers - 1
        else _touched(masks, seq)
    )
    if sourced is None or not sourced.any():
        return _tail_at(w, layer, target, source, masks, pos, component), pos
    post = _rows_at(source[hook_name("resid_pre", layer + 1)], pos, seq)
    todo = ~sourced
    if todo.any():
        tail = _tail_at(w, layer, target, source, masks[todo], pos[todo], component)
        post.view(n, batch, -1, d)[todo] = tail.view(-1, batch, *tail.shape[1:])
    return post, pos


def _tail_at(
    w: Weights,
    layer: int,
    target: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    masks: torch.Tensor,
    pos: torch.Tensor,
    component: str,
) -> torch.Tensor:
    """resid_post [variant * batch, k, d] at positions pos [variant, k] of the variants
    patching `component` (after attention) in `layer`, from the target's resid_pre and z."""
    resid = target[hook_name("resid_pre", layer)]
    seq = resid.shape[1]
    patch = _row_patcher(masks, source[hook_name(component, layer)], pos, component)
    if component == "resid_post":  # the patched activation is the block's output
        return patch(component, _rows_at(target[hook_name(component, layer)], pos, seq))
    return block_tail(
        w,
        layer,
        _rows_at(resid, pos, seq),
        patch("z", _rows_at(target[hook_name("z", layer)], pos, seq)),
        patch,
    )


def patch_all(
    model,
    clean,
    corrupted,
    metric,
    components=PATCHABLE,
    per_position=True,
    direction="denoising",
    max_memory_mb=256,
    progress: Progress | None = None,
    **labels,
) -> pd.DataFrame:
    """One tidy table of several components' patching sweeps (skipping ones the model
    lacks), with a normalized column (0 = corrupted, 1 = clean)."""
    w = Weights.of(model)
    frames = []
    for component in tracked(components, progress, len(components), "patching"):
        if w.attn_only and component in MLP_COMPONENTS:
            continue
        result = activation_patch(
            model, clean, corrupted, metric, component, per_position, direction, max_memory_mb
        )
        df = result.table(**labels)
        df["normalized"] = result.normalized().flatten().tolist()
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


__all__ = [
    "METRICS",
    "PATCHABLE",
    "Patched",
    "accuracy",
    "activation_patch",
    "label_logprob",
    "logit_diff",
    "patch_all",
]
