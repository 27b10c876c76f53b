"""Clean/corrupted prompt pairs for activation patching, for any task with corruptions.

A pair changes one thing the label depends on (the key, an anchor, or the kind of anchor
pair) and keeps every other token, so patching activations between the two runs localizes
where the model reads that thing. Both labels are the ones the task's own generator assigns,
so a logit difference compares two correct answers. What each corruption edits is the
task's own business (`Task.draw_corruption`, `labels_of`, `trains_on`); the drawing loop
and the token edits are shared.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from jaxtyping import Int

from initlens.models.errors import UserError, check_count
from initlens.models.tasks import TASKS, Task, dataset_arrays

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

    def to(self, device) -> PatchPairs:
        """The same pairs with every tensor on `device` (meta stays numpy)."""
        return replace(
            self,
            clean=self.clean.to(device),
            corrupted=self.corrupted.to(device),
            clean_label=self.clean_label.to(device),
            corrupted_label=self.corrupted_label.to(device),
        )


MAX_PAIRS = 2**20  # pairs patched in one experiment: far more than a metric's noise needs


def check_pairs(n: int, option: str = "n") -> None:
    """A UserError unless `n` (the `option` giving it) is a count of 1 to MAX_PAIRS pairs."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PAIRS:
        raise UserError(f"{option}={n!r}: ask for 1 to {MAX_PAIRS} pairs", option=option)


def make_pairs(
    task: Task,
    kind: str,
    n: int = 256,
    seed: int = 0,
    data_seed: int = 0,
    source: str = "reasoning",
) -> PatchPairs:
    """`n` pairs of corruption `kind`, edited from rows of `task.generate(data_seed)`.

    `source` ("reasoning" or "memory") picks the clean rows' group for "key" and "anchor"
    (on composite: the task's "seen" or "twist" group); the other kinds fix their own.
    Clean rows are drawn without replacement when the group has `n` rows, else with it.
    """
    name = getattr(task, "name", type(task).__name__)
    kinds = getattr(task, "corruptions", ())
    if not kinds:
        raise UserError(
            f"no corruptions for task {name!r}; tasks with corruptions: "
            f"{', '.join(t for t, c in TASKS.items() if c.corruptions)}"
        )
    if kind not in kinds:
        raise UserError(
            f"unknown corruption {kind!r} for task {name}; choose one of: {', '.join(kinds)}"
        )
    check_pairs(n)
    check_count(seed, "seed", least=0)
    if source not in SOURCES:
        raise UserError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")
    rows = dataset_arrays(task.generate(data_seed))
    pool = np.flatnonzero(task.clean_rows(kind, source, rows))
    rng = np.random.default_rng([seed, 3])
    pick = rng.choice(pool, size=n, replace=n > len(pool))
    clean = {c: rows[c][pick] for c in ("task_type", "key", "a1", "a2", "key_pos", "label")}
    cor = {c: clean[c].copy() for c in ("key", "a1", "a2")}
    redo = np.arange(n)
    for _ in range(_TRIES):
        task.draw_corruption(kind, source, rng, clean, cor, redo)
        label = task.labels_of(cor["key"], cor["a1"], cor["a2"], data_seed)
        redo = np.flatnonzero((label == clean["label"]) | ~task.trains_on(kind, cor, clean))
        if len(redo) == 0:
            break
    else:
        raise UserError(
            f"{name}: no {kind!r} corruption changes the label of some rows "
            f"(e.g. key {clean['key'][redo[0]]}, anchors "
            f"{clean['a1'][redo[0]]},{clean['a2'][redo[0]]}); check the task options"
        )
    tokens = rows["tokens"][pick]
    corrupted, r, p = tokens.copy(), np.arange(n), clean["key_pos"]
    for offset, col in enumerate(("key", "a1", "a2")):
        corrupted[r, p + offset] = cor[col]
    meta = {
        "row": pick,
        **{c: clean[c] for c in ("task_type", "key", "a1", "a2", "key_pos")},
        **{f"corrupted_{c}": cor[c] for c in ("key", "a1", "a2")},
    }
    as_long = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return PatchPairs(
        as_long(tokens), as_long(corrupted), as_long(clean["label"]), as_long(label), kind, meta
    )
