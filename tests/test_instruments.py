"""The instrument registry: a registered instrument reaches analyze_run, the report and the
CLI; cached analyses are recomputed when the code that made them changes."""

import pandas as pd
import pytest

import initlens.analyses.studies.run_analysis as run_analysis
from initlens.analyses.cli import main
from initlens.analyses.instruments import INSTRUMENTS, Instrument, Measured
from initlens.analyses.studies.report import build_report
from initlens.analyses.studies.run_analysis import AnalysisConfig, analyze_run, analyze_runs
from initlens.models import UserError
from initlens.models.checkpoint import read_json


def _norms(context):
    """A toy instrument: the embedding norm at each stage checkpoint."""
    rows = [
        {
            "run": context.run.name,
            "step": step,
            "value": float(context.run.load_model(step, "cpu").W_E.detach().norm()),
        }
        for step in context.stages
    ]
    return Measured({"embedding_norm": pd.DataFrame(rows)})


def _section(doc, runs, tables):
    doc.add("<h2>How large are the embeddings?</h2>")


TOY = Instrument(
    name="embedding_norm",
    description="the embedding's Frobenius norm",
    needs=frozenset({"weights", "checkpoints"}),
    tables={"embedding_norm": ("run", "step", "value")},
    measure=_norms,
    section=_section,
    default=False,
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(INSTRUMENTS, TOY.name, TOY)
    return TOY


def test_a_registered_instrument_reaches_analysis_report_and_cli(toy, tiny_run, capsys):
    cfg = AnalysisConfig(instruments=("embedding_norm",))
    tables = analyze_run(tiny_run, cfg)
    assert list(tables["embedding_norm"].columns) == ["run", "step", "value"]
    assert (tiny_run.path / "analysis" / "embedding_norm.csv").exists()
    stacked, problems = analyze_runs([tiny_run], cfg)
    assert not problems
    page = "".join(build_report([tiny_run], analysis=stacked).parts)
    assert "How large are the embeddings?" in page
    with pytest.raises(SystemExit) as done:
        main(["instruments"])
    assert done.value.code == 0
    assert (
        "embedding_norm (opt-in: --instruments): the embedding's Frobenius norm"
        in capsys.readouterr().out
    )


def test_unknown_instruments_are_refused():
    with pytest.raises(UserError, match="unknown instrument.*nope.*choose from.*geometry"):
        AnalysisConfig(instruments=("nope",))


def test_new_code_recomputes_the_cached_analysis(toy, tiny_run, monkeypatch):
    cfg = AnalysisConfig(instruments=("embedding_norm",))
    analyze_run(tiny_run, cfg)
    table = tiny_run.path / "analysis" / "embedding_norm.csv"
    written = table.stat().st_mtime_ns
    analyze_run(tiny_run, cfg)
    assert table.stat().st_mtime_ns == written  # same code: reused
    monkeypatch.setattr(run_analysis, "code_version", lambda extra=(): "changed")
    analyze_run(tiny_run, cfg)
    assert table.stat().st_mtime_ns != written  # new code: recomputed
    assert read_json(tiny_run.path / "analysis" / "analysis.json", "record")["code"] == "changed"
