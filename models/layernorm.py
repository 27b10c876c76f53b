"""Where a block normalizes: pre-LN, post-LN, none, and the partial placements of
docs/SCIENCE.md section 3.2 (attention input only, MLP input only, query/key only, value only).

TransformerLens's native model is pre-LN. We boot it with LayerNorm everywhere, then turn
the slots a placement does not use into pass-throughs (their parameters leave the state
dict, their hooks still fire) and, for post-LN and the query/key- or value-only
placements, give the blocks their own forward. Hook names keep their meaning:
`resid_mid` is the stream between attention and MLP, `resid_post` the block's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from transformer_lens.model_bridge.sources.native.model import NativeAttention, NativeBlock

# normalization -> (LayerNorm slots kept, what ln1 normalizes)
# ln1 normalizes the attention input ("qkv"), only its query/key or value input, or (post-LN)
# the stream after attention; ln2 the MLP input (post-LN: the block output).
PLACEMENTS: dict[str, tuple[frozenset[str], str]] = {
    "LN": (frozenset({"ln1", "ln2", "ln_final"}), "qkv"),  # pre-LN, TransformerLens default
    "post": (frozenset({"ln1", "ln2"}), "post"),
    "none": (frozenset(), "qkv"),
    "attn": (frozenset({"ln1", "ln_final"}), "qkv"),
    "mlp": (frozenset({"ln2", "ln_final"}), "qkv"),
    "qk": (frozenset({"ln1", "ln_final"}), "qk"),
    "v": (frozenset({"ln1", "ln_final"}), "v"),
}


class SplitInputAttention(NativeAttention):
    """Native causal attention (no rotary, no grouped keys: our models have neither) whose
    values may read a different input than its queries and keys."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        value_input: torch.Tensor | None = None,
        pattern_fn=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seq = hidden_states.shape[1]

        def heads(linear, x: torch.Tensor) -> torch.Tensor:
            return rearrange(
                linear(x), "batch seq (head d_head) -> batch head seq d_head", head=self.n_heads
            )

        q, k = heads(self.q, hidden_states), heads(self.k, hidden_states)
        v = heads(self.v, hidden_states if value_input is None else value_input)
        scores = torch.matmul(q, k.transpose(-2, -1)) / self.scale
        pattern = F.softmax(scores.masked_fill(self.causal_mask[:seq, :seq], float("-inf")), -1)
        if pattern_fn is not None:  # the bridge's hook_pattern, as in NativeAttention
            pattern = pattern_fn(pattern)
        z = rearrange(torch.matmul(pattern, v), "batch head seq d_head -> batch seq (head d_head)")
        return self.o(z), pattern


class PlacedBlock(NativeBlock):
    """A block whose LayerNorms sit where `normalizes` says (see PLACEMENTS)."""

    normalizes: str = "qkv"

    def forward(
        self, hidden_states: torch.Tensor, attention_mask=None, position_ids=None, **kwargs
    ) -> tuple[torch.Tensor]:
        mask = dict(attention_mask=attention_mask, position_ids=position_ids)
        x = hidden_states
        if self.normalizes == "post":
            attn_out, _ = self.attn(x, **mask)
            mid = self.ln1(x + attn_out)
            out = mid if self.cfg.attn_only else self.ln2(mid + self.mlp(mid))
            return (out,)
        normed = self.ln1(x)
        qk, v = (normed, x) if self.normalizes == "qk" else (x, normed)
        attn_out, _ = self.attn(qk, value_input=v, **mask)
        mid = x + attn_out
        if self.cfg.attn_only:
            return (mid,)
        return (mid + self.mlp(self.ln2(mid)),)


def apply_placement(model, normalization: str, final_ln: bool | None = None) -> None:
    """Make a model booted with LayerNorm everywhere normalize as `normalization` says;
    `final_ln` True or False adds or drops the final LayerNorm (None: as the placement)."""
    slots, normalizes = PLACEMENTS[normalization]
    if final_ln is not None:
        slots = slots | {"ln_final"} if final_ln else slots - {"ln_final"}
    norms = [
        (block, name) for block in model.blocks for name in ("ln1", "ln2") if hasattr(block, name)
    ] + [(model, "ln_final")]
    for owner, name in norms:
        if name not in slots:
            bridge = getattr(owner, name)
            bridge.set_original_component(torch.nn.Identity())
            bridge.use_native_layernorm_autograd = True  # the pass-through path
    if normalizes == "qkv":
        return
    for block in model.blocks:
        native = block.original_component
        native.__class__ = type(
            f"PlacedBlock_{normalizes}", (PlacedBlock,), {"normalizes": normalizes}
        )
        native.attn.original_component.__class__ = SplitInputAttention
        if normalizes == "post":  # the stream between the sublayers is ln1's output
            block.hook_aliases = {**block.hook_aliases, "hook_resid_mid": "ln1.hook_out"}
