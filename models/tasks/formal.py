"""Formal languages with two rules each, for rule extrapolation (Reizinger et al. 2024;
docs/SCIENCE.md section 4).

The model learns next-token prediction on valid strings `BOS s EOS PAD...`. Each language
is the set of strings obeying two rules; out-of-distribution prompts break rule 1, and the
rule-extrapolation score is the fraction of the model's (greedy) completions that still
obey rule 2. In-distribution accuracy is the fraction of completions of prefixes of valid
strings that are valid.

    anbn     a^n b^n      rule 1: no a after a b        rule 2: as many a's as b's
    anbncn   a^n b^n c^n  rule 1: a's, then b's, then c's  rule 2: equal counts
    dyck     ( ) [ ]      rule 1: each bracket closes the last open one, of its type
                          rule 2: as many closing as opening brackets of each type
    regular  a, b         rule 1: starts with b         rule 2: an even number of a's
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from initlens.models.errors import UserError
from initlens.models.tasks.base import Group, Task, framed, sequence_dataset

SYMBOLS = {"anbn": "ab", "anbncn": "abc", "dyck": "()[]", "regular": "ab"}
MAX_PROMPTS = 256  # prompts per read-out at most (a seeded subset of longer lists)


def _ordered(s: str, symbols: str) -> bool:
    """Every symbol comes no earlier in `symbols` than the one before it."""
    ranks = [symbols.index(c) for c in s]
    return all(x <= y for x, y in zip(ranks, ranks[1:]))


def _nested(s: str) -> bool:
    """No closing bracket without the matching open bracket on top of the stack."""
    stack = []
    for c in s:
        if c in "([":
            stack.append(c)
        elif not stack or stack.pop() != {")": "(", "]": "["}[c]:
            return False
    return True


RULES: dict[str, tuple[Callable[[str], bool], Callable[[str], bool]]] = {
    "anbn": (lambda s: _ordered(s, "ab"), lambda s: s.count("a") == s.count("b")),
    "anbncn": (
        lambda s: _ordered(s, "abc"),
        lambda s: s.count("a") == s.count("b") == s.count("c"),
    ),
    "dyck": (_nested, lambda s: s.count("(") == s.count(")") and s.count("[") == s.count("]")),
    "regular": (lambda s: s.startswith("b"), lambda s: s.count("a") % 2 == 0),
}


@dataclass(frozen=True)
class FormalTask(Task):
    """Options of a formal-language task. `max_len` is the longest string (symbols), with
    lengths spread evenly; `samples` training rows and `test_fraction * samples` held-out
    rows (validation loss); prompts have `prompt_len` symbols."""

    name: ClassVar[str] = "formal"
    next_token: ClassVar[bool] = True
    reasoning_group: ClassVar[str] = "test_strings"
    memory_group: ClassVar[str] = "train_strings"
    readouts: ClassVar[tuple[tuple[str, str], ...]] = (
        ("ood_prompts", "rule_extrapolation"),
        ("id_prompts", "accuracy"),
    )
    language: str = "anbn"
    max_len: int = 16
    prompt_len: int = 4
    samples: int = 2000
    test_fraction: float = 0.2

    @property
    def seq_len(self) -> int:
        return self.max_len + 2  # BOS, the string, EOS

    @property
    def vocab_size(self) -> int:
        return 3 + len(SYMBOLS.get(self.language, ""))

    @property
    def symbols(self) -> str:
        return SYMBOLS[self.language]

    def valid(self, s: str) -> bool:
        rule1, rule2 = RULES[self.language]
        return bool(s) and rule1(s) and rule2(s)

    def validate(self, n_ctx: int | None = None) -> None:
        if self.language not in SYMBOLS:
            raise UserError(
                f"formal: unknown language {self.language!r}; choose one of: {', '.join(SYMBOLS)}"
            )
        shortest = {"anbn": 2, "anbncn": 3, "dyck": 2, "regular": 1}[self.language]
        if self.max_len < 2 * shortest:
            raise UserError(
                f"formal: max_len={self.max_len} leaves {self.language} too few "
                f"strings; use max_len >= {2 * shortest}"
            )
        if not 1 <= self.prompt_len < self.max_len:
            raise UserError(
                f"formal: prompt_len={self.prompt_len} must lie in 1..max_len-1 "
                f"(max_len={self.max_len})"
            )
        if not 0 < self.test_fraction < 1 or self.samples < 1:
            raise UserError(
                f"formal: test_fraction={self.test_fraction} must lie in (0, 1) "
                f"and samples={self.samples} be >= 1"
            )
        if n_ctx is not None and self.seq_len > n_ctx:
            raise UserError(
                f"formal: max_len={self.max_len} needs {self.seq_len} positions "
                f"(BOS, string, EOS) but the model context is n_ctx={n_ctx}"
            )

    # ---- strings

    def _draw(self, rng: np.random.Generator) -> str:
        """One valid string, lengths spread over 1..max_len."""
        lang, top = self.language, self.max_len
        if lang in ("anbn", "anbncn"):
            k = len(self.symbols)
            n = int(rng.integers(1, top // k + 1))
            return "".join(c * n for c in self.symbols)
        if lang == "dyck":
            length, out, stack = 2 * int(rng.integers(1, top // 2 + 1)), [], []
            for i in range(length):
                if stack and (len(stack) == length - i or rng.random() < 0.5):
                    out.append({"(": ")", "[": "]"}[stack.pop()])
                else:
                    stack.append("(["[int(rng.integers(2))])
                    out.append(stack[-1])
            return "".join(out)
        s = ["b"] + ["ab"[int(x)] for x in rng.integers(2, size=int(rng.integers(0, top)))]
        if s.count("a") % 2:  # flip one later symbol: an even number of a's
            i = int(rng.integers(1, len(s)))
            s[i] = "b" if s[i] == "a" else "a"
        return "".join(s)

    def encode(self, s: str) -> list[int]:
        """BOS, the string's symbols, EOS, then PAD up to seq_len."""
        return framed([3 + self.symbols.index(c) for c in s], self.max_len)

    def decode(self, ids) -> str:
        """The symbols of a generated sequence, up to the first non-symbol (EOS, PAD...)."""
        out = []
        for t in ids:
            if not 3 <= t < self.vocab_size:
                break
            out.append(self.symbols[t - 3])
        return "".join(out)

    def generate(self, seed: int):
        """`samples` training rows and `test_fraction * samples` held-out rows, each a
        valid string drawn independently (so the held-out loss is a validation loss on
        the training distribution: the short languages repeat their few strings)."""
        self.validate()
        rng = np.random.default_rng([seed, 0])
        n_test = max(round(self.samples * self.test_fraction), 1)
        strings = [self._draw(rng) for _ in range(self.samples + n_test)]
        n = len(strings)
        return sequence_dataset(
            [self.encode(s) for s in strings],
            np.full(n, "valid"),
            np.where(np.arange(n) < self.samples, "train", "test"),
            key=[len(s) for s in strings],
        )

    def eval_groups(self) -> tuple[Group, ...]:
        return (Group("train_strings", "valid", "train"), Group("test_strings", "valid", "test"))

    def token_roles(self) -> dict[str, list[int]]:
        return {"symbol": list(range(3, self.vocab_size))}

    # ---- prompts and read-outs

    def _subset(self, prompts: list[str]) -> list[str]:
        if len(prompts) <= MAX_PROMPTS:
            return prompts
        pick = np.random.default_rng(5).choice(len(prompts), MAX_PROMPTS, replace=False)
        return [prompts[i] for i in sorted(pick)]

    def prompt_sets(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encoded prompts (BOS + `prompt_len` symbols) the evaluation completes:
        id_prompts, the distinct prefixes of the valid strings in `rows`; ood_prompts,
        every string of that length that breaks rule 1 (seeded subsets when many)."""
        strings = {self.decode(t[1:]) for t in rows["tokens"].tolist()}
        found = {
            "id_prompts": sorted(
                {s[: self.prompt_len] for s in strings if len(s) > self.prompt_len}
            ),
            "ood_prompts": [
                "".join(p)
                for p in itertools.product(self.symbols, repeat=self.prompt_len)
                if not RULES[self.language][0]("".join(p))
            ],
        }
        return {
            name: np.array(
                [self.encode(p)[: 1 + self.prompt_len] for p in self._subset(prompts)],
                dtype=np.int64,
            )
            for name, prompts in found.items()
            if prompts
        }

    def completion_scores(self, completions: dict[str, list[str]]) -> dict[tuple[str, str], float]:
        """In-distribution accuracy (valid completions of valid prefixes) and the rule-
        extrapolation score (completions of rule-1-breaking prompts that obey rule 2)."""
        rule2 = RULES[self.language][1]
        out = {}
        if completions.get("id_prompts"):
            out[("id_prompts", "accuracy")] = float(
                np.mean([self.valid(s) for s in completions["id_prompts"]])
            )
        if completions.get("ood_prompts"):
            out[("ood_prompts", "rule_extrapolation")] = float(
                np.mean([rule2(s) for s in completions["ood_prompts"]])
            )
        return out
