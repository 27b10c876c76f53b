"""The anchor-function composite task (Zhang et al. 2024; docs/SCIENCE.md
section 2).

Anchors 1..4 mean shifts +5, +1, -2, -8. A sequence holds a key x followed by two anchors
(a1, a2); the label applies both shifts: x + s(a1) + s(a2). The pair (3, 4) is the
deliberate non-compositional twist, trained with x - 6; the pair (4, 3) is held out. On
(4, 3) an *inferential* solution answers x - 10 (composes the rules), a *symmetric* one
answers x - 6 (copies the memorized (3, 4)). Optionally key positions are held out too:
in training key x never sits at position x mod m; test rows put it only there. m is
`key_position_mod`, by default seq_len - 2 (the number of key positions); the authors'
code uses m = seq_len (9), so keys with x mod 9 in {7, 8} have no held-out position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from initlens.models.errors import UserError
from initlens.models.tasks.base import Group, Task, other_value, place_sequences, span, to_dataset


@dataclass(frozen=True)
class CompositeTask(Task):
    """Options of the composite task (published values are the defaults, but for size)."""

    name: ClassVar[str] = "composite"
    reasoning_group: ClassVar[str] = "seen"  # composed pairs follow the rule
    memory_group: ClassVar[str] = "twist"  # (3, 4) -> x - 6 can only be memorized
    task_types: ClassVar[tuple[str, ...]] = ("compose", "twist", "held_out")
    memorized_type: ClassVar[str] = "twist"
    compared_roles: ClassVar[tuple[str, str]] = ("anchor", "key")
    corruptions: ClassVar[tuple[str, ...]] = ("key", "anchor", "held_out_vs_twist")
    readouts: ClassVar[tuple[tuple[str, str], ...]] = (
        ("held_out", "inferential_fraction"),
        ("held_out", "symmetric_fraction"),
    )
    shifts: tuple[int, ...] = (5, 1, -2, -8)  # anchor i+1 adds shifts[i]
    keys: tuple[int, int] = (20, 99)
    twist: tuple[int, int] = (3, 4)
    twist_shift: int = -6
    held_out: tuple[int, int] = (4, 3)
    hold_out_key_positions: bool = True
    key_position_mod: int | None = None  # m of the key-position hold-out; None: seq_len - 2
    seq_len: int = 9
    samples_per_pair: int = 2000

    @property
    def position_mod(self) -> int:
        """m: key x is held out at position x mod m."""
        return self.key_position_mod or self.seq_len - 2

    @property
    def anchors(self) -> np.ndarray:
        return np.arange(1, len(self.shifts) + 1)

    def shift(self, a1: int, a2: int) -> int:
        """Label offset of a pair: the composed shift, or the twist's own."""
        if (a1, a2) == tuple(self.twist):
            return self.twist_shift
        return self.shifts[a1 - 1] + self.shifts[a2 - 1]

    @property
    def vocab_size(self) -> int:
        hi = self.keys[1] + max(2 * max(self.shifts), self.twist_shift)
        return int(max(hi, self.keys[1], len(self.shifts)) + 1)

    def validate(self, n_ctx: int | None = None) -> None:
        lo, hi = self.keys
        if not self.shifts:
            raise UserError("composite: shifts is empty; give at least one anchor shift")
        if lo > hi or lo <= len(self.shifts):
            raise UserError(
                f"composite: keys={lo}..{hi} must be a non-empty range above "
                f"the anchors 1..{len(self.shifts)}"
            )
        if lo + min(2 * min(self.shifts), self.twist_shift) < 0:
            raise UserError(
                f"composite: key {lo} with shifts {self.shifts} gives negative "
                f"labels; raise the lowest key"
            )
        for name, pair in (("twist", self.twist), ("held_out", self.held_out)):
            if not all(1 <= a <= len(self.shifts) for a in pair):
                raise UserError(
                    f"composite: {name}={pair} is not a pair of anchors 1..{len(self.shifts)}"
                )
        if self.seq_len < 3 + self.hold_out_key_positions:
            raise UserError(
                f"composite: seq_len={self.seq_len} is too short; use >= 4 "
                f"(>= 3 without hold_out_key_positions)"
            )
        if n_ctx is not None and self.seq_len > n_ctx:
            raise UserError(
                f"composite: seq_len={self.seq_len} exceeds the model context n_ctx={n_ctx}"
            )
        if self.samples_per_pair < 1:
            raise UserError("composite: samples_per_pair must be >= 1")
        if self.key_position_mod is not None and self.key_position_mod < 1:
            raise UserError(
                f"composite: key_position_mod={self.key_position_mod} must be "
                f">= 1 (or none: seq_len - 2)"
            )

    def generate(self, seed: int):
        """Train rows for the 15 seen pairs and test rows (held-out positions, and (4,3))."""
        self.validate()
        rng = np.random.default_rng([seed, 0])
        keys = np.arange(self.keys[0], self.keys[1] + 1)
        n_pos = self.seq_len - 2
        n = self.samples_per_pair
        parts = []

        def add(k, a1, a2, key_pos, task_type, split):
            m = len(k)
            parts.append(
                dict(
                    key=k,
                    a1=np.full(m, a1),
                    a2=np.full(m, a2),
                    key_pos=key_pos,
                    label=k + self.shift(a1, a2),
                    task_type=np.full(m, task_type),
                    split=np.full(m, split),
                )
            )

        for a1 in self.anchors.tolist():
            for a2 in self.anchors.tolist():
                k = np.resize(rng.permutation(keys), n)  # every key, equally often
                anywhere = rng.integers(0, n_pos, size=n)
                if (a1, a2) == tuple(self.held_out):
                    add(k, a1, a2, anywhere, "held_out", "test")
                    continue
                task_type = "twist" if (a1, a2) == tuple(self.twist) else "compose"
                if not self.hold_out_key_positions:
                    add(k, a1, a2, anywhere, task_type, "train")
                    continue
                banned = k % self.position_mod  # >= n_pos: no position held out
                others = rng.integers(0, n_pos - 1, size=n)  # any position but `banned`
                held = banned < n_pos
                add(
                    k,
                    a1,
                    a2,
                    np.where(held, others + (others >= banned), anywhere),
                    task_type,
                    "train",
                )
                add(k[held], a1, a2, banned[held], task_type, "test")
        cols = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
        cols["tokens"] = place_sequences(
            rng, cols["key"], cols["a1"], cols["a2"], keys, self.seq_len, cols["key_pos"]
        )
        return to_dataset(cols)

    def eval_groups(self) -> tuple[Group, ...]:
        groups = [Group("seen", "compose", "train"), Group("twist", "twist", "train")]
        if self.hold_out_key_positions:
            groups.append(Group("seen_test", "compose", "test"))
        groups.append(Group("held_out", "held_out", "test"))
        return tuple(groups)

    def extra_metrics(self, rows, preds):
        """On the held-out pair: fraction inferential (x - 10) and symmetric (x - 6)."""
        mask = rows["task_type"] == "held_out"
        if not mask.any():
            return {}
        key, p = rows["key"][mask], preds[mask]
        a1, a2 = self.held_out
        inferential = key + self.shifts[a1 - 1] + self.shifts[a2 - 1]
        symmetric = key + self.shift(*self.twist)
        return {
            ("held_out", "inferential_fraction"): float(np.mean(p == inferential)),
            ("held_out", "symmetric_fraction"): float(np.mean(p == symmetric)),
        }

    def token_roles(self) -> dict[str, list[int]]:
        return {"key": span(self.keys), "anchor": [int(a) for a in self.anchors]}

    def role_values(self, role: str) -> list[float]:
        """Anchors are ordered by the shift they stand for."""
        return [float(v) for v in self.shifts] if role == "anchor" else super().role_values(role)

    def intermediate(self, rows):
        """key + shift(a1); undefined on the twist pair."""
        shifts = np.asarray(self.shifts)
        return rows["key"] + shifts[rows["a1"] - 1], rows["task_type"] != "twist"

    def clean_rows(self, kind, source, rows):
        if kind == "held_out_vs_twist":
            return rows["task_type"] == "held_out"
        return super().clean_rows(kind, source, rows)

    def draw_corruption(self, kind, source, rng, clean, cor, i):
        """key: another key; anchor: another a2; held_out_vs_twist: the twist pair."""
        if kind == "key":
            cor["key"][i] = other_value(rng, clean["key"][i], self.keys, "key")
        elif kind == "anchor":
            cor["a2"][i] = other_value(rng, clean["a2"][i], (1, len(self.shifts)), "anchor")
        else:
            cor["a1"][i], cor["a2"][i] = self.twist

    def labels_of(self, key, a1, a2, data_seed):
        return key + np.array([self.shift(int(x), int(y)) for x, y in zip(a1, a2)], dtype=int)

    def trains_on(self, kind, cor, clean):
        """Never the held-out pair, nor (key corruption) a held-out key position."""
        ok = np.array(
            [(int(x), int(y)) != tuple(self.held_out) for x, y in zip(cor["a1"], cor["a2"])]
        )
        if kind == "key" and self.hold_out_key_positions:
            ok &= cor["key"] % self.position_mod != clean["key_pos"]
        return ok

    def patch_experiments(self):
        return (
            *super().patch_experiments(),
            ("held_out_vs_twist", "held_out_vs_twist", "reasoning"),
        )
