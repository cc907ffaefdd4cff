"""Leaderboard pieces of a checkpoint series that the end-to-end test (tests/test_series.py)
does not reach: a checkpoint without a step, and the choice of curve layers."""

from __future__ import annotations

import pandas as pd

from mteb_midlayer.leaderboard import plots as P
from mteb_midlayer.leaderboard.series import curve_layers


def test_score_vs_step_skips_a_checkpoint_without_a_step(tmp_path):
    table = pd.DataFrame({0: [0.2, 0.3], 2: [0.25, 0.4]}, index=["step1000", "main"])
    steps = pd.Series([1000, pd.NA], index=["step1000", "main"], dtype="Int64")
    paths = P.plot_score_vs_step(table, steps, tmp_path / "curve", title="t")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size for p in paths)


def test_curve_layers_first_middle_last():
    assert curve_layers([0, 1, 2, 3, 4, 5, 6]) == [0, 3, 6]
    assert curve_layers([2, 0]) == [0, 2]
    assert curve_layers([5]) == [5]
