"""InitLens: how initialization scale decides whether a transformer reasons or memorizes.

The package is laid out over the repository's top-level folders:
`initlens.models` (tasks, models, training, run directories), `initlens.probes` (pure
instruments) and `initlens.analyses` (studies, figures, reports and the `probe` CLI).
"""

__version__ = "0.1.0"
