"""The instrument registry: every read-out a run's analysis can apply, registered once.

An `Instrument` names what it needs, the tidy tables it returns (with their columns), how
it measures one run, and the report section that draws them. `analyze_run` computes the
chosen instruments' tables, the report draws each instrument's section, and the CLI lists
them (`probe instruments`, `--instruments`), all from this registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from initlens.models.errors import UserError
from initlens.models.progress import Progress
from initlens.models.run import Run

if TYPE_CHECKING:
    from initlens.analyses.figures.page import Report

# What an instrument may need: a loaded model, its weights only, activations on task rows,
# or several checkpoints of the run.
NEEDS = ("model", "weights", "activations", "checkpoints")


@dataclass(frozen=True)
class Context:
    """What an instrument measures one run with."""

    run: Run
    settings: Any  # the AnalysisConfig: rows, pairs, targets, seed
    stages: Mapping[int, str]  # {checkpoint step: stage name} (init, early, ..., end)
    progress: Progress | None = None


@dataclass(frozen=True)
class Measured:
    """An instrument's tables for one run, and notes on what it left out and why."""

    tables: Mapping[str, pd.DataFrame]
    notes: tuple[str, ...] = ()


Measure = Callable[[Context], Measured]
Section = Callable[["Report", list[Run], Mapping[str, pd.DataFrame]], None]


@dataclass(frozen=True)
class Instrument:
    """A read-out of runs: what it needs, its tables and their columns, how it measures one
    run, and the report section (figures and tables) that shows the stacked tables."""

    name: str
    description: str  # one line, for the CLI and the docs
    needs: frozenset[str]
    tables: Mapping[str, tuple[str, ...]]  # table name -> its columns, in order
    measure: Measure
    section: Section | None = None
    default: bool = True  # part of every analysis unless the settings choose otherwise

    def __post_init__(self):
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(
                f"instrument {self.name!r} needs unknown {sorted(unknown)}; "
                f"choose from {', '.join(NEEDS)}"
            )


INSTRUMENTS: dict[str, Instrument] = {}


def register(instrument: Instrument) -> Instrument:
    """Add `instrument` to the registry (a table name may belong to one instrument only)."""
    for other in INSTRUMENTS.values():
        shared = set(other.tables) & set(instrument.tables)
        if other.name != instrument.name and shared:
            raise ValueError(
                f"table(s) {sorted(shared)} of {instrument.name!r} already belong to {other.name!r}"
            )
    INSTRUMENTS[instrument.name] = instrument
    return instrument


def instruments(names: tuple[str, ...] | None = None) -> list[Instrument]:
    """The named instruments (None: every default one), in registration (report) order."""
    if names is None:
        return [i for i in INSTRUMENTS.values() if i.default]
    unknown = [n for n in names if n not in INSTRUMENTS]
    if unknown:
        raise UserError(
            f"unknown instrument(s) {', '.join(unknown)}; choose from {', '.join(INSTRUMENTS)}",
            option="instruments",
        )
    return [i for i in INSTRUMENTS.values() if i.name in names]


def tables_of(chosen: list[Instrument]) -> tuple[str, ...]:
    """The table names of `chosen`, in order."""
    return tuple(t for i in chosen for t in i.tables)
