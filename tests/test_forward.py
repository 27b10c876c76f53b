"""The functional forward equals the TransformerBridge on every hook.

It differs only by float32 rounding: LayerNorm is the fused kernel (the bridge writes it
out op by op), so values agree to a few units in the last place, not bit for bit."""

import pytest
import torch

from initlens.models import MixtureTask, ModelConfig, RunConfig, build_model
from initlens.models.forward import Weights, block, embed, run_with_cache, unembed
from test_patching import SHAPES
from test_patching_realistic import randomize_vectors

# The published conventions: free d_head, no biases, the final LayerNorm on or off.
CONVENTION_SHAPES = [
    SHAPES["2L-postLN-no-bias-wide-head"],
    SHAPES["2L-LN-no-final-LN-3heads"],
    ModelConfig(
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_head=8,
        normalization="post",
        final_ln=True,
        biases=False,
        embed_fan_in="vocab",
    ),
]


@pytest.mark.parametrize(
    "model_cfg",
    [
        ModelConfig(n_layers=3, d_model=32, n_heads=2),
        ModelConfig(n_layers=1, d_model=32, n_heads=4, normalization="none"),
        ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=0, gamma=0.3),
        ModelConfig(n_layers=4, d_model=48, n_heads=3, act_fn="gelu"),
        *[
            ModelConfig(n_layers=2, d_model=32, n_heads=2, normalization=n, d_mlp=d_mlp)
            for n in ("post", "attn", "mlp", "qk", "v")
            for d_mlp in (None, 0)
            if not (n == "mlp" and d_mlp == 0)
        ],
        *CONVENTION_SHAPES,
    ],
)
def test_every_hook_matches_the_bridge(model_cfg):
    cfg = RunConfig(task=MixtureTask(seq_len=7), model=model_cfg)
    model = build_model(cfg, "cpu")
    tokens = torch.randint(
        0, cfg.task.vocab_size, (5, 7), generator=torch.Generator().manual_seed(0)
    )
    ref_logits, ref = model.run_with_cache(tokens)
    w = Weights.of(model)
    logits, cache = run_with_cache(w, tokens)
    close = dict(rtol=1e-5, atol=1e-5)  # observed: <= 2.4e-6 on logits of size ~4
    torch.testing.assert_close(logits, ref_logits, **close)
    shared = [k for k in cache if k in ref.cache_dict]
    assert len(shared) >= 8 * model_cfg.n_layers
    for name in shared:
        torch.testing.assert_close(cache[name], ref[name], **close, msg=name)
    # The label-position-only final block gives the same label logits (to rounding).
    x = embed(w, tokens)
    for layer in range(w.n_layers):
        x = block(w, layer, x, last_only=layer == w.n_layers - 1)
    assert torch.allclose(unembed(w, x[:, -1]), ref_logits[:, -1], atol=1e-5)


def test_weights_follow_the_model():
    cfg = RunConfig(model=ModelConfig(d_model=16))
    model = build_model(cfg, "cpu")
    w = Weights.of(model)
    assert Weights.of(model) is w  # cached
    with torch.no_grad():
        model.state_dict()["embed.weight"].add_(1.0)  # in place: seen through the views
    assert torch.equal(Weights.of(model)["embed.weight"], model.state_dict()["embed.weight"])
    model.to(torch.float64)  # parameters replaced: rebuilt
    assert Weights.of(model)["embed.weight"].dtype == torch.float64


@pytest.mark.parametrize(
    "model_cfg",
    [
        ModelConfig(n_layers=2, d_model=32, n_heads=2),
        ModelConfig(n_layers=3, d_model=24, n_heads=3, act_fn="gelu"),
        ModelConfig(n_layers=1, d_model=32, n_heads=4, normalization="none"),
        *[
            ModelConfig(n_layers=2, d_model=32, n_heads=2, normalization=n, d_mlp=d_mlp)
            for n in ("post", "attn", "mlp", "qk", "v")
            for d_mlp in (None, 0)
            if not (n == "mlp" and d_mlp == 0)
        ],
        *CONVENTION_SHAPES,
    ],
)
def test_every_hook_matches_the_bridge_with_random_biases(model_cfg):
    """Random biases and LayerNorm parameters: a bias the forward dropped shows here."""
    cfg = RunConfig(task=MixtureTask(seq_len=7), model=model_cfg)
    model = randomize_vectors(build_model(cfg, "cpu"), seed=1)
    tokens = torch.randint(
        0, cfg.task.vocab_size, (5, 7), generator=torch.Generator().manual_seed(1)
    )
    assert_matches_the_bridge(model, tokens)


def test_every_hook_matches_the_bridge_on_a_trained_model(tiny_run):
    model = tiny_run.load_model(device="cpu")
    tokens = tiny_run.dataset()[:13]["tokens"]
    assert_matches_the_bridge(model, tokens)


def assert_matches_the_bridge(model, tokens):
    """Logits and every shared hook within 1e-5 of the bridge's run_with_cache."""
    ref_logits, ref = model.run_with_cache(tokens)
    logits, cache = run_with_cache(Weights.of(model), tokens)
    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, **close)
    shared = [k for k in cache if k in ref.cache_dict]
    assert len(shared) >= 8 * model.cfg.n_layers
    for name in shared:
        torch.testing.assert_close(cache[name], ref[name], **close, msg=name)
