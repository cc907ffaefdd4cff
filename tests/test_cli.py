"""The CLI verbs on real offline inputs: exit codes and what they print."""

from __future__ import annotations

import pandas as pd

from mteb_midlayer.cli import main


def test_help_lists_the_verbs(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for verb in ("sweep", "metrics", "table", "mirror"):
        assert verb in out


def test_sweep_then_table(shared_data, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(
        ["sweep", "minilm", "--tasks", "BIOSSES", "--data-dir", str(shared_data),
         "--layers", "3,6", "--output", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "BIOSSES" in printed and "Encoded" in printed
    assert main(["table", str(out), "--csv", str(tmp_path / "t.csv")]) == 0
    table = pd.read_csv(tmp_path / "t.csv", index_col=0)
    assert list(table.index) == [3, 6]
    assert abs(table.loc[6, "BIOSSES"] - 0.81254) < 1e-4


def test_metrics_verb(shared_data, tmp_path, capsys):
    code = main(
        ["metrics", "minilm", "--tasks", "BIOSSES", "--data-dir", str(shared_data), "--n", "20",
         "--metrics", "dataset_entropy,curvature", "--layers", "0,6", "--output", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    rows = pd.read_parquet(tmp_path / "metrics")
    assert set(rows["metric"]) == {"dataset_entropy", "curvature"}
    assert set(rows["layer"]) == {0, 6}


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["sweep", "minilm", "--tasks", "NoSuchTask", "--output", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["mirror", "NoSuchTask", "--to", str(tmp_path)]) == 2
    assert main(["table", str(tmp_path / "empty")]) == 1
