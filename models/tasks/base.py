"""What every task provides: rows of (tokens, label, metadata) and the groups we score.

A task is a frozen dataclass of its options. `generate(seed)` returns a
`datasets.Dataset` with the columns below; `eval_groups` names the subsets whose loss and
accuracy we track during training (e.g. memory recall vs reasoning on held-out pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

COLUMNS = ("tokens", "label", "task_type", "key", "a1", "a2", "key_pos", "split")


@dataclass(frozen=True)
class Group:
    """A named subset of a task's rows that training evaluates, e.g. memory recall."""

    name: str
    task_type: str
    split: str
    pairs: tuple[tuple[int, int], ...] | None = None  # None: every pair of that type/split


class Task:
    """Interface shared by all tasks (implemented as frozen dataclasses)."""

    name: ClassVar[str]
    # The groups a preference compares: the rule-following one vs the memorized one.
    reasoning_group: ClassVar[str] = "reasoning"
    memory_group: ClassVar[str] = "memory"
    seq_len: int

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def generate(self, seed: int) -> "datasets.Dataset":  # noqa: F821
        raise NotImplementedError

    def eval_groups(self) -> tuple[Group, ...]:
        raise NotImplementedError

    def validate(self, n_ctx: int | None = None) -> None:
        """Raise UserError if these options cannot produce data."""

    def extra_metrics(self, rows: dict[str, np.ndarray],
                      preds: np.ndarray) -> dict[tuple[str, str], float]:
        """Task-specific read-outs, {(group, metric): value}, beyond loss and accuracy."""
        return {}


def group_mask(rows: dict[str, np.ndarray], group: Group) -> np.ndarray:
    """Boolean mask of the rows in `group`."""
    mask = (rows["task_type"] == group.task_type) & (rows["split"] == group.split)
    if group.pairs is not None:
        in_pairs = np.zeros_like(mask)
        for a1, a2 in group.pairs:
            in_pairs |= (rows["a1"] == a1) & (rows["a2"] == a2)
        mask &= in_pairs
    return mask


def place_sequences(
    rng: np.random.Generator,
    keys: np.ndarray,
    a1: np.ndarray,
    a2: np.ndarray,
    noise_pool: np.ndarray,
    seq_len: int,
    key_pos: np.ndarray,
) -> np.ndarray:
    """Noise everywhere, then the key at `key_pos` followed by the two anchors."""
    n = len(keys)
    tokens = rng.choice(noise_pool, size=(n, seq_len))
    rows = np.arange(n)
    tokens[rows, key_pos] = keys
    tokens[rows, key_pos + 1] = a1
    tokens[rows, key_pos + 2] = a2
    return tokens


def to_dataset(columns: dict[str, np.ndarray]) -> "datasets.Dataset":  # noqa: F821
    """Build the Dataset with the shared column layout."""
    import datasets

    return datasets.Dataset.from_dict({c: columns[c].tolist() for c in COLUMNS})


def dataset_arrays(ds) -> dict[str, np.ndarray]:
    """Column arrays of a task dataset (read from Arrow directly: fast for 100k+ rows)."""
    table = ds.with_format(None).data.table
    out = {c: table.column(c).to_numpy() for c in COLUMNS if c != "tokens"}
    flat = table.column("tokens").combine_chunks().flatten().to_numpy()
    out["tokens"] = flat.astype(np.int64).reshape(len(ds), -1)
    out["label"] = out["label"].astype(np.int64)
    out["task_type"] = out["task_type"].astype(str)
    out["split"] = out["split"].astype(str)
    return out


def as_tensors(rows: dict[str, np.ndarray], device: torch.device | str = "cpu"):
    """(tokens, labels) tensors on `device`."""
    return (
        torch.as_tensor(rows["tokens"], device=device),
        torch.as_tensor(rows["label"], device=device),
    )
