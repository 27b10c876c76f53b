"""Path patching (Wang et al. 2022, IOI) and edge attribution patching, batched.

A path runs from a sender (the embeddings, a head's output, an MLP's output: something that
writes into the residual stream) to a receiver that reads it later (a head's query, key or
value input, an MLP's input, the logits). Path patching replaces the sender's output by the
source run's in that receiver's input only, everything else frozen at the target run:

    receiver input = target residual stream + (sender_source - sender_target)

and then runs the model on from the receiver (what the receiver writes flows on freely),
measuring the metric at the label position. Denoising (the default) runs the corrupted
prompt with the clean sender; noising the reverse, as in probes/patching.py. Every
sender x receiver pair (and sender position, `per_position`) is one row block of a batched
forward that starts at the receiver's layer from the target run's cache.

Edge attribution patching estimates the same numbers to first order from two forward passes
and one backward pass: (sender_source - sender_target) . d metric / d receiver input. Report
its agreement with exact path patching (`probes.attribution.agreement`); never assume it.

Node names: senders "embed", "L{l}H{h}" (head h of layer l, its output through W_O),
"MLP{l}"; receivers "L{l}H{h}.q" / ".k" / ".v", "MLP{l}", "logits". The residual stream
must be a sum of these writes, so post-LN models are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Int

from initlens.models.errors import UserError, check_positive
from initlens.models.forward import (
    Weights,
    attend,
    block,
    block_tail,
    embed,
    heads,
    hook_name,
    mlp,
    run_with_cache,
    unembed,
)
from initlens.models.progress import Progress, tracked
from initlens.probes.patching import Metric, _apply_metric, check_pair_inputs

QKV = ("q", "k", "v")
_CACHED = ("resid_pre", "q", "k", "v", "z", "resid_mid", "mlp_out", "resid_post")


@dataclass(frozen=True)
class Node:
    """A sender or receiver. `order` places it in the forward pass: a receiver reads every
    write of a sender with a smaller order (embed 0; layer l's heads 2l+1, its MLP 2l+2;
    the logits last)."""

    name: str
    kind: str  # "embed", "head", "mlp" or "logits"
    layer: int = -1
    head: int = -1
    input: str = ""  # a head receiver's q, k or v

    @property
    def order(self) -> int:
        """Where the node writes (sender) or reads (receiver) in the forward pass."""
        return {"embed": 0, "head": 2 * self.layer + 1, "mlp": 2 * self.layer + 2}.get(
            self.kind, 1 << 30
        )


def senders(w: Weights) -> list[Node]:
    """Every node that writes into the residual stream, in forward order."""
    nodes = [Node("embed", "embed")]
    for layer in range(w.n_layers):
        nodes += [Node(f"L{layer}H{h}", "head", layer, h) for h in range(w.n_heads)]
        if not w.attn_only:
            nodes.append(Node(f"MLP{layer}", "mlp", layer))
    return nodes


def receivers(w: Weights) -> list[Node]:
    """Every node that reads the residual stream, in forward order."""
    nodes = []
    for layer in range(w.n_layers):
        nodes += [
            Node(f"L{layer}H{h}.{t}", "head", layer, h, t) for h in range(w.n_heads) for t in QKV
        ]
        if not w.attn_only:
            nodes.append(Node(f"MLP{layer}", "mlp", layer))
    return nodes + [Node("logits", "logits")]


def _pick(nodes: list[Node], names: Sequence[str] | None, what: str) -> list[Node]:
    if names is None:
        return nodes
    known = {n.name: n for n in nodes}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(
            f"unknown {what} {', '.join(map(repr, unknown))}; this model's {what}s are "
            f"{', '.join(known)}"
        )
    return [known[n] for n in dict.fromkeys(names)]


def _check_pairs(sent: list[Node], received: list[Node]) -> None:
    """Every named node must take part in a path: a receiver after some sender."""
    for r in received:
        if not any(s.order < r.order for s in sent):
            raise UserError(
                f"receiver {r.name} reads the residual stream before any of the senders "
                f"({', '.join(s.name for s in sent)}) write to it; a receiver must come "
                f"later in the model than its sender"
            )
    for s in sent:
        if not any(s.order < r.order for r in received):
            raise UserError(
                f"sender {s.name} writes after every receiver "
                f"({', '.join(r.name for r in received)}) reads; choose a later receiver"
            )


@dataclass(frozen=True)
class PathPatched:
    """Path patching (or its attribution estimate) for every sender x receiver pair."""

    values: torch.Tensor  # [sender, receiver] or [sender, receiver, pos]; NaN: no such path
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    per_position: bool  # positions are the sender's (where its output is patched)
    clean: float  # metric on the clean run
    corrupted: float  # metric on the corrupted run

    def normalized(self) -> torch.Tensor:
        """0 = corrupted baseline, 1 = clean."""
        return (self.values - self.corrupted) / (self.clean - self.corrupted)

    def table(self, value: str = "value", **labels) -> pd.DataFrame:
        """Tidy rows, one per path: sender, receiver, position (-1: all), value, effect
        (value minus the baseline of the run patched: corrupted for denoising) and any
        labels (e.g. run, step)."""
        v = self.values if self.per_position else self.values.unsqueeze(-1)
        s, r, p = torch.nonzero(~v.isnan(), as_tuple=True)
        values = v[s, r, p].tolist()
        df = pd.DataFrame(
            {
                **{k: [x] * len(values) for k, x in labels.items()},
                "sender": [self.senders[i] for i in s.tolist()],
                "receiver": [self.receivers[i] for i in r.tolist()],
                "position": p.tolist() if self.per_position else [-1] * len(values),
                value: values,
            }
        )
        return df


def _setup(model, clean, corrupted, direction, sender_names, receiver_names, what):
    """The model's weights, the chosen senders and receivers (checked), and the target and
    source tokens on the model's device; a UserError for what path patching cannot do."""
    w = Weights.of(model)
    w.require_attention(what)
    if w.normalizes == "post":
        raise UserError(
            f"{what} needs a pre-LN model (its residual stream a sum of each node's "
            f"output); this model normalizes after each sublayer (normalization='post')"
        )
    check_pair_inputs(clean, corrupted, direction)
    sent = _pick(senders(w), sender_names, "sender")
    received = _pick(receivers(w), receiver_names, "receiver")
    _check_pairs(sent, received)
    device = w["embed.weight"].device
    clean, corrupted = clean.to(device), corrupted.to(device)
    target, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    return w, sent, received, target, source


def _output(w: Weights, node: Node, cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a sender writes into the residual stream, [batch, seq, d] (a head: its z
    through its slice of W_O, without the bias the layer's heads share)."""
    if node.kind == "embed":
        return cache[hook_name("resid_pre", 0)]
    if node.kind == "mlp":
        return cache[hook_name("mlp_out", node.layer)]
    d_head, h = w.d_head, node.head
    w_o = w[f"blocks.{node.layer}.attn.o.weight"][:, h * d_head : (h + 1) * d_head]
    return cache[hook_name("z", node.layer)][:, :, h] @ w_o.T


def _deltas(
    w: Weights, sent: list[Node], source: dict, target: dict, per_position: bool
) -> torch.Tensor:
    """Source minus target output of each sender, [sender, (pos,) batch, seq, d]: with
    positions, variant p keeps position p only."""
    outputs = [_output(w, s, source) - _output(w, s, target) for s in sent]
    # A final-block sender cached at the label position only (its other positions reach no
    # receiver): zeros before it.
    seq = max(o.shape[1] for o in outputs)
    deltas = torch.stack([F.pad(o, (0, 0, seq - o.shape[1], 0)) for o in outputs])
    if not per_position:
        return deltas
    only = torch.eye(seq, dtype=torch.bool, device=deltas.device)  # [variant pos, pos]
    return deltas.unsqueeze(1) * only[None, :, None, :, None]


def _finish(w: Weights, layer: int, x: torch.Tensor, metric: Metric, n: int) -> torch.Tensor:
    """Metric per variant (mean over the batch) of running blocks `layer`.. from resid_pre
    `x` [variant * batch, seq or 1, d] (from the final block on, only the label position
    is computed)."""
    for later in range(layer, w.n_layers):
        x = block(w, later, x, last_only=later == w.n_layers - 1)
    logits = unembed(w, x[:, -1])
    return _apply_metric(metric, logits.view(n, -1, logits.shape[-1])).mean(-1)


def _head_receivers(
    w: Weights, layer: int, d: torch.Tensor, target: dict, metric: Metric
) -> torch.Tensor:
    """Metric of each (variant, q/k/v, head) path into layer `layer`'s heads: the head reads
    the target residual stream plus the sender's difference `d` [variant, batch, seq, dm]."""
    n, batch, seq, _ = d.shape
    heads_, d_head = w.n_heads, w.d_head
    # Positions whose head outputs can reach the logits: in the final block, the label's.
    cut = slice(-1, None) if layer == w.n_layers - 1 else slice(None)
    x = target[hook_name("resid_pre", layer)][:, cut]
    a_qk, a_v = w.attn_inputs(target[hook_name("resid_pre", layer)] + d, layer)
    qkv = {t: target[hook_name(t, layer)].repeat(n, 1, 1, 1) for t in QKV}
    qkv["q"] = qkv["q"][:, cut]
    z = target[hook_name("z", layer)][:, cut]  # [batch, out, head, d_head]
    own = torch.eye(heads_, dtype=torch.bool, device=d.device)[:, None, None, :, None]
    z_vars = []
    for t in QKV:
        a = a_v if t == "v" else a_qk[:, :, cut] if t == "q" else a_qk
        moved = heads(w, layer, t, a.flatten(0, 1))
        # Heads are independent: replacing every head's input at once gives, for each head,
        # its output with only its own input replaced.
        z_new = attend(*(moved if u == t else qkv[u] for u in QKV))
        z_new = z_new.view(n, batch, -1, heads_, d_head)
        # One receiver head at a time: [variant, receiver head, batch, out, head, d_head].
        z_vars.append(torch.where(own, z_new.unsqueeze(1), z))
    z_var = torch.stack(z_vars, 1).flatten(0, 3)  # [variant * q/k/v * head * batch, ...]
    resid = block_tail(w, layer, x.repeat(n * 3 * heads_, 1, 1), z_var)
    return _finish(w, layer + 1, resid, metric, n * 3 * heads_).view(n, 3, heads_)


def _mlp_receiver(
    w: Weights, layer: int, d: torch.Tensor, target: dict, metric: Metric
) -> torch.Tensor:
    """Metric of each variant's path into layer `layer`'s MLP (its input: target resid_mid
    plus `d`; its output added to the target resid_mid)."""
    n = d.shape[0]
    mid = target[hook_name("resid_mid", layer)]
    if layer == w.n_layers - 1:
        mid, d = mid[:, -1:], d[:, :, -1:]
    resid = (mid + mlp(w, layer, mid + d)).flatten(0, 1)
    return _finish(w, layer + 1, resid, metric, n)


def _logits_receiver(
    w: Weights, layer: int, d: torch.Tensor, target: dict, metric: Metric
) -> torch.Tensor:
    """Metric of each variant's path into the logits (the final residual stream plus `d`)."""
    final = target[hook_name("resid_post", w.n_layers - 1)][:, -1]
    return _apply_metric(metric, unembed(w, final + d[:, :, -1])).mean(-1)


def _groups(received: list[Node]) -> list[Node]:
    """One receiver of each group one batched pass computes (a layer's heads, an MLP, the
    logits)."""
    return list({(r.kind, r.layer): r for r in received}.values())


@torch.inference_mode()
def path_patch(
    model,
    clean: Int[torch.Tensor, "batch seq"],
    corrupted: Int[torch.Tensor, "batch seq"],
    metric: Metric,
    per_position: bool = False,
    direction: str = "denoising",
    sender_names: Sequence[str] | None = None,
    receiver_names: Sequence[str] | None = None,
    max_memory_mb: float = 256,
    progress: Progress | None = None,
) -> PathPatched:
    """Exact path patching of every sender x receiver pair (default: all of the model's;
    `sender_names` / `receiver_names` choose some), metric averaged over the batch.

    per_position: one patch per sender position (values [sender, receiver, pos]).
    `max_memory_mb` bounds one batched chunk of paths; chunking changes values by float32
    rounding only."""
    check_positive(max_memory_mb, "max_memory_mb")
    w, sent, received, target, source = _setup(
        model, clean, corrupted, direction, sender_names, receiver_names, "path patching"
    )
    batch, seq = clean.shape
    logits, cache = run_with_cache(w, torch.cat([clean, corrupted]), _CACHED, label_only=True)
    halves = {k: v.split(batch) for k, v in cache.items()}
    src, tgt = (0, 1) if direction == "denoising" else (1, 0)
    target_cache, source_cache = ({k: v[i] for k, v in halves.items()} for i in (tgt, src))
    base = _apply_metric(metric, logits[:, -1].reshape(2, batch, -1)).mean(-1)
    deltas = _deltas(w, sent, source_cache, target_cache, per_position)
    n_pos = seq if per_position else 1
    values = torch.full(
        (len(sent), len(received), n_pos), float("nan"), device=deltas.device, dtype=deltas.dtype
    )
    column = {r.name: i for i, r in enumerate(received)}
    d_model = deltas.shape[-1]
    width = max(
        d_model, w.n_heads * seq, 0 if w.attn_only else w["blocks.0.mlp.in.weight"].shape[0]
    )
    groups = _groups(received)
    for group in tracked(groups, progress, len(groups), "path patching"):
        kind, layer = group.kind, group.layer
        rows = [i for i, s in enumerate(sent) if s.order < group.order]
        if not rows:
            continue
        d = deltas[rows].reshape(-1, batch, seq, d_model)  # [variant, batch, seq, d]
        fan = 3 * w.n_heads if kind == "head" else 1
        per_variant = max(1, w.n_layers - layer) * fan * batch * seq * width * 4 * 12
        chunk = max(1, int(max_memory_mb * 2**20 // per_variant))
        if kind == "head":
            out = torch.cat(
                [_head_receivers(w, layer, c, target_cache, metric) for c in d.split(chunk)]
            )
            out = out.view(len(rows), n_pos, 3, w.n_heads)
            for r in received:
                if r.kind == "head" and r.layer == layer:
                    values[rows, column[r.name]] = out[:, :, QKV.index(r.input), r.head]
            continue
        run = _mlp_receiver if kind == "mlp" else _logits_receiver
        out = torch.cat([run(w, layer, c, target_cache, metric) for c in d.split(chunk)])
        values[rows, column["logits" if kind == "logits" else f"MLP{layer}"]] = out.view(
            len(rows), n_pos
        )
    return _result(values, sent, received, per_position, base)


def _result(values, sent, received, per_position, base) -> PathPatched:
    """Pairs whose receiver does not read the sender are NaN."""
    for i, s in enumerate(sent):
        for j, r in enumerate(received):
            if s.order >= r.order:
                values[i, j] = float("nan")
    return PathPatched(
        values if per_position else values[..., 0],
        tuple(s.name for s in sent),
        tuple(r.name for r in received),
        per_position,
        float(base[0]),
        float(base[1]),
    )


def edge_attribution(
    model,
    clean: Int[torch.Tensor, "batch seq"],
    corrupted: Int[torch.Tensor, "batch seq"],
    metric: Metric,
    per_position: bool = False,
    direction: str = "denoising",
    sender_names: Sequence[str] | None = None,
    receiver_names: Sequence[str] | None = None,
) -> PathPatched:
    """Edge attribution patching: the first-order estimate of every `path_patch` value,
    target metric + sum over batch and positions of (sender_source - sender_target) .
    d metric / d receiver input (mean over the batch), from a forward pass on each prompt
    and one backward pass."""
    w, sent, received, target, source = _setup(
        model, clean, corrupted, direction, sender_names, receiver_names, "edge attribution"
    )
    batch, seq = clean.shape
    with torch.no_grad():
        source_logits, source_cache = run_with_cache(w, source, ("resid_pre", "z", "mlp_out"))
        source_value = _apply_metric(metric, source_logits[:, -1]).mean()
    inputs: dict[str, torch.Tensor] = {}
    target_cache: dict[str, torch.Tensor] = {}
    with torch.enable_grad():
        value = _forward_with_inputs(w, target, metric, inputs, target_cache)
        value.backward()
    deltas = _deltas(w, sent, source_cache, target_cache, per_position)
    n_pos = seq if per_position else 1
    values = torch.full(
        (len(sent), len(received), n_pos), float("nan"), device=deltas.device, dtype=deltas.dtype
    )
    for j, r in enumerate(received):
        grad = (  # [batch, seq, d]
            inputs[f"L{r.layer}.{r.input}"].grad[:, :, r.head]
            if r.kind == "head"
            else inputs[r.name].grad
        )
        # per sender (and position): sum over batch, seq, d of delta * grad
        values[:, j] = value.detach() + torch.einsum("s...bpd,bpd->s...", deltas, grad).reshape(
            len(sent), n_pos
        )
    value = value.detach()
    clean_value, corrupted_value = (
        (source_value, value) if direction == "denoising" else (value, source_value)
    )
    return _result(
        values, sent, received, per_position, torch.stack([clean_value, corrupted_value])
    )


def _forward_with_inputs(
    w: Weights, tokens: torch.Tensor, metric: Metric, inputs: dict, cache: dict
) -> torch.Tensor:
    """The mean metric of the forward pass on `tokens`, each receiver reading its own copy
    of the residual stream (kept in `inputs`, gradients retained: their gradients are the
    receivers' alone; "L{layer}.{q|k|v}" holds one copy per head, [batch, seq, head, d]);
    the senders' outputs go to `cache` (detached)."""
    x = embed(w, tokens).requires_grad_(True)  # (the weights are detached)
    cache[hook_name("resid_pre", 0)] = x.detach()
    for layer in range(w.n_layers):
        p = f"blocks.{layer}"
        qkv = {}
        for t in QKV:
            own = x.unsqueeze(2).repeat(1, 1, w.n_heads, 1)  # [batch, seq, head, d]: a copy each
            own.retain_grad()
            inputs[f"L{layer}.{t}"] = own
            a = w.attn_inputs(own, layer)[1 if t == "v" else 0]
            weight = w[f"{p}.attn.{t}.weight"].view(w.n_heads, w.d_head, -1)
            qkv[t] = torch.einsum("bshd,hed->bshe", a, weight) + w[f"{p}.attn.{t}.bias"].view(
                w.n_heads, w.d_head
            )
        z = attend(qkv["q"], qkv["k"], qkv["v"])
        cache[hook_name("z", layer)] = z.detach()
        mid = x + F.linear(z.flatten(-2), w[f"{p}.attn.o.weight"], w[f"{p}.attn.o.bias"])
        if w.attn_only:
            x = mid
            continue
        own = mid.clone()
        own.retain_grad()
        inputs[f"MLP{layer}"] = own
        out = mlp(w, layer, own)
        cache[hook_name("mlp_out", layer)] = out.detach()
        x = mid + out
    final = x.clone()
    final.retain_grad()
    inputs["logits"] = final
    return _apply_metric(metric, unembed(w, final[:, -1])).mean()
