"""`report.html` renders in a real browser: every figure draws, no JavaScript errors, and
what it shows reads cleanly (no duplicate ranking rows, no empty columns, axis titles).

The other report tests read the HTML source; these open it in headless Chromium (see
tests/browser.py) because a report can look right as text and still show empty boxes. They
train a tiny two-gamma study (one head per layer, as the demo; with every analysis
section, so every kind of figure), render its report, and check each plotly div has a
real size and drew marks in every panel that has data, and drew an x- and a y-axis title;
that no table has a column empty in every row; and that the ranking of component patches
lists no patch twice (a single head is its attention layer's output: one row, not two).
The same table and axis checks also run on the report's HTML source and figure JSON, so
they hold without a browser too. Negative tests break a copy of a small report (a
throwing script, plotly.js removed) and check the render notices, so the check can fail.
The browser tests are skipped when no Chromium is installed (`make install` installs
Debian's where it can).
"""

import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from browser import browser, inject_probe, render
from helpers import decode_png, tiny_config
from initlens.analyses.figures.page import table_html
from initlens.analyses.studies.report import build_report, write_report
from initlens.analyses.studies.run_analysis import AnalysisConfig, analyze_runs
from initlens.analyses.studies.study import collect, run_study

needs_browser = pytest.mark.skipif(
    browser() is None,
    reason="no Chromium/Chrome found (apt-get install chromium, or set BROWSER_PATH)",
)


def n_figures(page: str) -> int:
    return len(re.findall(r'class="plotly-graph-div"', page))


SMALL_ANALYSIS = AnalysisConfig(pairs=16, probe_rows=400, geometry_rows=64)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A tiny study's report with every section (so every kind of figure), one attention
    head per layer as in the demo (so a head's patch is its layer's attention output)."""
    out = run_study(
        tiny_config().replace(model={"n_heads": 1}),
        (0.3, 0.8),
        tmp_path_factory.mktemp("study") / "s",
        progress=False,
        analysis=SMALL_ANALYSIS,
    )
    return out["report"]


@pytest.fixture(scope="module")
def rendered(report):
    return render(report)


class _Tables(HTMLParser):
    """Every <table> of a page: the nearest heading above it, its columns and rows."""

    def __init__(self):
        super().__init__()
        self.tables, self.heading, self.text, self.cell = [], "", None, None

    def handle_starttag(self, tag, attrs):
        if re.fullmatch(r"h[1-4]", tag):
            self.text = ""
        elif tag == "table":
            self.tables.append({"heading": self.heading, "columns": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.row = []
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if re.fullmatch(r"h[1-4]", tag):
            self.heading, self.text = self.text.strip(), None
        elif tag in ("td", "th") and self.cell is not None:
            self.row.append((tag, self.cell.strip()))
            self.cell = None
        elif tag == "tr" and self.tables:
            kinds = {kind for kind, _ in self.row}
            cells = [text for _, text in self.row]
            if kinds == {"th"}:
                self.tables[-1]["columns"] = cells
            else:
                self.tables[-1]["rows"].append(cells)

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        elif self.text is not None:
            self.text += data


def page_tables(page: str) -> list[dict]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def figure_titles(fig) -> dict[str, list[str]]:
    """The axis titles a figure sets, x axes and y axes."""
    layout = fig.layout.to_plotly_json()
    return {
        axis: [
            (v.get("title") or {}).get("text")
            for k, v in layout.items()
            if re.fullmatch(axis + r"axis\d*", k) and (v.get("title") or {}).get("text")
        ]
        for axis in ("x", "y")
    }


def assert_readable_tables(tables: list[dict]) -> None:
    """No column is empty in every row; the ranking of component patches names no patch
    twice and lists no place twice with the same numbers (a one-head layer's head and
    attention output are one patch)."""
    assert tables
    for table in tables:
        assert table["rows"] and len(table["columns"]) == len(table["rows"][0]), table
        for j, column in enumerate(table["columns"]):
            cells = [row[j] for row in table["rows"]]
            assert any(c not in ("", "-") for c in cells), (table["heading"], column)
    ranking = [t for t in tables if t["heading"] == "Strongest component patches"]
    assert ranking
    for table in ranking:
        rows = [dict(zip(table["columns"], row)) for row in table["rows"]]
        names = [(r["run"], r["experiment"], r["patch"]) for r in rows]
        assert len(names) == len(set(names)), names
        same = [
            (r["run"], r["experiment"], r["layer"], r["position"], r["normalized"])
            + (r["attribution_normalized"],)
            for r in rows
        ]
        assert len(same) == len(set(same)), same
        # One head per layer: the heads are listed as their attention outputs.
        assert not any(r["patch"].startswith("head ") for r in rows)
        assert any("(= its only head)" in r["patch"] for r in rows)


def assert_axis_titles(titles: list[dict[str, list[str]]]) -> None:
    """Every figure has an x- and a y-axis title, none of them a bare 'value'."""
    assert titles
    for t in titles:
        assert t["x"] and t["y"], t
        assert "value" not in t["x"] + t["y"], t


@pytest.mark.slow  # the study's analyses take minutes on a small CPU
@pytest.mark.integration
def test_report_tables_and_axes_read_cleanly_in_the_source(report):
    """The same checks as the browser's, on the HTML source and the figures' JSON."""
    assert_readable_tables(page_tables(report.read_text()))
    runs, _ = collect(report.parent)
    tables, problems = analyze_runs(runs, SMALL_ANALYSIS)  # cached by the study: quick
    doc = build_report(runs, analysis=tables)
    assert_axis_titles([figure_titles(f) for f in doc.figures.values()])
    assert "patching_z" not in doc.figures  # one head per layer: the attn_out grid again


@needs_browser
@pytest.mark.slow
@pytest.mark.integration
def test_report_tables_and_axes_read_cleanly_in_a_browser(report, rendered):
    """What Chromium drew: every figure shows an x- and a y-axis title (heatmaps too), no
    table has an empty column, the ranking has no duplicate rows."""
    assert rendered["errors"] == []
    assert_readable_tables(rendered["tables"])
    assert len(rendered["plots"]) == n_figures(report.read_text())
    assert_axis_titles([{"x": p["xtitles"], "y": p["ytitles"]} for p in rendered["plots"]])


def test_tables_leave_out_empty_columns_and_the_column_index_name():
    df = pd.DataFrame(
        {
            "patch": ["a", "b"],
            "head": [None, None],  # empty in every row: left out
            "note": ["", " "],  # blank in every row: left out
            "step_to_90": [float("nan")] * 2,  # a step never reached is something: never
            "effect": [0.5, float("nan")],
        }
    ).rename_axis(columns="experiment")  # pandas would draw this as an empty column
    tables = page_tables(table_html(df))
    assert tables[0]["columns"] == ["patch", "step_to_90", "effect"]
    assert tables[0]["rows"] == [["a", "never", "0.500"], ["b", "never", "-"]]


@needs_browser
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


@needs_browser
@pytest.mark.integration
def test_a_javascript_error_is_caught(small_report, tmp_path):
    page = small_report.read_text()
    assert render(small_report)["errors"] == []
    broken = tmp_path / "throws.html"
    broken.write_text(page.replace("</body>", "<script>undefinedFunction()</script></body>"))
    assert any("undefinedFunction" in e for e in render(broken)["errors"])


@needs_browser
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


@needs_browser
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
