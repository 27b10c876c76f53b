"""Formal languages: valid strings, rules, prompts, next-token training, greedy completion,
and rule extrapolation across init scales in a sweep."""

import itertools

import numpy as np
import pytest
import torch

import initlens.analyses.studies.sweep as sweep_module
from helpers import assert_user_error, run_cli
from initlens.analyses.studies.phase import default_value
from initlens.models import ModelConfig, RunConfig, TrainConfig, UserError, train
from initlens.models.evaluate import evaluate, greedy_complete, make_eval_set, next_token_loss
from initlens.models.tasks import FormalTask, dataset_arrays
from initlens.models.tasks.base import EOS, PAD
from initlens.models.tasks.formal import RULES

LANGUAGES = ("anbn", "anbncn", "dyck", "regular")


@pytest.mark.parametrize("language", LANGUAGES)
def test_strings_are_valid_and_encoded(language):
    task = FormalTask(language=language, max_len=12, samples=300)
    rows = dataset_arrays(task.generate(0))
    assert rows["tokens"].shape == (360, task.seq_len) and task.seq_len == 14
    assert (rows["split"] == "train").sum() == 300 and (rows["split"] == "test").sum() == 60
    strings = [task.decode(t[1:]) for t in rows["tokens"].tolist()]
    assert all(task.valid(s) and len(s) <= 12 for s in strings)
    assert len({len(s) for s in strings}) >= 3  # lengths spread, not one
    for t, s in zip(rows["tokens"].tolist(), strings):  # BOS string EOS PAD...
        assert t[0] == 1 and t[1 + len(s)] == EOS and set(t[2 + len(s) :]) <= {PAD}
        assert task.encode(s) == t
    again = dataset_arrays(task.generate(0))["tokens"]
    assert (again == rows["tokens"]).all()


@pytest.mark.parametrize(
    "language, valid, broken_rule1, broken_rule2",
    [
        ("anbn", ["ab", "aaabbb"], ["ba", "abab"], ["aab", "a"]),
        ("anbncn", ["abc", "aabbcc"], ["acb", "abcabc"], ["aabc", "ab"]),
        ("dyck", ["()", "([])[]"], ["(]", ")(", "([)]"], ["((", "(()"]),
        ("regular", ["b", "baab", "bbaa"], ["ab", "aab"], ["ba", "bbba"]),
    ],
)
def test_the_two_rules(language, valid, broken_rule1, broken_rule2):
    rule1, rule2 = RULES[language]
    task = FormalTask(language=language)
    assert all(task.valid(s) for s in valid)
    assert not any(rule1(s) for s in broken_rule1)
    assert all(rule1(s) and not rule2(s) for s in broken_rule2)


@pytest.mark.parametrize("language", LANGUAGES)
def test_prompt_sets(language):
    task = FormalTask(language=language, max_len=12, samples=300, prompt_len=3)
    rows = dataset_arrays(task.generate(0))
    sets = task.prompt_sets(rows)
    rule1 = RULES[language][0]
    ood = [task.decode(p[1:]) for p in sets["ood_prompts"].tolist()]
    every = ["".join(p) for p in itertools.product(task.symbols, repeat=3) if not rule1("".join(p))]
    assert ood == every  # all of them (fewer than the cap at length 3)
    strings = {task.decode(t[1:]) for t in rows["tokens"].tolist()}
    for p in sets["id_prompts"].tolist():
        assert p[0] == 1 and any(s.startswith(task.decode(p[1:])) and len(s) > 3 for s in strings)


@pytest.mark.parametrize(
    "options, pattern",
    [
        (dict(language="xyz"), "unknown language 'xyz'"),
        (dict(max_len=3), "max_len=3"),
        (dict(prompt_len=16), "prompt_len=16"),
        (dict(test_fraction=1.0), "test_fraction"),
    ],
)
def test_options_that_cannot_produce_data(options, pattern):
    with pytest.raises(UserError, match=pattern):
        FormalTask(**options).validate()


def test_lengths_beyond_the_context_and_cli_errors(capsys, tmp_path):
    cfg = RunConfig(task=FormalTask(max_len=16), model=ModelConfig(n_ctx=10))
    with pytest.raises(UserError, match="needs 18 positions"):
        cfg.validate()
    assert_user_error(
        run_cli(capsys, "train", "--task", "formal", "--language", "xyz", "--out", tmp_path / "r"),
        "unknown language 'xyz'",
    )
    assert not (tmp_path / "r").exists()


def test_next_token_loss_ignores_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    tokens = torch.tensor([[1, 3, 4, 2, 0], [1, 3, 2, 0, 0]])
    targets = [(0, 0, 3), (0, 1, 4), (0, 2, 2), (1, 0, 3), (1, 1, 2)]  # (row, pos, token)
    manual = torch.stack([-logits[r, p].log_softmax(-1)[t] for r, p, t in targets]).mean()
    torch.testing.assert_close(next_token_loss(logits, tokens), manual)
    per = next_token_loss(logits, tokens, "none")
    assert per.shape == (2, 4) and per[0, 3] == 0 and per[1, 2:].eq(0).all()


class Always(torch.nn.Module):
    """A stand-in model that always predicts `token` next."""

    def __init__(self, token: int, vocab: int):
        super().__init__()
        self.token, self.vocab = token, vocab

    def forward(self, tokens):
        return torch.nn.functional.one_hot(torch.full(tokens.shape, self.token), self.vocab).float()


def test_greedy_completion_and_its_scores():
    task = FormalTask(language="regular", max_len=8, prompt_len=3)
    rows = dataset_arrays(task.generate(0))
    data = make_eval_set(task, rows, 50, 0)
    prompts = data.prompts["ood_prompts"]
    done = greedy_complete(Always(EOS, task.vocab_size), prompts, task.seq_len)
    assert done.shape == (len(prompts), task.seq_len) and (done[:, 4:] == EOS).all()
    # Always EOS: completions are the prompts, which start with a (rule 1 broken); rule 2
    # holds for those with an even number of a's.
    ood = [task.decode(p[1:]) for p in prompts.tolist()]
    scores = evaluate(Always(EOS, task.vocab_size), task, data)
    assert scores[("ood_prompts", "rule_extrapolation")] == np.mean(
        [s.count("a") % 2 == 0 for s in ood]
    )
    ids = [task.decode(p[1:]) for p in data.prompts["id_prompts"].tolist()]
    assert scores[("id_prompts", "accuracy")] == np.mean([task.valid(s) for s in ids])
    # Always "b": completions append b's up to max_len, which changes no a count.
    b = 3 + task.symbols.index("b")
    scores_b = evaluate(Always(b, task.vocab_size), task, data)
    assert (
        scores_b[("ood_prompts", "rule_extrapolation")]
        == scores[("ood_prompts", "rule_extrapolation")]
    )
    assert {("train_strings", "loss"), ("test_strings", "accuracy")} <= set(scores)


def _base(steps=40):
    return RunConfig(
        task=FormalTask(language="anbn", max_len=12, samples=200),
        model=ModelConfig(n_layers=1, d_model=16, n_heads=2),
        train=TrainConfig(
            steps=steps,
            batch_size=32,
            lr=3e-3,
            warmup_steps=4,
            eval_every=10,
            eval_size=100,
            n_checkpoints=2,
        ),
    )


@pytest.mark.integration
def test_next_token_training_learns_and_records_the_read_outs(tmp_path):
    run = train(_base(60), tmp_path / "run", progress=False)
    m = run.metrics()
    loss = m[(m.group == "train_strings") & (m.metric == "loss")].set_index("step").value
    assert loss.iloc[-1] < 0.7 * loss.iloc[0]
    for group, metric in (("id_prompts", "accuracy"), ("ood_prompts", "rule_extrapolation")):
        values = m[(m.group == group) & (m.metric == metric)].value
        assert len(values) == len(loss) and values.between(0, 1).all()


@pytest.mark.integration
def test_a_gamma_sweep_reports_rule_extrapolation_at_the_best_step(tmp_path):
    sweep = sweep_module.make_sweep(_base(), {"gamma": [0.3, 0.8]})
    runs = [(cfg, tmp_path / name) for name, cfg in sweep.configs()]
    assert [len(u) for u in sweep_module.plan(runs)] == [1, 1]  # next-token: no ensembles
    table = sweep_module.run_sweep(sweep, tmp_path / "s", progress=False)["table"]
    assert (table.state == "done").all()
    assert default_value(table) == "rule_extrapolation_at_best"
    for row in table.itertuples():
        m = sweep_module.Run(tmp_path / "s" / "runs" / row.run).metrics()
        loss = m[(m.group == "test_strings") & (m.metric == "loss")].set_index("step").value
        assert row.best_step == loss.idxmin()
        score = m[(m.group == "ood_prompts") & (m.step == row.best_step)].value
        assert row.rule_extrapolation_at_best == float(score.iloc[0])
        assert 0 <= row.id_prompts_accuracy <= 1
