"""The reasoning-vs-memorization mixture task (Yao, Zhang, Xu 2025;
docs/SCIENCE.md section 1.2).

A sequence holds a key followed by two consecutive anchors; every other token is noise
drawn from the key set. Reasoning anchors have a rule: label = key + a1 + a2 (the anchors'
own values). Memory anchors have none: each (key, a1, a2) gets a label drawn once, uniformly
from the key set, and reused (a fixed random lookup table per data seed). Reasoning pairs in
`held_out` never appear in training: they are the reasoning test set. Memorization is
measured as recall on the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np

from initlens.models.errors import UserError
from initlens.models.tasks.base import Group, Task, other_value, place_sequences, span, to_dataset


def _span(bounds: tuple[int, int]) -> np.ndarray:
    return np.array(span(bounds))


@dataclass(frozen=True)
class MixtureTask(Task):
    """Options of the mixture task; the defaults are a CPU-sized version of the paper's.

    Ranges are inclusive. `MixtureTask.published()` gives the published values. The CPU
    default `seq_len=3` (key, a1, a2, no noise tokens) is what a 2-core CPU learns within
    minutes; with noise (seq_len >= 4) neither init scale reached 90% in 3000 steps here.
    """

    name: ClassVar[str] = "mixture"
    task_types: ClassVar[tuple[str, ...]] = ("memory", "reasoning")
    memorized_type: ClassVar[str] = "memory"
    compared_roles: ClassVar[tuple[str, str]] = ("reasoning_anchor", "memory_anchor")
    corruptions: ClassVar[tuple[str, ...]] = ("key", "anchor", "reasoning_to_memory")
    keys: tuple[int, int] = (21, 60)
    memory_anchors: tuple[int, int] = (1, 4)
    reasoning_anchors: tuple[int, int] = (11, 14)
    held_out: tuple[tuple[int, int], ...] = ((11, 13), (13, 11))
    seq_len: int = 3
    samples_per_pair: int = 400

    @classmethod
    def published(cls) -> MixtureTask:
        """Keys 21..120, memory anchors 1..10, reasoning anchors 11..20, ~200k samples."""
        return cls(
            keys=(21, 120),
            memory_anchors=(1, 10),
            reasoning_anchors=(11, 20),
            seq_len=9,
            samples_per_pair=1000,
        )

    @property
    def vocab_size(self) -> int:
        # Largest token or label: a reasoning label key + a1 + a2 at its maximum.
        return int(self.keys[1] + 2 * self.reasoning_anchors[1] + 1)

    @lru_cache(maxsize=4)  # noqa: B019  (frozen, hashable options; a few seeds at most)
    def memory_table(self, seed: int) -> dict[tuple[int, int, int], int]:
        """The fixed random label of every (key, a1, a2) memory combination for `seed`."""
        rng = np.random.default_rng([seed, 1])
        keys, anchors = _span(self.keys), _span(self.memory_anchors)
        labels = rng.choice(keys, size=(len(keys), len(anchors), len(anchors)))
        return {
            (int(k), int(a1), int(a2)): int(labels[i, j, m])
            for i, k in enumerate(keys)
            for j, a1 in enumerate(anchors)
            for m, a2 in enumerate(anchors)
        }

    def validate(self, n_ctx: int | None = None) -> None:
        for field in ("keys", "memory_anchors", "reasoning_anchors"):
            lo, hi = getattr(self, field)
            if lo > hi or lo < 0:
                raise UserError(
                    f"mixture: {field}={lo}..{hi} is empty or negative; "
                    f"give a range lo..hi with 0 <= lo <= hi"
                )
        spans = [
            set(_span(getattr(self, f)).tolist())
            for f in ("keys", "memory_anchors", "reasoning_anchors")
        ]
        if spans[0] & spans[1] or spans[0] & spans[2] or spans[1] & spans[2]:
            raise UserError(
                "mixture: keys, memory_anchors and reasoning_anchors overlap; "
                "choose disjoint ranges"
            )
        for pair in self.held_out:
            if not all(a in spans[2] for a in pair):
                raise UserError(
                    f"mixture: held-out pair {pair} is not a pair of reasoning "
                    f"anchors {self.reasoning_anchors}"
                )
        if self.seq_len < 3:
            raise UserError(
                f"mixture: seq_len={self.seq_len} cannot hold a key and two "
                f"anchors; use seq_len >= 3"
            )
        if n_ctx is not None and self.seq_len > n_ctx:
            raise UserError(
                f"mixture: seq_len={self.seq_len} exceeds the model context n_ctx={n_ctx}"
            )
        if self.samples_per_pair < 1:
            raise UserError("mixture: samples_per_pair must be >= 1")

    def generate(self, seed: int):
        """All rows: every anchor pair gets `samples_per_pair` rows, keys balanced per pair."""
        self.validate()
        rng = np.random.default_rng([seed, 0])
        table = self.memory_table(seed)
        keys = _span(self.keys)
        n = self.samples_per_pair
        held = set(self.held_out)
        parts = []
        for task_type, anchors in (
            ("memory", _span(self.memory_anchors)),
            ("reasoning", _span(self.reasoning_anchors)),
        ):
            for a1 in anchors:
                for a2 in anchors:
                    k = np.resize(rng.permutation(keys), n)  # every key, equally often
                    if task_type == "memory":
                        label = np.array([table[(int(x), int(a1), int(a2))] for x in k])
                    else:
                        label = k + a1 + a2
                    split = "test" if (int(a1), int(a2)) in held else "train"
                    parts.append(
                        dict(
                            key=k,
                            a1=np.full(n, a1),
                            a2=np.full(n, a2),
                            label=label,
                            task_type=np.full(n, task_type),
                            split=np.full(n, split),
                        )
                    )
        cols = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
        cols["key_pos"] = rng.integers(0, self.seq_len - 2, size=len(cols["key"]))
        cols["tokens"] = place_sequences(
            rng, cols["key"], cols["a1"], cols["a2"], keys, self.seq_len, cols["key_pos"]
        )
        return to_dataset(cols)

    def eval_groups(self) -> tuple[Group, ...]:
        return (
            Group("memory", "memory", "train"),
            Group("reasoning", "reasoning", "train"),
            Group("reasoning_test", "reasoning", "test"),
        )

    def token_roles(self) -> dict[str, list[int]]:
        return {
            "key": span(self.keys),
            "memory_anchor": span(self.memory_anchors),
            "reasoning_anchor": span(self.reasoning_anchors),
        }

    def intermediate(self, rows):
        """key + a1 on reasoning rows; undefined on memory rows."""
        return rows["key"] + rows["a1"], rows["task_type"] != "memory"

    def clean_rows(self, kind, source, rows):
        return super().clean_rows(
            kind, "reasoning" if kind == "reasoning_to_memory" else source, rows
        )

    def draw_corruption(self, kind, source, rng, clean, cor, i):
        """key: another key; anchor: another a2 of the same kind; reasoning_to_memory: a
        random memory-anchor pair."""
        if kind == "key":
            cor["key"][i] = other_value(rng, clean["key"][i], self.keys, "key")
        elif kind == "anchor":
            anchors = self.memory_anchors if source == "memory" else self.reasoning_anchors
            cor["a2"][i] = other_value(rng, clean["a2"][i], anchors, "anchor")
        else:
            lo, hi = self.memory_anchors
            cor["a1"][i], cor["a2"][i] = rng.integers(lo, hi + 1, size=(2, len(i)))

    def labels_of(self, key, a1, a2, data_seed):
        table = self.memory_table(data_seed)
        lo, hi = self.memory_anchors
        return np.array(
            [
                table[(int(k), int(x), int(y))] if lo <= x <= hi else k + x + y
                for k, x, y in zip(key, a1, a2)
            ],
            dtype=np.int64,
        )

    def trains_on(self, kind, cor, clean):
        held = set(self.held_out)
        return np.array([(int(x), int(y)) not in held for x, y in zip(cor["a1"], cor["a2"])])
