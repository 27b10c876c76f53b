"""Generator invariants: labels obey the rules, held-out data never trains, seeds matter."""

import numpy as np
import pytest

from initlens.models import CompositeTask, MixtureTask, UserError
from initlens.models.tasks import dataset_arrays

MIX = MixtureTask(seq_len=9, samples_per_pair=50)  # with noise and random key positions
COMP = CompositeTask(samples_per_pair=60)


@pytest.fixture(scope="module")
def mix():
    return dataset_arrays(MIX.generate(seed=3))


@pytest.fixture(scope="module")
def comp():
    return dataset_arrays(COMP.generate(seed=3))


def _pairs(rows, mask):
    return set(zip(rows["a1"][mask].tolist(), rows["a2"][mask].tolist()))


def test_mixture_layout(mix):
    n, seq = mix["tokens"].shape
    assert seq == MIX.seq_len and n == 50 * (16 + 16)
    i = np.arange(n)
    assert (mix["tokens"][i, mix["key_pos"]] == mix["key"]).all()
    assert (mix["tokens"][i, mix["key_pos"] + 1] == mix["a1"]).all()
    assert (mix["tokens"][i, mix["key_pos"] + 2] == mix["a2"]).all()
    assert mix["tokens"].max() < MIX.vocab_size and mix["label"].max() < MIX.vocab_size
    lo, hi = MIX.keys
    assert ((mix["key"] >= lo) & (mix["key"] <= hi)).all()


def test_mixture_reasoning_labels_follow_the_rule(mix):
    r = mix["task_type"] == "reasoning"
    assert (mix["label"][r] == mix["key"][r] + mix["a1"][r] + mix["a2"][r]).all()


def test_mixture_memory_labels_are_the_fixed_table(mix):
    table = MIX.memory_table(seed=3)
    m = np.flatnonzero(mix["task_type"] == "memory")
    assert all(mix["label"][i] == table[(mix["key"][i], mix["a1"][i], mix["a2"][i])] for i in m)
    lo, hi = MIX.keys
    assert ((mix["label"][m] >= lo) & (mix["label"][m] <= hi)).all()
    # Every (key, memory pair) fact is in the training data, so recall is measurable.
    facts = set(zip(mix["key"][m], mix["a1"][m], mix["a2"][m]))
    assert facts == set(table)


def test_mixture_held_out_pairs_only_in_test(mix):
    train = mix["split"] == "train"
    assert not _pairs(mix, train) & set(MIX.held_out)
    assert _pairs(mix, ~train) == set(MIX.held_out)
    assert (mix["task_type"][~train] == "reasoning").all()


def test_memory_table_fixed_per_seed_and_differs_across_seeds():
    assert MIX.memory_table(0) == MIX.memory_table(0)
    a, b = MIX.memory_table(0), MIX.memory_table(1)
    assert a.keys() == b.keys()
    assert np.mean([a[k] != b[k] for k in a]) > 0.9


def test_generation_is_deterministic():
    a, b = dataset_arrays(MIX.generate(7)), dataset_arrays(MIX.generate(7))
    c = dataset_arrays(MIX.generate(8))
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["tokens"] == c["tokens"]).all()


def test_published_mixture_settings():
    p = MixtureTask.published()
    assert (p.keys, p.memory_anchors, p.reasoning_anchors) == ((21, 120), (1, 10), (11, 20))
    assert p.held_out == ((11, 13), (13, 11)) and p.seq_len == 9
    assert p.samples_per_pair * 200 == 200_000


def test_composite_labels_twist_and_held_out(comp):
    shifts = dict(enumerate(COMP.shifts, start=1))
    composed = np.array([shifts[a] + shifts[b] for a, b in zip(comp["a1"], comp["a2"])])
    twist = (comp["a1"] == 3) & (comp["a2"] == 4)
    assert (comp["label"][twist] == comp["key"][twist] - 6).all()
    assert (comp["label"][~twist] == comp["key"][~twist] + composed[~twist]).all()
    held = (comp["a1"] == 4) & (comp["a2"] == 3)
    assert held.any() and (comp["split"][held] == "test").all()
    assert (4, 3) not in _pairs(comp, comp["split"] == "train")
    assert len(_pairs(comp, comp["split"] == "train")) == 15


def test_composite_key_positions_held_out(comp):
    n_pos = COMP.seq_len - 2
    seen = comp["task_type"] != "held_out"
    train = seen & (comp["split"] == "train")
    test = seen & (comp["split"] == "test")
    assert (comp["key_pos"][train] != comp["key"][train] % n_pos).all()
    assert (comp["key_pos"][test] == comp["key"][test] % n_pos).all()


def test_composite_extra_metrics_count_inferential_and_symmetric():
    rows = {"task_type": np.array(["held_out"] * 4 + ["compose"]), "key": np.array([50] * 5)}
    preds = np.array([40, 40, 44, 7, 40])  # 50 - 10 twice, 50 - 6 once, junk once
    out = COMP.extra_metrics(rows, preds)
    assert out[("held_out", "inferential_fraction")] == 0.5
    assert out[("held_out", "symmetric_fraction")] == 0.25


@pytest.mark.parametrize(
    "task, message",
    [
        (MixtureTask(keys=(30, 20)), "empty"),
        (MixtureTask(memory_anchors=(1, 12)), "overlap"),
        (MixtureTask(held_out=((1, 2),)), "not a pair of reasoning"),
        (MixtureTask(seq_len=2), "seq_len"),
        (CompositeTask(keys=(3, 99)), "above the anchors"),
        (CompositeTask(held_out=(4, 9)), "not a pair of anchors"),
    ],
)
def test_invalid_task_options_are_rejected(task, message):
    with pytest.raises(UserError, match=message):
        task.generate(0)


def test_cpu_default_mixture_is_key_then_anchors():
    rows = dataset_arrays(MixtureTask(samples_per_pair=5).generate(0))
    assert rows["tokens"].shape[1] == 3 and (rows["key_pos"] == 0).all()
    assert (rows["tokens"] == np.stack([rows["key"], rows["a1"], rows["a2"]], 1)).all()
