"""Init knobs beyond gamma: readout scale and low-rank initial weights."""

import pytest
import torch

from helpers import tiny_config
from initlens.models import UserError, build_model, train
from initlens.models.build import target_std
from initlens.models.ensemble import train_ensemble


def _weights(cfg):
    return build_model(cfg, "cpu").state_dict()


def test_readout_scale_scales_the_unembedding_alone():
    base = _weights(tiny_config())
    scaled = _weights(tiny_config().replace(model={"readout_scale": 0.1}))
    for name, w in base.items():
        if name == "unembed.weight":
            torch.testing.assert_close(scaled[name], 0.1 * w)
        else:
            assert torch.equal(scaled[name], w), name


def test_low_rank_init_has_the_rank_and_the_std():
    cfg = tiny_config().replace(model={"init_rank": 2})
    weights, full = _weights(cfg), _weights(tiny_config())
    matrices = [n for n, w in weights.items() if target_std(n, tuple(w.shape), cfg.model) > 0]
    assert len(matrices) >= 8
    for name in matrices:
        w = weights[name]
        expected = min(2, *w.shape)
        assert torch.linalg.matrix_rank(w).item() == expected, name
        assert w.norm().item() == pytest.approx(full[name].norm().item(), rel=1e-5), name
    for name in set(weights) - set(matrices):  # biases and LayerNorm untouched
        assert torch.equal(weights[name], full[name])


@pytest.mark.parametrize("field, value", [("readout_scale", 0.0), ("init_rank", 0)])
def test_invalid_knobs_are_rejected(field, value):
    with pytest.raises(UserError, match=field):
        tiny_config().replace(model={field: value}).validate()


@pytest.mark.integration
def test_ensembles_mix_init_knobs_and_match_runs_alone(tmp_path):
    cfgs = [
        tiny_config(steps=12).replace(model=m)
        for m in ({"init_rank": 2}, {"readout_scale": 0.2}, {"gamma": 0.8})
    ]
    runs = train_ensemble(cfgs, [tmp_path / f"m{i}" for i in range(3)], progress=False)
    for i, (cfg, run) in enumerate(zip(cfgs, runs)):
        alone = train(cfg, tmp_path / f"alone{i}", progress=False)
        assert run.config == cfg
        assert (run.metrics().value - alone.metrics().value).abs().max() < 1e-4
