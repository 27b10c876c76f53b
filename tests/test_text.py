"""Reasoning-vs-memorization text: PrOntoQA-style questions whose answers follow from
their own context, memorized facts, local files through `datasets`, per-source losses."""

import re
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_user_error, run_cli
from initlens.analyses.studies.preference import relative_loss_gap
from initlens.models import ModelConfig, RunConfig, TrainConfig, UserError, train
from initlens.models.tasks import TextTask, dataset_arrays

DATA = Path(__file__).parent / "data"
FILES = (str(DATA / "stories_sample.txt"), str(DATA / "prontoqa_sample.jsonl"))


def _answer(text: str) -> str:
    """The answer by forward chaining over the question's own rules."""
    rules = dict(re.findall(r"every (\w+) is a (\w+) \.", text))
    entity, concept = re.search(r"(\w+) is a (\w+) \. is", text).groups()
    asked = re.search(rf"is {entity} a (\w+) \?", text).group(1)
    reached = {concept}
    while concept in rules:
        concept = rules[concept]
        reached.add(concept)
    return "true" if asked in reached else "false"


def test_questions_follow_from_their_own_rules_and_facts_are_fixed():
    task = TextTask(samples=600)
    rows = dataset_arrays(task.generate(0))
    texts = [task.decode(t[1:]) for t in rows["tokens"].tolist()]
    questions = [t for t, ty in zip(texts, rows["task_type"]) if ty == "prontoqa"]
    assert len(questions) == 300 + 120  # half of the training rows, and the held-out ones
    answers = [q.rsplit(" ", 1)[1] for q in questions]
    assert answers == [_answer(q) for q in questions]
    assert 0.3 < np.mean([a == "true" for a in answers]) < 0.7
    assert len({re.findall(r"every \w+ is a \w+", q)[0] for q in questions}) > 100  # fresh
    facts = {t for t, ty in zip(texts, rows["task_type"]) if ty == "fact"}
    assert facts <= set(task.facts(0)) and len(task.facts(0)) == 16 * 4
    subjects = [re.match(r"the (\w+) of (\w+) is", f).groups() for f in task.facts(0)]
    assert len(set(subjects)) == len(subjects)  # one value per entity and attribute
    assert task.facts(0) != task.facts(1)
    assert set(rows["split"][rows["task_type"] == "fact"]) == {"train"}


def test_local_files_through_datasets():
    task = TextTask(samples=500, files=FILES, file_fraction=0.4)
    assert {"pip", "kite", "jompus"} <= set(task.vocab)  # the files' words
    rows = dataset_arrays(task.generate(0))
    is_file = rows["task_type"] == "file"
    assert is_file.sum() > 150 and set(rows["split"][is_file]) == {"train", "test"}
    texts = [task.decode(t[1:]) for t in rows["tokens"][is_file].tolist()]
    assert any("once upon a time" in t for t in texts)
    assert all(len(t.split()) <= task.max_len for t in texts)
    parquet = TextTask(files=(str(DATA / "prontoqa_sample.parquet"),))
    assert "sterpus" in parquet.vocab
    assert {g.name for g in task.eval_groups()} == {
        "prontoqa",
        "prontoqa_test",
        "facts",
        "files",
        "files_test",
    }


@pytest.mark.parametrize(
    "options, pattern",
    [
        (dict(n_concepts=3), "n_concepts=3"),
        (dict(max_len=10), "max_len=10"),
        (dict(files=("missing.txt",)), "missing.txt does not exist"),
        (dict(files=(str(DATA / "prontoqa_sample.jsonl"),), text_field="body"), "no column 'body'"),
        (dict(n_values=1), "n_values=1"),
    ],
)
def test_options_that_cannot_produce_data(options, pattern):
    with pytest.raises(UserError, match=pattern):
        TextTask(**options).validate()


@pytest.mark.integration
def test_training_records_per_source_losses(tmp_path):
    cfg = RunConfig(
        task=TextTask(samples=300, files=FILES),
        model=ModelConfig(n_layers=1, d_model=16, n_heads=2),
        train=TrainConfig(
            steps=30, batch_size=32, eval_every=10, eval_size=64, warmup_steps=3, n_checkpoints=2
        ),
    )
    run = train(cfg, tmp_path / "run", progress=False)
    m = run.metrics()
    losses = m[m.metric == "loss"].pivot(index="step", columns="group", values="value")
    for group in ("prontoqa", "prontoqa_test", "facts", "files", "files_test"):
        assert losses[group].iloc[-1] < losses[group].iloc[0], group
    gap = relative_loss_gap(m, "prontoqa_test", "facts")
    np.testing.assert_allclose(gap, (losses.facts - losses.prontoqa_test) / losses.prontoqa_test)


def test_cli_reads_files_and_refuses_missing_ones(capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        "train",
        "--task",
        "text",
        "--files",
        ",".join(FILES),
        "--samples",
        "100",
        "--d-model",
        "16",
        "--steps",
        "3",
        "--eval-every",
        "3",
        "--eval-size",
        "16",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    assert RunConfig.load(tmp_path / "r" / "config.json").task.files == FILES
    assert_user_error(
        run_cli(capsys, "train", "--task", "text", "--files", "nope.txt", "--out", tmp_path / "r2"),
        "nope.txt does not exist",
    )


def test_files_without_text_leave_no_vocabulary(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    with pytest.raises(UserError, match="hold no text"):
        TextTask(files=(str(empty),)).validate()
