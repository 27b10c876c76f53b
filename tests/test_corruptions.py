"""Patching pairs: only the intended tokens change, labels follow the task rules, seeds matter."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from initlens.models import CompositeTask, MixtureTask, UserError
from initlens.models.tasks import Task, dataset_arrays
from initlens.probes.corruptions import PatchPairs, make_pairs

MIX = MixtureTask(seq_len=9, samples_per_pair=50)  # noise tokens, random key positions
COMP = CompositeTask(samples_per_pair=60)
DATA_SEED = 3
SHIFTS = {1: 5, 2: 1, 3: -2, 4: -8}  # the composite rule, restated independently

# (task, kind, source): every kind, and the memory source where it applies.
CASES = [
    (MIX, "key", "reasoning"),
    (MIX, "key", "memory"),
    (MIX, "anchor", "reasoning"),
    (MIX, "anchor", "memory"),
    (MIX, "reasoning_to_memory", "reasoning"),
    (COMP, "key", "reasoning"),
    (COMP, "key", "memory"),
    (COMP, "anchor", "reasoning"),
    (COMP, "anchor", "memory"),
    (COMP, "held_out_vs_twist", "reasoning"),
]
IDS = [f"{t.name}-{k}-{s}" for t, k, s in CASES]
# Offsets from the key position of the tokens each kind changes.
CHANGED = {"key": (0,), "anchor": (2,), "reasoning_to_memory": (1, 2), "held_out_vs_twist": (1, 2)}


@pytest.fixture(scope="module")
def data():
    return {t.name: dataset_arrays(t.generate(DATA_SEED)) for t in (MIX, COMP)}


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request):
    task, kind, source = request.param
    return (
        task,
        kind,
        source,
        make_pairs(task, kind, n=200, seed=1, data_seed=DATA_SEED, source=source),
    )


def rule_label(task, key, a1, a2):
    """The label of one row, recomputed from the task definition."""
    if task.name == "composite":
        return key - 6 if (a1, a2) == (3, 4) else key + SHIFTS[a1] + SHIFTS[a2]
    if 1 <= a1 <= 4:  # memory anchors of MIX
        return MIX.memory_table(DATA_SEED)[(key, a1, a2)]
    return key + a1 + a2


def test_shapes_and_dtypes(case):
    task, kind, _, p = case
    assert isinstance(p, PatchPairs) and len(p) == 200 and p.kind == kind
    assert p.clean.shape == p.corrupted.shape == (200, task.seq_len)
    assert p.clean_label.shape == p.corrupted_label.shape == (200,)
    for t in (p.clean, p.corrupted, p.clean_label, p.corrupted_label):
        assert t.dtype == torch.int64
    assert all(len(v) == 200 for v in p.meta.values())


def test_only_the_corrupted_positions_differ(case):
    task, kind, _, p = case
    pos = p.meta["key_pos"]
    expected = np.zeros((len(p), task.seq_len), dtype=bool)
    for offset in CHANGED[kind]:
        expected[np.arange(len(p)), pos + offset] = True
    assert ((p.clean != p.corrupted).numpy() == expected).all()
    r = np.arange(len(p))
    for offset, col in enumerate(("key", "a1", "a2")):
        assert (p.clean.numpy()[r, pos + offset] == p.meta[col]).all()
        assert (p.corrupted.numpy()[r, pos + offset] == p.meta[f"corrupted_{col}"]).all()


def test_clean_rows_are_dataset_rows(case, data):
    task, _, _, p = case
    rows = data[task.name]
    i = p.meta["row"]
    assert (p.clean.numpy() == rows["tokens"][i]).all()
    assert (p.clean_label.numpy() == rows["label"][i]).all()
    for col in ("task_type", "key", "a1", "a2", "key_pos"):
        assert (p.meta[col] == rows[col][i]).all()


def test_labels_follow_the_task_rules_and_differ(case):
    task, _, _, p = case
    m = {c: p.meta[c].tolist() for c in p.meta}
    clean = [rule_label(task, *r) for r in zip(m["key"], m["a1"], m["a2"])]
    cor = [
        rule_label(task, *r) for r in zip(m["corrupted_key"], m["corrupted_a1"], m["corrupted_a2"])
    ]
    assert p.clean_label.tolist() == clean
    assert p.corrupted_label.tolist() == cor
    assert (p.clean_label != p.corrupted_label).all()


def test_clean_rows_come_from_the_right_training_group(case, data):
    task, kind, source, p = case
    rows = data[task.name]
    split, pairs = rows["split"][p.meta["row"]], set(zip(p.meta["a1"], p.meta["a2"]))
    if kind == "held_out_vs_twist":
        assert (p.meta["task_type"] == "held_out").all() and pairs == {(4, 3)}
        return
    expected = {
        ("mixture", "reasoning"): "reasoning",
        ("mixture", "memory"): "memory",
        ("composite", "reasoning"): "compose",
        ("composite", "memory"): "twist",
    }
    assert (p.meta["task_type"] == expected[task.name, source]).all()
    assert (split == "train").all()
    held = set(task.held_out) if task.name == "mixture" else {task.held_out}
    assert not pairs & held
    cor_pairs = set(zip(p.meta["corrupted_a1"], p.meta["corrupted_a2"]))
    assert not cor_pairs & held


def test_each_kind_changes_what_it_says(case):
    task, kind, source, p = case
    m = p.meta
    same = {c: m[c] == m[f"corrupted_{c}"] for c in ("key", "a1", "a2")}
    if kind == "key":
        assert not same["key"].any() and same["a1"].all() and same["a2"].all()
        assert m["corrupted_key"].min() >= task.keys[0]
        assert m["corrupted_key"].max() <= task.keys[1]
        if task.name == "composite":  # the corrupted key still sits at a training position
            assert (m["corrupted_key"] % (task.seq_len - 2) != m["key_pos"]).all()
    elif kind == "anchor":
        assert same["key"].all() and same["a1"].all() and not same["a2"].any()
        lo, hi = (
            (1, 4)
            if task.name == "composite"
            else task.memory_anchors
            if source == "memory"
            else task.reasoning_anchors
        )
        assert ((m["corrupted_a2"] >= lo) & (m["corrupted_a2"] <= hi)).all()
        used = set(m["a2"].tolist()) | set(m["corrupted_a2"].tolist())
        assert used == set(range(lo, hi + 1))  # every anchor of the type can appear
    elif kind == "reasoning_to_memory":
        assert same["key"].all()
        assert (m["a1"] >= 11).all() and (m["a2"] >= 11).all()
        assert set(m["corrupted_a1"].tolist()) == set(m["corrupted_a2"].tolist()) == {1, 2, 3, 4}
    else:
        assert same["key"].all()
        assert (m["corrupted_a1"] == 3).all() and (m["corrupted_a2"] == 4).all()


def test_held_out_vs_twist_is_inferential_vs_symmetric():
    p = make_pairs(COMP, "held_out_vs_twist", n=64, seed=2)
    assert (p.meta["a1"] == 4).all() and (p.meta["a2"] == 3).all()
    key = torch.as_tensor(p.meta["key"])
    assert torch.equal(p.clean_label, key - 10)
    assert torch.equal(p.corrupted_label, key - 6)


def test_memory_source_resamples_coinciding_labels():
    # Memory labels are random draws from 40 keys: in 500 pairs a random other key would
    # repeat the label about 12 times, so this fails if coincidences were not redrawn.
    p = make_pairs(MIX, "key", n=500, source="memory")
    assert (p.clean_label != p.corrupted_label).all()


@pytest.mark.parametrize("task,kind,source", CASES, ids=IDS)
def test_deterministic_per_seed_and_different_across_seeds(task, kind, source):
    a, b = (make_pairs(task, kind, n=32, seed=5, source=source) for _ in range(2))
    c = make_pairs(task, kind, n=32, seed=6, source=source)
    for name in ("clean", "corrupted", "clean_label", "corrupted_label"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.clean, c.clean)
    assert not torch.equal(a.corrupted, c.corrupted)


def test_exactly_n_pairs_even_beyond_the_pool():
    assert len(make_pairs(COMP, "held_out_vs_twist", n=1)) == 1
    p = make_pairs(COMP, "held_out_vs_twist", n=300)  # only 60 held-out rows exist
    assert len(p) == 300 and len(set(p.meta["row"].tolist())) <= 60
    q = make_pairs(MIX, "key", n=100)  # enough rows: no row repeats
    assert len(set(q.meta["row"].tolist())) == 100


def test_to_moves_tensors_and_keeps_values():
    p = make_pairs(MIX, "anchor", n=8)
    q = p.to("cpu")
    assert isinstance(q, PatchPairs) and q.kind == p.kind and q.meta is p.meta
    assert torch.equal(q.clean, p.clean) and torch.equal(q.corrupted_label, p.corrupted_label)


def test_unknown_kind_names_the_valid_kinds():
    for task in (MIX, COMP):
        with pytest.raises(UserError) as err:
            make_pairs(task, "nonsense")
        assert all(k in str(err.value) for k in task.corruptions)
    with pytest.raises(UserError, match="reasoning_to_memory"):
        make_pairs(MIX, "held_out_vs_twist")  # a composite kind asked of the mixture task
    with pytest.raises(UserError, match="held_out_vs_twist"):
        make_pairs(COMP, "reasoning_to_memory")


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="n=0"):
        make_pairs(MIX, "key", n=0)
    with pytest.raises(UserError, match="source"):
        make_pairs(MIX, "key", source="twist")

    @dataclass(frozen=True)
    class Other(Task):
        name = "other"
        seq_len: int = 3

    with pytest.raises(UserError, match="no corruptions for task 'other'"):
        make_pairs(Other(), "key")


def test_corruption_that_cannot_change_the_label_is_a_user_error():
    # With twist_shift = -10 the twist answer equals the composed one: no valid pair exists.
    task = CompositeTask(samples_per_pair=10, twist_shift=-10)
    with pytest.raises(UserError, match="changes the label"):
        make_pairs(task, "held_out_vs_twist", n=4)
    with pytest.raises(UserError, match="at least two"):
        make_pairs(
            MixtureTask(memory_anchors=(1, 1), samples_per_pair=5), "anchor", source="memory"
        )
