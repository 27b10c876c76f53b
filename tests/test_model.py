"""The model: init scale per weight, TransformerLens hook names, checkpoint round trip."""

import dataclasses

import pytest
import torch

from initlens.models import MixtureTask, ModelConfig, RunConfig, TrainConfig, build_model
from initlens.models.build import fan_in, realized_init
from initlens.models.checkpoint import load_tensors, save_tensors

# Big enough matrices that a 5% tolerance on the sample std is > 3 standard errors.
WIDE = RunConfig(
    task=MixtureTask.published(), model=ModelConfig(d_model=200, n_heads=2, n_layers=2, n_ctx=64)
)


@pytest.mark.parametrize("gamma", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("embed_fan_in", ["vocab", "d_model"])
def test_realized_init_std_matches_d_in_power(gamma, embed_fan_in):
    cfg = WIDE.replace(model={"gamma": gamma, "embed_fan_in": embed_fan_in})
    model = build_model(cfg, device="cpu")
    rows = {r["param"]: r for r in realized_init(model, cfg.model)}
    d_model, d_mlp = 200, 800
    expected_d_in = {
        "embed.weight": cfg.task.vocab_size if embed_fan_in == "vocab" else d_model,
        "pos_embed.weight": 64 if embed_fan_in == "vocab" else d_model,
        "blocks.0.attn.q.weight": d_model,
        "blocks.0.attn.k.weight": d_model,
        "blocks.0.attn.v.weight": d_model,
        "blocks.0.attn.o.weight": d_model,
        "blocks.1.mlp.in.weight": d_model,
        "blocks.1.mlp.out.weight": d_mlp,
        "unembed.weight": d_model,
    }
    for name, d_in in expected_d_in.items():
        assert rows[name]["d_in"] == d_in, name
        target = d_in**-gamma
        assert rows[name]["target_std"] == pytest.approx(target)
        assert abs(rows[name]["realized_std"] / target - 1) < 0.05, name
    weights = [r for r in rows.values() if r["d_in"]]
    assert len(weights) == 2 + 2 * 6 + 1  # every matrix is covered
    for name, r in rows.items():
        if r["d_in"] is None:  # biases 0, LayerNorm scales 1
            assert r["realized_std"] == 0.0
            assert r["mean"] == (
                1.0
                if name.endswith("ln1.weight")
                or name.endswith("ln2.weight")
                or name == "ln_final.weight"
                else 0.0
            ), name


def test_fan_in_of_linear_weights_is_the_input_dimension():
    cfg = ModelConfig(embed_fan_in="vocab")
    assert fan_in("blocks.0.mlp.out.weight", (64, 256), cfg) == 256
    assert fan_in("embed.weight", (89, 64), cfg) == 89
    assert fan_in("embed.weight", (89, 64), ModelConfig()) == 64  # default: d_model
    assert fan_in("blocks.0.ln1.bias", (64,), cfg) is None


def test_same_seed_same_weights_other_seed_other_weights():
    cfg = RunConfig(model=ModelConfig(d_model=32))
    a, b = build_model(cfg, "cpu").state_dict(), build_model(cfg, "cpu").state_dict()
    c = build_model(cfg.replace(train={"seed": 1}), "cpu").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.weight"], c["embed.weight"])


def test_hook_names_are_transformerlens_names():
    cfg = RunConfig(task=MixtureTask(seq_len=9), model=ModelConfig(d_model=32, n_heads=2))
    model = build_model(cfg, "cpu")
    tokens = torch.randint(0, cfg.task.vocab_size, (3, cfg.task.seq_len))
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (3, cfg.task.seq_len, cfg.task.vocab_size)
    for name, shape in [
        ("blocks.0.hook_resid_pre", (3, 9, 32)),
        ("blocks.1.attn.hook_z", (3, 9, 2, 16)),
        ("blocks.0.attn.hook_pattern", (3, 2, 9, 9)),
        ("blocks.1.hook_mlp_out", (3, 9, 32)),
    ]:
        assert tuple(cache[name].shape) == shape, name


def test_no_normalization_and_attention_only_build():
    cfg = RunConfig(model=ModelConfig(d_model=32, normalization="none", d_mlp=0))
    model = build_model(cfg, "cpu")
    names = set(model.state_dict())
    assert not any("ln" in n for n in names)
    assert not any(".mlp." in n for n in names)


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    cfg = RunConfig(model=ModelConfig(d_model=32, gamma=0.8))
    model = build_model(cfg, "cpu")
    save_tensors(tmp_path / "w.safetensors", model.state_dict(), {"step": "5"})
    tensors, meta = load_tensors(tmp_path / "w.safetensors")
    assert meta == {"step": "5"}
    fresh = build_model(cfg.replace(train={"seed": 9}), "cpu")
    fresh.load_state_dict(tensors, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    tokens = torch.randint(0, cfg.task.vocab_size, (4, cfg.task.seq_len))
    assert torch.equal(model(tokens), fresh(tokens))


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().gamma = 1.0  # type: ignore[misc]
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()
    assert TrainConfig().device == "auto"
