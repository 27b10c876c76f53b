"""Patching against transformer_lens.patching where biases and LayerNorm parameters matter.

The models of test_patching.py have zero biases and unit LayerNorms, so they cannot tell a
dropped bias from a kept one. These have random biases (b_Q, b_K, b_V, b_O, b_in, b_out,
b_U) and random LayerNorm weights and biases, or were briefly trained on real prompts; the
batches are odd and the corruptions sit at several positions, the label position included.
"""

from functools import partial

import pytest
import torch
from transformer_lens import patching as tlp

from initlens.models import MixtureTask, ModelConfig, RunConfig, build_model
from initlens.probes.corruptions import make_pairs
from initlens.probes.patching import activation_patch, logit_diff
from test_patching import REFERENCE, TOL

REFERENCES = {
    **REFERENCE,
    ("resid_post", True): partial(
        tlp.generic_activation_patch,
        patch_setter=tlp.layer_pos_patch_setter,
        activation_name="resid_post",
        index_axis_names=("layer", "pos"),
    ),
}
SHAPES = {
    "2L-LN-2heads": ModelConfig(n_layers=2, d_model=32, n_heads=2),
    "3L-LN-gelu-3heads": ModelConfig(n_layers=3, d_model=24, n_heads=3, act_fn="gelu"),
    "2L-postLN": ModelConfig(n_layers=2, d_model=32, n_heads=2, normalization="post"),
    "2L-LN-on-qk": ModelConfig(n_layers=2, d_model=32, n_heads=2, normalization="qk"),
    "2L-LN-on-v-attn-only": ModelConfig(
        n_layers=2, d_model=32, n_heads=2, d_mlp=0, normalization="v"
    ),
    "1L-noLN-4heads": ModelConfig(n_layers=1, d_model=32, n_heads=4, normalization="none"),
}


@torch.no_grad()
def randomize_vectors(model, seed: int = 0, scale: float = 0.5):
    """Every bias ~ N(0, scale^2), every LayerNorm weight ~ 1 + N(0, scale^2), in place."""
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if t.ndim == 1:
            noise = torch.randn(t.shape, generator=g) * scale
            t.copy_(1 + noise if name.endswith(".weight") else noise)
    return model


def biased_model(model_cfg: ModelConfig, seq: int):
    """A random model with random biases and LayerNorm parameters."""
    model = build_model(RunConfig(task=MixtureTask(seq_len=seq), model=model_cfg), "cpu")
    return randomize_vectors(model, seed=model_cfg.n_layers * 10 + model_cfg.n_heads)


def corrupt(
    clean: torch.Tensor, positions: tuple[int, ...], vocab: int, g: torch.Generator
) -> torch.Tensor:
    """A copy of `clean` with a different token at each of `positions` in every row."""
    corrupted = clean.clone()
    for p in positions:
        shift = torch.randint(1, vocab, (len(clean),), generator=g)
        corrupted[:, p] = (clean[:, p] + shift) % vocab
    return corrupted


def assert_matches_tl(model, clean, corrupted, metric, direction, components=None):
    """Every reference sweep (or those of `components`) equals ours within TOL."""
    target, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    _, source_cache = model.run_with_cache(source)
    attn_only = model.cfg.attn_only
    for (component, per_position), reference in REFERENCES.items():
        if (attn_only and component == "mlp_out") or (components and component not in components):
            continue
        expected = reference(model, target, source_cache, lambda lg: metric(lg[:, -1]).mean())
        got = activation_patch(
            model, clean, corrupted, metric, component, per_position, direction
        ).values
        assert got.shape == expected.shape, (component, per_position)
        diff = (got - expected).abs().max()
        assert diff <= TOL, (component, per_position, float(diff))


# (shape, batch, corrupted positions, direction, components): every component, both
# directions, odd batches and the label position (4) across the cases; fast enough for
# every run. test_every_case_matches_transformerlens (slow) runs the full matrix.
CASES = [
    ("2L-LN-2heads", 7, (4,), "denoising", ("resid_pre", "z", "k", "mlp_out")),
    ("2L-LN-2heads", 13, (1,), "noising", ("attn_out", "v", "resid_post")),
    ("3L-LN-gelu-3heads", 5, (2, 4), "denoising", ("z", "q", "resid_post")),
    ("2L-postLN", 9, (0, 3), "noising", ("resid_pre", "z", "mlp_out")),
    ("2L-LN-on-qk", 7, (4,), "noising", ("k", "pattern", "attn_out")),
    ("2L-LN-on-v-attn-only", 5, (2, 4), "denoising", ("v", "z", "resid_pre")),
    ("1L-noLN-4heads", 7, (1,), "denoising", ("z", "q", "attn_out")),
]
POSITIONS = {"pos1": (1,), "pos0+3": (0, 3), "label": (4,), "pos2+label": (2, 4)}


def random_case(shape: str, batch: int, positions: tuple[int, ...]):
    """A biased random model, clean and corrupted tokens [batch, 5], a logit-diff metric."""
    model = biased_model(SHAPES[shape], 5)
    vocab = model.cfg.d_vocab
    g = torch.Generator().manual_seed(batch * 10 + positions[0])
    clean = torch.randint(0, vocab, (batch, 5), generator=g)
    corrupted = corrupt(clean, positions, vocab, g)
    return model, clean, corrupted, logit_diff(*torch.randint(0, vocab, (2, batch), generator=g))


@pytest.mark.parametrize(
    "shape,batch,positions,direction,components",
    CASES,
    ids=[f"{c[0]}-b{c[1]}-{c[3]}" for c in CASES],
)
def test_matches_transformerlens_with_random_biases(shape, batch, positions, direction, components):
    model, clean, corrupted, metric = random_case(shape, batch, positions)
    assert_matches_tl(model, clean, corrupted, metric, direction, components)


@pytest.mark.slow
@pytest.mark.parametrize("positions", list(POSITIONS.values()), ids=list(POSITIONS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_case_matches_transformerlens(shape, positions):
    model, clean, corrupted, metric = random_case(shape, 7, positions)
    for direction in ("denoising", "noising"):
        assert_matches_tl(model, clean, corrupted, metric, direction)


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The conftest's run (30 steps of real training on mixture prompts), its last model."""
    return tiny_run.config.task, tiny_run.load_model(device="cpu")


def test_the_trained_model_has_nonzero_biases_and_layernorms(trained):
    _, model = trained
    vectors = {n: t for n, t in model.state_dict().items() if t.ndim == 1}
    for name, t in vectors.items():
        # unembed.bias is a buffer, not trained; b_K gets no gradient (softmax ignores a
        # shift shared by all keys): both are random in the cases above.
        if name != "unembed.bias" and not name.endswith("attn.k.bias"):
            assert (t - float(name.endswith("weight"))).abs().max() > 1e-3, name


# (corruption kind, pairs, direction, components)
TRAINED = [
    ("key", 7, "denoising", ("resid_pre", "z", "k", "mlp_out", "attn_out")),
    ("anchor", 9, "noising", ("v", "pattern", "q", "resid_post")),
    ("reasoning_to_memory", 5, "denoising", ("z", "resid_pre", "v")),
]


@pytest.mark.parametrize("kind,n,direction,components", TRAINED, ids=[t[0] for t in TRAINED])
def test_matches_transformerlens_on_a_trained_model_and_real_pairs(
    trained, kind, n, direction, components
):
    task, model = trained
    pairs = make_pairs(task, kind, n=n, seed=2)
    metric = logit_diff(pairs.clean_label, pairs.corrupted_label)
    assert_matches_tl(model, pairs.clean, pairs.corrupted, metric, direction, components)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["key", "anchor", "reasoning_to_memory"])
def test_every_component_on_a_trained_model_and_real_pairs(trained, kind):
    task, model = trained
    pairs = make_pairs(task, kind, n=7, seed=2)
    metric = logit_diff(pairs.clean_label, pairs.corrupted_label)
    for direction in ("denoising", "noising"):
        assert_matches_tl(model, pairs.clean, pairs.corrupted, metric, direction)


def test_trained_model_with_the_label_position_corrupted(trained):
    task, model = trained
    pairs = make_pairs(task, "key", n=7, seed=3)
    g = torch.Generator().manual_seed(0)
    corrupted = corrupt(pairs.clean, (task.seq_len - 1,), model.cfg.d_vocab, g)
    metric = logit_diff(pairs.clean_label, pairs.corrupted_label)
    assert_matches_tl(
        model, pairs.clean, corrupted, metric, "noising", ("resid_pre", "z", "k", "q")
    )
