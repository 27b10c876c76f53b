"""Patching heatmaps (analyses.figures.patching) and figure export (analyses.figures.export)."""

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from helpers import decode_png
from initlens.analyses.figures import export
from initlens.analyses.figures.export import (
    StaticExportWarning,
    export_figure,
    static_export_status,
)
from initlens.analyses.figures.patching import layer_head_heatmap, layer_position_heatmap
from initlens.models.errors import UserError

COLS = ["run", "step", "component", "layer", "position", "head", "value"]
N_LAYERS, N_POS, N_HEADS = 3, 4, 2


def value(component: str, layer: int, position: int, head: int) -> float:
    """A distinct, signed value per cell, so tests can check placement."""
    base = {"resid_pre": 0.0, "z": 0.5}[component]
    return (-1) ** layer * (base + 0.1 * layer + 0.01 * (position + 1) + 0.001 * (head + 1))


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    rows = []
    for layer in range(N_LAYERS):
        for pos in range(N_POS):
            rows.append(("r", 100, "resid_pre", layer, pos, -1, value("resid_pre", layer, pos, -1)))
        for head in range(N_HEADS):
            rows.append(("r", 100, "z", layer, -1, head, value("z", layer, -1, head)))
            rows.append(("r", 100, "z", layer, 2, head, value("z", layer, 2, head)))
    return pd.DataFrame(rows, columns=COLS)


# ---------------------------------------------------------------- heatmaps


def test_layer_position_heatmap(table):
    fig = layer_position_heatmap(table, "resid_pre", tokens=["key", "a1", "a2", "noise"])
    hm = fig.data[0]
    z = np.asarray(hm.z)
    assert z.shape == (N_LAYERS, N_POS)
    assert list(hm.x) == list(range(N_POS)) and list(hm.y) == list(range(N_LAYERS))
    for layer in range(N_LAYERS):
        for pos in range(N_POS):
            assert z[layer, pos] == pytest.approx(value("resid_pre", layer, pos, -1))
    assert fig.layout.yaxis.autorange == "reversed"  # layer 0 at the top
    assert list(fig.layout.xaxis.ticktext) == ["key", "a1", "a2", "noise"]
    assert hm.zmid == 0 and hm.zmin == -hm.zmax
    assert [c[1] for c in hm.colorscale][0] == "rgb(103,0,31)"  # RdBu
    assert (
        hm.text[1][2] == f"layer 1<br>position 2 (a2)<br>value {value('resid_pre', 1, 2, -1):.4f}"
    )
    assert "%{text}" in hm.hovertemplate
    assert "resid_pre" in fig.layout.title.text


def test_layer_position_heatmap_gaps_and_repeated_tokens(table):
    sub = table[
        (table.component == "resid_pre")
        & (table.position != 1)
        & ~((table.layer == 2) & (table.position == 3))
    ]
    fig = layer_position_heatmap(sub, "resid_pre", title="t", tokens=["x", "x", "x", "x"])
    hm = fig.data[0]
    assert list(hm.x) == [0, 2, 3]  # one equal cell per present position
    assert list(fig.layout.xaxis.ticktext) == ["x", "x", "x"]  # repeated tokens stay apart
    assert np.isnan(np.asarray(hm.z, dtype=float)[2, 2])
    assert hm.text[2][2].endswith("value no data")
    assert fig.layout.title.text == "t"


def test_layer_head_heatmap(table):
    fig = layer_head_heatmap(table, "z")  # the position == -1 rows
    hm = fig.data[0]
    z = np.asarray(hm.z)
    assert z.shape == (N_LAYERS, N_HEADS) and list(hm.x) == [0, 1]
    assert z[2, 1] == pytest.approx(value("z", 2, -1, 1))
    assert (
        hm.text[2][1] == f"layer 2<br>head 1<br>all positions<br>value {value('z', 2, -1, 1):.4f}"
    )
    at2 = np.asarray(layer_head_heatmap(table, "z", position=2).data[0].z)
    assert at2[1, 0] == pytest.approx(value("z", 1, 2, 0))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: layer_position_heatmap(t, "mlp_out"), "choose one of: resid_pre, z"),
        (lambda t: layer_head_heatmap(t, "nope"), "choose one of: resid_pre, z"),
        (lambda t: layer_position_heatmap(t, "z"), "use layer_head_heatmap"),
        (lambda t: layer_head_heatmap(t, "resid_pre"), "use layer_position_heatmap"),
        (lambda t: layer_head_heatmap(t, "z", position=3), "choose one of: -1, 2"),
        (lambda t: layer_head_heatmap(t[t.position != -1], "z"), "pass position= one of them"),
        (lambda t: layer_position_heatmap(t, "resid_pre", tokens=["a"]), "one token per position"),
        (
            lambda t: layer_position_heatmap(t.drop(columns="head"), "resid_pre"),
            "lacks column(s) head",
        ),
        (
            lambda t: layer_position_heatmap(pd.concat([t, t.assign(step=200)]), "resid_pre"),
            "several (run, step) pairs",
        ),
        (lambda t: layer_position_heatmap(pd.concat([t, t]), "resid_pre"), "one row per cell"),
    ],
)
def test_heatmap_errors(table, call, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(table)


# ---------------------------------------------------------------- HTML export


def test_export_html(table, tmp_path):
    fig = layer_position_heatmap(table, "resid_pre")
    paths = export_figure(fig, tmp_path / "sub" / "fig.v1")
    assert paths == [tmp_path / "sub" / "plotly.min.js", tmp_path / "sub" / "fig.v1.html"]
    html = paths[1].read_text()
    assert "Plotly.newPlot" in html and "resid_pre: layer x position" in html
    assert f"{value('resid_pre', 1, 2, -1):.4f}" in html  # hover text carries the data
    assert re.search(r'<script[^>]*\bsrc="plotly\.min\.js"', html)  # the folder's plotly.js
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")]
    inline = export_figure(fig, tmp_path / "self", plotlyjs="inline")[0].read_text()
    assert re.search(r"<script[^>]*\bsrc\s*=", inline) is None  # self-contained
    # a known suffix is not doubled; a single format string is one format
    assert export_figure(fig, tmp_path / "g.html", "html") == [
        tmp_path / "plotly.min.js",
        tmp_path / "g.html",
    ]
    with pytest.raises(UserError, match="choose from html, png, svg, pdf"):
        export_figure(fig, tmp_path / "h", ("jpeg",))


def test_static_unavailable_strict_and_lenient(table, tmp_path, monkeypatch):
    reason = "no Chromium found: install Debian's `chromium` package (apt-get install chromium)"
    monkeypatch.setattr(export, "static_export_status", lambda: (False, reason))
    fig = layer_head_heatmap(table, "z")
    with pytest.raises(UserError, match="cannot export PNG, SVG: no Chromium found"):
        export_figure(fig, tmp_path / "f", ("png", "svg"))
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.warns(StaticExportWarning, match="wrote HTML only, not PNG: .*apt-get install"):
        paths = export_figure(fig, tmp_path / "f", ("html", "png"), strict=False)
    assert paths[-1] == tmp_path / "f.html" and paths[-1].exists()
    with pytest.warns(StaticExportWarning, match="wrote HTML instead of SVG"):
        paths = export_figure(fig, tmp_path / "g", "svg", strict=False)
    assert paths == [tmp_path / "g.html"]


def test_static_export_status_reasons(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    ok, reason = static_export_status()
    assert not ok and "BROWSER_PATH='/nonexistent/chrome'" in reason
    monkeypatch.delenv("BROWSER_PATH")
    monkeypatch.setattr(export, "BROWSER_NAMES", ())
    from choreographer.browsers.chromium import Chromium

    monkeypatch.setattr(Chromium, "find_browser", classmethod(lambda cls, **kw: None))
    ok, reason = static_export_status()
    assert not ok and "apt-get install chromium" in reason and "HTML export still works" in reason


# ---------------------------------------------------------------- static export (needs a browser)

STATIC_OK, STATIC_REASON = static_export_status()
needs_browser = pytest.mark.skipif(not STATIC_OK, reason=STATIC_REASON)
WIDTH, HEIGHT = 320, 240


@pytest.fixture(scope="module")
def static_files(table, tmp_path_factory):
    """One export of PNG, SVG and PDF (one browser session, about 3-5 s): no HTML."""
    fig = layer_position_heatmap(table, "resid_pre", tokens=["key", "a1", "a2", "noise"])
    out = tmp_path_factory.mktemp("static") / "heat"
    return {
        p.suffix[1:]: p
        for p in export_figure(fig, out, ("png", "svg", "pdf"), width=WIDTH, height=HEIGHT)
    }


@needs_browser
@pytest.mark.integration
def test_png_export(static_files):
    width, height, rows = decode_png(static_files["png"].read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    bpp = len(rows[0]) // width
    colours = {row[i : i + 3] for row in rows[::4] for i in range(0, len(row), bpp * 4)}
    assert len(colours) > 8  # heatmap cells, text and background: not blank


@needs_browser
@pytest.mark.integration
def test_svg_and_pdf_export(static_files):
    root = ET.fromstring(static_files["svg"].read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert (root.get("width"), root.get("height")) == (str(WIDTH), str(HEIGHT))
    assert "a2" in static_files["svg"].read_text()  # token labels are drawn
    assert static_files["pdf"].read_bytes()[:5] == b"%PDF-"
    assert set(static_files) == {"png", "svg", "pdf"}
