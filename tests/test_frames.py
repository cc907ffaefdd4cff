"""The tidy frames: schema checks and the per-layer aggregate (missing tasks stay visible)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mteb_midlayer import frames


def _scores(rows):
    base = dict(
        model="m/x",
        revision="r",
        pooling="mean",
        normalize=False,
        final_norm="last",
        max_length=128,
        dtype="float32",
        prompts="none",
        include_prompt=True,
        n_layers=float("nan"),
        dim=8,
        mteb_version="2",
    )
    return pd.DataFrame([{**base, **r} for r in rows])[frames.SCORE_COLUMNS]


def test_layer_scores_overall_and_per_type_with_a_missing_task():
    df = _scores(
        [
            dict(layer=0, task="A", task_type="STS", score=0.2),
            dict(layer=0, task="B", task_type="STS", score=0.4),
            dict(layer=0, task="C", task_type="Classification", score=0.9),
            dict(layer=1, task="A", task_type="STS", score=0.6),
            dict(layer=1, task="C", task_type="Classification", score=0.3),
        ]
    )
    out = frames.layer_scores(df).set_index(["layer", "task_type"])
    assert out.loc[(0, "all"), "score"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert out.loc[(0, "STS"), "score"] == pytest.approx(0.3)
    assert out.loc[(0, "all"), "missing"] == ""
    # layer 1 lacks B: averaged over what it has, and says so
    assert out.loc[(1, "all"), "n_tasks"] == 2
    assert out.loc[(1, "all"), "n_expected"] == 3
    assert out.loc[(1, "all"), "missing"] == "B"
    assert out.loc[(1, "STS"), "score"] == pytest.approx(0.6)
    overall = frames.layer_scores(df, by_type=False)
    assert frames.complete(overall)["layer"].tolist() == [0]


def test_layer_scores_with_given_tasks_marks_absent_ones():
    df = _scores([dict(layer=2, task="A", task_type="STS", score=0.5)])
    out = frames.layer_scores(df, tasks=["A", "Z"], by_type=False)
    assert len(out) == 1
    row = out.iloc[0]
    assert row["missing"] == "Z" and row["n_tasks"] == 1 and row["n_expected"] == 2
    none = frames.layer_scores(
        _scores([dict(layer=2, task="A", task_type="STS", score=float("nan"))]), by_type=False
    )
    assert math.isnan(none.iloc[0]["score"]) and none.iloc[0]["missing"] == "A"


def test_check_frame_names_missing_columns():
    with pytest.raises(frames.FrameError, match="lacks columns"):
        frames.check_scores(pd.DataFrame({"model": []}))


def test_scores_frame_refuses_a_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="No results folder"):
        frames.scores_frame(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_metrics_frame_reads_parquet_rows(tmp_path):
    (tmp_path / "metrics").mkdir()
    rows = pd.DataFrame(
        [
            dict(
                model="m/x",
                revision="r",
                dataset="A",
                layer=0,
                metric="lidar",
                variant="value",
                value=1.5,
                n=10,
                pooling="mean",
                alpha=1.0,
                seed=42,
            )
        ]
    )
    rows.to_parquet(tmp_path / "metrics" / "a.parquet", index=False)
    df = frames.metrics_frame(tmp_path)
    assert df["value"].tolist() == [1.5]
    assert frames.metrics_frame(tmp_path / "empty").empty
