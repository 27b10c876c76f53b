"""LayerNorm placements: each normalizes where it says, trains, checkpoints and reloads.

That the functional forward (patching, ensembles) equals the bridge for every placement
is in test_forward.py and test_patching.py; here the placements' meaning is checked
through invariances of the TransformerLens model itself."""

import pytest
import torch

from helpers import tiny_config
from initlens.models import Run, UserError, build_model, train
from initlens.models.config import NORMALIZATIONS
from initlens.models.layernorm import PLACEMENTS


def _model(normalization, **model):
    # vocab fan-in: the larger embeddings keep LayerNorm's eps (and so the departure from
    # exact scale invariance) below the 1e-4 tolerance of the invariance checks
    fields = {"normalization": normalization, "embed_fan_in": "vocab", **model}
    return build_model(tiny_config().replace(model=fields), "cpu")


def _cache_scaled(model, factor):
    """The bridge's cache with both embeddings scaled by `factor` (resid_pre x factor)."""
    tokens = torch.arange(model.cfg.n_ctx).repeat(3, 1) % model.cfg.d_vocab
    with torch.no_grad():
        for name in ("embed.weight", "pos_embed.weight"):
            model.state_dict()[name].mul_(factor)
        _, cache = model.run_with_cache(tokens)
        for name in ("embed.weight", "pos_embed.weight"):
            model.state_dict()[name].div_(factor)
    return cache


def test_every_placement_is_a_config_choice():
    assert set(PLACEMENTS) == set(NORMALIZATIONS)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_layernorm_parameters_are_the_placements_slots(normalization):
    names = {n.split(".")[-2] for n in _model(normalization).state_dict()} & {
        "ln1",
        "ln2",
        "ln_final",
    }
    assert names == set(PLACEMENTS[normalization][0])


@pytest.mark.parametrize(
    "normalization, pattern_invariant, v_invariant",
    [
        ("LN", True, True),
        ("qk", True, False),
        ("v", False, True),
        ("none", False, False),
        ("mlp", False, False),
    ],
)
def test_what_the_first_layernorm_normalizes(normalization, pattern_invariant, v_invariant):
    """LayerNorm is scale-invariant: scaling resid_pre leaves what it normalizes unchanged."""
    model = _model(normalization)
    one, three = _cache_scaled(model, 1.0), _cache_scaled(model, 3.0)
    for hook, invariant in (
        ("blocks.0.attn.hook_pattern", pattern_invariant),
        ("blocks.0.attn.hook_v", v_invariant),
    ):
        same = torch.allclose(one[hook], three[hook], atol=1e-4)
        assert same == invariant, hook


def test_post_ln_normalizes_the_stream_after_each_sublayer():
    cache = _cache_scaled(_model("post"), 1.0)
    for hook in (
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
    ):  # LayerNorm at init: weight 1, bias 0
        x = cache[hook]
        torch.testing.assert_close(x.mean(-1), torch.zeros(x.shape[:2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            x.var(-1, unbiased=False), torch.ones(x.shape[:2]), atol=1e-3, rtol=0
        )
    pre = cache["blocks.0.hook_resid_pre"]  # the embedding: not normalized
    assert (pre.var(-1, unbiased=False) - 1).abs().max() > 0.1


def test_attention_only_placement_leaves_the_mlp_input_raw():
    cache = _cache_scaled(_model("attn"), 1.0)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_in"], cache["blocks.0.hook_resid_mid"])
    cache = _cache_scaled(_model("LN"), 1.0)
    assert not torch.allclose(cache["blocks.0.mlp.hook_in"], cache["blocks.0.hook_resid_mid"])


@pytest.mark.parametrize("normalization", ["post", "qk"])
@pytest.mark.integration
def test_a_placement_trains_and_reloads(tmp_path, normalization):
    cfg = tiny_config(steps=10).replace(model={"normalization": normalization})
    run = train(cfg, tmp_path / "run", progress=False)
    assert Run.open(run.path).config.model.normalization == normalization
    model = run.load_model()
    tokens = torch.randint(0, cfg.task.vocab_size, (4, cfg.task.seq_len))
    fresh = build_model(cfg, "cpu")
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh(tokens), model(tokens))
    assert not torch.allclose(fresh(tokens), build_model(cfg, "cpu")(tokens))  # it trained


def test_mlp_placement_needs_an_mlp():
    with pytest.raises(UserError, match="has no MLP"):
        tiny_config().replace(model={"normalization": "mlp", "d_mlp": 0}).validate()
