"""Text labels of figures and tables: token positions, config values, patched components."""

from __future__ import annotations

import numpy as np

from initlens.probes.corruptions import PatchPairs


def position_labels(
    pairs: PatchPairs, seq: int, names: tuple[str, ...] = ("key", "a1", "a2")
) -> list[str]:
    """The task's names of the key, a1 and a2 positions (`Task.position_names`) where
    every pair puts them at the same positions, else numbers."""
    labels = [str(i) for i in range(seq)]
    key_pos = np.unique(pairs.meta["key_pos"])
    if len(key_pos) == 1:
        k = int(key_pos[0])
        labels = ["noise"] * seq
        labels[k : k + 3] = list(names)
    return labels


def value_text(value) -> str:
    """A config value as text: 0.3, 21-60 (a pair), 11-13+13-11 (pairs)."""
    if isinstance(value, tuple):
        nested = bool(value) and isinstance(value[0], tuple)
        return ("+" if nested else "-").join(value_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def component_label(row) -> str:
    """'head L1 H0 @a2' style name of one patch."""
    name = {"z": "head"}.get(row.component, row.component)
    head = f" H{int(row.head)}" if row.head >= 0 else ""
    return f"{name} L{int(row.layer)}{head} @{row.token}"
