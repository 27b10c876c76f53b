"""The one place figures and tables are written to disk.

`export_figure` / `export_figures`: plotly figures as self-contained HTML always, PNG/SVG/PDF
via kaleido. `export_table`: tidy tables as CSV (and parquet). `export_html`: a page (the
report).

HTML needs nothing but plotly (plotly.js is inlined, no external script). PNG, SVG and PDF
need kaleido >= 1, which renders in a headless Chromium/Chrome it finds on this machine; it
never downloads a browser here. The browser is, in order: the `BROWSER_PATH` environment
variable (choreographer's own override) if set, else the first of `chromium`,
`chromium-browser`, `google-chrome-stable`, `google-chrome`, `chrome` on PATH, else whatever
choreographer finds itself (a Chrome fetched with `kaleido_get_chrome`, the usual install
folders on macOS and Windows). It runs with choreographer's flags, which we pin explicitly:
`--headless`, `--no-sandbox` (needed as root in a container), `--disable-gpu`, plus
`--disable-dev-shm-usage` and others choreographer always adds.

Design: `export_figure(..., strict=True)` (the default) raises `UserError` before writing
anything when a static format is asked for and `static_export_status()` says it cannot
work; the CLI prints that as one line. `strict=False` writes the HTML (and nothing static),
emits the same message as a `StaticExportWarning`, and returns the paths it wrote.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from initlens.models.checkpoint import atomic_write
from initlens.models.errors import UserError

STATIC_FORMATS = ("png", "svg", "pdf")
FORMATS = ("html", *STATIC_FORMATS)
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome", "chrome")
INSTALL_HINT = (
    "install Debian's `chromium` package (apt-get install chromium) or Chrome, "
    "or set BROWSER_PATH to one; HTML export still works"
)


class StaticExportWarning(UserWarning):
    """PNG/SVG/PDF were asked for but cannot be made here; only HTML was written."""


def _is_exe(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_browser() -> tuple[str | None, str]:
    """The Chromium/Chrome executable kaleido should use, or None and why not."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        if _is_exe(env):
            return env, ""
        return None, f"BROWSER_PATH={env!r} is not an executable file: fix or unset it"
    for name in BROWSER_NAMES:
        if (path := shutil.which(name)) and _is_exe(path):
            return path, ""
    try:
        from choreographer.browsers.chromium import Chromium

        path = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 best effort: the lookup is choreographer's internals
        path = None
    if path and _is_exe(str(path)):
        return str(path), ""
    return None, f"no Chromium found: {INSTALL_HINT}"


def static_export_status() -> tuple[bool, str]:
    """Whether PNG/SVG/PDF export can work here, and if not a one-line reason what to install."""
    try:
        from importlib.metadata import version

        import kaleido  # noqa: F401

        major = int(version("kaleido").split(".")[0])
    except Exception:  # noqa: BLE001 missing or broken install: same advice
        return False, (
            "kaleido is not installed: pip install 'kaleido>=1' "
            "(then a Chromium); HTML export still works"
        )
    if major < 1:
        return (
            False,
            "kaleido < 1 is installed: pip install -U 'kaleido>=1'; HTML export still works",
        )
    path, reason = find_browser()
    if path is None:
        return False, reason
    return True, f"static export uses {path}"


def _output_base(path_without_suffix: str | Path) -> Path:
    path = Path(path_without_suffix)
    if path.suffix.lower().lstrip(".") in FORMATS:  # "fig.png" -> "fig"
        path = path.with_suffix("")
    return path


def figure_formats(formats: str | Iterable[str]) -> list[str]:
    """The formats to write (html always first), or a UserError for an unknown one; the
    commands call it before any work so that a typo costs nothing."""
    if isinstance(formats, str):
        formats = (formats,)
    out = ["html"]
    for fmt in formats:
        fmt = str(fmt).lower().lstrip(".")
        if fmt not in FORMATS:
            raise UserError(
                f"unknown figure format {fmt!r}; choose from {', '.join(FORMATS)}",
                option="format",
            )
        if fmt not in out:
            out.append(fmt)
    return out


def _render_static(
    fig: go.Figure,
    formats: list[str],
    browser: str,
    width: int | None,
    height: int | None,
    scale: float,
) -> dict[str, bytes]:
    """Render each format in one headless-browser session; returns format -> bytes."""
    import kaleido
    from kaleido.errors import BrowserClosedError, BrowserFailedError, ChromeNotFoundError

    opts = {"scale": scale}
    if width:
        opts["width"] = width
    if height:
        opts["height"] = height
    fig_dict = fig.to_dict()

    async def render() -> dict[str, bytes]:
        # mathjax=False: kaleido would otherwise load MathJax from a CDN (no network here).
        # plotly.js comes from the installed plotly package, not from a CDN.
        async with kaleido.Kaleido(
            n=1, path=browser, mathjax=False, headless=True, enable_sandbox=False, enable_gpu=False
        ) as k:
            return {
                fmt: await k.calc_fig(fig_dict, opts={**opts, "format": fmt}) for fmt in formats
            }

    # A private event loop in a worker thread: works under Jupyter's running loop too.
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, render()).result()
    except (ChromeNotFoundError, BrowserFailedError, BrowserClosedError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UserError(
            f"static figure export with {browser} failed ({reason}); {INSTALL_HINT}"
        ) from None


def export_figure(
    fig: go.Figure,
    path_without_suffix: str | Path,
    formats: str | Iterable[str] = ("html",),
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
    strict: bool = True,
) -> list[Path]:
    """Write `fig` as PATH.html (always) plus PATH.png/.svg/.pdf as asked; returns the paths."""
    base = _output_base(path_without_suffix)
    wanted = figure_formats(formats)
    static = [f for f in wanted if f in STATIC_FORMATS]
    if static:
        ok, reason = static_export_status()
        if not ok:
            if strict:
                raise UserError(f"cannot export {', '.join(static).upper()}: {reason}")
            warnings.warn(
                f"wrote HTML only, not {', '.join(static).upper()}: {reason}",
                StaticExportWarning,
                stacklevel=2,
            )
            static = []
    images = _render_static(fig, static, find_browser()[0], width, height, scale) if static else {}
    written = []
    html_path = base.with_name(base.name + ".html")
    atomic_write(html_path, fig.to_html(include_plotlyjs=True, full_html=True))
    written.append(html_path)
    for fmt in static:
        path = base.with_name(f"{base.name}.{fmt}")
        atomic_write(path, images[fmt])
        written.append(path)
    return written


def export_figures(
    figures: Mapping[str, go.Figure], folder: str | Path, formats: str | Iterable[str] = ("html",)
) -> tuple[list[Path], list[str]]:
    """Export each figure as FOLDER/NAME.*; returns the files and any notes (e.g. no
    browser for PNG: HTML only)."""
    files: list[Path] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, fig in figures.items():
            files += export_figure(fig, Path(folder) / name, formats, strict=False)
    return files, sorted({str(w.message) for w in caught})


def export_table(
    table: pd.DataFrame, folder: str | Path, stem: str, formats: Sequence[str] = ("csv", "parquet")
) -> list[Path]:
    """The table as FOLDER/STEM.csv (and .parquet), each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "csv": lambda: table.to_csv(index=False),
        "parquet": lambda: table.to_parquet(index=False),
    }
    files = []
    for fmt in formats:
        atomic_write(folder / f"{stem}.{fmt}", written[fmt]())
        files.append(folder / f"{stem}.{fmt}")
    return files


def export_html(page: str, path: str | Path) -> Path:
    """A whole HTML page (e.g. the report), written atomically."""
    path = Path(path)
    atomic_write(path, page)
    return path
