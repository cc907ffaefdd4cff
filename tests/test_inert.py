"""Names made inert for spreadsheets (CSV) and Markdown renderers."""

from __future__ import annotations

import pandas as pd
import pytest

from mteb_midlayer.inert import csv_cell, md_code, md_text, write_csv


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('=HYPERLINK("http://x","y")/m', '\'=HYPERLINK("http://x","y")/m'),
        ("+SUM(1)", "'+SUM(1)"),
        ("-2+3", "'-2+3"),
        ("@A1", "'@A1"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("org/m", "org/m"),
        ("", ""),
        (-0.5, -0.5),
        (3, 3),
        (None, None),
    ],
)
def test_csv_cell_quotes_formula_text_only(value, written):
    assert csv_cell(value) == written


def test_write_csv_keeps_numbers_and_rows(tmp_path):
    df = pd.DataFrame(
        {"model": ["=1+1", "ok", "\rCR"], "score": [-0.25, 0.5, float("nan")], "n": [1, -2, 3]}
    ).set_index("model")
    path = write_csv(df, tmp_path / "x.csv", index=True)
    back = pd.read_csv(path)
    assert back["model"].tolist() == ["'=1+1", "ok", "'\rCR"]  # the CR stays in its cell
    assert back["score"].dtype == float and back["score"].iloc[0] == -0.25
    assert back["n"].tolist() == [1, -2, 3]
    assert path.read_bytes().decode().startswith("model,score,n\r\n")  # CRLF only when a CR
    plain = write_csv(df.reset_index().iloc[:2], tmp_path / "y.csv")
    assert b"\r" not in plain.read_bytes()


def test_md_text_escapes_markup_and_md_code_fences_backticks():
    assert md_text("<script>a|b</script>") == "\\<script\\>a\\|b\\</script\\>"
    assert md_text("final_norm=last\nx") == "final\\_norm=last x"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`x") == "`` `x ``"
