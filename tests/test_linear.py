"""Linear probes: sklearn's objective and accuracy, batching, controls, targets, probe_model."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from initlens.models import (
    CompositeTask,
    MixtureTask,
    ModelConfig,
    RunConfig,
    UserError,
    build_model,
)
from initlens.models.forward import Weights, run_with_cache
from initlens.models.tasks.base import dataset_arrays
from initlens.probes.linear import (
    TARGETS,
    LinearProbe,
    _distinct,
    control_labels,
    control_types,
    fit_probes,
    holdout_mask,
    probe_model,
    target_values,
)

COLUMNS = [
    "hook",
    "component",
    "layer",
    "position",
    "target",
    "accuracy",
    "control_accuracy",
    "selectivity",
    "train_accuracy",
    "n_train",
    "n_test",
    "n_classes",
    "control_types",
    "converged",
]


def clusters(n=1500, d=10, k=6, spread=1.6, seed=0):
    """Gaussian clusters: overlapping enough that the accuracy is well below 100%."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    X = torch.randn(k, d, generator=g)[y] * spread + torch.randn(n, d, generator=g)
    return X, y


def assert_like_sklearn(X, y, train, C=1.0, max_iter=100):
    ref = LogisticRegression(C=C, max_iter=max_iter).fit(X[train], y[train])
    ours = LinearProbe(C=C, max_iter=max_iter).fit(X[train], y[train])
    test = ~train
    assert abs(ours.score(X[test], y[test]) - ref.score(X[test], y[test])) <= 0.01
    assert np.mean(ours.predict(X[test]) == ref.predict(X[test])) >= 0.9
    return ours, ref


def test_linear_probe_matches_sklearn_on_clusters():
    X, y = clusters()
    X, y = X.numpy(), y.numpy() * 10 - 7  # arbitrary label values
    train = holdout_mask(len(y), 0.3, seed=1)
    ours, ref = assert_like_sklearn(X, y, train)
    assert list(ours.classes_) == list(ref.classes_)
    assert np.allclose(ours.predict_proba(X[:50]), ref.predict_proba(X[:50]), atol=0.05)
    assert np.allclose(ours.predict_proba(X).sum(1), 1, atol=1e-5)


def test_linear_probe_matches_sklearn_on_model_activations(tiny_run):
    rows = dataset_arrays(tiny_run.dataset())
    w = Weights.of(tiny_run.load_model())
    with torch.inference_mode():
        _, cache = run_with_cache(w, torch.as_tensor(rows["tokens"]), names=("resid_post",))
    X = cache["blocks.1.hook_resid_post"][:, -1].numpy().astype(np.float64)
    X = (X - X.mean(0)) / X.std(0)
    train = holdout_mask(len(X), 0.2, seed=0)
    for target in ("label", "a2", "memorized"):
        y = target_values(rows, tiny_run.config.task, target)[0]
        assert_like_sklearn(X, y, train, max_iter=1000)


def test_sklearn_api():
    X, y = clusters(n=600)
    probe = LinearProbe(C=0.5, max_iter=50)
    assert probe.get_params() == dict(C=0.5, max_iter=50, tol=1e-4, device="cpu")
    assert LinearProbe().max_iter == 2000  # run to tol: sklearn's 100 stops short
    copy = clone(probe).set_params(C=2.0)
    assert copy.C == 2.0 and probe.C == 0.5
    scores = cross_val_score(LinearProbe(), X.numpy(), y.numpy(), cv=3)
    assert len(scores) == 3 and scores.min() > 0.5
    labels = np.array(["memory", "reasoning", "other"])[y.numpy() % 3]
    fitted = LinearProbe().fit(X, labels)  # torch input, string labels
    assert set(fitted.predict(X)) <= set(labels) and fitted.coef_.shape == (3, X.shape[1])
    with pytest.raises(Exception, match="not fitted"):
        LinearProbe().predict(X.numpy())


def test_batched_fit_equals_separate_fits():
    data = [clusters(n=800, seed=s) for s in range(3)]
    X = torch.stack([x for x, _ in data])
    y = torch.stack([t for _, t in data])
    train = torch.as_tensor(holdout_mask(800, 0.25, seed=0))
    batched = fit_probes(X, y, train, C=0.3, max_iter=300)
    assert batched.converged.all()
    for i in range(3):
        alone = fit_probes(X[i : i + 1], y[i], train, C=0.3, max_iter=300)
        assert torch.allclose(batched.weight[i], alone.weight[0], atol=2e-3)
        assert batched.accuracy[i] == alone.accuracy[0]
        assert batched.train_accuracy[i] == alone.train_accuracy[0]


def test_grouped_rows_and_warm_start_give_the_same_solution():
    X, y = clusters(n=400, k=4)
    X, y = X.repeat(5, 1), torch.cat([y, y, y, (y + 1) % 4, y])  # 5 copies, soft labels
    groups = torch.arange(400).repeat(5)
    train = torch.as_tensor(holdout_mask(2000, 0.2, seed=0))
    full = fit_probes(X[None], y, train, max_iter=500)
    grouped = fit_probes(X[None], y, train, groups=groups, max_iter=500)
    assert full.converged.all() and grouped.converged.all()
    assert torch.allclose(full.weight, grouped.weight, atol=2e-3)
    assert torch.allclose(full.accuracy, grouped.accuracy)
    warm = fit_probes(X[None] * 1.01, y, train, groups=groups, init=grouped, max_iter=500)
    assert warm.n_iter.item() < grouped.n_iter.item() / 2
    with pytest.raises(ValueError, match="shapes"):
        fit_probes(X[None], y, train, init=fit_probes(X[None, :, :3], y, train))


def test_control_labels_depend_on_the_token_only():
    rng = np.random.default_rng(0)
    tokens = rng.integers(20, 60, 5000)
    values = rng.integers(0, 5, 5000)
    ctrl = control_labels(tokens, values, np.ones(5000, bool), seed=3)
    for tok in np.unique(tokens):
        assert len(set(ctrl[tokens == tok])) == 1
    assert set(ctrl) <= set(values)
    assert np.array_equal(ctrl, control_labels(tokens, values, np.ones(5000, bool), seed=3))


def test_control_types_are_the_token_with_the_key_and_anchors_before_it():
    rows = dict(
        tokens=np.array([[21, 11, 12, 40], [21, 11, 12, 41], [30, 11, 12, 40], [50, 21, 2, 1]]),
        key_pos=np.array([0, 0, 0, 1]),
    )
    # At position 2 (a2 of the first three rows): (token, key, a1, a2) = the first two
    # rows alike, the third (another key) not; the last row has only its key seen.
    types = control_types(rows, 2)
    assert types[0] == types[1] and len(set(types.tolist())) == 3
    # At position 0 only the token (and, where the key is there, the key itself).
    assert control_types(rows, 0)[0] == control_types(rows, 0)[1] != control_types(rows, 0)[2]
    # Without a key position: the token alone, as Hewitt & Liang's control.
    assert np.array_equal(
        control_types({"tokens": rows["tokens"]}, 3),
        np.unique(rows["tokens"][:, 3], return_inverse=True)[1],
    )


def test_the_control_task_falls_below_ceiling_at_the_label_position(tiny_run):
    """At the label position the token is one of a few anchors: a control per token sits at
    100% (a probe memorizes a handful of labels). Per (key, anchors) combination it cannot."""
    model, task = tiny_run.load_model(), tiny_run.config.task
    rows = dataset_arrays(tiny_run.dataset())
    df = probe_model(model, rows, task, targets=("task_type",), positions=(-1,))
    seq = rows["tokens"].shape[1]
    assert (df.control_types > len(np.unique(rows["tokens"][:, seq - 1]))).all()
    assert df.control_accuracy.max() < 0.9
    assert (df.selectivity == df.accuracy - df.control_accuracy).all()


def test_selectivity_is_near_zero_on_random_activations():
    rng = np.random.default_rng(0)
    n = 20000
    tokens = rng.integers(0, 5000, n)  # many types: the control's class shares match
    y = torch.as_tensor(rng.integers(0, 4, n))
    ctrl = torch.as_tensor(control_labels(tokens, y.numpy(), np.ones(n, bool)))
    X = torch.randn(1, n, 16, generator=torch.Generator().manual_seed(0))
    fit = fit_probes(
        X.expand(2, n, 16), torch.stack([y, ctrl]), torch.as_tensor(holdout_mask(n, 0.3, seed=0))
    )
    assert abs(fit.accuracy[0] - fit.accuracy[1]) < 0.05


MIX = dict(
    tokens=np.array([[21, 11, 12], [30, 2, 1], [40, 13, 14]]),
    key=np.array([21, 30, 40]),
    a1=np.array([11, 2, 13]),
    a2=np.array([12, 1, 14]),
    label=np.array([44, 25, 67]),
    task_type=np.array(["reasoning", "memory", "reasoning"]),
)
COMP = dict(
    tokens=np.zeros((3, 4), int),
    key=np.array([20, 50, 40]),
    a1=np.array([1, 3, 4]),
    a2=np.array([2, 4, 3]),
    label=np.array([26, 44, 30]),
    task_type=np.array(["compose", "twist", "held_out"]),
)


@pytest.mark.parametrize(
    "rows, task, expected",
    [
        (
            MIX,
            MixtureTask(),
            dict(
                key=[21, 30, 40],
                a1=[11, 2, 13],
                a2=[12, 1, 14],
                label=[44, 25, 67],
                intermediate=[32, None, 53],
                task_type=[1, 0, 1],
                memorized=[0, 1, 0],
            ),
        ),
        (
            COMP,
            CompositeTask(),
            dict(
                key=[20, 50, 40],
                a1=[1, 3, 4],
                a2=[2, 4, 3],
                label=[26, 44, 30],
                intermediate=[25, None, 32],
                task_type=[0, 1, 2],
                memorized=[0, 1, 0],
            ),
        ),
    ],
)
def test_target_values_by_hand(rows, task, expected):
    assert set(expected) == set(TARGETS)
    for name, want in expected.items():
        values, defined = target_values(rows, task, name)
        assert defined.tolist() == [v is not None for v in want], name
        assert values[defined].tolist() == [v for v in want if v is not None], name


def test_target_values_on_generated_data_and_errors():
    task = MixtureTask(samples_per_pair=3)
    ds = task.generate(0)
    rows = dataset_arrays(ds)
    inter, defined = target_values(ds, task, "intermediate")  # a Dataset works too
    assert np.array_equal(inter[defined] + rows["a2"][defined], rows["label"][defined])
    assert np.array_equal(defined, rows["task_type"] == "reasoning")
    with pytest.raises(UserError, match="intermediate, label, task_type, memorized"):
        target_values(rows, task, "value")
    with pytest.raises(UserError, match="not one of the mixture"):
        target_values(dict(rows, task_type=np.full(len(inter), "twist")), task, "task_type")


def test_probe_model_table(tiny_run):
    model = tiny_run.load_model()
    task = tiny_run.config.task
    ds = tiny_run.dataset()
    state = {}
    df = probe_model(model, ds, task, targets=("a2", "memorized"), positions=(-1, 2), state=state)
    assert list(df.columns) == COLUMNS
    assert len(df) == 3 * 2 * 2 * 2  # components x layers x positions x targets
    assert not df.duplicated(["hook", "position", "target"]).any()
    assert set(df.position) == {2, 4}
    assert (df.selectivity == df.accuracy - df.control_accuracy).all()
    assert df.accuracy.between(0, 1).all() and (df.n_train + df.n_test == len(ds)).all()
    again = probe_model(
        model, ds, task, targets=("a2", "memorized"), positions=(-1, 2), state=state
    )  # warm: starts from the solution it just found
    pd.testing.assert_frame_equal(df, again, atol=0.02, check_exact=False)


def test_probe_model_errors(tiny_run):
    model = tiny_run.load_model()
    task = tiny_run.config.task
    rows = dataset_arrays(tiny_run.dataset())
    with pytest.raises(UserError, match="resid_pre, attn_out, resid_mid, mlp_out, resid_post"):
        probe_model(model, rows, task, components=("z",))
    attn_only = build_model(RunConfig(task=task, model=ModelConfig(d_model=16, d_mlp=0)), "cpu")
    with pytest.raises(UserError, match="attention-only"):
        probe_model(attn_only, rows, task, components=("resid_mid",))
    memory = {c: v[rows["task_type"] == "memory"] for c, v in rows.items()}
    with pytest.raises(UserError, match="'intermediate' is undefined on every row"):
        probe_model(model, memory, task, targets=("intermediate",))
    few = {c: v[:40] for c, v in rows.items()}
    with pytest.raises(UserError, match="'label'.*none in the training split.*more rows"):
        probe_model(model, few, task, targets=("label",))
    with pytest.raises(UserError, match="unknown probe target"):
        probe_model(model, rows, task, targets=("keys",))


def test_hooks_with_equal_activations_are_fitted_once():
    a, b = torch.randn(2, 5, 3, 4)
    acts = torch.stack([a, b, a.clone(), b, a])
    assert _distinct(acts) == ([0, 1], [0, 1, 0, 1, 0])
    assert _distinct(torch.stack([a, b])) == ([0, 1], [0, 1])
