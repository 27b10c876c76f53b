"""The HTML page a report is built into: headings, paragraphs, tables and figures in order.

Report sections (the report's own and each instrument's) append to a `Report`; `html()`
gives the self-contained page (plotly.js inlined: it opens offline).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.caption { color: #555; font-size: 0.92em; margin: 0.2em 0 1.5em; }
.verdict { background: #f6f8fa; border-left: 4px solid #1f77b4; padding: 0.6em 1em; }
.warn { background: #fff4e5; border-left: 4px solid #ff7f0e; padding: 0.6em 1em; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _missing(value) -> bool:
    return (
        value is None
        or value is pd.NA
        or (isinstance(value, float) and pd.isna(value))
        or (isinstance(value, str) and not value.strip())
    )


def _cell(value, steps: bool = False) -> str:
    """A cell's text: a missing step reads "never", any other missing value "-"."""
    if _missing(value):
        return "never" if steps else "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _is_step(column) -> bool:
    return "step" in str(column)


def table_html(df: pd.DataFrame) -> str:
    """A plain HTML table; missing steps read "never", other missing values "-", floats
    get 3 decimals. Columns with nothing in any row are left out (a missing step is
    something: "never"), and so is the name of the column index (pandas would draw it as a
    column of empty cells)."""
    empty = [c for c in df.columns if not _is_step(c) and df[c].map(_missing).all()]
    df = df.drop(columns=empty if len(df) else []).rename_axis(columns=None)
    cells = pd.DataFrame(
        {c: [_cell(v, _is_step(c)) for v in df[c]] for c in df.columns}, columns=df.columns
    )
    return (
        '<div style="overflow-x:auto">'
        + cells.to_html(index=False, border=0, escape=True)
        + "</div>"
    )


def paragraphs(sentences: list[str], css: str = "verdict") -> str:
    """Sentences as paragraphs in a highlighted box."""
    return (
        f'<div class="{css}">' + "".join(f"<p>{html.escape(s)}</p>" for s in sentences) + "</div>"
    )


@dataclass
class Report:
    """The report's HTML parts in order, and its figures by file name (for export)."""

    parts: list[str] = field(default_factory=list)
    figures: dict[str, go.Figure] = field(default_factory=dict)

    def add(self, *html_parts: str) -> None:
        """Append HTML parts (headings, paragraphs, tables)."""
        self.parts += html_parts

    def figure(self, name: str, fig: go.Figure, caption: str) -> None:
        """Append `fig` with its caption (also the exported file's subject)."""
        self.figures[name] = fig
        self.add(
            fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True}),
            f'<p class="caption">{html.escape(caption)}</p>',
        )

    def html(self, title: str) -> str:
        """The whole page, plotly.js inlined."""
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            f"<script>{plotly.offline.get_plotlyjs()}</script></head><body>"
            + "\n".join(self.parts)
            + "</body></html>"
        )
