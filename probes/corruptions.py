"""Clean/corrupted prompt pairs for activation patching on the mixture and composite tasks.

A pair changes one thing the label depends on (the key, an anchor, or the kind of anchor
pair) and keeps every other token, so patching activations between the two runs localizes
where the model reads that thing. Both labels are the ones the task's own generator assigns,
so a logit difference compares two correct answers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from jaxtyping import Int

from models.errors import UserError
from models.tasks import Task, dataset_arrays, group_mask

CORRUPTIONS: dict[str, tuple[str, ...]] = {
    "mixture": ("key", "anchor", "reasoning_to_memory"),
    "composite": ("key", "anchor", "held_out_vs_twist"),
}
SOURCES = ("reasoning", "memory")
_TRIES = 100  # redraws of a corruption whose label equals the clean one


@dataclass(frozen=True)
class PatchPairs:
    """Clean/corrupted prompt pairs for activation patching, with the labels metrics need."""

    clean: Int[torch.Tensor, "batch seq"]
    corrupted: Int[torch.Tensor, "batch seq"]  # differs from clean only where `kind` says
    clean_label: Int[torch.Tensor, " batch"]
    corrupted_label: Int[torch.Tensor, " batch"]  # the correct answer to the corrupted row
    kind: str
    meta: dict[str, np.ndarray]  # row, task_type, key, a1, a2, key_pos, corrupted_{key,a1,a2}

    def __len__(self) -> int:
        return self.clean.shape[0]

    def to(self, device) -> "PatchPairs":
        """The same pairs with every tensor on `device` (meta stays numpy)."""
        return replace(self, clean=self.clean.to(device), corrupted=self.corrupted.to(device),
                       clean_label=self.clean_label.to(device),
                       corrupted_label=self.corrupted_label.to(device))


def make_pairs(task: Task, kind: str, n: int = 256, seed: int = 0, data_seed: int = 0,
               source: str = "reasoning") -> PatchPairs:
    """`n` pairs of corruption `kind`, edited from rows of `task.generate(data_seed)`.

    `source` ("reasoning" or "memory") picks the clean rows' group for "key" and "anchor"
    (on composite: the task's "seen" or "twist" group); the other kinds fix their own.
    Clean rows are drawn without replacement when the group has `n` rows, else with it.
    """
    name = getattr(task, "name", type(task).__name__)
    if name not in CORRUPTIONS:
        raise UserError(f"no corruptions for task {name!r}; tasks with corruptions: "
                        f"{', '.join(CORRUPTIONS)}")
    if kind not in CORRUPTIONS[name]:
        raise UserError(f"unknown corruption {kind!r} for task {name}; choose one of: "
                        f"{', '.join(CORRUPTIONS[name])}")
    if n < 1:
        raise UserError(f"n={n}: ask for at least one pair")
    if source not in SOURCES:
        raise UserError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")
    rows = dataset_arrays(task.generate(data_seed))
    table = task.memory_table(data_seed) if name == "mixture" else None
    pool = np.flatnonzero(_clean_mask(task, kind, source, rows))
    rng = np.random.default_rng([seed, 3])
    pick = rng.choice(pool, size=n, replace=n > len(pool))
    clean = {c: rows[c][pick] for c in ("task_type", "key", "a1", "a2", "key_pos", "label")}
    cor = {c: clean[c].copy() for c in ("key", "a1", "a2")}
    redo = np.arange(n)
    for _ in range(_TRIES):
        _draw(task, kind, source, rng, clean, cor, redo)
        label = _label(task, table, cor["key"], cor["a1"], cor["a2"])
        redo = np.flatnonzero((label == clean["label"]) | ~_allowed(task, kind, cor, clean))
        if len(redo) == 0:
            break
    else:
        raise UserError(f"{name}: no {kind!r} corruption changes the label of some rows "
                        f"(e.g. key {clean['key'][redo[0]]}, anchors "
                        f"{clean['a1'][redo[0]]},{clean['a2'][redo[0]]}); check the task options")
    tokens = rows["tokens"][pick]
    corrupted, r, p = tokens.copy(), np.arange(n), clean["key_pos"]
    for offset, col in enumerate(("key", "a1", "a2")):
        corrupted[r, p + offset] = cor[col]
    meta = {"row": pick, **{c: clean[c] for c in ("task_type", "key", "a1", "a2", "key_pos")},
            **{f"corrupted_{c}": cor[c] for c in ("key", "a1", "a2")}}
    as_long = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return PatchPairs(as_long(tokens), as_long(corrupted), as_long(clean["label"]),
                      as_long(label), kind, meta)


def _clean_mask(task: Task, kind: str, source: str, rows: dict[str, np.ndarray]) -> np.ndarray:
    """Rows a clean prompt may come from: a training group, or the held-out pair."""
    if kind == "held_out_vs_twist":
        return rows["task_type"] == "held_out"
    group = task.memory_group if kind != "reasoning_to_memory" and source == "memory" \
        else task.reasoning_group
    return group_mask(rows, next(g for g in task.eval_groups() if g.name == group))


def _other(rng: np.random.Generator, values: np.ndarray, span: tuple[int, int],
           what: str) -> np.ndarray:
    """A uniformly drawn value of lo..hi different from each of `values`."""
    lo, hi = span
    size = hi - lo + 1
    if size < 2:
        raise UserError(f"only one {what} ({lo}); a {what} corruption needs at least two")
    return lo + (values - lo + rng.integers(1, size, size=len(values))) % size


def _draw(task, kind, source, rng, clean, cor, i) -> None:
    """(Re)draw the corruption of rows `i` in place."""
    if kind == "key":
        cor["key"][i] = _other(rng, clean["key"][i], task.keys, "key")
    elif kind == "anchor":
        span = ((1, len(task.shifts)) if task.name == "composite" else
                task.memory_anchors if source == "memory" else task.reasoning_anchors)
        cor["a2"][i] = _other(rng, clean["a2"][i], span, "anchor")
    elif kind == "reasoning_to_memory":
        lo, hi = task.memory_anchors
        cor["a1"][i], cor["a2"][i] = rng.integers(lo, hi + 1, size=(2, len(i)))
    else:  # held_out_vs_twist
        cor["a1"][i], cor["a2"][i] = task.twist


def _label(task, table, key, a1, a2) -> np.ndarray:
    """The label the task's generator gives each (key, a1, a2) row."""
    if task.name == "composite":
        return key + np.array([task.shift(int(x), int(y)) for x, y in zip(a1, a2)], dtype=int)
    lo, hi = task.memory_anchors
    return np.array([table[(int(k), int(x), int(y))] if lo <= x <= hi else k + x + y
                     for k, x, y in zip(key, a1, a2)], dtype=np.int64)


def _allowed(task, kind, cor, clean) -> np.ndarray:
    """Corrupted rows the task trains on: never a held-out pair (or a held-out key position)."""
    held = set(task.held_out) if task.name == "mixture" else {tuple(task.held_out)}
    ok = np.array([(int(x), int(y)) not in held for x, y in zip(cor["a1"], cor["a2"])])
    if task.name == "composite" and kind == "key" and task.hold_out_key_positions:
        ok &= cor["key"] % (task.seq_len - 2) != clean["key_pos"]
    return ok
