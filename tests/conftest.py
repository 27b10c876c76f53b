"""Shared fixtures: a tiny config that trains in about a second, and one trained run (the
helpers the test modules import live in helpers.py)."""

import beartype.door  # noqa: F401
import jaxtyping
import pandas  # noqa: F401
import plotly.graph_objects  # noqa: F401
import pytest
import sklearn.base  # noqa: F401
import torch  # noqa: F401
import transformer_lens.model_bridge.sources.native  # noqa: F401
import typer  # noqa: F401

# The imports above, before initlens's, save ~15 s per pytest process: while the
# annotation checks' import hook (pyproject's addopts) runs an initlens module, each module
# that it imports for the first time is compiled afresh (its bytecode cache is keyed to the
# hook), so the heavy third-party packages come in first, through their normal caches.
from helpers import tiny_config
from initlens.models import RunConfig, train


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return train(tiny_config(), tmp_path_factory.mktemp("runs") / "tiny", progress=False)


@pytest.fixture(autouse=True)
def _annotation_checks(request):
    """Tests marked `unchecked` run without the annotation checks (pyproject's addopts):
    they pass deliberately ill-shaped input to see our own UserError, which the checks,
    refusing the call first, would hide."""
    if request.node.get_closest_marker("unchecked") is None:
        yield
        return
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)
