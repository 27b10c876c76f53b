"""Build a TransformerLens model (TransformerBridge, TL-native) at init scale gamma.

TransformerLens 4 replaced `HookedTransformer` with `TransformerBridge.boot_native`, which
keeps the HookedTransformer hook names (`blocks.{l}.hook_resid_pre`, `blocks.{l}.attn.hook_z`,
...) and works with `transformer_lens.patching`. We build it, then overwrite every weight
with N(0, (d_in^-gamma)^2) from a seeded generator, so the init is exact and reproducible.
"""

from __future__ import annotations

import re

import torch
import transformer_lens.model_bridge.sources.native  # noqa: F401  (registers boot_native)
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from initlens.models.config import ModelConfig, RunConfig
from initlens.models.emb_mlp import EmbMLP
from initlens.models.layernorm import apply_placement

# Embedding matrices: their input is one-hot, so their d_in is the number of rows.
EMBEDDINGS = ("embed.weight", "pos_embed.weight")
# The biases `biases=False` removes: attention Q/K/V/O and the MLP's (not the unembedding's).
BLOCK_BIASES = re.compile(r"blocks\.\d+\.(attn\.[qkvo]|mlp\.(in|out))\.bias")


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fan_in(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> int | None:
    """d_in of a weight matrix in TL state-dict naming; None for vectors (biases, norms).

    Linear weights are stored (d_out, d_in); embeddings (rows, d_model) with one-hot input.
    """
    if len(shape) != 2:
        return None
    if name in EMBEDDINGS:
        return shape[0] if cfg.embed_fan_in == "vocab" else shape[1]
    return shape[1]


def target_std(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    """The init std of a parameter: d_in^-gamma for matrices (times readout_scale for the
    unembedding), 0 for vectors (constant)."""
    d_in = fan_in(name, shape, cfg)
    scale = cfg.readout_scale if name == "unembed.weight" else 1.0
    return 0.0 if d_in is None else scale * float(d_in) ** -cfg.gamma


def low_rank(w: torch.Tensor, rank: int) -> torch.Tensor:
    """`w` cut to its top `rank` singular directions, rescaled to its Frobenius norm."""
    if rank >= min(w.shape):
        return w
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    cut = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return cut * (w.norm() / cut.norm())


def bridge_config(cfg: RunConfig) -> TransformerBridgeConfig:
    m = cfg.model
    return TransformerBridgeConfig(
        d_model=m.d_model,
        d_head=m.head_dim,
        n_heads=m.n_heads,
        n_layers=m.n_layers,
        n_ctx=cfg.n_ctx,
        d_vocab=cfg.task.vocab_size,
        d_mlp=m.mlp_dim or None,
        attn_only=m.mlp_dim == 0,
        act_fn=m.act_fn,
        normalization_type=None if m.normalization == "none" else "LN",
        positional_embedding_type="standard",
        seed=cfg.train.seed,
    )


@torch.no_grad()
def init_weights(model: TransformerBridge | EmbMLP, cfg: ModelConfig, seed: int) -> None:
    """Every matrix ~ N(0, d_in^-2gamma); biases 0; LayerNorm weights 1.

    Draws on the CPU in name order from one generator, so the same seed gives the same
    weights on any device.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in sorted(model.state_dict().items()):
        std = target_std(name, tuple(tensor.shape), cfg)
        if std > 0:
            w = torch.randn(tensor.shape, generator=gen) * std
            tensor.copy_(w if cfg.init_rank is None else low_rank(w, cfg.init_rank))
        elif name.endswith(".weight"):  # LayerNorm scale
            tensor.fill_(1.0)
        else:
            tensor.zero_()


def build_model(
    cfg: RunConfig, device: str | torch.device | None = None
) -> TransformerBridge | EmbMLP:
    """A freshly initialized model for `cfg` (validated first), on `device`, in eval mode
    (TransformerLens analysis tools require it; `train()` switches modes itself): a
    TransformerBridge, or the Emb-MLP for `architecture="emb_mlp"`."""
    cfg.validate()
    device = resolve_device(str(device or cfg.train.device))
    if cfg.model.architecture == "emb_mlp":
        m = cfg.model
        model = EmbMLP(cfg.task.vocab_size, m.d_model, m.mlp_dim, cfg.n_ctx, m.act_fn)
        init_weights(model, m, cfg.train.seed)
        if not m.biases:
            freeze_biases(model)
        return model.eval().to(device)
    model = TransformerBridge.boot_native(bridge_config(cfg))
    if cfg.model.normalization != "none":
        apply_placement(model, cfg.model.normalization, cfg.model.final_ln)
    init_weights(model, cfg.model, cfg.train.seed)
    if not cfg.model.biases:
        freeze_biases(model)
    model.eval()
    return model.to(device, print_details=False)


def freeze_biases(model: torch.nn.Module) -> None:
    """Keep the attention and MLP biases at zero: no gradient, no optimizer moves them."""
    names = {t.data_ptr(): name for name, t in model.state_dict().items()}
    for p in model.parameters():
        if BLOCK_BIASES.fullmatch(names.get(p.data_ptr(), "")):
            p.requires_grad_(False)


def realized_init(model: TransformerBridge | EmbMLP, cfg: ModelConfig) -> list[dict]:
    """Per parameter: shape, d_in, target std and the std actually drawn (tidy rows)."""
    rows = []
    for name, tensor in model.state_dict().items():
        t = tensor.detach().float().cpu()
        d_in = fan_in(name, tuple(t.shape), cfg)
        rows.append(
            {
                "param": name,
                "shape": list(t.shape),
                "d_in": d_in,
                "target_std": target_std(name, tuple(t.shape), cfg),
                "realized_std": float(t.std()) if t.numel() > 1 else 0.0,
                "mean": float(t.mean()),
            }
        )
    return rows


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "bridge_config",
    "build_model",
    "fan_in",
    "freeze_biases",
    "init_weights",
    "n_params",
    "realized_init",
    "resolve_device",
    "target_std",
]
