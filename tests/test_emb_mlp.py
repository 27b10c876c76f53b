"""The Emb-MLP: built from TransformerLens hook points, trained by the same loop, read by
the same geometry and linear probes; patching says clearly that it needs attention."""

from pathlib import Path

import pytest
import torch

import initlens.analyses.studies.sweep as sweep_module
from helpers import tiny_config
from initlens.models import UserError, build_model, train
from initlens.models.build import target_std
from initlens.models.forward import Weights, run_with_cache
from initlens.probes.geometry import geometry_metrics
from initlens.probes.linear import probe_model
from initlens.probes.patching import activation_patch, logit_diff


def _cfg(**train_fields):
    return tiny_config(**train_fields).replace(model={"architecture": "emb_mlp", "d_mlp": 32})


def test_summed_embeddings_hidden_layer_vocabulary():
    cfg = _cfg()
    model = build_model(cfg, "cpu")
    weights = model.state_dict()
    assert set(weights) == {
        "embed.weight",
        "blocks.0.mlp.in.weight",
        "blocks.0.mlp.in.bias",
        "unembed.weight",
        "unembed.bias",
    }
    for name, w in weights.items():  # the init rule: d_in^-gamma (unembed: d_in = d_mlp)
        std = target_std(name, tuple(w.shape), cfg.model)
        assert (abs(float(w.std()) / std - 1) < 0.25) if std else (w == 0).all(), name
    assert target_std("unembed.weight", (cfg.task.vocab_size, 32), cfg.model) == 32**-0.5
    tokens = torch.randint(0, cfg.task.vocab_size, (6, cfg.task.seq_len))
    logits, cache = model.run_with_cache(tokens)
    E, W, b = (
        weights["embed.weight"],
        weights["blocks.0.mlp.in.weight"],
        weights["blocks.0.mlp.in.bias"],
    )
    hidden = torch.relu(E[tokens].sum(1) @ W.T + b)
    torch.testing.assert_close(
        logits[:, 0], hidden @ weights["unembed.weight"].T + weights["unembed.bias"]
    )
    assert set(cache.keys()) == {
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.mlp.hook_pre",
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_resid_post",
    }
    # The functional forward (what probes read) equals the model, hook by hook.
    mine_logits, mine = run_with_cache(Weights.of(model), tokens)
    torch.testing.assert_close(mine_logits, logits)
    for name in ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"):
        torch.testing.assert_close(mine[name], cache[name])
    # Token order does not matter: the embeddings are summed.
    torch.testing.assert_close(model(tokens.flip(1)), logits)


def test_trains_checkpoints_and_runs_the_probes(tmp_path):
    run = train(_cfg(steps=40), tmp_path / "run", progress=False)
    model = run.load_model()
    assert torch.equal(
        model.state_dict()["embed.weight"], run.load_model(40).state_dict()["embed.weight"]
    )
    m = run.metrics()
    loss = m[(m.group == "train") & (m.metric == "loss")].value
    assert loss.iloc[-1] < loss.iloc[0]
    task = run.config.task
    geometry = geometry_metrics(
        model, task, torch.randint(0, task.vocab_size, (32, 5)), ["blocks.0.hook_resid_post"]
    )
    assert {"effective_rank", "within_cosine", "separability", "condensation"} & set(
        geometry.metric
    ) and "attention_entropy" not in set(geometry.metric)
    assert "components_90" in set(geometry.metric)
    rows = run.dataset()
    probes = probe_model(model, rows, task, ("label",), ("resid_pre", "resid_post"))
    assert set(probes.component) == {"resid_pre", "resid_post"}
    with pytest.raises(UserError, match="choose from resid_pre, resid_post"):
        probe_model(model, rows, task, ("label",), ("attn_out",))
    clean = torch.randint(0, task.vocab_size, (4, 5))
    with pytest.raises(UserError, match="activation patching needs a transformer"):
        activation_patch(
            model, clean, clean.flip(1), logit_diff(clean[:, 0], clean[:, 1]), "resid_pre"
        )


def test_sweeps_train_emb_mlps_one_by_one(tmp_path):
    sweep = sweep_module.make_sweep(_cfg(steps=10), {"gamma": [0.3, 0.8]})
    runs = [(cfg, tmp_path / name) for name, cfg in sweep.configs()]
    assert [len(u) for u in sweep_module.plan(runs)] == [1, 1]
    with pytest.raises(UserError, match="Emb-MLP train one run at a time"):
        sweep_module.train_ensemble([c for c, _ in runs], [p for _, p in runs])
    with pytest.raises(UserError, match="needs d_mlp > 0"):
        _cfg().replace(model={"d_mlp": 0}).validate()


def test_a_run_report_on_an_emb_mlp(tmp_path):
    from initlens.analyses.studies.report import write_report
    from initlens.analyses.studies.run_analysis import AnalysisConfig, analyze_runs

    run = train(_cfg(steps=20), tmp_path / "run", progress=False)
    tables, problems = analyze_runs(
        [run], AnalysisConfig(pairs=16, probe_rows=300, probe_targets=("label",))
    )
    assert problems == {
        run.name: "patching skipped: the Emb-MLP has no attention blocks; path patching not "
        "applicable: the Emb-MLP has no attention heads or layers between which paths run"
    }
    assert set(tables["probes"].component) == {"resid_pre", "resid_post"}
    assert "attention_entropy" not in set(tables["geometry"].metric)
    info = write_report([run], tmp_path / "report.html", "Emb-MLP", problems, tables)
    html = Path(info["report"]).read_text()
    assert "What do the layers represent?" in html and "no attention blocks" in html
