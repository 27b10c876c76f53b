"""Modular addition, the grokking set-up (Power et al. 2022; Nanda et al. 2023;
docs/SCIENCE.md section 3).

A sequence is `a b =` and the label, read at `=`, is (a + b) mod p. Of the p * p pairs a
seeded `train_fraction` is training data, the rest the test set: memorizing the training
pairs comes first, generalizing to the test pairs (grokking) may come much later. In the
shared columns, `key` is a and `a1` is b (`a2` is the `=` token, id p).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from initlens.models.errors import UserError
from initlens.models.tasks.base import Group, Task, other_value, to_dataset


@dataclass(frozen=True)
class ModularTask(Task):
    """Options of modular addition; `ModularTask.published()` is (a + b) mod 113 with 30%
    of the pairs for training. The CPU default p = 23 groks within a few thousand
    full-batch steps on a 2-core CPU."""

    name: ClassVar[str] = "modular"
    reasoning_group: ClassVar[str] = "test_pairs"  # generalizing: pairs never trained on
    memory_group: ClassVar[str] = "train_pairs"  # fitting the training pairs (memorizable)
    task_types: ClassVar[tuple[str, ...]] = ("sum",)
    corruptions: ClassVar[tuple[str, ...]] = ("a", "b")
    position_names: ClassVar[tuple[str, str, str]] = ("a", "b", "=")
    p: int = 23
    train_fraction: float = 0.5

    @classmethod
    def published(cls) -> ModularTask:
        return cls(p=113, train_fraction=0.3)

    @property
    def seq_len(self) -> int:
        return 3

    @property
    def vocab_size(self) -> int:
        return self.p + 1  # the numbers and "="

    def validate(self, n_ctx: int | None = None) -> None:
        if self.p < 2:
            raise UserError(
                f"modular: p={self.p} leaves nothing to add; use p >= 2 (published: 113)"
            )
        n_train = round(self.train_fraction * self.p**2)
        if not 0 < n_train < self.p**2:
            raise UserError(
                f"modular: train_fraction={self.train_fraction} gives {n_train} of "
                f"{self.p**2} pairs for training; choose a fraction that leaves "
                f"both a training and a test pair (published: 0.3)"
            )
        if n_ctx is not None and n_ctx < 3:
            raise UserError(f"modular: sequences 'a b =' need n_ctx >= 3, not {n_ctx}")

    def generate(self, seed: int):
        """Every pair once; a seeded `train_fraction` of them is the training split."""
        self.validate()
        p = self.p
        a, b = (x.ravel() for x in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
        train = np.zeros(p * p, dtype=bool)
        train[
            np.random.default_rng([seed, 0]).permutation(p * p)[
                : round(self.train_fraction * p * p)
            ]
        ] = True
        n = p * p
        return to_dataset(
            dict(
                tokens=np.stack([a, b, np.full(n, p)], 1),
                label=(a + b) % p,
                task_type=np.full(n, "sum"),
                key=a,
                a1=b,
                a2=np.full(n, p),
                key_pos=np.zeros(n, dtype=int),
                split=np.where(train, "train", "test"),
            )
        )

    def eval_groups(self) -> tuple[Group, ...]:
        return (Group("train_pairs", "sum", "train"), Group("test_pairs", "sum", "test"))

    def token_roles(self) -> dict[str, list[int]]:
        return {"number": list(range(self.p))}

    def draw_corruption(self, kind, source, rng, clean, cor, i):
        """a: another first operand; b: another second operand."""
        column = "key" if kind == "a" else "a1"
        cor[column][i] = other_value(rng, clean[column][i], (0, self.p - 1), "number")

    def labels_of(self, key, a1, a2, data_seed):
        return (key + a1) % self.p

    def patch_experiments(self):
        return (("test_pairs", "a", "reasoning"), ("train_pairs", "a", "memory"))
