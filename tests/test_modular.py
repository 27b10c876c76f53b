"""Modular addition: data, bad options, corruptions, and the LayerNorm grokking sweep with
its read-outs (steps to fit and to generalize, attention entropy, compressibility)."""

import numpy as np
import pytest

import initlens.analyses.studies.sweep as sweep_module
from helpers import assert_user_error, run_cli
from initlens.analyses.studies.over_training import geometry_over_training
from initlens.models import ModelConfig, RunConfig, TrainConfig, UserError
from initlens.models.tasks import ModularTask, dataset_arrays
from initlens.probes.corruptions import make_pairs
from initlens.probes.linear import probe_model


def test_every_pair_once_with_a_seeded_split():
    task = ModularTask(p=5, train_fraction=0.6)
    rows = dataset_arrays(task.generate(0))
    a, b = rows["tokens"][:, 0], rows["tokens"][:, 1]
    assert len(rows["label"]) == 25 and len(set(zip(a, b))) == 25
    assert (rows["tokens"][:, 2] == 5).all() and task.vocab_size == 6
    np.testing.assert_array_equal(rows["label"], (a + b) % 5)
    assert (rows["split"] == "train").sum() == 15
    again, other = (dataset_arrays(task.generate(s))["split"] for s in (0, 1))
    assert (again == rows["split"]).all() and (other != rows["split"]).any()
    assert (rows["key"] == a).all() and (rows["a1"] == b).all()


@pytest.mark.parametrize(
    "options, pattern",
    [
        (dict(p=1), "p=1 leaves nothing"),
        (dict(p=5, train_fraction=0.0), "train_fraction=0.0"),
        (dict(p=5, train_fraction=1.0), "train_fraction=1.0"),
    ],
)
def test_options_that_cannot_produce_data(options, pattern):
    with pytest.raises(UserError, match=pattern):
        ModularTask(**options).validate()


def test_cli_refuses_bad_modular_options_before_training(capsys, tmp_path):
    assert_user_error(
        run_cli(capsys, "train", "--task", "modular", "--p", "1", "--out", tmp_path / "r"),
        "p=1 leaves nothing to add",
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind, position, column", [("a", 0, "key"), ("b", 1, "a1")])
def test_corruptions_change_one_operand_and_the_label(kind, position, column):
    task = ModularTask(p=7)
    pairs = make_pairs(task, kind, n=40, source="memory")
    changed = (pairs.clean != pairs.corrupted).numpy()
    assert changed[:, position].all() and changed.sum() == 40
    a, b = pairs.corrupted[:, 0].numpy(), pairs.corrupted[:, 1].numpy()
    np.testing.assert_array_equal(pairs.corrupted_label.numpy(), (a + b) % 7)
    assert (pairs.clean_label != pairs.corrupted_label).all()
    assert (pairs.meta[f"corrupted_{column}"] == pairs.corrupted[:, position].numpy()).all()
    assert set(pairs.meta["task_type"]) == {"sum"}


@pytest.fixture(scope="module")
def ln_sweep(tmp_path_factory):
    base = RunConfig(
        task=ModularTask(p=7, train_fraction=0.6),
        model=ModelConfig(n_layers=1, d_model=16, n_heads=2),
        train=TrainConfig(
            steps=40,
            batch_size=29,
            lr=3e-3,
            weight_decay=1.0,
            warmup_steps=2,
            eval_every=10,
            n_checkpoints=2,
        ),
    )
    out = tmp_path_factory.mktemp("grok") / "s"
    sweep = sweep_module.make_sweep(base, {"normalization": ["LN", "mlp"]})
    return out, sweep_module.run_sweep(sweep, out, progress=False)


def test_a_layernorm_sweep_reports_steps_to_fit_and_to_generalize(ln_sweep):
    out, info = ln_sweep
    table = info["table"]
    assert list(table.normalization) == ["LN", "mlp"] and (table.state == "done").all()
    assert {"step_to_90_train_pairs", "step_to_90_test_pairs"} <= set(table.columns)
    assert (out / "learning_curves.html").exists()
    assert not (out / "phase_diagram.html").exists()  # one gamma: no gamma axis to draw
    html = (out / "learning_curves.html").read_text()
    assert "normalization=mlp: test_pairs" in html and "normalization=LN: train_pairs" in html


def test_grokking_read_outs_over_training(ln_sweep):
    out, _ = ln_sweep
    run = out / "runs" / "normalizationmlp"
    table = geometry_over_training([run], n=49)
    entropy = table[table.metric == "attention_entropy"]
    assert len(entropy) == 2 * len(entropy.step.unique())  # every head at every checkpoint
    assert ((entropy.value >= 0) & (entropy.value <= np.log(3) + 1e-6)).all()
    pcs = table[(table.metric == "components_90") & (table.hook == "blocks.0.hook_resid_post")]
    assert len(pcs) == len(entropy.step.unique())
    assert pcs.value.between(1, 16).all()


def test_probes_and_geometry_run_on_a_modular_model(ln_sweep):
    from initlens.models import Run
    from initlens.probes.geometry import geometry_metrics

    out, _ = ln_sweep
    run = Run(out / "runs" / "normalizationLN")
    model, task = run.load_model(), run.config.task
    rows = dataset_arrays(task.generate(0))
    probes = probe_model(model, rows, task, ("a1", "label"), ("resid_post",))
    assert set(probes.target) == {"a1", "label"} and probes.accuracy.between(0, 1).all()
    geometry = geometry_metrics(model, task)
    assert set(geometry.group.dropna()) == {"all", "number"}
    for target in ("memorized", "task_type"):
        with pytest.raises(UserError, match=f"target '{target}' needs"):
            probe_model(model, rows, task, (target,), ("resid_post",))


def test_the_shipped_layernorm_grid_is_valid():
    spec = sweep_module.load_sweep(sweep_module.GRIDS / "layernorm_grokking.json")
    configs = spec.configs()
    assert [c.model.normalization for _, c in configs] == [
        "LN",
        "post",
        "none",
        "attn",
        "mlp",
        "qk",
        "v",
    ]
    task = configs[0][1].task
    assert configs[0][1].train.batch_size == round(task.train_fraction * task.p**2)
