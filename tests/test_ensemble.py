"""Ensembles: each member trains exactly as it would alone, and fails alone."""

import pytest
import torch

import initlens.models.ensemble as ensemble
from helpers import assert_same_run, tiny_config
from initlens.models import UserError, train
from initlens.models.checkpoint import load_tensors
from initlens.models.ensemble import train_ensemble

pytestmark = pytest.mark.integration  # every test trains ensembles

MEMBERS = [(0.3, 0), (0.5, 1), (0.8, 0)]  # (gamma, seed)


def _cfgs(steps=25):
    return [
        tiny_config(steps=steps).replace(model={"gamma": g}, train={"seed": s}) for g, s in MEMBERS
    ]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    cfgs = _cfgs()
    runs = train_ensemble(cfgs, [root / f"m{i}" for i in range(len(cfgs))], progress=False)
    alone = [train(c, root / f"alone{i}", progress=False) for i, c in enumerate(cfgs)]
    return runs, alone


def test_each_member_equals_a_model_trained_alone(members):
    runs, alone = members
    tokens = torch.as_tensor(runs[0].dataset()[:200]["tokens"])
    for run, ref in zip(runs, alone):
        assert run.done and run.config == ref.config
        assert run.checkpoint_steps() == ref.checkpoint_steps()
        for step in (ref.checkpoint_steps()[1], None):
            assert_same_run(run, ref, tokens, step)


def test_one_member_per_pass_trains_the_same(members, tmp_path, monkeypatch):
    """The CPU path for large batches (members one at a time, label position alone in the
    final block) gives the same members as the batched path."""
    monkeypatch.setattr(ensemble, "CPU_FLOATS_PER_PASS", 1)
    runs, _ = members
    cfgs = _cfgs()
    again = train_ensemble(cfgs, [tmp_path / f"m{i}" for i in range(len(cfgs))], progress=False)
    for a, b in zip(again, runs):
        assert_same_run(a, b)


def test_member_optimizer_state_has_the_standalone_layout(members):
    """So `probe train --resume` continues any member on its own."""
    runs, alone = members
    for run, ref in zip(runs, alone):
        mine, meta = load_tensors(run.path / "checkpoints" / "optimizer.safetensors")
        theirs, ref_meta = load_tensors(ref.path / "checkpoints" / "optimizer.safetensors")
        assert meta == ref_meta and mine.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], atol=1e-5, rtol=1e-3, msg=key)


def test_failed_member_is_isolated(tmp_path, monkeypatch):
    real = ensemble.build_model

    def poisoned(cfg, device):  # the seed-1 member starts with NaN weights
        model = real(cfg, device)
        if cfg.train.seed == 1:
            with torch.no_grad():
                model.state_dict()["embed.weight"].fill_(float("nan"))
        return model

    monkeypatch.setattr(ensemble, "build_model", poisoned)
    cfgs = _cfgs(steps=12)
    runs = train_ensemble(cfgs, [tmp_path / f"m{i}" for i in range(3)], progress=False)
    states = [r.status for r in runs]
    assert states[1]["state"] == "failed" and "diverged" in states[1]["reason"]
    assert states[1]["diverged"] is True and not runs[1].checkpoint_steps()  # NaN at init
    assert states[0]["state"] == states[2]["state"] == "done"
    ref = train(cfgs[2], tmp_path / "alone", progress=False)
    torch.testing.assert_close(
        runs[2].load_model(device="cpu").state_dict()["embed.weight"],
        ref.load_model(device="cpu").state_dict()["embed.weight"],
        atol=2e-5,
        rtol=1e-4,
    )


def test_members_must_share_everything_but_gamma_and_seed(tmp_path):
    a, b = tiny_config(), tiny_config().replace(model={"n_layers": 1})
    with pytest.raises(UserError, match="only in their init"):
        train_ensemble([a, b], [tmp_path / "a", tmp_path / "b"], progress=False)
    assert not (tmp_path / "a").exists()


def test_members_with_one_batch_seed_share_batches(tmp_path, monkeypatch):
    """train.batch_seed: every member sees the same batches, and still equals its run alone."""
    used = []

    def spy(step, n_rows, batch_size, seed):
        used.append(seed)
        return real(step, n_rows, batch_size, seed)

    real = ensemble.batch_indices
    monkeypatch.setattr(ensemble, "batch_indices", spy)
    cfgs = [c.replace(train={"batch_seed": 7}) for c in _cfgs(steps=12)]
    runs = train_ensemble(cfgs, [tmp_path / f"m{i}" for i in range(3)], progress=False)
    assert set(used) == {7}
    ref = train(cfgs[1], tmp_path / "alone", progress=False)  # seed 1, batches of seed 7
    assert (runs[1].metrics().value - ref.metrics().value).abs().max() < 1e-4
    other = train(cfgs[1].replace(train={"batch_seed": None}), tmp_path / "own", progress=False)
    assert (other.metrics().value - ref.metrics().value).abs().max() > 1e-3
