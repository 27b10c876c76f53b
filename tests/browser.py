"""Render an HTML page in headless Chromium and report what its plotly figures drew.

Why: `report.html` is only useful if its figures actually draw in a browser. A figure can
serialize fine in Python and still show an empty box (plotly.js missing or broken, a
JavaScript error, a trace plotly refuses). Only a real browser tells, so tests use
`render(path)`.

How: a copy of the page gets a small probe script at the start of its <head> (just after
<meta charset>). The probe records JavaScript errors (`error` events, unhandled promise
rejections, console.error) and console.warn messages; after the page's `load` event (plus
a short pause for plotly's asynchronous drawing) it measures every plotly div (class
`plotly-graph-div`): its bounding box, how many marks it drew (trace paths / images with
a non-empty extent), and per cartesian panel its marks and whether any of its traces has
a finite value to draw (a panel of all-NaN data is rightly empty), and the axis titles
it drew; and every HTML table's cells, under the nearest heading above it. It stores all
that as JSON in the `data-render-probe` attribute of <html>. Chromium runs headless with
`--dump-dom` and a virtual time budget (timers run instantly, no real waiting), and we
read the attribute back from the dumped DOM. No extra dependencies: the system Chromium,
found the same way figure export finds it (`analyses.figures.export.find_browser`).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from initlens.analyses.figures.export import find_browser

ATTRIBUTE = "data-render-probe"
WINDOW = (1280, 1000)

PROBE = """<script>(function () {
  var probe = {errors: [], warnings: [], plots: null};
  var root = document.documentElement;
  function save() { root.setAttribute('%(attr)s', JSON.stringify(probe)); }
  function text(args) {
    return Array.prototype.map.call(args, function (a) {
      return a && a.stack ? String(a.stack) : String(a); }).join(' ');
  }
  window.addEventListener('error', function (e) {
    var where = e.filename ? ' (' + e.filename.slice(-40) + ':' + e.lineno + ')' : '';
    probe.errors.push(e.message ? 'error: ' + e.message + where
      : 'failed to load: <' + (e.target && e.target.tagName) + '>');
    save();
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    probe.errors.push('unhandled rejection: ' + text([e.reason])); save();
  });
  var consoleError = console.error, consoleWarn = console.warn;
  console.error = function () {
    probe.errors.push('console.error: ' + text(arguments)); save();
    return consoleError.apply(console, arguments);
  };
  console.warn = function () {
    probe.warnings.push(text(arguments)); save();
    return consoleWarn.apply(console, arguments);
  };
  function marks(node) {  // trace shapes and images with a non-empty extent
    var n = 0;
    node.querySelectorAll('g.trace path, g.trace image, .heatmaplayer image').forEach(
      function (el) {
        var box = el.getBBox();
        if (box.width > 0 || box.height > 0) n++;
      });
    return n;
  }
  function finite(values) {  // any finite number in a (nested, maybe typed) array
    return Array.from(values || []).some(function (v) {
      return (v && typeof v === 'object') ? finite(v) : typeof v === 'number' && isFinite(v);
    });
  }
  function hasData(trace) {
    if (trace.visible !== true) return false;
    if (trace.z) return finite(trace.z);
    return finite(trace.orientation === 'h' ? trace.x : trace.y);
  }
  function panels(div) {  // each cartesian panel: marks drawn, and whether it has data
    var traces = div._fullData || [];
    return Array.prototype.map.call(div.querySelectorAll('.cartesianlayer > g.subplot'),
      function (g) {
        var id = g.getAttribute('class').split(' ')[1];  // "subplot x2y2"
        return {id: id, marks: marks(g), data: traces.some(function (t) {
          return t.xaxis + t.yaxis === id && hasData(t); })};
      });
  }
  function titles(div, axis) {  // the drawn axis titles (x, x2, ... or y, y2, ...)
    var re = new RegExp('^' + axis + '[0-9]*title$');
    return Array.prototype.filter.call(div.querySelectorAll('.infolayer text'),
      function (t) { return re.test(t.getAttribute('class') || ''); }
    ).map(function (t) { return t.textContent.trim(); }).filter(Boolean);
  }
  function heading(el) {  // the nearest heading above an element
    for (var n = el; n; n = n.previousElementSibling || n.parentElement) {
      if (/^H[1-4]$/.test(n.tagName)) return n.textContent.trim();
    }
    return '';
  }
  function cells(row, tag) {
    return Array.prototype.map.call(row.querySelectorAll(tag),
      function (c) { return c.textContent.trim(); });
  }
  function measure() {
    probe.plots = Array.prototype.map.call(
      document.querySelectorAll('div.plotly-graph-div'), function (div) {
        var box = div.getBoundingClientRect();
        return {id: div.id, width: box.width, height: box.height, marks: marks(div),
                traces: (div.data || []).length, panels: panels(div),
                xtitles: titles(div, 'x'), ytitles: titles(div, 'y')};
      });
    probe.tables = Array.prototype.map.call(document.querySelectorAll('table'),
      function (t) {
        return {heading: heading(t), columns: cells(t, 'thead th'),
                rows: Array.prototype.map.call(t.querySelectorAll('tbody tr'),
                  function (r) { return cells(r, 'td'); })};
      });
    save();
  }
  window.addEventListener('load', function () { setTimeout(measure, 1000); });
  save();
})();</script>""" % {"attr": ATTRIBUTE}


def browser() -> str | None:
    """The Chromium/Chrome executable to render with, or None if there is none."""
    return find_browser()[0]


def inject_probe(page: str) -> str:
    """`page` with the probe script first in <head> (after <meta charset> if that leads)."""
    head = re.search(r"<head[^>]*>(\s*<meta\s+charset[^>]*>)?", page, re.IGNORECASE)
    if head is None:
        raise ValueError("the page has no <head> to put the probe in")
    return page[: head.end()] + PROBE + page[head.end() :]


def render(html_path: str | Path, budget_ms: int = 10_000, timeout_s: float = 120) -> dict:
    """Load `html_path` in headless Chromium; return what the probe saw.

    {"errors": [str], "warnings": [str],
     "plots": [{"id", "width", "height", "marks", "traces",
                "panels": [{"id": "x2y2", "marks", "data": any finite value to draw}],
                "xtitles": [drawn x-axis titles], "ytitles": [drawn y-axis titles]}],
     "tables": [{"heading": the nearest heading above, "columns": [str],
                 "rows": [[str]]}]}
    Raises RuntimeError when no browser is found or the page never finished loading.
    """
    exe = browser()
    if exe is None:
        raise RuntimeError(find_browser()[1])
    page = Path(html_path).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="render-") as tmp:
        copy = Path(tmp) / "page.html"
        copy.write_text(inject_probe(page), encoding="utf-8")
        profile = Path(tmp) / "profile"
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            copy.as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r"<html[^>]*\s%s=\"([^\"]*)\"" % ATTRIBUTE, done.stdout)
    if found is None:
        raise RuntimeError(
            f"{exe} dumped no probe result (exit code {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )
    result = json.loads(html.unescape(found.group(1)))
    if result["plots"] is None:
        raise RuntimeError(
            f"the page did not finish loading within {budget_ms} ms of "
            f"virtual time; errors so far: {result['errors']}"
        )
    return result
