"""Publish what a sweep found: Markdown, CSV, one self-contained HTML page, plots.

Frames in, files out (STYLE.md 5): `tables` shapes the scores frame for display, `render`
writes Markdown/CSV/HTML, `plots` writes PNG/SVG (matplotlib, lazily), `publish` does all.
"""

from .publish import publish, written_lines
from .render import Provenance, provenance, to_csv, to_html, to_md
from .tables import dim_table, layer_task_table, summary_table, tidy_rows

__all__ = [
    "Provenance",
    "dim_table",
    "layer_task_table",
    "provenance",
    "publish",
    "summary_table",
    "tidy_rows",
    "to_csv",
    "to_html",
    "to_md",
    "written_lines",
]
