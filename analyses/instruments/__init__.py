"""Instruments: the registry, and the built-in instruments registered in report order.

Adding one: a module here defining `INSTRUMENT = Instrument(...)`, and its `register` line
below (see CONTRIBUTING.md, "Adding an instrument").
"""

from initlens.analyses.instruments import (
    circuit,
    cka,
    geometry,
    localization,
    mechanism,
    probes,
)
from initlens.analyses.instruments.registry import (
    INSTRUMENTS,
    NEEDS,
    Context,
    Instrument,
    Measured,
    instruments,
    register,
    tables_of,
)

register(localization.INSTRUMENT)
register(probes.INSTRUMENT)
register(geometry.INSTRUMENT)
register(mechanism.INSTRUMENT)
register(circuit.INSTRUMENT)
register(cka.INSTRUMENT)

__all__ = [
    "INSTRUMENTS",
    "NEEDS",
    "Context",
    "Instrument",
    "Measured",
    "instruments",
    "register",
    "tables_of",
]
