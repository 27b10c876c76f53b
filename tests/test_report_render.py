"""`report.html` renders in a real browser: every figure draws, no JavaScript errors.

The other report tests read the HTML source; this one opens it in headless Chromium (see
tests/browser.py) because a report can look right as text and still show empty boxes. It
trains a tiny two-gamma study (with every analysis section, so every kind of figure),
renders its report, and checks each plotly div has a real size and drew marks in every
panel that has data. Negative tests break a copy of a small report (a throwing script,
plotly.js removed) and check the render notices, so the check can fail. Skipped
when no Chromium is installed (`make install` installs Debian's where it can).
"""

import re
from pathlib import Path

import pytest

from browser import browser, inject_probe, render
from helpers import decode_png, tiny_config
from initlens.analyses.studies.report import build_report, write_report
from initlens.analyses.studies.run_analysis import AnalysisConfig
from initlens.analyses.studies.study import run_study

pytestmark = pytest.mark.skipif(
    browser() is None,
    reason="no Chromium/Chrome found (apt-get install chromium, or set BROWSER_PATH)",
)


def n_figures(page: str) -> int:
    return len(re.findall(r'class="plotly-graph-div"', page))


SMALL_ANALYSIS = AnalysisConfig(pairs=16, probe_rows=400, geometry_rows=64)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A tiny study's report with every section (so every kind of figure)."""
    out = run_study(
        tiny_config(),
        (0.3, 0.8),
        tmp_path_factory.mktemp("study") / "s",
        progress=False,
        analysis=SMALL_ANALYSIS,
    )
    return out["report"]


@pytest.fixture(scope="module")
def rendered(report):
    return render(report)


@pytest.mark.slow  # the study's analyses take minutes on a small CPU
@pytest.mark.integration
def test_report_figures_draw_without_errors(report, rendered):
    assert rendered["errors"] == []
    plots = rendered["plots"]
    assert len(plots) == n_figures(report.read_text()) >= 4
    for plot in plots:
        assert plot["width"] > 100 and plot["height"] > 100, plot
        assert plot["marks"] > 0 and plot["traces"] > 0, plot
        # A panel with something to draw drew it (all-NaN panels are rightly empty).
        assert all(p["marks"] > 0 for p in plot["panels"] if p["data"]), plot


@pytest.fixture
def small_report(tiny_run, tmp_path):
    """A quick report (behaviour sections only) to break on purpose."""
    path = tmp_path / "report.html"
    write_report([tiny_run], path)
    return path


@pytest.mark.integration
def test_a_javascript_error_is_caught(small_report, tmp_path):
    page = small_report.read_text()
    assert render(small_report)["errors"] == []
    broken = tmp_path / "throws.html"
    broken.write_text(page.replace("</body>", "<script>undefinedFunction()</script></body>"))
    assert any("undefinedFunction" in e for e in render(broken)["errors"])


@pytest.mark.integration
def test_missing_plotly_js_gives_errors_and_empty_plots(small_report, tmp_path):
    page = small_report.read_text()
    start = page.index("<script>", page.index("<head>")) + len("<script>")
    broken = tmp_path / "no_plotly.html"
    broken.write_text(page[:start] + page[page.index("</script>", start) :])
    result = render(broken)
    assert any("Plotly is not defined" in e for e in result["errors"])
    assert len(result["plots"]) == n_figures(page) > 0
    # The divs keep their size (set from the layout's height) but hold nothing.
    assert all(p["marks"] == 0 and p["traces"] == 0 for p in result["plots"]), result


def test_probe_goes_first_in_head():
    page = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title></head></html>"
    probed = inject_probe(page)
    assert probed.startswith("<!DOCTYPE html><html><head><meta charset='utf-8'><script>")
    assert probed.endswith("<title>t</title></head></html>")


@pytest.mark.integration
def test_report_figures_export_as_nonblank_png_of_their_size(tiny_run, tmp_path):
    """`--format png`: every figure of the report as a PNG of the figure's own size
    (plotly's default width 700 where the layout sets none), with more than a background."""
    info = write_report([tiny_run], tmp_path / "report.html", formats=("png",))
    figures = build_report([tiny_run]).figures
    pngs = sorted(Path(f) for f in info["files"] if f.endswith(".png"))
    assert [p.stem for p in pngs] == sorted(figures) and info["warnings"] == []
    for png in pngs:
        layout = figures[png.stem].layout
        width, height, rows = decode_png(png.read_bytes())
        assert (width, height) == (layout.width or 700, layout.height or 500), png.name
        bpp = len(rows[0]) // width
        colours = {row[i : i + 3] for row in rows[::4] for i in range(0, len(row), bpp * 4)}
        assert len(colours) > 8, png.name  # lines, text and background: not blank
