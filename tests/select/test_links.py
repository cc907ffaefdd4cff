"""Correlations equal SciPy's and dcor's; series line up by layer; incomplete layers stay out."""

from __future__ import annotations

import math

import dcor
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mteb_midlayer import frames
from mteb_midlayer.select import correlations, link, link_frames, metric_series

from .conftest import RESULTS, metrics, scores

M = [0.3, 0.1, 0.4, 0.15, 0.9, 0.26, 0.5]
S = [0.2, 0.25, 0.31, 0.3, 0.6, 0.55, 0.8]


def test_correlations_equal_scipy_and_dcor():
    out = correlations(M, S)
    assert out["n_layers"] == 7
    assert out["spearman"] == pytest.approx(stats.spearmanr(M, S).statistic, abs=1e-12)
    assert out["pearson"] == pytest.approx(stats.pearsonr(M, S).statistic, abs=1e-12)
    assert out["kendall"] == pytest.approx(stats.kendalltau(M, S).statistic, abs=1e-12)
    dc = dcor.distance_correlation(np.array(M), np.array(S))
    assert out["dcor"] == pytest.approx(dc, abs=1e-12)
    # a hand check of the rank statistic: identical ranks give 1, reversed -1
    assert correlations([1, 2, 3], [5, 6, 9])["spearman"] == pytest.approx(1.0)
    assert correlations([1, 2, 3], [9, 6, 5])["kendall"] == pytest.approx(-1.0)


def test_correlations_nan_when_undefined_and_error_on_mismatch():
    assert math.isnan(correlations([1, 2], [3, 4])["spearman"])  # two points
    assert all(math.isnan(correlations([1, 1, 1], [1, 2, 3])[k]) for k in ("pearson", "dcor"))
    with pytest.raises(ValueError, match="differ in length"):
        correlations([1, 2, 3], [1, 2])


def test_metric_series_adds_the_mean_over_datasets_on_shared_layers():
    df = pd.concat(
        [
            metrics(
                [dict(layer=lay, value=v) for lay, v in enumerate([1.0, 2.0, 3.0])], dataset="A"
            ),
            metrics([dict(layer=lay, value=v) for lay, v in enumerate([3.0, 4.0])], dataset="B"),
        ]
    )
    out = metric_series(df)
    mean = out[out["dataset"] == "mean"].set_index("layer")["value"]
    assert mean.to_dict() == {0: 2.0, 1: 3.0}  # layer 2 lacks B: no mean there


def test_link_frames_per_task_type_and_only_complete_layers():
    rows = []
    for layer, (a, b, c) in enumerate(
        [(0.1, 0.2, 0.5), (0.3, 0.2, 0.4), (0.5, 0.6, 0.2), (0.7, 0.5, 0.1)]
    ):
        rows += [
            dict(layer=layer, task="A", task_type="STS", score=a),
            dict(layer=layer, task="B", task_type="STS", score=b),
            dict(layer=layer, task="C", task_type="Classification", score=c),
        ]
    rows.append(dict(layer=4, task="A", task_type="STS", score=0.99))  # incomplete layer
    ls = frames.layer_scores(scores(rows))
    m = [2.0, 1.0, 4.0, 3.0, 100.0]
    met = metrics([dict(layer=lay, value=v) for lay, v in enumerate(m)])
    out = link_frames(ls, met).set_index("task_type")
    s_all = [
        (0.1 + 0.2 + 0.5) / 3,
        (0.3 + 0.2 + 0.4) / 3,
        (0.5 + 0.6 + 0.2) / 3,
        (0.7 + 0.5 + 0.1) / 3,
    ]
    assert out.loc["all", "n_layers"] == 4  # layer 4 lacks B and C
    assert out.loc["all", "spearman"] == pytest.approx(stats.spearmanr(m[:4], s_all).statistic)
    s_cls = [0.5, 0.4, 0.2, 0.1]
    assert out.loc["Classification", "pearson"] == pytest.approx(
        stats.pearsonr(m[:4], s_cls).statistic
    )
    assert out.loc["STS", "dcor"] == pytest.approx(
        dcor.distance_correlation(np.array(m[:4]), np.array([0.15, 0.25, 0.55, 0.6]))
    )


def test_link_reads_a_results_folder():
    df = link(RESULTS)
    assert set(df["dataset"]) == {"BIOSSES", "STSBenchmark", "mean"}
    assert set(df["dim"]) == {128, 384}
    row = df[
        (df["metric"] == "lidar")
        & (df["dataset"] == "mean")
        & (df["dim"] == 384)
        & (df["task_type"] == "all")
    ].iloc[0]
    assert row["n_layers"] == 7
    assert row["spearman"] == pytest.approx(1.0)  # real: LiDAR rises with MiniLM's score
