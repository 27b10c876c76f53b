"""Progress reporting for long loops: a bar on a terminal, silence in logs and pipes.

Library code that is not training (probes, analyses) takes a `Progress` callback and calls
it; the CLI decides whether that is a bar (`Bar`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# progress(done, total, description): called after each unit of work.
Progress = Callable[[int, int, str], None]
# log(message): a line for the user (the CLI echoes it; notebooks may print or drop it).
Log = Callable[[str], None]


def show_progress() -> bool:
    """A progress bar on a terminal; quiet in CI logs and pipes."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(
    total: int, desc: str, unit: str, progress: bool | None = None, initial: int = 0
) -> tqdm:
    """A tqdm bar, shown when `progress` says so (None: when `show_progress()`)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not (show_progress() if progress is None else progress),
    )


def tracked(items: Iterable[T], progress: Progress | None, total: int, desc: str) -> Iterator[T]:
    """Yield `items`, reporting each one done to `progress` (if any)."""
    for i, item in enumerate(items):
        yield item
        if progress is not None:
            progress(i + 1, total, desc)


class Bar:
    """A `Progress` callback drawing tqdm bars (one per description), for the CLI."""

    def __init__(self, enabled: bool | None = None, unit: str = "it"):
        self.enabled = show_progress() if enabled is None else enabled
        self.unit = unit
        self._bars: dict[str, tqdm] = {}

    def __call__(self, done: int, total: int, desc: str) -> None:
        if not self.enabled:
            return
        bar = self._bars.get(desc)
        if bar is None:
            bar = self._bars[desc] = tqdm(total=total, desc=desc, unit=self.unit, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self._bars[desc]
