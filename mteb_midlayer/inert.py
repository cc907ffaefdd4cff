"""Make names from results inert where they are shown: CSV cells and Markdown text.

A model name, revision or task name comes from `--name`, `--revision` or a `model_meta.json`
someone sent; it reaches a spreadsheet or a Markdown renderer as is unless it passes here.

- CSV (OWASP "CSV Injection"): a text cell that starts with `=`, `+`, `-`, `@`, tab or CR is
  run as a formula by spreadsheets; it gets a leading single quote. Numbers stay numbers (a
  negative float is written as a number, never quoted).
- Markdown: characters that start markup (`<`, `|`, `[`, `*`, backticks, ...) are escaped
  with a backslash, newlines become spaces, so a name renders as the text it is.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: What makes a spreadsheet read a text cell as a formula (OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: ASCII punctuation that starts Markdown/HTML markup (CommonMark escapes any of them with "\").
_MD_SPECIAL = frozenset("\\`*_{}[]<>()#!|~&$")


def csv_cell(value: object) -> object:
    """`value` itself, or a text value that a spreadsheet would run, prefixed with "'"."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv_frame(df: pd.DataFrame, *, index: bool = False) -> pd.DataFrame:
    """A copy of `df` with every text cell (and column name; index levels when `index`) inert.

    Only text cells change; numeric, boolean and missing cells are left as they are.
    """
    out = df.reset_index() if index else df.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(csv_cell, na_action="ignore")
    out.columns = [csv_cell(c) if isinstance(c, str) else c for c in out.columns]
    return out


def write_csv(df: pd.DataFrame, path: Path | str, *, index: bool = False) -> Path:
    """Write `df` as CSV with every text cell inert (the one writer of every CSV we publish).

    With `index`, the index levels become leading columns (as `DataFrame.to_csv` writes them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = _csv_frame(df, index=index)
    # The csv module quotes a cell holding a line terminator character, and "\r" is one only
    # in "\r\n": a text cell with a CR keeps its row whole only with CRLF line ends.
    has_cr = any(
        out[c].map(lambda v: isinstance(v, str) and "\r" in v).any() for c in out.columns
    ) or any(isinstance(c, str) and "\r" in c for c in out.columns)
    out.to_csv(path, index=False, lineterminator="\r\n" if has_cr else "\n")
    return path


def md_text(value: object) -> str:
    """`value` as Markdown text that renders literally (no HTML, links, emphasis, table cells)."""
    text = " ".join(str(value).splitlines()) if value is not None else ""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in text)


def md_code(value: object) -> str:
    """`value` as an inline code span, fenced with more backticks than it holds in a row."""
    text = " ".join(str(value).splitlines())
    run = longest = 0
    for c in text:
        run = run + 1 if c == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
