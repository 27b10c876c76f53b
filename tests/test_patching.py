"""Activation patching against transformer_lens.patching on random models of several shapes."""

import pytest
import torch
from transformer_lens import patching as tlp

from initlens.models import MixtureTask, ModelConfig, RunConfig, UserError, build_model
from initlens.probes.patching import activation_patch, label_logprob, logit_diff, patch_all

TOL = 1e-5  # max abs difference in float32, as promised in the README
REFERENCE = {  # (component, per_position) -> TransformerLens function
    ("resid_pre", True): tlp.get_act_patch_resid_pre,
    ("attn_out", True): tlp.get_act_patch_attn_out,
    ("mlp_out", True): tlp.get_act_patch_mlp_out,
    ("z", True): tlp.get_act_patch_attn_head_out_by_pos,
    ("q", True): tlp.get_act_patch_attn_head_q_by_pos,
    ("k", True): tlp.get_act_patch_attn_head_k_by_pos,
    ("v", True): tlp.get_act_patch_attn_head_v_by_pos,
    ("pattern", True): tlp.get_act_patch_attn_head_pattern_by_pos,
    ("z", False): tlp.get_act_patch_attn_head_out_all_pos,
    ("q", False): tlp.get_act_patch_attn_head_q_all_pos,
    ("k", False): tlp.get_act_patch_attn_head_k_all_pos,
    ("v", False): tlp.get_act_patch_attn_head_v_all_pos,
    ("pattern", False): tlp.get_act_patch_attn_head_pattern_all_pos,
}
SHAPES = {
    "2L-LN-2heads": ModelConfig(n_layers=2, d_model=32, n_heads=2),
    "2L-LN-1head": ModelConfig(n_layers=2, d_model=32, n_heads=1),  # the demo's shape
    "1L-noLN-4heads": ModelConfig(n_layers=1, d_model=32, n_heads=4, normalization="none"),
    "2L-attn-only": ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=0),
    "4L-LN-gelu-3heads": ModelConfig(n_layers=4, d_model=48, n_heads=3, act_fn="gelu"),
    "3L-small-init": ModelConfig(n_layers=3, d_model=32, n_heads=2, gamma=0.8),
    # LayerNorm placements (models/layernorm.py)
    "2L-postLN": ModelConfig(n_layers=2, d_model=32, n_heads=2, normalization="post"),
    "2L-LN-on-qk": ModelConfig(n_layers=2, d_model=32, n_heads=2, normalization="qk"),
    "2L-LN-on-v-attn-only": ModelConfig(
        n_layers=2, d_model=32, n_heads=2, d_mlp=0, normalization="v"
    ),
    "1L-LN-on-mlp": ModelConfig(n_layers=1, d_model=32, n_heads=4, normalization="mlp"),
    # The published conventions: free d_head, no biases, no final LayerNorm
    "2L-postLN-no-bias-wide-head": ModelConfig(
        n_layers=2,
        d_model=32,
        n_heads=1,
        d_head=16,
        normalization="post",
        biases=False,
        final_ln=False,
    ),
    "2L-LN-no-final-LN-3heads": ModelConfig(
        n_layers=2, d_model=24, n_heads=3, d_head=12, final_ln=False
    ),
}


def setup(shape: str | ModelConfig, seq: int = 5, batch: int = 4):
    """A random model (named shape or config), clean/corrupted tokens, a logit-diff metric."""
    model_cfg = SHAPES[shape] if isinstance(shape, str) else shape
    cfg = RunConfig(task=MixtureTask(seq_len=seq), model=model_cfg)
    model = build_model(cfg, "cpu")
    g = torch.Generator().manual_seed(model_cfg.n_layers * 100 + model_cfg.d_model)
    vocab = cfg.task.vocab_size
    clean = torch.randint(0, vocab, (batch, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(0, vocab, (batch,), generator=g)
    correct, alternative = torch.randint(0, vocab, (2, batch), generator=g)
    return model, clean, corrupted, logit_diff(correct, alternative)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_transformerlens_for_every_granularity(shape, direction):
    model, clean, corrupted, metric = setup(shape)
    target, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    _, source_cache = model.run_with_cache(source)
    attn_only = SHAPES[shape].d_mlp == 0
    for (component, per_position), reference in REFERENCE.items():
        if attn_only and component == "mlp_out":
            continue
        expected = reference(model, target, source_cache, lambda lg: metric(lg[:, -1]).mean())
        got = activation_patch(
            model, clean, corrupted, metric, component, per_position, direction
        ).values
        assert got.shape == expected.shape, (component, per_position)
        assert (got - expected).abs().max() <= TOL, (component, per_position)


def test_resid_mid_patches_the_residual_stream():
    """TL 4.3's bridge aliases hook_resid_mid to ln2.hook_in, so its get_act_patch_resid_mid
    changes only the MLP input. Ours patches the residual stream (HookedTransformer
    semantics); the reference here patches that alias and adds the same delta after the MLP."""
    model, clean, corrupted, metric = setup("2L-LN-2heads")
    _, cache = model.run_with_cache(clean)
    expected = torch.zeros(2, clean.shape[1])
    for layer in range(2):
        for pos in range(clean.shape[1]):
            delta = {}

            def patch_mid(act, hook, layer=layer, pos=pos):
                act = act.clone()
                new = cache[f"blocks.{layer}.hook_resid_mid"][:, pos]
                delta["d"] = new - act[:, pos]
                act[:, pos] = new
                return act

            def add_delta(act, hook, pos=pos):
                act = act.clone()
                act[:, pos] += delta["d"]
                return act

            logits = model.run_with_hooks(
                corrupted,
                fwd_hooks=[
                    (f"blocks.{layer}.hook_resid_mid", patch_mid),
                    (f"blocks.{layer}.hook_resid_post", add_delta),
                ],
            )
            expected[layer, pos] = metric(logits[:, -1]).mean()
    got = activation_patch(model, clean, corrupted, metric, "resid_mid").values
    assert (got - expected).abs().max() <= TOL


def test_resid_post_equals_next_resid_pre_and_the_last_layer_equals_clean():
    model, clean, corrupted, metric = setup("4L-LN-gelu-3heads")
    post = activation_patch(model, clean, corrupted, metric, "resid_post").values
    pre = activation_patch(model, clean, corrupted, metric, "resid_pre").values
    assert torch.allclose(post[:-1], pre[1:], atol=TOL)
    result = activation_patch(model, clean, corrupted, metric, "resid_pre", per_position=False)
    # Patching the whole residual stream anywhere restores the clean run.
    assert torch.allclose(result.values, torch.full((4,), result.clean), atol=1e-4)
    assert torch.allclose(result.normalized(), torch.ones(4), atol=1e-4)


@pytest.mark.parametrize(
    "shape,batch,components",
    [
        ("2L-LN-2heads", 4, ("z",)),
        ("2L-LN-2heads", 5, ("resid_pre", "k")),
        ("2L-LN-2heads", 7, ("z", "resid_mid")),
        ("2L-LN-2heads", 13, ("mlp_out", "q")),
        ("4L-LN-gelu-3heads", 7, ("v",)),
        ("2L-postLN", 5, ("attn_out", "pattern")),
    ],
)
def test_chunking_changes_results_by_rounding_only(shape, batch, components):
    """One variant per chunk vs all in one: equal up to float32 rounding, not to the bit (a
    row of a matrix product can depend on how many rows share the call; measured <= 2e-6)."""
    model, clean, corrupted, metric = setup(shape, batch=batch)
    for component in components:
        for direction in ("denoising", "noising"):
            whole = activation_patch(
                model, clean, corrupted, metric, component, direction=direction
            ).values
            tiny = activation_patch(
                model, clean, corrupted, metric, component, direction=direction, max_memory_mb=1e-6
            ).values
            assert (whole - tiny).abs().max() <= TOL, (component, direction)


def test_tidy_table_and_patch_all():
    model, clean, corrupted, metric = setup("2L-LN-2heads")
    result = activation_patch(model, clean, corrupted, metric, "z")
    table = result.table(run="r", step=7)
    assert list(table.columns) == ["run", "step", "component", "layer", "position", "head", "value"]
    assert len(table) == 2 * 5 * 2
    row = table[(table.layer == 1) & (table.position == 3) & (table["head"] == 0)]
    assert row.value.item() == pytest.approx(result.values[1, 3, 0].item())
    all_table = patch_all(
        model,
        clean,
        corrupted,
        label_logprob(torch.tensor([1, 2, 3, 4])),
        components=("resid_pre", "pattern"),
        run="r",
    )
    assert set(all_table.component) == {"resid_pre", "pattern"}
    assert "normalized" in all_table.columns


@pytest.mark.unchecked  # ill-shaped input on purpose: our UserError, not the annotation check
def test_bad_inputs_name_the_valid_choices():
    model, clean, corrupted, metric = setup("2L-attn-only")
    with pytest.raises(UserError, match="unknown component 'resid'.*resid_pre"):
        activation_patch(model, clean, corrupted, metric, "resid")
    with pytest.raises(UserError, match="attention-only"):
        activation_patch(model, clean, corrupted, metric, "mlp_out")
    with pytest.raises(UserError, match="same \\[batch, seq\\] shape"):
        activation_patch(model, clean, corrupted[:, :4], metric)
    with pytest.raises(UserError, match="one value per example"):
        activation_patch(model, clean, corrupted, lambda logits: logits.sum())
    with pytest.raises(UserError, match="denoising or noising"):
        activation_patch(model, clean, corrupted, metric, direction="sideways")
