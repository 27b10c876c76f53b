"""Path patching against a reference written directly with TransformerLens hooks, and edge
attribution patching against its own finite-difference meaning, on random models."""

import pytest
import torch

from initlens.models import ModelConfig, UserError
from initlens.models.forward import Weights
from initlens.probes.attribution import agreement
from initlens.probes.patching import logit_diff
from initlens.probes.paths import edge_attribution, path_patch, receivers, senders
from test_patching_realistic import biased_model, corrupt

TOL = 1e-5  # max abs difference in float32, as for activation patching


def _freeze_hooks(model, target_cache, source_cache, sender, position):
    """Hooks of step 2 (Wang et al. 2022): every head output and MLP output frozen at the
    target run, the sender's output (at `position`, or all) taken from the source run."""
    n_layers = model.cfg.n_layers
    where = slice(None) if position is None else position

    def freeze(name, own_head=None):
        def hook(act, hook):
            out = target_cache[name].clone()
            if own_head is not None:
                out[:, where, own_head] = source_cache[name][:, where, own_head]
            elif own_head is None and sender_is(name):
                out[:, where] = source_cache[name][:, where]
            return out

        return hook

    def sender_is(name):
        return (sender.kind == "mlp" and name == f"blocks.{sender.layer}.hook_mlp_out") or (
            sender.kind == "embed" and name == "blocks.0.hook_resid_pre"
        )

    hooks = []
    for layer in range(n_layers):
        z = f"blocks.{layer}.attn.hook_z"
        own = sender.head if sender.kind == "head" and sender.layer == layer else None
        hooks.append((z, freeze(z, own)))
        if not model.cfg.attn_only:
            m = f"blocks.{layer}.hook_mlp_out"
            hooks.append((m, freeze(m)))
    if sender.kind == "embed":
        hooks.append(("blocks.0.hook_resid_pre", freeze("blocks.0.hook_resid_pre")))
    return hooks


@torch.no_grad()
def reference_path_patch(
    model, target, source, metric, sender, receiver, position=None, caches=None
):
    """One path, the way the method is usually written: a run with everything frozen but the
    sender, recording what the receiver computes, then a run on the target with only the
    receiver's activation replaced by that. `caches`: the (target, source) runs' caches,
    computed once for many paths (None: run both here)."""
    if caches is None:
        caches = model.run_with_cache(target)[1], model.run_with_cache(source)[1]
    target_cache, source_cache = caches
    hooks = _freeze_hooks(model, target_cache, source_cache, sender, position)
    if receiver.kind == "logits":
        logits = model.run_with_hooks(target, fwd_hooks=hooks)
        return float(metric(logits[:, -1]).mean())
    name = (
        f"blocks.{receiver.layer}.attn.hook_{receiver.input}"
        if receiver.kind == "head"
        else f"blocks.{receiver.layer}.hook_mlp_out"
    )
    seen = {}

    def record(act, hook):
        seen["act"] = act.clone()
        return act

    # The receiver's own hook records first, then any freezing hook on the same point runs.
    model.run_with_hooks(target, fwd_hooks=[(name, record)] + hooks)
    received = seen["act"]

    def patch(act, hook):
        if receiver.kind == "head":
            act = act.clone()
            act[:, :, receiver.head] = received[:, :, receiver.head]
            return act
        return received

    logits = model.run_with_hooks(target, fwd_hooks=[(name, patch)])
    return float(metric(logits[:, -1]).mean())


def biased_model_case(shape: str, batch: int = 5, seq: int = 6, positions=(1, 5)):
    """A model with random biases and LayerNorms, tokens corrupted at `positions` (the label
    position included by default), a logit-difference metric."""
    model = biased_model(SHAPES[shape], seq)
    vocab = model.cfg.d_vocab
    g = torch.Generator().manual_seed(batch + seq)
    clean = torch.randint(0, vocab, (batch, seq), generator=g)
    corrupted = corrupt(clean, positions, vocab, g)
    return model, clean, corrupted, logit_diff(*torch.randint(0, vocab, (2, batch), generator=g))


SHAPES = {
    "2L-2heads": ModelConfig(n_layers=2, d_model=32, n_heads=2),
    "3L-3heads-gelu": ModelConfig(n_layers=3, d_model=24, n_heads=3, d_head=8, act_fn="gelu"),
    "2L-attn-only-LN-on-qk": ModelConfig(
        n_layers=2, d_model=32, n_heads=2, d_mlp=0, normalization="qk"
    ),
    "2L-1head-no-final-LN": ModelConfig(n_layers=2, d_model=16, n_heads=1, final_ln=False),
}


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_path_matches_the_transformerlens_reference(shape, direction):
    model, clean, corrupted, metric = biased_model_case(shape)
    target, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    ours = path_patch(model, clean, corrupted, metric, direction=direction)
    w = Weights.of(model)
    baseline = ours.corrupted if direction == "denoising" else ours.clean
    moved = 0
    for i, s in enumerate(senders(w)):
        for j, r in enumerate(receivers(w)):
            if s.order >= r.order:
                assert torch.isnan(ours.values[i, j])
                continue
            expected = reference_path_patch(model, target, source, metric, s, r)
            assert abs(float(ours.values[i, j]) - expected) < TOL, (s.name, r.name)
            moved += abs(expected - baseline) > 1e-3
    assert moved > 10  # the reference is not blind: most paths move the metric


# (shape, direction, receivers checked: None = all)
BY_POSITION = [
    ("2L-2heads", "denoising", None),
    ("3L-3heads-gelu", "noising", ("L1H1.k", "L2H0.q", "L2H2.v", "MLP1", "logits")),
]


@pytest.mark.parametrize("shape,direction,received", BY_POSITION)
def test_paths_by_sender_position_match_the_reference(shape, direction, received):
    model, clean, corrupted, metric = biased_model_case(shape)
    target, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    w = Weights.of(model)
    sent = [s for s in senders(w) if s.layer <= 0]
    recv = [r for r in receivers(w) if received is None or r.name in received]
    ours = path_patch(
        model,
        clean,
        corrupted,
        metric,
        per_position=True,
        direction=direction,
        sender_names=[s.name for s in sent],
        receiver_names=[r.name for r in recv],
    )
    assert ours.values.shape == (len(sent), len(recv), clean.shape[1])
    for i, s in enumerate(sent):
        for j, r in enumerate(recv):
            if s.order >= r.order:
                continue
            for p in range(clean.shape[1]):
                expected = reference_path_patch(model, target, source, metric, s, r, p)
                assert abs(float(ours.values[i, j, p]) - expected) < TOL, (s.name, r.name, p)


def test_chunks_change_values_by_rounding_only():
    model, clean, corrupted, metric = biased_model_case("3L-3heads-gelu", batch=7)
    whole = path_patch(model, clean, corrupted, metric, per_position=True)
    chunked = path_patch(model, clean, corrupted, metric, per_position=True, max_memory_mb=1e-6)
    assert torch.allclose(whole.values, chunked.values, atol=TOL, equal_nan=True)


def nearby_case(shape: str, eps: float):
    """A float64 model in which each corrupted token's embedding is its clean token's plus
    `eps` noise: every sender's difference is O(eps), so exact path patching is linear in it
    up to O(eps^2), which is what edge attribution computes."""
    model, clean, corrupted, metric = biased_model_case(shape, positions=(1,))
    model = model.double()
    with torch.no_grad():
        emb = model.embed.W_E if hasattr(model.embed, "W_E") else model.embed.weight
        g = torch.Generator().manual_seed(1)
        for c, x in zip(clean[:, 1].tolist(), corrupted[:, 1].tolist()):
            emb[x] = emb[c] + eps * torch.randn(emb.shape[1], generator=g, dtype=emb.dtype)
    return model, clean, corrupted, metric


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("shape", ["2L-2heads", "3L-3heads-gelu"])
def test_edge_attribution_is_path_patching_to_first_order(shape, per_position):
    model, clean, corrupted, metric = nearby_case(shape, eps=1e-4)
    exact = path_patch(model, clean, corrupted, metric, per_position=per_position)
    estimate = edge_attribution(model, clean, corrupted, metric, per_position=per_position)
    assert estimate.values.shape == exact.values.shape
    assert torch.equal(estimate.values.isnan(), exact.values.isnan())
    effect = (exact.values - exact.corrupted).nan_to_num()
    error = (estimate.values - exact.values).nan_to_num()
    assert effect.abs().max() > 1e-6  # the paths do move the metric, at O(eps)
    assert error.abs().max() < 1e-3 * effect.abs().max()  # O(eps^2) next to O(eps)
    assert abs(estimate.corrupted - exact.corrupted) < 1e-9
    assert abs(estimate.clean - exact.clean) < 1e-9


def test_edge_attribution_agreement_is_measured_not_assumed():
    model, clean, corrupted, metric = biased_model_case("3L-3heads-gelu", batch=9)
    exact = path_patch(model, clean, corrupted, metric)
    estimate = edge_attribution(model, clean, corrupted, metric)
    agree = agreement(exact, estimate, k=5)
    n = int((~exact.values.isnan()).sum())
    assert agree["n_patches"] == n
    assert -1 <= agree["spearman"] <= 1 and -1 <= agree["pearson"] <= 1
    # Far from linear here (a whole token changed in a random model): not equal.
    assert not torch.allclose(exact.values, estimate.values, atol=1e-3, equal_nan=True)


def test_logits_paths_are_exact_for_edge_attribution_without_a_final_layernorm():
    """The logit difference is linear in the final residual stream when no LayerNorm sits
    before the unembedding, so every path into the logits is estimated exactly."""
    model, clean, corrupted, metric = biased_model_case("2L-1head-no-final-LN")
    exact = path_patch(model, clean, corrupted, metric, receiver_names=["logits"])
    estimate = edge_attribution(model, clean, corrupted, metric, receiver_names=["logits"])
    assert torch.allclose(exact.values, estimate.values, atol=TOL)


def test_table_lists_each_path_once():
    model, clean, corrupted, metric = biased_model_case("2L-2heads")
    result = path_patch(model, clean, corrupted, metric, per_position=True)
    table = result.table(run="r")
    assert len(table) == int((~result.values.isnan()).sum())
    assert not table.duplicated(["sender", "receiver", "position"]).any()
    assert set(table.run) == {"r"}
    row = table[(table.sender == "embed") & (table.receiver == "logits")].iloc[-1]
    assert row.value == pytest.approx(float(result.values[0, -1, -1]))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"sender_names": ["L1H0"], "receiver_names": ["L0H1.q"]}, "before any of the senders"),
        ({"sender_names": ["L1H0", "embed"], "receiver_names": ["L1H0.q"]}, "writes after"),
        ({"sender_names": ["L9H0"]}, "unknown sender 'L9H0'"),
        ({"receiver_names": ["resid"]}, "unknown receiver 'resid'"),
        ({"direction": "sideways"}, "unknown direction"),
    ],
)
def test_bad_nodes_get_one_clear_line(kwargs, message):
    model, clean, corrupted, metric = biased_model_case("2L-2heads")
    for fn in (path_patch, edge_attribution):
        with pytest.raises(UserError, match=message):
            fn(model, clean, corrupted, metric, **kwargs)


def test_models_without_a_sum_of_writes_are_refused():
    from initlens.models import MixtureTask, RunConfig, build_model

    clean = torch.zeros(2, 5, dtype=torch.long)
    metric = logit_diff(torch.tensor([0, 1]), torch.tensor([1, 0]))
    for model_cfg, message in [
        (ModelConfig(architecture="emb_mlp"), "needs a transformer"),
        (ModelConfig(n_heads=2, normalization="post"), "needs a pre-LN model"),
    ]:
        model = build_model(RunConfig(task=MixtureTask(seq_len=5), model=model_cfg), "cpu")
        with pytest.raises(UserError, match=message):
            path_patch(model, clean, clean, metric)
