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

from initlens.models.errors import UserError

DATASET_COLUMNS = ("tokens", "label", "task_type", "key", "a1", "a2", "key_pos", "split")
PAD, BOS, EOS = 0, 1, 2  # next-token tasks: padding (the loss ignores it), start, end


@dataclass(frozen=True)
class Group:
    """A named subset of a task's rows that training evaluates, e.g. memory recall."""

    name: str
    task_type: str
    split: str
    pairs: tuple[tuple[int, int], ...] | None = None  # None: every pair of that type/split


class Task:
    """Interface shared by all tasks (implemented as frozen dataclasses).

    Besides data, a task says what the instruments need to know about it, so nothing
    downstream names a task: its token roles (geometry), its task types and the one only
    a lookup can answer (linear probes), and its clean/corrupted edits (patching)."""

    name: ClassVar[str]
    # The groups a preference compares: the rule-following one vs the memorized one.
    reasoning_group: ClassVar[str] = "reasoning"
    memory_group: ClassVar[str] = "memory"
    # Linear-probe classes of the task_type column, and the type a lookup alone answers.
    task_types: ClassVar[tuple[str, ...]] = ()
    memorized_type: ClassVar[str | None] = None
    # Token roles whose embeddings the geometry compares (distinguishability).
    compared_roles: ClassVar[tuple[str, str] | None] = None
    # Clean/corrupted edits of probes.corruptions.make_pairs (see `draw_corruption`), and
    # what the figures call the positions of the key, a1 and a2 columns.
    corruptions: ClassVar[tuple[str, ...]] = ()
    position_names: ClassVar[tuple[str, str, str]] = ("key", "a1", "a2")
    # (group, metric) read-outs a sweep's results table reports (final, and at the step of
    # lowest held-out loss), e.g. the composite task's inferential fraction.
    readouts: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Trained on next-token prediction at every position (PAD = 0 ignored), not on the
    # label at the last position; evaluated also by greedy completion of prompt sets.
    next_token: ClassVar[bool] = False
    seq_len: int

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def generate(self, seed: int) -> datasets.Dataset:  # noqa: F821
        raise NotImplementedError

    def eval_groups(self) -> tuple[Group, ...]:
        raise NotImplementedError

    def validate(self, n_ctx: int | None = None) -> None:
        """Raise UserError if these options cannot produce data."""

    def extra_metrics(
        self, rows: dict[str, np.ndarray], preds: np.ndarray
    ) -> dict[tuple[str, str], float]:
        """Task-specific read-outs, {(group, metric): value}, beyond loss and accuracy."""
        return {}

    def prompt_sets(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{name: encoded prompts [n, p]} the evaluation completes greedily (next-token
        tasks); scored by `completion_scores`."""
        return {}

    def decode(self, ids: list[int]) -> str:
        """A generated continuation as text (next-token tasks)."""
        raise NotImplementedError

    def completion_scores(self, completions: dict[str, list[str]]) -> dict[tuple[str, str], float]:
        """{(group, metric): value} of decoded prompt + completion strings per prompt set."""
        return {}

    # ---- what the instruments need to know

    def token_roles(self) -> dict[str, list[int]]:
        """Token ids of each role (e.g. key, anchor), ascending."""
        raise UserError(f"task {self.name!r} defines no token roles")

    def role_values(self, role: str) -> list[float]:
        """The value each token of `role` stands for (embedding order is compared to it)."""
        return [float(t) for t in self.token_roles()[role]]

    def intermediate(self, rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(value after the first rule, defined) per row, for the linear probes."""
        raise UserError(f"probe target 'intermediate' is not defined for task {self.name!r}")

    def clean_rows(self, kind: str, source: str, rows: dict[str, np.ndarray]) -> np.ndarray:
        """Rows a clean prompt of corruption `kind` may come from: the source's group."""
        group = self.memory_group if source == "memory" else self.reasoning_group
        return group_mask(rows, next(g for g in self.eval_groups() if g.name == group))

    def draw_corruption(
        self,
        kind: str,
        source: str,
        rng: np.random.Generator,
        clean: dict[str, np.ndarray],
        cor: dict[str, np.ndarray],
        i: np.ndarray,
    ) -> None:
        """(Re)draw the corrupted key, a1, a2 of rows `i` in place."""
        raise UserError(f"task {self.name!r} has no corruptions")

    def labels_of(
        self, key: np.ndarray, a1: np.ndarray, a2: np.ndarray, data_seed: int
    ) -> np.ndarray:
        """The label the generator gives each (key, a1, a2) row."""
        raise NotImplementedError

    def trains_on(
        self, kind: str, cor: dict[str, np.ndarray], clean: dict[str, np.ndarray]
    ) -> np.ndarray:
        """Corrupted rows that are training data (never a held-out combination)."""
        return np.ones(len(cor["key"]), dtype=bool)

    def patch_experiments(self) -> tuple[tuple[str, str, str], ...]:
        """(name, corruption, source) of the localization study: the key changed on each
        task type, when the task has that corruption."""
        if "key" not in self.corruptions:
            return ()
        return ((self.reasoning_group, "key", "reasoning"), (self.memory_group, "key", "memory"))


def other_value(
    rng: np.random.Generator, values: np.ndarray, span: tuple[int, int], what: str
) -> np.ndarray:
    """A uniformly drawn value of lo..hi different from each of `values`."""
    lo, hi = span
    size = hi - lo + 1
    if size < 2:
        raise UserError(f"only one {what} ({lo}); a {what} corruption needs at least two")
    return lo + (values - lo + rng.integers(1, size, size=len(values))) % size


def span(bounds: tuple[int, int]) -> list[int]:
    """lo..hi inclusive."""
    return list(range(bounds[0], bounds[1] + 1))


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


def to_dataset(columns: dict[str, np.ndarray]) -> datasets.Dataset:  # noqa: F821
    """Build the Dataset with the shared column layout."""
    import datasets

    return datasets.Dataset.from_dict({c: columns[c].tolist() for c in DATASET_COLUMNS})


def framed(ids: list[int], length: int) -> list[int]:
    """BOS, `ids`, EOS, then PAD up to `length` + 2 tokens (a next-token task's row)."""
    return [BOS, *ids, EOS] + [PAD] * (length - len(ids))


def sequence_dataset(tokens, task_type, split, key=None) -> datasets.Dataset:  # noqa: F821
    """A next-token task's rows in the shared columns: label EOS, no anchors; `key` e.g.
    the string length."""
    n = len(tokens)
    zeros = np.zeros(n, dtype=int)
    return to_dataset(
        dict(
            tokens=np.asarray(tokens),
            label=np.full(n, EOS),
            task_type=np.asarray(task_type),
            a1=zeros,
            a2=zeros,
            key=zeros if key is None else np.asarray(key),
            key_pos=zeros,
            split=np.asarray(split),
        )
    )


def dataset_arrays(ds) -> dict[str, np.ndarray]:
    """Column arrays of a task dataset (read from Arrow directly: fast for 100k+ rows)."""
    table = ds.with_format(None).data.table
    out = {c: table.column(c).to_numpy() for c in DATASET_COLUMNS if c != "tokens"}
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
