"""No public patching, attribution or corruption call changes its inputs."""

import torch

from initlens.models import MixtureTask
from initlens.probes.attribution import agreement, attribution_patch, guided_patch
from initlens.probes.corruptions import make_pairs
from initlens.probes.patching import (
    Patched,
    accuracy,
    activation_patch,
    label_logprob,
    logit_diff,
    patch_all,
)
from test_patching import setup


def unchanged(*tensors: torch.Tensor):
    """Copies of `tensors` now, and a check that each is still equal to its copy (NaN
    equal to NaN, otherwise to the bit)."""
    before = [t.clone() for t in tensors]

    def check(what: str) -> None:
        for i, (t, b) in enumerate(zip(tensors, before)):
            torch.testing.assert_close(
                t, b, rtol=0, atol=0, equal_nan=True, msg=f"{what} changed input {i}"
            )

    return check


def test_no_public_call_mutates_its_inputs():
    model, clean, corrupted, _ = setup("2L-LN-2heads", batch=5)
    correct, alternative = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9, 10])
    only = torch.ones(2, 5, 2, dtype=torch.bool)
    only[0, 1] = False
    logits = torch.randn(5, 64)
    params = list(model.state_dict().values())
    check = unchanged(clean, corrupted, correct, alternative, only, logits, *params)
    for make in (
        lambda: logit_diff(correct, alternative),
        lambda: label_logprob(correct),
        lambda: accuracy(correct),
    ):
        make()(logits)
        check("a metric")
    metric = logit_diff(correct, alternative)
    for direction in ("denoising", "noising"):
        for component in ("resid_pre", "resid_mid", "z", "k", "pattern", "attn_out"):
            per = component in ("z", "k")
            exact = activation_patch(
                model,
                clean,
                corrupted,
                metric,
                component,
                direction=direction,
                max_memory_mb=1e-3,
                only=only if per else None,
            )
            check(f"activation_patch {component} {direction}")
            estimate = attribution_patch(
                model, clean, corrupted, metric, component, direction=direction
            )
            check(f"attribution_patch {component} {direction}")
            results = unchanged(exact.values, estimate.values)
            agreement(exact, estimate, k=3)
            exact.normalized()
            exact.table(run="r")
            results(f"agreement/normalized/table {component}")
            guided_patch(model, clean, corrupted, metric, component, k=3, direction=direction)
            check(f"guided_patch {component} {direction}")
    patch_all(model, clean, corrupted, metric, components=("resid_post", "mlp_out", "q", "v"))
    check("patch_all")
    pairs = make_pairs(MixtureTask(seq_len=5, samples_per_pair=20), "key", n=6)
    pair_check = unchanged(pairs.clean, pairs.corrupted, pairs.clean_label, pairs.corrupted_label)
    pairs.to("cpu")
    pair_check("PatchPairs.to")
    # The caller's `only` selects exactly the patches that were run.
    selected = activation_patch(model, clean, corrupted, metric, "z", only=only).values
    assert torch.equal(selected.isnan(), ~only)


def test_guided_patch_returns_k_patches_after_a_selective_sweep():
    model, clean, corrupted, metric = setup("2L-LN-2heads")
    only = torch.ones(2, 5, dtype=torch.bool)
    activation_patch(model, clean, corrupted, metric, "resid_pre", only=only)
    assert only.all()
    for k in (1, 4, 10):
        table = guided_patch(model, clean, corrupted, metric, "resid_pre", k=k)
        assert len(table) == k and table.exact.notna().all()


def test_patched_is_not_changed_by_its_methods():
    result = Patched(torch.tensor([[0.0, 1.0]]), "resid_pre", ("pos",), clean=1.0, corrupted=0.0)
    check = unchanged(result.values)
    result.normalized()
    result.table()
    check("Patched methods")
