"""Geometry metrics on matrices with known answers, and the tidy table on a trained run."""

import math

import pytest
import torch

from initlens.models import CompositeTask, UserError
from initlens.probes.geometry import (
    GEOMETRY_COLUMNS,
    attention_entropy,
    cka_matrix,
    components_for_variance,
    condensation,
    cosine_matrix,
    distinguishability,
    effective_rank,
    geometry_metrics,
    information_flow,
    linear_cka,
    mean_activations,
    participation_ratio,
    pca,
    relative_weight_change,
    token_embeddings,
    token_roles,
    weight_change_table,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


def random_orthogonal(d, seed=0):
    return torch.linalg.qr(randn(d, d, seed=seed))[0]


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_identity_and_invariances(debiased):
    X = randn(50, 10, seed=1)
    Y = randn(50, 10, seed=2) + X @ randn(10, 10, seed=3)
    assert linear_cka(X, X, debiased) == pytest.approx(1.0, abs=1e-9)
    base = linear_cka(X, Y, debiased)
    assert 0.1 < base < 0.99
    assert linear_cka(X @ random_orthogonal(10), Y, debiased) == pytest.approx(base, abs=1e-9)
    assert linear_cka(3.7 * X, 0.01 * Y, debiased) == pytest.approx(base, abs=1e-9)
    assert linear_cka(X + 5.0, Y, debiased) == pytest.approx(base, abs=1e-9)  # translation


def test_cka_of_independent_matrices():
    X = torch.randn(200, 100, generator=gen(4))
    Y = torch.randn(200, 100, generator=gen(5))
    assert abs(linear_cka(X, Y, debiased=True)) < 0.05
    assert linear_cka(X, Y, debiased=False) > 0.3  # the biased estimator is inflated


def test_effective_rank_and_participation_ratio():
    assert effective_rank(torch.eye(7)) == pytest.approx(7)
    assert participation_ratio(torch.eye(7)) == pytest.approx(7)
    Q = random_orthogonal(12)
    U = torch.linalg.qr(randn(30, 12, seed=6))[0][:, :3]  # rank 3, singular values all 2
    low = 2 * U @ Q[:3]
    assert effective_rank(low) == pytest.approx(3, abs=1e-6)
    assert participation_ratio(low) == pytest.approx(3, abs=1e-6)
    unequal = torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert effective_rank(unequal) == pytest.approx(2)
    assert effective_rank(torch.zeros(3, 4)) == 0.0
    # centering: identical rows have rank 1, and no variance once centered
    same = torch.ones(5, 3)
    assert effective_rank(same) == pytest.approx(1)
    assert participation_ratio(same, center=True) == 0.0


def test_cosine_matrix_of_known_vectors():
    X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    C = cosine_matrix(X)
    s = 1 / math.sqrt(2)
    expected = torch.tensor(
        [[1, 0, -1, s, 0], [0, 1, 0, s, 0], [-1, 0, 1, -s, 0], [s, s, -s, 1, 0], [0, 0, 0, 0, 0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(C, expected)


def test_pca_recovers_a_planted_direction():
    direction = randn(20, seed=7)
    direction /= direction.norm()
    t = torch.linspace(-5, 5, 40, dtype=torch.float64)
    X = t[:, None] * direction + 0.05 * randn(40, 20, seed=8)
    coords, ratio = pca(X + 3.0, k=2)
    assert coords.shape == (40, 2) and ratio.shape == (2,)
    assert ratio[0] > 0.95 and ratio[0] >= ratio[1]
    corr = torch.corrcoef(torch.stack([coords[:, 0], t]))[0, 1]
    assert abs(corr) > 0.99
    again, _ = pca(-X, k=2)  # sign convention: same orientation whatever the input's sign
    torch.testing.assert_close(again[:, 0], -coords[:, 0])


def test_condensation_counts_planted_clusters():
    centres = random_orthogonal(16, seed=9)[:3]  # three orthogonal directions
    which = torch.tensor([0] * 10 + [1] * 6 + [2] * 4)
    signs = torch.where(torch.arange(20) % 2 == 0, 1.0, -1.0).double()
    W = signs[:, None] * centres[which] + 0.05 * randn(20, 16, seed=10)
    c = condensation(W)
    assert c["n_directions"] == 3
    assert c["largest_group_fraction"] == pytest.approx(0.5)
    assert 0.3 < c["mean_abs_cosine"] < 0.5  # (90 + 30 + 12) of 380 pairs are aligned
    spread = condensation(random_orthogonal(16, seed=11))
    assert spread["n_directions"] == 16 and spread["mean_abs_cosine"] < 1e-9


def test_attention_entropy_and_information_flow_of_uniform_causal_pattern():
    n = 6
    causal = torch.ones(n, n).tril()
    pattern = (causal / causal.sum(1, keepdim=True)).expand(3, 2, n, n)
    entropy = attention_entropy(pattern)
    assert entropy.shape == (2, n)
    log_n = torch.log(torch.arange(1, n + 1).double())
    torch.testing.assert_close(entropy, log_n.expand(2, n))
    flow = information_flow(pattern)
    torch.testing.assert_close(flow, torch.full((2, n), 1 / n, dtype=torch.float64))
    assert information_flow(pattern, dest=1)[0].tolist() == [0.5, 0.5, 0, 0, 0, 0]


def test_relative_weight_change():
    p0 = {"a": torch.randn(3, 4, generator=gen(12)), "b": torch.zeros(4)}
    assert relative_weight_change(p0, p0)["a"] == 0.0
    pt = {"a": 2 * p0["a"], "b": torch.ones(4)}
    change = relative_weight_change(pt, p0)
    assert change["a"] == pytest.approx(1.0)
    assert math.isnan(change["b"])  # zero at init: undefined


def test_distinguishability():
    labels = ["reasoning"] * 15 + ["memory"] * 15
    offset = torch.zeros(30, 8, dtype=torch.float64)
    offset[:, 0] = torch.tensor([4.0] * 15 + [-4.0] * 15)
    shifted = randn(30, 8, seed=13) + offset
    d = distinguishability(shifted, labels)
    assert d["separability"] == 1.0 and d["chance"] == 0.5
    assert d["within"]["reasoning"] > 0.5 and d["within"]["memory"] > 0.5
    assert d["between"] < -0.5
    same = randn(400, 8, seed=14)
    d = distinguishability(same, ["x", "y"] * 200)
    assert abs(d["separability"] - 0.5) < 0.1
    assert abs(d["between"]) < 0.05 and abs(d["within"]["x"]) < 0.05


@pytest.mark.unchecked  # ill-shaped input on purpose: our UserError, not the annotation check
def test_bad_input_errors():
    with pytest.raises(UserError, match="same rows"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(UserError, match="at least 4"):
        linear_cka(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(UserError, match="2-D"):
        effective_rank(torch.randn(5))
    with pytest.raises(UserError, match="k=5"):
        pca(torch.randn(4, 3), k=5)
    with pytest.raises(UserError, match=r"\[batch, head, dest, src\]"):
        attention_entropy(torch.rand(2, 3, 3))
    with pytest.raises(UserError, match="at least 2 groups"):
        distinguishability(torch.randn(3, 2), ["a", "a", "b"])
    with pytest.raises(UserError, match="parameter names differ"):
        relative_weight_change({"a": torch.ones(2)}, {"b": torch.ones(2)})
    with pytest.raises(UserError, match="threshold"):
        condensation(torch.randn(3, 2), threshold=1.5)
    with pytest.raises(UserError, match="unknown task"):
        token_roles(object())


def test_token_roles():
    roles = token_roles(CompositeTask())
    assert roles == {"key": list(range(20, 100)), "anchor": [1, 2, 3, 4]}


def test_model_level_helpers_and_table(tiny_run):
    model, model_0 = tiny_run.load_model(), tiny_run.load_model(0)
    task = tiny_run.config.task
    roles = token_roles(task)
    assert roles == {
        "key": list(range(21, 31)),
        "memory_anchor": [1, 2],
        "reasoning_anchor": [11, 12, 13],
    }
    E = token_embeddings(model, roles["reasoning_anchor"])
    torch.testing.assert_close(E, model.state_dict()["embed.weight"][11:14].double())

    tokens = tiny_run.dataset()[:64]["tokens"]
    ids, acts = mean_activations(model, tokens, "blocks.1.hook_resid_pre", position=-1)
    assert ids.tolist() == sorted(set(tokens[:, -1].tolist()))
    assert acts.shape == (len(ids), model.cfg.d_model)
    ids_z, z = mean_activations(model, tokens, "blocks.0.attn.hook_z", position=0)
    assert z.shape == (len(ids_z), model.cfg.n_heads * model.cfg.d_head)
    with pytest.raises(UserError, match="valid hooks: blocks.0.hook_resid_pre"):
        mean_activations(model, tokens, "blocks.9.hook_resid_pre", position=0)

    table = geometry_metrics(model, task, tokens, hooks=["blocks.1.hook_resid_post"])
    assert tuple(table.columns) == GEOMETRY_COLUMNS
    assert table["value"].notna().all()
    metrics = set(table["metric"])
    assert {
        "effective_rank",
        "participation_ratio",
        "within_cosine",
        "between_cosine",
        "separability",
        "order_correlation",
        "n_directions",
        "attention_entropy",
        "information_flow",
    } <= metrics
    entropy = table[table.metric == "attention_entropy"]
    assert len(entropy) == model.cfg.n_layers * model.cfg.n_heads
    assert (entropy.value <= math.log(task.seq_len) + 1e-9).all()
    flow = table[table.metric == "information_flow"]
    sums = flow.groupby(["layer", "head"]).value.sum()
    assert sums.to_numpy() == pytest.approx(1.0)
    condensed = set(table[table.metric == "n_directions"].hook)
    assert {"blocks.0.attn.q.weight", "blocks.1.mlp.in.weight"} <= condensed
    assert "attention_entropy" not in set(geometry_metrics(model, task).metric)
    with pytest.raises(UserError, match="unknown hook"):
        geometry_metrics(model, task, tokens, hooks=["blocks.0.hook_nope"])

    change = weight_change_table(model, model_0)
    assert set(change.parameter) == set(model.state_dict())
    assert (change.dropna().relative_change > 0).all()
    assert (weight_change_table(model_0, model_0).dropna().relative_change == 0).all()


@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.9, 0.99])
def test_components_for_variance_matches_sklearn_pca(fraction):
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(3)
    X = torch.randn(200, 12, generator=g, dtype=torch.float64) * torch.logspace(
        0, -1.5, 12, dtype=torch.float64
    )
    expected = PCA(n_components=fraction, svd_solver="full").fit(X.numpy()).n_components_
    assert components_for_variance(X, fraction) == expected
    assert components_for_variance(torch.zeros(5, 3)) == 0
    with pytest.raises(UserError, match="fraction"):
        components_for_variance(X, 1.5)


def test_cka_matrix_is_every_pair_of_linear_cka():
    reps = [randn(40, d, seed=s) for s, d in ((1, 5), (2, 7), (3, 5))]
    reps.append(reps[0] @ random_orthogonal(5))
    for debiased in (True, False):
        matrix = cka_matrix(reps, debiased)
        assert torch.equal(matrix, matrix.T)
        for i, a in enumerate(reps):
            for j, b in enumerate(reps):
                assert matrix[i, j].item() == pytest.approx(linear_cka(a, b, debiased), abs=1e-12)
        assert matrix[0, 3].item() == pytest.approx(1.0, abs=1e-9)
    assert torch.isnan(cka_matrix([torch.ones(6, 2), randn(6, 2, seed=4)])[0, 1])
