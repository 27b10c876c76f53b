"""Reasoning-vs-memorization text (docs/SCIENCE.md section 1.6, "real data"), word level.

Two generated sources, trained together on next-token prediction:
- prontoqa: PrOntoQA-style questions over a fresh fictional ontology in every row
  ("every wumpus is a yumpus . every yumpus is a zumpus . max is a wumpus . is max a
  zumpus ? true"): answerable only by following the chain in context;
- facts: random entity-attribute facts ("the color of max is red .") drawn once per data
  seed: answerable only by memorization (recall on the training facts).
Local text, JSON or parquet files (a PrOntoQA or TinyStories copy on disk) can be mixed in
as a third source (`files`), read through `datasets`; nothing is downloaded. Every source
is an evaluation group, so training records per-source loss curves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from initlens.models.errors import UserError
from initlens.models.tasks.base import BOS, EOS, PAD, Group, Task, framed, sequence_dataset

UNK = 3
SPECIAL = ("<pad>", "<bos>", "<eos>", "<unk>")
_ONSETS = "b d f g j l m n r s t v w y z br gr sh st".split()
_NAMES = "max sally alex fae rex wren polly stella sam jo kit lee ada bo cy di".split()
ATTRIBUTES = "color size home pet food tool".split()
VALUES = "red blue green small large tall cave hill dog cat fish rice bread hammer rope".split()
WORDS = "every is a the of ? . true false".split()
FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def words(text: str) -> list[str]:
    """Lower-case words and punctuation marks."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def _pool(base: list[str], n: int, suffixes: tuple[str, ...]) -> list[str]:
    """`n` distinct made-up words: base words first, then onset + suffix combinations."""
    more = [o + s for s in suffixes for o in _ONSETS]
    return (base + [w for w in more if w not in base])[:n]


@lru_cache(maxsize=8)
def read_files(paths: tuple[str, ...], text_field: str) -> tuple[str, ...]:
    """The documents of local text (one per line), JSON(L) or parquet files, through
    `datasets` (offline: local files only)."""
    import datasets

    docs: list[str] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise UserError(
                f"text: file {path} does not exist; give local .txt, .json, "
                f".jsonl or .parquet files"
            )
        builder = FORMATS.get(p.suffix.lower())
        if builder is None:
            raise UserError(f"text: cannot read {path}: use .txt, .json, .jsonl or .parquet")
        ds = datasets.load_dataset(builder, data_files=str(p), split="train")
        if text_field not in ds.column_names:
            raise UserError(
                f"text: {path} has no column {text_field!r} (columns: "
                f"{', '.join(ds.column_names)}); set text_field"
            )
        docs += [str(t) for t in ds[text_field] if str(t).strip()]
    return tuple(docs)


@dataclass(frozen=True)
class TextTask(Task):
    """Options of the text mixture; `max_len` counts words per row (longer file documents
    are cut into windows). `memory_fraction` of the generated rows are facts."""

    name: ClassVar[str] = "text"
    next_token: ClassVar[bool] = True
    reasoning_group: ClassVar[str] = "prontoqa_test"  # fresh ontologies, never trained
    memory_group: ClassVar[str] = "facts"  # recall of the training facts
    compared_roles: ClassVar[tuple[str, str]] = ("concept", "value")
    task_types: ClassVar[tuple[str, ...]] = ("prontoqa", "fact", "file")  # the sources
    memorized_type: ClassVar[str] = "fact"
    max_hops: int = 3
    n_concepts: int = 16
    n_entities: int = 16
    n_attributes: int = 4
    n_values: int = 8
    memory_fraction: float = 0.5
    samples: int = 4000
    test_fraction: float = 0.2
    max_len: int = 32
    files: tuple[str, ...] = ()
    text_field: str = "text"
    file_vocab: int = 500  # most frequent file words added to the vocabulary
    file_fraction: float = 0.3  # share of the rows that come from the files

    @property
    def seq_len(self) -> int:
        return self.max_len + 2

    @property
    def concepts(self) -> list[str]:
        return _pool(
            ["wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus"],
            self.n_concepts,
            ("umpus", "orpus", "impus"),
        )

    @property
    def entities(self) -> list[str]:
        return _pool(_NAMES, self.n_entities, ("ax", "ella", "o"))

    def _file_docs(self) -> tuple[str, ...]:
        return read_files(tuple(self.files), self.text_field) if self.files else ()

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab()

    @lru_cache(maxsize=8)  # noqa: B019  (frozen, hashable options)
    def _index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocab)}

    @lru_cache(maxsize=8)  # noqa: B019
    def _vocab(self) -> tuple[str, ...]:
        """Special tokens, the generators' words, then the files' most frequent words."""
        fixed = [
            *SPECIAL,
            *WORDS,
            *self.concepts,
            *self.entities,
            *ATTRIBUTES[: self.n_attributes],
            *VALUES[: self.n_values],
        ]
        counts: dict[str, int] = {}
        for doc in self._file_docs():
            for w in words(doc):
                counts[w] = counts.get(w, 0) + 1
        extra = sorted((w for w in counts if w not in fixed), key=lambda w: (-counts[w], w))
        return tuple(dict.fromkeys(fixed + extra[: self.file_vocab]))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def validate(self, n_ctx: int | None = None) -> None:
        if self.max_hops < 1 or self.n_concepts < self.max_hops + 2:
            raise UserError(
                f"text: n_concepts={self.n_concepts} cannot hold a chain of "
                f"max_hops={self.max_hops} plus a false answer; use max_hops >= 1 "
                f"and n_concepts >= max_hops + 2"
            )
        limits = {
            "n_entities": (1, len(_pool(_NAMES, 10**6, ("ax", "ella", "o")))),
            "n_attributes": (1, len(ATTRIBUTES)),
            "n_values": (2, len(VALUES)),
        }
        for field, (lo, hi) in limits.items():
            if not lo <= getattr(self, field) <= hi:
                raise UserError(f"text: {field}={getattr(self, field)} must lie in {lo}..{hi}")
        longest = 6 * self.max_hops + 6
        if self.max_len < longest:
            raise UserError(
                f"text: a {self.max_hops}-hop question has {longest} words but "
                f"max_len={self.max_len}; raise max_len or lower max_hops"
            )
        for field in ("memory_fraction", "test_fraction", "file_fraction"):
            if not 0 <= getattr(self, field) < 1:
                raise UserError(f"text: {field}={getattr(self, field)} must lie in [0, 1)")
        if self.samples < 1 or self.test_fraction == 0:
            raise UserError("text: samples must be >= 1 and test_fraction > 0")
        if self.files and not self._file_docs():
            raise UserError(f"text: the files {', '.join(self.files)} hold no text")
        if n_ctx is not None and self.seq_len > n_ctx:
            raise UserError(
                f"text: max_len={self.max_len} needs {self.seq_len} positions "
                f"but the model context is n_ctx={n_ctx}"
            )

    # ---- the sources

    def question(self, rng: np.random.Generator) -> str:
        """One PrOntoQA-style question over a fresh chain of made-up concepts."""
        hops = int(rng.integers(1, self.max_hops + 1))
        chain = [self.concepts[i] for i in rng.permutation(self.n_concepts)[: hops + 2]]
        entity = self.entities[int(rng.integers(self.n_entities))]
        rules = [f"every {a} is a {b} ." for a, b in zip(chain[:hops], chain[1 : hops + 1])]
        rules = [rules[i] for i in rng.permutation(hops)]
        true = bool(rng.integers(2))
        target = chain[hops] if true else chain[hops + 1]  # the last one is off the chain
        return " ".join(
            [
                *rules,
                f"{entity} is a {chain[0]} .",
                f"is {entity} a {target} ? {'true' if true else 'false'}",
            ]
        )

    def facts(self, seed: int) -> list[str]:
        """Every entity's attribute values, drawn once per data seed."""
        rng = np.random.default_rng([seed, 1])
        values = VALUES[: self.n_values]
        return [
            f"the {a} of {e} is {values[int(rng.integers(len(values)))]} ."
            for e in self.entities
            for a in ATTRIBUTES[: self.n_attributes]
        ]

    def _windows(self) -> list[str]:
        """File documents cut into windows of max_len words."""
        out = []
        for doc in self._file_docs():
            w = words(doc)
            out += [" ".join(w[i : i + self.max_len]) for i in range(0, len(w), self.max_len)]
        return out

    def encode(self, text: str) -> list[int]:
        return framed(
            [self._index().get(w, UNK) for w in words(text)][: self.max_len], self.max_len
        )

    def decode(self, ids) -> str:
        out = []
        for t in ids:
            if t in (PAD, BOS, EOS):
                break
            out.append(self.vocab[t])
        return " ".join(out)

    def generate(self, seed: int):
        """`samples` training rows (questions, facts and file windows in the configured
        shares) and `test_fraction * samples` held-out rows (fresh questions, unseen file
        windows); facts are all training data (memorization is recall)."""
        self.validate()
        rng = np.random.default_rng([seed, 0])
        windows = self._windows()
        order = rng.permutation(len(windows))
        n_held = round(len(windows) * self.test_fraction)
        held, kept = [windows[i] for i in order[:n_held]], [windows[i] for i in order[n_held:]]
        n_files = round(self.samples * self.file_fraction) if kept else 0
        n_facts = round((self.samples - n_files) * self.memory_fraction)
        n_questions = self.samples - n_files - n_facts
        facts = self.facts(seed)
        n_test = max(round(self.samples * self.test_fraction), 1)
        rows = (
            [("prontoqa", "train", self.question(rng)) for _ in range(n_questions)]
            + [("fact", "train", facts[i]) for i in rng.integers(len(facts), size=n_facts)]
            + [("file", "train", kept[i]) for i in rng.integers(len(kept), size=n_files)]
            + [("prontoqa", "test", self.question(rng)) for _ in range(n_test)]
            + [("file", "test", w) for w in held]
        )
        return sequence_dataset(
            [self.encode(t) for _, _, t in rows], [s for s, _, _ in rows], [sp for _, sp, _ in rows]
        )

    def eval_groups(self) -> tuple[Group, ...]:
        groups = [
            Group("prontoqa", "prontoqa", "train"),
            Group("prontoqa_test", "prontoqa", "test"),
            Group("facts", "fact", "train"),
        ]
        if self.files:
            groups += [Group("files", "file", "train"), Group("files_test", "file", "test")]
        return tuple(groups)

    def token_roles(self) -> dict[str, list[int]]:
        """Concept words (reasoning) and attribute values (memorized)."""
        index = self._index()
        return {
            "concept": sorted(index[w] for w in self.concepts),
            "value": sorted(index[w] for w in VALUES[: self.n_values]),
        }
