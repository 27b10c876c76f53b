"""The one place figures and tables are written to disk.

`export_figure` / `export_figures`: plotly figures as HTML and/or PNG/SVG/PDF (via kaleido),
each format only when asked (HTML when no format is given). `export_table`: tidy tables as
CSV (and parquet). `export_html`: a page (the report).

HTML needs nothing but plotly. A figure's HTML loads plotly.js from `plotly.min.js` next to
it, written once per folder (so a folder of figures holds one 4.8 MB copy, not one per
figure; keep the folder together when moving it). `plotlyjs="inline"` writes one
self-contained file instead. The report (`export_html`) is one self-contained page.

PNG, SVG and PDF need kaleido >= 1, which renders in a headless Chromium/Chrome it finds on
this machine; it never downloads a browser here. The browser is, in order: the
`BROWSER_PATH` environment variable (choreographer's own override) if set, else the first of
`chromium`, `chromium-browser`, `google-chrome-stable`, `google-chrome`, `chrome` on PATH,
else whatever choreographer finds itself (a Chrome fetched with `kaleido_get_chrome`, the
usual install folders on macOS and Windows). It runs with choreographer's flags, which we
pin explicitly: `--headless`, `--no-sandbox` (needed as root in a container),
`--disable-gpu`, plus `--disable-dev-shm-usage` and others choreographer always adds. One
browser serves every figure of an `export_figures` call (or of a `static_session()` block);
kaleido's and choreographer's log output (e.g. a JSONDecodeError traceback their pipe
reader logs and then ignores) is kept off the terminal.

Design: `export_figure(..., strict=True)` (the default) raises a one-line `UserError`
before writing anything when a static format is asked for and cannot be made.
`strict=False` writes what it can, emits each problem as a `StaticExportWarning`, and
writes a figure's HTML instead when none of its asked formats could be made.
`export_figures` is lenient and returns the problems as notes, one line each, naming the
figure ("could not export NAME as png: ...").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

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
    """The formats to write, in the order given (a string may be comma-separated); html
    when none is given. A UserError for an unknown one: the commands call it before any
    work so that a typo costs nothing."""
    if isinstance(formats, str):
        formats = formats.split(",")
    out: list[str] = []
    for fmt in formats:
        fmt = str(fmt).strip().lower().lstrip(".")
        if not fmt:
            continue
        if fmt not in FORMATS:
            raise UserError(
                f"unknown figure format {fmt!r}; choose from {', '.join(FORMATS)}",
                option="format",
            )
        if fmt not in out:
            out.append(fmt)
    return out or ["html"]


def check_folder_path(folder: str | Path) -> None:
    """A UserError, before any work, if `folder` cannot become a folder (it, or a folder
    above it, is a file); nothing is created."""
    for path in (Path(folder), *Path(folder).parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(
                    f"cannot write into {folder}: {path} is a file; choose another folder",
                    option="out",
                )
            return


# --- HTML -------------------------------------------------------------------------------

PLOTLYJS = "plotly.min.js"
_plotlyjs_written: dict[Path, int] = {}  # folder -> mtime_ns of the plotly.min.js we wrote


def _plotlyjs_file(folder: Path) -> Path | None:
    """Write FOLDER/plotly.min.js (the installed plotly's) unless it is already there;
    returns its path when it was written."""
    path = folder / PLOTLYJS
    key = path.resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = None
    if mtime is not None and _plotlyjs_written.get(key) == mtime:
        return None
    js = plotly.offline.get_plotlyjs()
    if mtime is not None and path.stat().st_size == len(js.encode()) and path.read_text() == js:
        _plotlyjs_written[key] = mtime
        return None
    atomic_write(path, js)
    _plotlyjs_written[key] = path.stat().st_mtime_ns
    return path


def _write_html(fig: go.Figure, path: Path, plotlyjs: str) -> list[Path]:
    """PATH (and FOLDER/plotly.min.js if needed); returns the files written."""
    if plotlyjs == "inline":
        atomic_write(path, fig.to_html(include_plotlyjs=True, full_html=True))
        return [path]
    path.parent.mkdir(parents=True, exist_ok=True)
    shared = _plotlyjs_file(path.parent)
    atomic_write(path, fig.to_html(include_plotlyjs="directory", full_html=True))
    return [shared, path] if shared else [path]


# --- PNG, SVG, PDF: one headless browser ------------------------------------------------

# Loggers whose records (and warnings) a browser session keeps off the terminal: kaleido,
# choreographer (its pipe reader logs an ignored JSONDecodeError with a traceback) and
# the browser's own stderr.
_QUIET_LOGGERS = ("kaleido", "choreographer", "browser_proc", "logistro")
_BROWSER_ERRORS = ("BrowserClosedError", "BrowserFailedError", "ChromeNotFoundError")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _one_line(error: BaseException) -> str:
    """`Type: message` on one line, at most 300 characters."""
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class StaticBrowser:
    """One headless browser (kaleido) for many figures, on a private event loop in a worker
    thread (so it works under Jupyter's running loop too). Opened on the first `render`;
    `close()` never raises. Errors come out as `StaticExportError`s with a one-line
    message; after the browser could not start or died, every render fails at once."""

    def __init__(self, browser: str | None = None, timeout: float = 90) -> None:
        self.browser = browser
        self.timeout = timeout
        self.broken: str | None = None  # why the browser cannot be used any more
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._kaleido = None
        self._log = _Collect()
        self._saved: list[tuple[logging.Logger, bool, list[logging.Handler]]] = []
        self._warnings = None

    # the worker thread
    def _run(self, coro, timeout: float):
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer from the browser within {timeout:g} s") from None

    def _quiet(self) -> None:
        for name in _QUIET_LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.propagate, list(logger.handlers)))
            logger.handlers = [self._log]
            logger.propagate = False
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        for module in ("kaleido", "choreographer", "logistro"):
            warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")

    def _loud(self) -> None:
        for logger, propagate, handlers in self._saved:
            logger.handlers = handlers
            logger.propagate = propagate
        self._saved = []
        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
            self._warnings = None

    def open(self) -> None:
        """Start the browser; a StaticExportError (and `broken` set) when it cannot."""
        if self._kaleido is not None:
            return
        if self.broken:
            raise StaticExportError(self.broken)
        if self.browser is None:
            ok, reason = static_export_status()
            if not ok:
                self.broken = reason
                raise StaticExportError(reason)
            self.browser = find_browser()[0]
        self._quiet()
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(lambda loop, context: None)  # no stray tracebacks
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="initlens-kaleido", daemon=True
        )
        self._thread.start()
        try:
            self._kaleido = self._run(_open_kaleido(self.browser, self.timeout), 120)
        except Exception as e:  # noqa: BLE001 any failure to start is one line
            self.broken = (
                f"static figure export with {self.browser} failed ({_one_line(e)}); {INSTALL_HINT}"
            )
            self.close()
            raise StaticExportError(self.broken) from None

    def render(
        self,
        fig: go.Figure,
        fmt: str,
        width: int | None = None,
        height: int | None = None,
        scale: float = 1.0,
    ) -> bytes:
        """The figure as FMT (png, svg or pdf) bytes."""
        self.open()
        opts: dict = {"format": fmt, "scale": scale}
        if width:
            opts["width"] = width
        if height:
            opts["height"] = height
        try:
            return self._run(_calc_fig(self._kaleido, fig.to_dict(), opts), self.timeout + 30)
        except Exception as e:  # noqa: BLE001 a figure that fails is one line, not a traceback
            if any(c.__name__ in _BROWSER_ERRORS for c in type(e).__mro__) or isinstance(
                e, (TimeoutError, OSError)
            ):
                self.broken = f"the browser stopped ({_one_line(e)})"
                self.close()
            raise StaticExportError(_one_line(e)) from None

    def close(self) -> None:
        """Close the browser and its loop; never raises."""
        loop, self._loop = self._loop, None
        kaleido_, self._kaleido = self._kaleido, None
        if loop is not None:
            if kaleido_ is not None:
                try:
                    future = asyncio.run_coroutine_threadsafe(_close_kaleido(kaleido_), loop)
                    future.result(30)
                except Exception:  # noqa: BLE001 best effort: the process is going anyway
                    pass
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            if not loop.is_running():
                loop.close()
        self._thread = None
        self._loud()

    def __enter__(self) -> StaticBrowser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StaticExportError(Exception):
    """A figure could not be rendered as PNG/SVG/PDF; the message is one line."""


async def _open_kaleido(browser: str, timeout: float):
    import kaleido

    # mathjax=False: kaleido would otherwise load MathJax from a CDN (no network here).
    # plotly.js comes from the installed plotly package, not from a CDN.
    k = kaleido.Kaleido(
        n=1,
        path=browser,
        timeout=timeout,
        mathjax=False,
        headless=True,
        enable_sandbox=False,
        enable_gpu=False,
    )
    return await k.__aenter__()


async def _calc_fig(k, fig_dict: dict, opts: dict) -> bytes:
    return await k.calc_fig(fig_dict, opts=opts)


async def _close_kaleido(k) -> None:
    try:
        await k.__aexit__(None, None, None)
    finally:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_session: StaticBrowser | None = None  # the browser of the innermost static_session()


@contextlib.contextmanager
def static_session():
    """Share one headless browser between the `export_figure` calls in the block (it
    starts on the first PNG/SVG/PDF, if any): `with static_session(): ...`."""
    global _session
    outer, _session = _session, StaticBrowser()
    try:
        yield _session
    finally:
        _session.close()
        _session = outer


# --- writing figures --------------------------------------------------------------------


def _export(
    fig: go.Figure,
    name: str,
    base: Path,
    wanted: list[str],
    browser: StaticBrowser,
    sizes: tuple[int | None, int | None, float],
    plotlyjs: str,
) -> tuple[list[Path], list[str], bool]:
    """Write one figure leniently: the files written, one-line notes, and whether a static
    format was left out because the browser could not start or stopped (the caller says
    that once for all figures)."""
    written: list[Path] = []
    notes: list[str] = []
    made, skipped = 0, False
    for fmt in wanted:
        if fmt == "html":
            written += _write_html(fig, base.with_name(base.name + ".html"), plotlyjs)
            made += 1
            continue
        try:
            data = browser.render(fig, fmt, *sizes)
        except StaticExportError as e:
            if browser.broken:
                skipped = True
            else:
                notes.append(f"could not export {name} as {fmt}: {e}")
            continue
        path = base.with_name(f"{base.name}.{fmt}")
        atomic_write(path, data)
        written.append(path)
        made += 1
    if not made:  # none of the asked formats: HTML instead, so the figure is not lost
        written += _write_html(fig, base.with_name(base.name + ".html"), plotlyjs)
        notes = [n + "; wrote its HTML instead" for n in notes]
    return written, notes, skipped


def _broken_note(
    reason: str, static: list[str], html_asked: bool, skipped: list[str], total: int
) -> str:
    """One line for the figures left without PNG/SVG/PDF because of the browser."""
    kinds = ", ".join(static).upper()
    if len(skipped) < total:  # the browser stopped part-way
        names = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        return f"could not export {len(skipped)} of {total} figures as {kinds} ({names}): {reason}"
    if html_asked:
        return f"wrote HTML only, not {kinds}: {reason}"
    return f"wrote HTML instead of {kinds}: {reason}"


def export_figure(
    fig: go.Figure,
    path_without_suffix: str | Path,
    formats: str | Iterable[str] = ("html",),
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
    strict: bool = True,
    plotlyjs: str = "directory",
) -> list[Path]:
    """Write `fig` as PATH.html/.png/.svg/.pdf, each as asked (html when none is); returns
    the paths written (with FOLDER/plotly.min.js when it was written). `plotlyjs`:
    "directory" (HTML loads the folder's plotly.min.js) or "inline" (self-contained)."""
    if plotlyjs not in ("directory", "inline"):
        raise UserError(f"plotlyjs={plotlyjs!r}: choose directory or inline")
    base = _output_base(path_without_suffix)
    wanted = figure_formats(formats)
    static = [f for f in wanted if f in STATIC_FORMATS]
    own = None if _session is not None else StaticBrowser()
    browser = _session or own
    try:
        if strict:
            images = {}
            try:
                for fmt in static:
                    images[fmt] = browser.render(fig, fmt, width, height, scale)
            except StaticExportError as e:
                what = (
                    f"cannot export {', '.join(static).upper()}"
                    if browser.broken
                    else (f"could not export {base.name} as {fmt}")
                )
                raise UserError(f"{what}: {e}") from None
            written = []
            for fmt in wanted:
                if fmt == "html":
                    written += _write_html(fig, base.with_name(base.name + ".html"), plotlyjs)
                else:
                    atomic_write(base.with_name(f"{base.name}.{fmt}"), images[fmt])
                    written.append(base.with_name(f"{base.name}.{fmt}"))
            return written
        written, notes, skipped = _export(
            fig, base.name, base, wanted, browser, (width, height, scale), plotlyjs
        )
        if skipped:
            notes.insert(0, _broken_note(browser.broken or "", static, "html" in wanted, [], 0))
        for note in notes:
            warnings.warn(note, StaticExportWarning, stacklevel=2)
        return written
    finally:
        if own is not None:
            own.close()


def export_figures(
    figures: Mapping[str, go.Figure],
    folder: str | Path,
    formats: str | Iterable[str] = ("html",),
    *,
    plotlyjs: str = "directory",
) -> tuple[list[Path], list[str]]:
    """Export each figure as FOLDER/NAME.* (one browser for all of them); returns the files
    and one-line notes: a figure that could not be exported is named, and without a
    browser every figure is written as HTML instead."""
    wanted = figure_formats(formats)
    static = [f for f in wanted if f in STATIC_FORMATS]
    files: list[Path] = []
    notes: list[str] = []
    skipped: list[str] = []
    with StaticBrowser() as browser:
        for name, fig in figures.items():
            more, said, left_out = _export(
                fig, name, Path(folder) / name, wanted, browser, (None, None, 1.0), plotlyjs
            )
            files += more
            notes += said
            skipped += [name] if left_out else []
    if skipped:
        reason = browser.broken or ""
        notes.insert(0, _broken_note(reason, static, "html" in wanted, skipped, len(figures)))
    return files, list(dict.fromkeys(notes))


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
