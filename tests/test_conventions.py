"""The published conventions as options (embedding fan-in, biases, free d_head, final
LayerNorm, weight decay on all parameters, the authors' schedule), old config files, the
composite task's key-position modulus, and the presets of models/presets.py."""

import json
import re

import numpy as np
import pytest
import torch

from helpers import TINY, assert_user_error, run_cli, tiny_config
from initlens.models import (
    CompositeTask,
    MixtureTask,
    ModelConfig,
    RunConfig,
    TrainConfig,
    UserError,
    build_model,
    train,
)
from initlens.models.build import realized_init
from initlens.models.ensemble import train_ensemble
from initlens.models.presets import PRESETS, get_preset
from initlens.models.tasks import dataset_arrays
from initlens.models.train import lr_at
from initlens.models.trainer import adamw

# Big enough matrices that a 5% tolerance on the sample std is > 3 standard errors.
WIDE = dict(d_model=200, n_layers=2, n_ctx=64)
CONVENTIONS = {
    "default (d_model fan-in)": {},
    "vocab fan-in": {"embed_fan_in": "vocab"},
    "no biases": {"biases": False},
    "free d_head": {"n_heads": 2, "d_head": 150},
    "no final LN": {"final_ln": False},
    "post-LN with final LN": {"normalization": "post", "final_ln": True},
    "composite preset": {
        "n_heads": 1,
        "d_head": 100,
        "d_mlp": 600,
        "normalization": "post",
        "final_ln": False,
        "biases": False,
        "act_fn": "relu",
    },
}


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_realized_init_std_is_the_target_for_every_parameter(convention):
    cfg = RunConfig(
        task=MixtureTask.published(), model=ModelConfig(**{**WIDE, **CONVENTIONS[convention]})
    )
    model = build_model(cfg, "cpu")
    rows = realized_init(model, cfg.model)
    assert {r["param"] for r in rows} == set(model.state_dict())
    m = cfg.model
    for r in rows:
        if r["d_in"] is None:  # biases 0, LayerNorm scales 1
            assert r["target_std"] == 0 and r["realized_std"] == 0.0, r["param"]
            continue
        assert r["target_std"] == pytest.approx(r["d_in"] ** -m.gamma), r["param"]
        assert abs(r["realized_std"] / r["target_std"] - 1) < 0.05, r["param"]
    d_in = {r["param"]: r["d_in"] for r in rows}
    embed = cfg.task.vocab_size if m.embed_fan_in == "vocab" else m.d_model
    assert d_in["embed.weight"] == embed
    assert d_in["pos_embed.weight"] == (64 if m.embed_fan_in == "vocab" else m.d_model)
    assert d_in["blocks.0.attn.o.weight"] == m.n_heads * m.head_dim
    assert tuple(model.state_dict()["blocks.0.attn.q.weight"].shape) == (
        m.n_heads * m.head_dim,
        m.d_model,
    )
    has_final = m.final_ln if m.final_ln is not None else m.normalization != "post"
    assert ("ln_final.weight" in d_in) == has_final


def test_the_default_fan_in_is_d_model_and_old_configs_keep_vocab(tmp_path):
    assert ModelConfig().embed_fan_in == "d_model"
    new = RunConfig()
    assert RunConfig.from_dict(json.loads(new.to_json())) == new
    old = new.to_dict()  # a config.json written before the convention options existed
    for field in ("embed_fan_in", "biases", "final_ln"):
        del old["model"][field]
    for field in ("decay", "schedule", "warmup_multiplier"):
        del old["train"][field]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    loaded = RunConfig.load(path)
    assert loaded.model.embed_fan_in == "vocab"  # its meaning when it was written
    assert loaded.model.biases and loaded.model.final_ln is None
    assert loaded.train.decay == "matrices" and loaded.train.schedule == "warmup_cosine"
    assert loaded.replace(model={"embed_fan_in": "d_model"}) == new


@pytest.mark.integration
def test_an_old_run_directory_still_loads_with_its_old_init(tmp_path):
    cfg = tiny_config(steps=4).replace(model={"embed_fan_in": "vocab"})
    run = train(cfg, tmp_path / "run", progress=False)
    data = json.loads((run.path / "config.json").read_text())
    del data["model"]["embed_fan_in"], data["model"]["biases"], data["model"]["final_ln"]
    (run.path / "config.json").write_text(json.dumps(data))
    from initlens.models.run import Run

    reopened = Run.open(run.path)
    assert reopened.config == cfg
    model = reopened.load_model(device="cpu")
    for name, w in build_model(cfg, "cpu").state_dict().items():
        assert w.shape == model.state_dict()[name].shape


@pytest.mark.integration
def test_biases_stay_exactly_zero_through_training(tmp_path):
    cfg = tiny_config(steps=8, decay="all", weight_decay=0.1).replace(
        model={"biases": False, "d_head": 4}
    )
    run = train(cfg, tmp_path / "alone", progress=False)
    [member] = train_ensemble([cfg.replace(train={"seed": 1})], [tmp_path / "ens"], progress=False)
    for r in (run, member):
        weights = r.load_model(device="cpu").state_dict()
        biases = [
            n for n in weights if n.startswith("blocks.") and ".ln" not in n and n.endswith(".bias")
        ]
        assert len(biases) == 2 * 6
        for name in biases:
            assert torch.count_nonzero(weights[name]) == 0, name
        assert not torch.equal(
            weights["blocks.0.attn.q.weight"],
            build_model(r.config, "cpu").state_dict()["blocks.0.attn.q.weight"],
        )  # the rest trained


def test_weight_decay_on_all_parameters_or_matrices_only():
    model = build_model(tiny_config(), "cpu")
    params = list(model.parameters())
    for decay, decayed in (("matrices", sum(p.ndim >= 2 for p in params)), ("all", len(params))):
        groups = adamw(params, TrainConfig(decay=decay, weight_decay=0.3)).param_groups
        assert [len(g["params"]) for g in groups] == [decayed, len(params) - decayed]
        assert [g["weight_decay"] for g in groups] == [0.3, 0.0]


def test_the_authors_schedule_and_inverse_sqrt():
    tc = TrainConfig(
        lr=2e-4,
        steps=100,
        warmup_steps=10,
        min_lr_ratio=0.05,
        schedule="gradual_warmup",
        warmup_multiplier=20,
    )
    assert lr_at(0, tc) == pytest.approx(1e-5)  # lr / multiplier
    assert lr_at(5, tc) == pytest.approx(1e-5 + (2e-4 - 1e-5) * 0.5)
    assert lr_at(10, tc) == pytest.approx(2e-4)  # peak after warm-up
    assert lr_at(100, tc) == pytest.approx(1e-5)  # eta_min = lr * min_lr_ratio
    assert all(lr_at(s, tc) >= lr_at(s + 1, tc) for s in range(10, 100))
    inv = TrainConfig(lr=0.01, warmup_steps=100, schedule="inverse_sqrt")
    assert lr_at(99, inv) == pytest.approx(0.01)
    assert lr_at(400, inv) == pytest.approx(0.005)
    with pytest.raises(UserError, match="schedule"):
        TrainConfig(schedule="step").validate()


@pytest.mark.parametrize("mod", [None, 9])
def test_composite_key_positions_are_held_out_modulo(mod):
    task = CompositeTask(samples_per_pair=400, key_position_mod=mod)
    rows = dataset_arrays(task.generate(0))
    m = mod or task.seq_len - 2
    seen = rows["task_type"] != "held_out"
    train, test = seen & (rows["split"] == "train"), seen & (rows["split"] == "test")
    assert (rows["key"][train] % m != rows["key_pos"][train]).all()
    assert (rows["key"][test] % m == rows["key_pos"][test]).all()
    assert set(np.unique(rows["key_pos"])) == set(range(task.seq_len - 2))
    no_position = np.isin(rows["key"] % m, [7, 8])
    assert not (test & no_position).any()  # x mod 9 in {7, 8}: never held out
    assert (train & no_position).any() == (mod == 9)


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_builds_a_valid_config_and_its_model(name):
    p = get_preset(name)
    cfg = p.config.validate()
    assert p.paper and p.source and p.note
    model = build_model(cfg, "cpu")
    m, shapes = cfg.model, {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["embed.weight"] == (cfg.task.vocab_size, m.d_model)
    assert shapes["pos_embed.weight"] == (cfg.n_ctx, m.d_model)
    for layer in range(m.n_layers):
        assert shapes[f"blocks.{layer}.attn.q.weight"] == (m.n_heads * m.head_dim, m.d_model)
        assert shapes[f"blocks.{layer}.attn.o.weight"] == (m.d_model, m.n_heads * m.head_dim)
        assert shapes[f"blocks.{layer}.mlp.in.weight"] == (m.mlp_dim, m.d_model)
    assert f"blocks.{m.n_layers}.attn.q.weight" not in shapes
    assert ("ln_final.weight" in shapes) == (
        m.normalization not in ("post", "none") if m.final_ln is None else m.final_ln
    )
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert len(frozen) == (0 if m.biases else 6 * m.n_layers)


def test_the_composite_preset_is_the_papers_model():
    cfg = get_preset("neurips2024-composite").config
    m, tc = cfg.model, cfg.train
    assert (m.d_model, m.d_mlp, m.d_head, m.n_heads) == (400, 1200, 200, 1)
    assert (m.normalization, m.final_ln, m.biases, m.embed_fan_in) == (
        "post",
        False,
        False,
        "d_model",
    )
    assert (tc.batch_size, tc.schedule, tc.decay, tc.grad_clip) == (
        2048,
        "gradual_warmup",
        "all",
        1.0,
    )
    assert 1e-4 <= tc.lr <= 3e-4 and cfg.task.position_mod == 9


def test_cli_preset_errors_are_one_line(capsys, tmp_path):
    out = tmp_path / "run"
    assert_user_error(
        run_cli(capsys, "train", "--preset", "nope", "--out", out),
        r"unknown preset 'nope'; presets: icml2025-mixture, ",
    )
    config = tmp_path / "c.json"
    config.write_text(RunConfig().to_json())
    assert_user_error(
        run_cli(
            capsys, "train", "--preset", "nanda2023-grokking", "--config", config, "--out", out
        ),
        "--preset and --config",
    )
    assert_user_error(
        run_cli(capsys, "study", "--preset", "neurips2024-composite", "--n-ctx", "5", "--out", out),
        "seq_len=9 exceeds .* n_ctx=5",
    )
    assert_user_error(
        run_cli(capsys, "sweep", "--preset", "nope", "--gammas", "0.3", "--out", out),
        "unknown preset",
    )
    assert not out.exists()  # nothing trained


@pytest.mark.integration
def test_cli_preset_records_the_overrides(capsys, tmp_path):
    out = tmp_path / "run"
    args = ["2" if before == "--steps" else a for before, a in zip([None, *TINY], TINY)]
    i = args.index("--embed-fan-in")  # the tiny run's own convention: the preset's here
    del args[i : i + 2]
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--preset",
        "icml2025-mixture",
        "--out",
        out,
        *args,
        "--d-mlp",
        "32",
        "--final-ln",
        "false",
    )
    assert code == 0, err
    record = json.loads((out / "preset.json").read_text())
    assert record["preset"] == "icml2025-mixture"
    assert record["overrides"]["d_model"] == 16 and record["overrides"]["steps"] == 2
    assert record["overrides"]["final_ln"] is False and record["overrides"]["keys"] == [21, 30]
    saved = RunConfig.load(out / "config.json")
    preset = get_preset("icml2025-mixture").config
    assert saved.model.act_fn == preset.model.act_fn == "gelu"  # not overridden: the preset's
    assert saved.train.schedule == "gradual_warmup" and saved.train.decay == "all"
    assert saved.model.final_ln is False and saved.model.d_model == 16
    code, stdout, _ = run_cli(capsys, "info", out)
    assert re.search(r"^preset +icml2025-mixture \(overrides: ", stdout, re.M)
    for shown in (
        "embed_fan_in=d_model",
        "biases=true",
        "final_ln=false",
        "schedule=gradual_warmup",
        "decay=all",
        "grad_clip=1.0",
    ):
        assert shown in stdout, shown
    code, stdout, _ = run_cli(capsys, "presets")
    assert code == 0 and all(name in stdout for name in PRESETS)
