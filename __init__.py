"""InitLens: how initialization scale decides whether a transformer reasons or memorizes.

The package is laid out over the repository's top-level folders:
`initlens.models` (tasks, models, training, run directories), `initlens.probes` (pure
instruments) and `initlens.analyses` (studies, figures, reports and the `probe` CLI).
"""

__version__ = "0.1.0"

import os as _os

# Idle OpenMP threads sleep instead of spinning; read by OpenMP when torch loads, so first.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from initlens.models.threads import configure_threads  # noqa: E402

configure_threads()  # INITLENS_THREADS=N or =auto (the cores free now); else torch's count
