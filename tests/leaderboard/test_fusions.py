"""Fused slices on a leaderboard: their rows under the layer table, the windows' start x end
grid (and heatmap), the CSV's `fuse` column; the layer table itself unchanged."""

from __future__ import annotations

import pandas as pd
import pytest

from mteb_midlayer import frames
from mteb_midlayer.leaderboard import publish, tables

from .conftest import DATA, MINILM


@pytest.fixture(scope="module")
def fused_scores() -> pd.DataFrame:
    """The committed MiniLM tree plus made-up fusion rows (windows 0-3, 3-6, 0-6; 0+6)."""
    scores = frames.scores_frame(DATA)
    base = scores[(scores["model"] == MINILM) & (scores["layer"] == 6)]
    extra = []
    for label, bonus in (("0-3", -0.2), ("3-6", -0.05), ("0-6", -0.1), ("0+6", 0.01)):
        rows = base.copy()
        rows["fuse"] = label
        rows["layer"] = max(int(x) for x in label.replace("-", "+").split("+"))
        rows["score"] = rows["score"] + bonus
        extra.append(rows)
    return pd.concat([scores, *extra], ignore_index=True)


def test_layer_table_ignores_fusions_and_fusion_table_lists_them(fused_scores):
    config = next(c for c in tables.configs(fused_scores) if c["model"] == MINILM)
    plain = tables.layer_task_table(frames.scores_frame(DATA), config, 384)
    with_fusions = tables.layer_task_table(fused_scores, config, 384)
    pd.testing.assert_frame_equal(plain.table, with_fusions.table)  # layer rows unchanged
    fused = tables.fusion_table(fused_scores, config, 384)
    assert list(fused.index) == ["0-3", "0+6", "0-6", "3-6"]  # by cost, then label
    assert list(fused[tables.BLOCKS]) == [3, 6, 6, 6]
    best_layer = plain.table[tables.AVERAGE].max()
    assert fused.loc["0+6", tables.VS_BEST_LAYER] == pytest.approx(
        fused.loc["0+6", tables.AVERAGE] - best_layer
    )
    # at equal cost: 0-3 (3 blocks) against the best of layers 0..3
    cheaper = plain.table.loc[plain.table.index <= 3, tables.AVERAGE].max()
    assert fused.loc["0-3", tables.VS_SAME_BLOCKS] == pytest.approx(
        fused.loc["0-3", tables.AVERAGE] - cheaper
    )
    grid = tables.window_grid(fused)
    assert list(grid.index) == [0, 3] and list(grid.columns) == [3, 6]
    assert grid.loc[0, 6] == pytest.approx(fused.loc["0-6", tables.AVERAGE])
    assert pd.isna(grid.loc[3, 3])


def test_published_pages_show_fusions(fused_scores, tmp_path):
    pytest.importorskip("matplotlib")
    written = publish(
        fused_scores, pd.DataFrame(columns=frames.METRIC_COLUMNS), tmp_path, benchmark="b"
    )
    md = (tmp_path / "b.md").read_text()
    assert "### Fused layers" in md and "| 0+6 " in md and "Windows (layers start..end)" in md
    layer_part = md.split("### Fused layers", 1)[0]
    assert "0+6" not in layer_part.split("## " + MINILM, 1)[1]  # fusions come under the layers
    csv = pd.read_csv(tmp_path / "b.csv", keep_default_na=False)
    assert list(csv.columns) == [*tables.CSV_COLUMNS, "fuse"]
    assert set(csv["fuse"]) == {"", "0-3", "3-6", "0-6", "0+6"}
    assert (csv[csv["fuse"] == "0+6"]["layer"] == 6).all()
    html = (tmp_path / "b.html").read_text()
    assert "fusion-table" in html and "window-table" in html
    assert any(p.name.endswith("-windows.png") for p in written)
