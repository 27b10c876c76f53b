"""A functional forward pass of our TransformerLens-native models, hook by hook.

Same arithmetic as the TransformerBridge (every LayerNorm placement of models/layernorm.py,
causal attention, learned positions; and the Emb-MLP of models/emb_mlp.py), but plain tensor
ops over the model's own weights. Two things make it the engine of the patching tools:
every TransformerLens hook point (`resid_pre`, `q`, `k`, `v`, `pattern`, `z`, `attn_out`,
`resid_mid`, `mlp_out`, `resid_post`) passes through a `hook(name, tensor)` callback, and a
block can start from any cached residual stream and compute only the last (label) position.
Tests check every hook against the bridge.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from initlens.models.emb_mlp import ACT_FNS
from initlens.models.errors import UserError

Hook = Callable[[str, torch.Tensor], torch.Tensor]
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The models' activations, but relu in place: its input is a fresh matmul output nothing
# else reads (saves a buffer).
FAST_ACT_FNS = {**ACT_FNS, "relu": lambda x: F.relu(x, inplace=True)}
BLOCK_HOOKS = (
    "resid_pre",
    "q",
    "k",
    "v",
    "pattern",
    "z",
    "attn_out",
    "resid_mid",
    "mlp_out",
    "resid_post",
)


def hook_name(component: str, layer: int) -> str:
    """TransformerLens name of a block hook: hook_name("z", 1) == "blocks.1.attn.hook_z"."""
    inner = "attn." if component in ("q", "k", "v", "pattern", "z") else ""
    return f"blocks.{layer}.{inner}hook_{component}"


def _storage(parameters: list[torch.Tensor]) -> tuple:
    return tuple((p.data_ptr(), p.device, p.dtype) for p in parameters)


@dataclass(frozen=True)
class Weights:
    """The model's weights in TransformerLens state-dict names, plus its shape."""

    params: dict[str, torch.Tensor]
    n_layers: int
    n_heads: int
    d_head: int
    attn_only: bool
    act_fn: str
    eps: float
    normalizes: str = "qkv"  # what ln1 normalizes: "qkv", "qk", "v" or "post" (post-LN)
    kind: str = "transformer"  # or "emb_mlp" (models/emb_mlp.py: no attention)

    @classmethod
    def of(cls, model) -> Weights:
        """The weights of `model` (views, not copies), cached until a parameter's storage
        is replaced (e.g. by `.to(device)`); in-place updates are seen through the views.
        (Listing the bridge's parameters walks all its hook modules: done once per model.)"""
        cached = _CACHE.get(model)
        if cached is not None and cached[1] == _storage(cached[0]):
            return cached[2]
        cfg = model.cfg
        params = {k: v.detach() for k, v in model.state_dict().items()}
        native = getattr(model.blocks[0], "original_component", None)
        weights = cls(
            params,
            cfg.n_layers,
            cfg.n_heads,
            cfg.d_head,
            attn_only=cfg.attn_only,
            act_fn=cfg.act_fn or "relu",
            eps=cfg.eps,
            normalizes=getattr(native, "normalizes", "qkv"),
            kind="transformer" if native is not None else "emb_mlp",
        )
        parameters = list(model.parameters())
        _CACHE[model] = (parameters, _storage(parameters), weights)
        return weights

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.params[name]

    def has(self, component: str) -> bool:
        """Whether the model has this block hook (attention-only models have no MLP
        hooks; the Emb-MLP only resid_pre and resid_post)."""
        if self.kind == "emb_mlp":
            return component in ("resid_pre", "resid_post")
        return not (self.attn_only and component in ("resid_mid", "mlp_out"))

    def require_attention(self, what: str) -> None:
        """A UserError for instruments that need attention blocks, on the Emb-MLP."""
        if self.kind != "transformer":
            raise UserError(
                f"{what} needs a transformer; this Emb-MLP has no attention "
                f"blocks (geometry and linear probes work on it)"
            )

    def norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """LayerNorm `prefix` (the fused kernel: equal to the bridge's to float32 rounding);
        the identity where the model's placement has no LayerNorm there."""
        if f"{prefix}.weight" not in self.params:
            return x
        return F.layer_norm(
            x, x.shape[-1:], self[f"{prefix}.weight"], self[f"{prefix}.bias"], self.eps
        )

    def attn_inputs(self, x: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(query/key input, value input) of block `layer` from its resid_pre `x`."""
        if self.normalizes == "post":
            return x, x
        a = self.norm(x, f"blocks.{layer}.ln1")
        return {"qk": (a, x), "v": (x, a)}.get(self.normalizes, (a, a))


def no_hook(name: str, t: torch.Tensor) -> torch.Tensor:
    """The hook that changes nothing (the default)."""
    return t


def embed(w: Weights, tokens: Int[torch.Tensor, "batch seq"]) -> Float[torch.Tensor, "batch seq d"]:
    """Token plus position embedding: blocks.0.hook_resid_pre."""
    return F.embedding(tokens, w["embed.weight"]) + w["pos_embed.weight"][: tokens.shape[1]]


def heads(
    w: Weights, layer: int, name: str, a: Float[torch.Tensor, "n seq d"]
) -> Float[torch.Tensor, "n seq head d_head"]:
    """Queries, keys or values (`name`: q, k, v) of block `layer` from its attention input."""
    p = f"blocks.{layer}.attn.{name}"
    out = F.linear(a, w[f"{p}.weight"], w[f"{p}.bias"])
    return out.view(*a.shape[:-1], w.n_heads, w.d_head)


def block(
    w: Weights,
    layer: int,
    x: Float[torch.Tensor, "n seq d"],
    hook: Hook = no_hook,
    last_only: bool = False,
) -> Float[torch.Tensor, "n out d"]:
    """One transformer block from its resid_pre.

    `last_only` keeps only the last position once keys and values are formed (enough for
    the label logits in the final block); later hooks, q included, see that position only.
    """
    x = hook("resid_pre", x)
    a, a_v = w.attn_inputs(x, layer)
    k, v = hook("k", heads(w, layer, "k", a)), hook("v", heads(w, layer, "v", a_v))
    if last_only:
        a, x = a[:, -1:].contiguous(), x[:, -1:]  # (a strided input makes linear slow)
    q = hook("q", heads(w, layer, "q", a))
    return block_tail(w, layer, x, attend(q, k, v, hook), hook)


def attend(
    q: Float[torch.Tensor, "n q_pos head d_head"],
    k: Float[torch.Tensor, "n seq head d_head"],
    v: Float[torch.Tensor, "n seq head d_head"],
    hook: Hook = no_hook,
) -> Float[torch.Tensor, "n q_pos head d_head"]:
    """Causal attention of every head: the head outputs z. The queries are the last q_pos
    positions of the keys (all of them, a suffix, or the last one only)."""
    # Same op order as the native model (matmul on [n, head, pos, d_head]), so the
    # rounding matches the bridge too.
    scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) / q.shape[-1] ** 0.5
    n_q, s = q.shape[1], k.shape[1]
    if n_q > 1:  # causal mask: query i sits at position s - n_q + i
        future = torch.ones(n_q, s, dtype=torch.bool, device=q.device).triu(s - n_q + 1)
        scores = scores.masked_fill(future, float("-inf"))
    pattern = hook("pattern", scores.softmax(-1))
    return hook("z", torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2))


def block_tail(
    w: Weights,
    layer: int,
    x: Float[torch.Tensor, "n seq d"],
    z: Float[torch.Tensor, "n seq head d_head"],
    hook: Hook = no_hook,
) -> Float[torch.Tensor, "n seq d"]:
    """The rest of a block once its head outputs `z` are known (x: its resid_pre). Every
    step is per position, so any subset of positions can be computed on its own."""
    p = f"blocks.{layer}"
    post = w.normalizes == "post"  # post-LN: ln1 after attention, ln2 after the MLP
    attn_out = F.linear(z.flatten(-2), w[f"{p}.attn.o.weight"], w[f"{p}.attn.o.bias"])
    mid = x + hook("attn_out", attn_out)
    mid = hook("resid_mid", w.norm(mid, f"{p}.ln1") if post else mid)
    if w.attn_only:
        return hook("resid_post", mid)
    out = mid + hook("mlp_out", mlp(w, layer, mid))
    return hook("resid_post", w.norm(out, f"{p}.ln2") if post else out)


def mlp(w: Weights, layer: int, mid: Float[torch.Tensor, "*n d"]) -> Float[torch.Tensor, "*n d"]:
    """The MLP output of block `layer` from its resid_mid (its own LayerNorm included)."""
    p = f"blocks.{layer}"
    a = mid if w.normalizes == "post" else w.norm(mid, f"{p}.ln2")
    pre = F.linear(a, w[f"{p}.mlp.in.weight"], w[f"{p}.mlp.in.bias"])
    return F.linear(FAST_ACT_FNS[w.act_fn](pre), w[f"{p}.mlp.out.weight"], w[f"{p}.mlp.out.bias"])


def unembed(w: Weights, x: Float[torch.Tensor, "*n d"]) -> Float[torch.Tensor, "*n vocab"]:
    """Final norm and unembedding."""
    return F.linear(w.norm(x, "ln_final"), w["unembed.weight"], w["unembed.bias"])


def run_with_cache(
    w: Weights,
    tokens: Int[torch.Tensor, "batch seq"],
    names: Sequence[str] = BLOCK_HOOKS,
    label_only: bool = False,
) -> tuple[Float[torch.Tensor, "batch out vocab"], dict[str, torch.Tensor]]:
    """Logits and the named block activations, keyed by TransformerLens name.

    label_only: the final block computes only the last position after its k/v (its q,
    later activations and the logits then cover the last position only)."""
    cache: dict[str, torch.Tensor] = {}
    if w.kind == "emb_mlp":
        return _emb_mlp(w, tokens, names)
    x = embed(w, tokens)
    for layer in range(w.n_layers):

        def record(name: str, t: torch.Tensor, layer=layer) -> torch.Tensor:
            if name in names:
                cache[hook_name(name, layer)] = t
            return t

        x = block(w, layer, x, record, last_only=label_only and layer == w.n_layers - 1)
    return unembed(w, x), cache


def _emb_mlp(
    w: Weights, tokens: Int[torch.Tensor, "batch seq"], names: Sequence[str]
) -> tuple[Float[torch.Tensor, "batch 1 vocab"], dict[str, torch.Tensor]]:
    """The Emb-MLP's forward: resid_pre is the summed embedding, resid_post the hidden
    layer (one position each)."""
    x = w["embed.weight"][tokens].sum(1, keepdim=True)
    hidden = FAST_ACT_FNS[w.act_fn](
        F.linear(x, w["blocks.0.mlp.in.weight"], w["blocks.0.mlp.in.bias"])
    )
    acts = {"resid_pre": x, "resid_post": hidden}
    cache = {hook_name(c, 0): t for c, t in acts.items() if c in names}
    return F.linear(hidden, w["unembed.weight"], w["unembed.bias"]), cache
