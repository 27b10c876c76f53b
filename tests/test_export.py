"""Figure export (analyses.figures.export): one plotly.js per folder, only the formats asked
for, one headless browser per call, and a figure that fails is one line, not a traceback.

The static-export tests fake kaleido's three coroutines (open, render, close), so they run
the real worker thread and event loop without a browser; one test renders for real where
Chromium is installed."""

import json
import logging
import re
import warnings
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline
import pytest

from helpers import assert_user_error, decode_png, run_cli
from initlens.analyses.figures import export
from initlens.analyses.figures.export import (
    PLOTLYJS,
    StaticExportWarning,
    export_figure,
    export_figures,
    figure_formats,
    static_export_status,
    static_session,
)
from initlens.models.errors import UserError


def figure(title: str) -> go.Figure:
    return go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]), layout=dict(title=dict(text=title)))


FIGURES = {f"fig{i}": figure(f"figure {i}") for i in range(4)}


# ---------------------------------------------------------------- formats and HTML


def test_figure_formats_are_what_is_asked():
    assert figure_formats(()) == ["html"]  # the default
    assert figure_formats(("png",)) == ["png"]  # no HTML unless asked
    assert figure_formats("svg,html,svg") == ["svg", "html"]
    assert figure_formats(["PNG", ".pdf", ""]) == ["png", "pdf"]
    with pytest.raises(UserError, match="unknown figure format 'bmp'; choose from html"):
        figure_formats(("png", "bmp"))


def test_folder_of_figures_shares_one_plotlyjs(tmp_path):
    files, notes = export_figures(FIGURES, tmp_path)
    assert notes == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [PLOTLYJS] + [f"{name}.html" for name in FIGURES]
    )
    assert files.count(tmp_path / PLOTLYJS) == 1
    assert (tmp_path / PLOTLYJS).read_text() == plotly.offline.get_plotlyjs()
    for name in FIGURES:
        html = (tmp_path / f"{name}.html").read_text()
        assert len(html.encode()) < 100_000, name
        assert re.search(r'<script[^>]*src="plotly\.min\.js"', html), name
        assert "Plotly.newPlot" in html
    # A second export into the folder keeps the one copy (and does not rewrite it).
    before = (tmp_path / PLOTLYJS).stat().st_mtime_ns
    files, _ = export_figures({"more": figure("more")}, tmp_path)
    assert files == [tmp_path / "more.html"]
    assert (tmp_path / PLOTLYJS).stat().st_mtime_ns == before
    # A damaged copy is replaced.
    (tmp_path / PLOTLYJS).write_text("// truncated")
    files, _ = export_figures({"again": figure("again")}, tmp_path)
    assert files == [tmp_path / PLOTLYJS, tmp_path / "again.html"]
    assert (tmp_path / PLOTLYJS).read_text() == plotly.offline.get_plotlyjs()


def test_inline_html_is_self_contained(tmp_path):
    paths = export_figure(figure("alone"), tmp_path / "alone", plotlyjs="inline")
    assert paths == [tmp_path / "alone.html"]
    html = paths[0].read_text()
    assert re.search(r"<script[^>]*\bsrc\s*=", html) is None and len(html) > 1_000_000
    assert not (tmp_path / PLOTLYJS).exists()
    with pytest.raises(UserError, match="choose directory or inline"):
        export_figure(figure("x"), tmp_path / "x", plotlyjs="cdn")


# ---------------------------------------------------------------- static export, faked browser


class FakeKaleido:
    """Stands in for kaleido's three coroutines; counts browser starts."""

    def __init__(self, fail_on=(), start_error=None, log_noise=False):
        self.fail_on = set(fail_on)
        self.start_error = start_error
        self.log_noise = log_noise
        self.starts = self.closes = 0
        self.rendered: list[tuple[str, str]] = []

    async def open(self, browser, timeout):
        if self.start_error:
            raise self.start_error
        self.starts += 1
        return self

    async def calc(self, k, fig_dict, opts):
        title = fig_dict["layout"]["title"]["text"]
        if self.log_noise:  # as choreographer's pipe reader does, then carries on
            try:
                json.loads('{"id": 1, "resu')
            except json.JSONDecodeError:
                logging.getLogger("choreographer.channels.pipe").exception(
                    "JSONError decoding message. Ignoring"
                )
        if title in self.fail_on:
            json.loads('{"id": 7, "result": {"data": "iVBOR')  # raises JSONDecodeError
        self.rendered.append((title, opts["format"]))
        return f"{opts['format']}:{title}".encode()

    async def close(self, k):
        self.closes += 1


@pytest.fixture
def fake(monkeypatch):
    kaleido = FakeKaleido()
    monkeypatch.setattr(export, "static_export_status", lambda: (True, "static export uses x"))
    monkeypatch.setattr(export, "find_browser", lambda: ("/usr/bin/chromium", ""))
    monkeypatch.setattr(export, "_open_kaleido", kaleido.open)
    monkeypatch.setattr(export, "_calc_fig", kaleido.calc)
    monkeypatch.setattr(export, "_close_kaleido", kaleido.close)
    return kaleido


def test_png_only_writes_no_html_and_uses_one_browser(fake, tmp_path):
    files, notes = export_figures(FIGURES, tmp_path, ("png", "svg"))
    assert notes == [] and fake.starts == 1 and fake.closes == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{name}.{fmt}" for name in FIGURES for fmt in ("png", "svg")
    )
    assert (tmp_path / "fig2.svg").read_bytes() == b"svg:figure 2"
    assert sorted(files) == sorted(tmp_path.iterdir())
    # html too when asked; no browser when nothing static is asked
    files, _ = export_figures({"both": figure("both")}, tmp_path / "b", ("html", "png"))
    assert [p.name for p in files] == [PLOTLYJS, "both.html", "both.png"]
    export_figures(FIGURES, tmp_path / "h", ("html",))
    assert fake.starts == 2


def test_a_figure_that_fails_is_one_note_and_the_rest_are_written(fake, tmp_path, capsys, caplog):
    fake.fail_on = {"figure 1"}
    fake.log_noise = True
    files, notes = export_figures(FIGURES, tmp_path, ("png",))
    assert len(notes) == 1, notes
    assert re.fullmatch(
        r"could not export fig1 as png: JSONDecodeError: Unterminated string .*; "
        r"wrote its HTML instead",
        notes[0],
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["fig0.png", "fig1.html", PLOTLYJS, "fig2.png", "fig3.png"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "JSONError" not in err
    # The logged traceback reached no handler outside the session (none would print it).
    assert not [r for r in caplog.records if r.name.startswith("choreographer")]
    logger = logging.getLogger("choreographer")
    assert logger.propagate and logger.handlers == []  # restored after the session


def test_a_browser_that_cannot_start_is_one_note(fake, tmp_path, capsys):
    from kaleido.errors import BrowserFailedError

    fake.start_error = BrowserFailedError("The browser seemed to close immediately\nafter start")
    files, notes = export_figures(FIGURES, tmp_path, ("png", "pdf"))
    assert notes == [
        "wrote HTML instead of PNG, PDF: static figure export with /usr/bin/chromium failed "
        "(BrowserFailedError: The browser seemed to close immediately after start); "
        + export.INSTALL_HINT
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [PLOTLYJS] + [f"{name}.html" for name in FIGURES]
    )
    assert "Traceback" not in "".join(capsys.readouterr())


def test_a_browser_that_stops_part_way_is_one_note(fake, monkeypatch, tmp_path):
    from kaleido.errors import BrowserClosedError

    calc = fake.calc

    async def dies_at_fig2(k, fig_dict, opts):
        if fig_dict["layout"]["title"]["text"] == "figure 2":
            raise BrowserClosedError("the browser closed")
        return await calc(k, fig_dict, opts)

    monkeypatch.setattr(export, "_calc_fig", dies_at_fig2)
    files, notes = export_figures(FIGURES, tmp_path, ("html", "png"))
    assert notes == [
        "could not export 2 of 4 figures as PNG (fig2, fig3): the browser stopped "
        "(BrowserClosedError: the browser closed)"
    ]
    assert (tmp_path / "fig1.png").exists() and not (tmp_path / "fig2.png").exists()
    assert all((tmp_path / f"{name}.html").exists() for name in FIGURES)


def test_no_browser_writes_html_instead(monkeypatch, tmp_path):
    reason = "no Chromium found: install Debian's `chromium` package (apt-get install chromium)"
    monkeypatch.setattr(export, "static_export_status", lambda: (False, reason))
    files, notes = export_figures(FIGURES, tmp_path, ("png",))
    assert notes == [f"wrote HTML instead of PNG: {reason}"]
    assert all((tmp_path / f"{name}.html").exists() for name in FIGURES)
    files, notes = export_figures(FIGURES, tmp_path / "h", ("html", "svg"))
    assert notes == [f"wrote HTML only, not SVG: {reason}"]


def test_export_figure_strict_and_lenient(fake, tmp_path):
    fake.fail_on = {"bad"}
    with pytest.raises(UserError, match=r"^could not export bad as png: JSONDecodeError"):
        export_figure(figure("bad"), tmp_path / "bad", ("html", "png"))
    assert list(tmp_path.iterdir()) == []  # strict: nothing written
    with pytest.warns(StaticExportWarning, match="could not export bad as png"):
        paths = export_figure(figure("bad"), tmp_path / "bad", ("html", "png"), strict=False)
    assert paths == [tmp_path / PLOTLYJS, tmp_path / "bad.html"]
    assert export_figure(figure("ok"), tmp_path / "ok", "png") == [tmp_path / "ok.png"]


def test_static_session_shares_one_browser(fake, tmp_path):
    with static_session():
        for name, fig in FIGURES.items():
            export_figure(fig, tmp_path / name, "png")
    assert fake.starts == 1 and fake.closes == 1 and len(fake.rendered) == len(FIGURES)


def test_cli_export_failure_is_one_note(fake, monkeypatch, capsys, tmp_path, tiny_run):
    fake.fail_on = {"z, position 3: key corruption, logit_diff, denoising"}
    calc = fake.calc

    async def by_title(k, fig_dict, opts):  # the title's first line names the figure
        fig_dict["layout"]["title"]["text"] = fig_dict["layout"]["title"]["text"].split("<br>")[0]
        return await calc(k, fig_dict, opts)

    monkeypatch.setattr(export, "_calc_fig", by_title)
    code, out, err = run_cli(
        capsys, "patch", tiny_run.path, "--component", "z", "--pairs", 8, "--out", tmp_path,
        "--format", "png",
    )  # fmt: skip
    assert code == 0, err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r"note: could not export patch_z_key_pos3 as png: JSONDecodeError: Unterminated "
        r"string starting at: line 1 column \d+ \(char \d+\); wrote its HTML instead",
        lines[0],
    ), lines
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "patch_z_key_pos0.png" in written and "patch_z_key_pos3.html" in written
    assert not [n for n in written if n.endswith(".html") and n != "patch_z_key_pos3.html"]
    assert fake.starts == 1


def test_bad_format_is_one_line(capsys, tmp_path, tiny_run):
    assert_user_error(
        run_cli(capsys, "patch", tiny_run.path, "--out", tmp_path / "p", "--format", "png,bmp"),
        r"--format: unknown figure format 'bmp'",
    )
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- a real browser

STATIC_OK, STATIC_REASON = static_export_status()


@pytest.mark.skipif(not STATIC_OK, reason=STATIC_REASON)
@pytest.mark.integration
def test_real_browser_renders_a_folder_in_one_session(monkeypatch, tmp_path, capfd):
    starts = []
    real_open = export._open_kaleido

    async def counted(browser, timeout):
        starts.append(browser)
        return await real_open(browser, timeout)

    monkeypatch.setattr(export, "_open_kaleido", counted)
    figures = dict(list(FIGURES.items())[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaticExportWarning)
        files, notes = export_figures(figures, tmp_path, ("png",))
    assert notes == [] and len(starts) == 1
    assert sorted(Path(f).name for f in files) == [f"{name}.png" for name in figures]
    width, height, _ = decode_png((tmp_path / "fig0.png").read_bytes())
    assert (width, height) == (700, 500)  # plotly's default size
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
