"""Claim checks on hand-built tensors and models whose answer is known, both ways (the
claimed structure, and a shuffled or random one), and the mechanism instrument on a run."""

import math

import pandas as pd
import pytest
import torch

from helpers import TINY_TASK, tiny_config
from initlens.analyses.cli import main
from initlens.analyses.instruments.mechanism import (
    AVERAGING_TV,
    CLAIMS,
    CONDENSED_FRACTION,
    LOW_RANK_VARIANCE,
    ORDERED_SPEARMAN,
    OV_ALIGNED,
    OV_DOMINANCE,
    OV_ORTHOGONAL,
    PC1_ORDERED,
    SAME_TARGET_PARALLEL,
    TABLE_COLUMNS,
    TOGETHER_GAP,
    judge,
)
from initlens.analyses.studies.report import build_report
from initlens.analyses.studies.run_analysis import AnalysisConfig, analyze_run, analyze_runs
from initlens.models import CompositeTask, ModelConfig, RunConfig, UserError, build_model, train
from initlens.models.forward import Weights
from initlens.models.tasks.base import dataset_arrays
from initlens.probes.mechanism import (
    CLAIM_METRICS,
    MECHANISM_COLUMNS,
    averaging_distance,
    condensed_fraction,
    mechanism_metrics,
    order_by_value,
    ov_matrices,
    same_target_cosine,
    spearman,
    top_variance_fraction,
    unmeasured,
    value_direction,
    within_cosine,
)

# The claims measured on the mixture task (same_target_parallel is the composite task's).
MIXTURE_CLAIMS = [c for c in CLAIM_METRICS if c != "same_target_parallel"]


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def arc(values, step=0.3, d=8):
    """Unit vectors on an arc in the first two coordinates, at angle step * value."""
    angles = step * torch.tensor(values, dtype=torch.float64)
    n = len(values)
    E = torch.zeros(n, d, dtype=torch.float64)
    E[:, 0], E[:, 1] = angles.cos(), angles.sin()
    return E


def tiny_model(**model_fields):
    fields = dict(gamma=0.5, n_layers=2, d_model=16, n_heads=2)
    fields.update(model_fields)
    return build_model(RunConfig(task=TINY_TASK, model=ModelConfig(**fields)), "cpu")


def set_weight(model, name, value):
    with torch.no_grad():
        model.state_dict()[name].copy_(value)


def test_spearman_ranks_with_ties():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    ties = torch.tensor([1.0, 1.0, 2.0, 3.0])  # ranks 1.5, 1.5, 3, 4
    assert spearman(ties, torch.tensor([0.0, 0.0, 5.0, 9.0])) == pytest.approx(1.0)
    assert math.isnan(spearman(torch.ones(4), x))


def test_ordered_anchors_pass_and_shuffled_ones_fail():
    values = [1, 2, 4, 8, 13]  # every pairwise distance distinct: no ties to rank
    ordered = order_by_value(arc(values, step=0.1), values)
    assert ordered["order_spearman"] == pytest.approx(-1.0)
    assert ordered["pc1_spearman"] == pytest.approx(1.0)
    # Consecutive values tie in distance (cosines tie only to rounding): not exactly -1.
    values = [11, 12, 13, 14, 15, 16]
    E = arc(range(6))
    ordered = order_by_value(E, values)
    assert ordered["order_spearman"] <= ORDERED_SPEARMAN and ordered["pc1_spearman"] >= PC1_ORDERED
    shuffled = order_by_value(E, [13, 16, 11, 15, 12, 14])  # same vectors, values mixed up
    assert shuffled["order_spearman"] > ORDERED_SPEARMAN
    assert shuffled["pc1_spearman"] < PC1_ORDERED
    random = order_by_value(randn(6, 8, seed=1), values)
    assert random["order_spearman"] > ORDERED_SPEARMAN


def test_memory_anchors_together_and_reasoning_spread():
    memory = torch.ones(4, 8, dtype=torch.float64) + 0.05 * randn(4, 8, seed=2)
    reasoning = arc(range(4), step=0.8)  # spread over ~140 degrees
    assert within_cosine(memory) > 0.95
    assert within_cosine(memory) - within_cosine(reasoning) >= TOGETHER_GAP
    assert within_cosine(reasoning) - within_cosine(memory) < TOGETHER_GAP  # roles swapped
    assert within_cosine(torch.eye(3)) == 0.0


def test_averaging_distance_of_uniform_and_one_hot_patterns():
    n = 5
    causal = torch.ones(n, n).tril()
    uniform = (causal / causal.sum(1, keepdim=True)).expand(3, 2, n, n)
    assert averaging_distance(uniform).tolist() == pytest.approx([0.0, 0.0])
    first = torch.zeros(3, 2, n, n)
    first[..., 0] = 1.0  # every row attends to position 0 only
    expected = sum(1 - 1 / (q + 1) for q in range(1, n)) / (n - 1)
    assert averaging_distance(first).tolist() == pytest.approx([expected, expected])
    assert expected > 0.5


def test_zero_queries_and_keys_average_and_large_ones_attend_sharply():
    tokens = torch.randint(0, TINY_TASK.vocab_size, (16, 5), generator=torch.Generator())
    averaging = tiny_model()
    for name in ("blocks.0.attn.q.weight", "blocks.0.attn.q.bias", "blocks.0.attn.k.weight"):
        set_weight(averaging, name, torch.zeros_like(averaging.state_dict()[name]))
    table = mechanism_metrics(averaging, TINY_TASK, tokens)
    distance = table[table.metric == "averaging_distance"]
    assert len(distance) == 3  # two heads and their mean
    assert distance.value.abs().max() < 1e-6
    sharp = tiny_model()
    for name in ("blocks.0.attn.q.weight", "blocks.0.attn.k.weight"):
        set_weight(sharp, name, 30 * sharp.state_dict()[name])
    table = mechanism_metrics(sharp, TINY_TASK, tokens)
    mean = table[(table.metric == "averaging_distance") & table["head"].isna()].value.item()
    assert mean > 4 * AVERAGING_TV


def _plant_anchors(model, reasoning_dir, memory_dir):
    """Reasoning anchors along one direction (by value), memory anchors along another."""
    roles = TINY_TASK.token_roles()
    W_E = model.state_dict()["embed.weight"]
    with torch.no_grad():
        for i, t in enumerate(roles["reasoning_anchor"]):
            W_E[t] = (1 + i) * reasoning_dir
        for t in roles["memory_anchor"]:
            W_E[t] = memory_dir


def test_rank_one_value_map_aligned_with_reasoning_passes_and_random_fails():
    model = tiny_model()
    d, d_head = 16, 8
    r, m = torch.zeros(d), torch.zeros(d)
    r[0], m[1] = 1.0, 1.0
    _plant_anchors(model, r, m)
    W_V, W_O = torch.zeros(2 * d_head, d), torch.zeros(d, 2 * d_head)
    W_V[0], W_O[:, 0] = 3 * r, r  # head 0 reads r into its first value unit and writes it back
    set_weight(model, "blocks.0.attn.v.weight", W_V)
    set_weight(model, "blocks.0.attn.o.weight", W_O)
    OV = ov_matrices(Weights.of(model), 0)
    torch.testing.assert_close(OV[0], 3 * torch.outer(r, r).double())
    assert OV[1].abs().max() == 0
    table = mechanism_metrics(model, TINY_TASK)
    dominant = table[(table.claim == "value_direction") & table["head"].isna()]
    got = dict(zip(dominant.metric, dominant.value))
    assert got["ov_top_ratio"] == math.inf
    assert got["ov_read_reasoning"] == pytest.approx(1.0)
    assert got["ov_read_memory"] == pytest.approx(0.0, abs=1e-12)
    assert got["ov_write_reasoning"] == pytest.approx(1.0)

    random = value_direction(randn(d, 8, seed=3) @ randn(8, d, seed=4), r.double(), m.double())
    assert random["ov_top_ratio"] < OV_DOMINANCE
    assert random["ov_read_reasoning"] < OV_ALIGNED
    aligned = value_direction(torch.outer(r, r).double(), r.double(), m.double())
    assert aligned["ov_read_memory"] <= OV_ORTHOGONAL


def test_condensed_queries_pass_and_random_ones_fail():
    directions = randn(4, 16, seed=5)
    repeated = directions.repeat_interleave(4, 0) + 0.01 * randn(16, 16, seed=6)
    assert condensed_fraction(repeated) == 1.0
    assert condensed_fraction(randn(16, 64, seed=7)) < CONDENSED_FRACTION
    model = tiny_model()
    set_weight(model, "blocks.0.attn.q.weight", repeated.float())
    table = mechanism_metrics(model, TINY_TASK)
    got = dict(zip(table.metric, table.value))
    assert got["condensed_fraction"] == 1.0
    assert got["n_directions"] == 4 and got["largest_group_fraction"] == 0.25


def test_low_rank_embeddings_pass_and_full_rank_ones_fail():
    low = randn(20, 2, seed=8) @ randn(2, 16, seed=9) + 5.0  # rank 2 around a mean
    assert top_variance_fraction(low, 3) == pytest.approx(1.0)
    assert top_variance_fraction(randn(20, 16, seed=10), 3) < LOW_RANK_VARIANCE
    assert math.isnan(top_variance_fraction(torch.ones(4, 3), 2))


def test_the_table_of_one_checkpoint():
    model = tiny_model()
    tokens = torch.randint(0, TINY_TASK.vocab_size, (8, 5), generator=torch.Generator())
    table = mechanism_metrics(model, TINY_TASK, tokens, init=model)
    assert tuple(table.columns) == MECHANISM_COLUMNS
    assert list(dict.fromkeys(table.claim)) == MIXTURE_CLAIMS
    for claim in MIXTURE_CLAIMS:
        metrics = CLAIM_METRICS[claim]
        assert set(table[table.claim == claim].metric) == set(metrics), claim
    changes = table[table.metric.str.endswith("_change")]
    assert len(changes) == 2 and (changes.value == 0).all()  # against itself: no change
    assert table.value.notna().all()
    assert [c.key for c in CLAIMS] == list(CLAIM_METRICS)
    for claim in CLAIMS:  # every threshold names a metric of its claim
        assert {c.metric for c in claim.conditions} <= set(CLAIM_METRICS[claim.key])


def test_claims_that_do_not_apply_are_listed_not_measured():
    emb_mlp = tiny_model(architecture="emb_mlp", d_mlp=32)
    skipped = unmeasured(emb_mlp, TINY_TASK)
    assert set(skipped) == {
        "attention_averages",
        "value_direction",
        "wq_condensed",
        "same_target_parallel",
    }
    assert unmeasured(tiny_model(), TINY_TASK) == {"same_target_parallel": "composite task only"}
    table = mechanism_metrics(emb_mlp, TINY_TASK, torch.zeros(2, 5, dtype=torch.long))
    assert set(table.claim) == {"ordered", "memory_together", "embedding_low_rank"}


def test_same_target_rows_parallel_or_not():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    directions = randn(3, 16, seed=1)
    near = directions[labels] + 0.05 * randn(9, 16, seed=3) + 5.0  # + a direction all share
    parallel = same_target_cosine(near, labels)
    assert parallel["same_target_cosine"] > 0.95
    assert parallel["other_target_cosine"] == pytest.approx(-0.5, abs=0.1)  # -1 / (k - 1)
    ignores = same_target_cosine(randn(9, 16, seed=2), labels)
    assert abs(ignores["same_target_cosine"]) < 0.3
    assert ignores["same_target_cosine"] < SAME_TARGET_PARALLEL


def test_composite_runs_measure_the_parallel_claim():
    task = CompositeTask(keys=(20, 40), samples_per_pair=5)
    cfg = RunConfig(task=task, model=ModelConfig(gamma=0.5, n_layers=2, d_model=16, n_heads=2))
    model = build_model(cfg, "cpu")
    rows = dataset_arrays(task.generate(0))
    tokens, labels = torch.as_tensor(rows["tokens"][:200]), torch.as_tensor(rows["label"][:200])
    table = mechanism_metrics(model, task, tokens, labels=labels)
    values = table[table.claim == "same_target_parallel"].set_index("metric").value
    assert set(values.index) == {"same_target_cosine", "other_target_cosine"}
    assert values.notna().all() and values["same_target_cosine"] < SAME_TARGET_PARALLEL  # random


@pytest.mark.unchecked  # ill-shaped input on purpose: our UserError, not the annotation check
def test_bad_input_errors():
    with pytest.raises(UserError, match="at least 3 embeddings"):
        order_by_value(torch.randn(2, 4), [1, 2])
    with pytest.raises(UserError, match="one value per row"):
        order_by_value(torch.randn(3, 4), [1, 2])
    with pytest.raises(UserError, match=r"dest = src"):
        averaging_distance(torch.rand(2, 1, 1, 5))
    with pytest.raises(UserError, match="threshold"):
        condensed_fraction(torch.randn(3, 2), threshold=1.5)
    with pytest.raises(UserError, match="same length|one length"):
        spearman(torch.randn(3), torch.randn(4))
    with pytest.raises(UserError, match="needs a transformer"):
        ov_matrices(Weights.of(tiny_model(architecture="emb_mlp", d_mlp=32)))


def _table(values: dict[float, dict[str, float]]) -> pd.DataFrame:
    """A mechanism table with one run per gamma and one step."""
    rows = [
        {
            "run": f"g{g}",
            "gamma": g,
            "step": 10,
            "claim": "x",
            "metric": m,
            "head": None,
            "value": v,
        }
        for g, metrics in values.items()
        for m, v in metrics.items()
    ]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).astype({"head": "Int64"})


def test_judge_states_number_threshold_and_verdict_per_init_scale():
    table = _table(
        {
            0.3: {"order_spearman": 0.1, "pc1_spearman": 0.5},
            0.8: {"order_spearman": -0.9, "pc1_spearman": 1.0},
        }
    )
    verdicts = judge(table).set_index("gamma")
    assert set(verdicts.claim) == {"ordered"}  # only the measured claim
    assert verdicts.loc["0.8", "verdict"] == "holds"
    assert verdicts.loc["0.3", "verdict"] == "does not hold"
    assert "order_spearman <= -0.7" in verdicts.loc["0.8", "threshold"]
    assert "order_spearman = -0.9" in verdicts.loc["0.8", "number"]
    assert verdicts.loc["0.8 vs 0.3", "verdict"] == "holds"  # more ordered at small init
    reverse = judge(
        _table(
            {
                0.3: {"order_spearman": -0.9, "pc1_spearman": 1.0},
                0.8: {"order_spearman": 0.1, "pc1_spearman": 1.0},
            }
        )
    )
    assert reverse.set_index("gamma").loc["0.8 vs 0.3", "verdict"] == "does not hold"


def test_the_instrument_runs_in_analyze_run_and_reaches_report_and_cli(tiny_run, capsys):
    cfg = AnalysisConfig(instruments=("mechanism",), geometry_rows=64)
    tables = analyze_run(tiny_run, cfg)
    table = tables["mechanism"]
    assert tuple(table.columns) == TABLE_COLUMNS
    assert set(table.step) == set(tiny_run.checkpoint_steps())
    assert set(table.claim) == set(MIXTURE_CLAIMS)
    first = table[table.step == table.step.min()]
    assert (first[first.metric.str.endswith("_change")].value == 0).all()
    assert not tables["notes"]
    stacked, problems = analyze_runs([tiny_run], cfg)
    assert not problems
    verdicts = judge(stacked["mechanism"])
    assert set(verdicts.claim) == set(MIXTURE_CLAIMS)
    assert set(verdicts.verdict) <= {"holds", "does not hold"}
    page = "".join(build_report([tiny_run], analysis=stacked).parts)
    assert "Does the published mechanism hold?" in page
    assert "order_spearman &lt;= -0.7" in page or "order_spearman <= -0.7" in page
    with pytest.raises(SystemExit):
        main(["instruments"])
    assert "mechanism: claim checks" in capsys.readouterr().out


def test_an_emb_mlp_report_says_which_claims_were_not_measured(tmp_path):
    cfg = tiny_config(steps=10).replace(model={"architecture": "emb_mlp", "d_mlp": 32})
    run = train(cfg, tmp_path / "emb_mlp", progress=False)
    stacked, problems = analyze_runs(
        [run], AnalysisConfig(instruments=("mechanism",), geometry_rows=32)
    )
    assert not problems
    assert set(stacked["mechanism"].claim) == {"ordered", "memory_together", "embedding_low_rank"}
    page = "".join(build_report([run], analysis=stacked).parts)
    assert "Not measured: attention_averages (the Emb-MLP has no attention)" in page
