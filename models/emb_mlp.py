"""Emb-MLP (Yao, Zhang, Xu 2025; docs/SCIENCE.md section 1.3): the sum of the token
embeddings, one hidden layer, then the vocabulary. No attention, no positions.

Built from TransformerLens hook points with TransformerLens names, so geometry and linear
probes read it like the transformers: `hook_embed` (each token's embedding),
`blocks.0.hook_resid_pre` (their sum, one position), `blocks.0.mlp.hook_pre` and
`hook_post` (the hidden layer before and after the activation) and
`blocks.0.hook_resid_post` (what the unembedding reads: the hidden layer). Parameters:
`embed.weight`, `blocks.0.mlp.in.weight`/`.bias`, `unembed.weight`/`.bias`.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

# act_fn -> function (the TransformerLens native model's, by name).
ACT_FNS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


class _MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.add_module("in", nn.Linear(d_model, d_mlp))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()


class _Block(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.hook_resid_pre, self.hook_resid_post = HookPoint(), HookPoint()
        self.mlp = _MLP(d_model, d_mlp)


class EmbMLP(HookedRootModule):
    """Summed embeddings -> act(W_in x + b_in) -> W_U h + b_U; logits [batch, 1, vocab]."""

    def __init__(self, d_vocab: int, d_model: int, d_mlp: int, n_ctx: int, act_fn: str):
        super().__init__()
        # What the instruments read from a model's cfg (TransformerLens field names).
        self.cfg = SimpleNamespace(
            n_layers=1,
            n_heads=0,
            d_head=0,
            d_model=d_model,
            d_mlp=d_mlp,
            d_vocab=d_vocab,
            n_ctx=n_ctx,
            act_fn=act_fn,
            attn_only=False,
            eps=1e-5,
            normalization_type=None,
        )
        self.embed = nn.Embedding(d_vocab, d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([_Block(d_model, d_mlp)])
        self.unembed = nn.Linear(d_mlp, d_vocab)
        self.setup()

    def forward(
        self, tokens: Int[torch.Tensor, "batch seq"]
    ) -> Float[torch.Tensor, "batch 1 vocab"]:
        block = self.blocks[0]
        x = block.hook_resid_pre(self.hook_embed(self.embed(tokens)).sum(1, keepdim=True))
        pre = block.mlp.hook_pre(getattr(block.mlp, "in")(x))
        hidden = block.mlp.hook_post(ACT_FNS[self.cfg.act_fn](pre))
        return self.unembed(block.hook_resid_post(hidden))

    def to(self, *args, print_details: bool = True, **kwargs) -> EmbMLP:
        """nn.Module.to, accepting TransformerLens's `print_details` (ignored)."""
        return super().to(*args, **kwargs)
