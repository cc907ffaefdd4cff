"""Links between a metric and the task score across layers: four correlations per pair.

The statistics are SciPy's (Spearman, Pearson, Kendall tau-b) and the `dcor` package's
(distance correlation); this module only lines the two series up by layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dcor
import numpy as np
import pandas as pd
from scipy import stats

from .. import frames

#: Columns of a `link` row, besides the configuration and dim.
LINK_COLUMNS = [
    *frames.CONFIG_COLUMNS,
    "dim",
    "metric",
    "variant",
    "dataset",
    "task_type",
    "n_layers",
    "spearman",
    "pearson",
    "kendall",
    "dcor",
]
#: `dataset` of a metric averaged over every dataset it was computed on.
MEAN_DATASET = "mean"
#: Fewer layers than this give no correlation (NaN): two points always correlate perfectly.
_MIN_LAYERS = 3


def correlations(m: Sequence[float], s: Sequence[float]) -> dict[str, float]:
    """Spearman, Pearson, Kendall and distance correlation of two aligned series.

    NaN for fewer than `_MIN_LAYERS` points or a constant series (no ranking to compare).
    """
    x = np.asarray(m, dtype=float)
    y = np.asarray(s, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"series differ in length: {x.shape} vs {y.shape}")
    out = {"n_layers": len(x), "spearman": math.nan, "pearson": math.nan, "kendall": math.nan}
    out["dcor"] = math.nan
    if len(x) < _MIN_LAYERS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    out["spearman"] = float(stats.spearmanr(x, y).statistic)
    out["pearson"] = float(stats.pearsonr(x, y).statistic)
    out["kendall"] = float(stats.kendalltau(x, y).statistic)
    out["dcor"] = float(dcor.distance_correlation(x, y))
    return out


def metric_series(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (model, revision, pooling, metric, variant, dataset) and layer: the metric value.

    Adds `dataset` "mean" when a metric has several datasets: the mean over them at each layer
    that every one of them has (a layer some dataset lacks gets no mean). A non-finite value
    (NaN, inf) is missing (NaN): its layer has no value, neither alone nor in the mean, and
    `nonfinite_notes` names it; it never shrinks or skews a mean.
    """
    frames.check_metrics(metrics)
    keys = ["model", "revision", "pooling", "final_norm", "metric", "variant"]
    df = metrics[[*keys, "dataset", "layer", "value"]].copy()
    df["pooling"] = df["pooling"].fillna("")
    value = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["value"] = value.where(np.isfinite(value))
    df["bad"] = df["value"].isna()
    grouped = df.groupby([*keys, "dataset", "layer"], dropna=False)
    df = grouped["value"].mean().to_frame()
    df.loc[grouped["bad"].any(), "value"] = np.nan  # one missing duplicate: no mean
    df = df.reset_index()
    means = []
    for key, group in df.groupby(keys, dropna=False):
        wide = group.pivot(index="layer", columns="dataset", values="value")
        if wide.shape[1] < 2:
            continue
        mean = wide.mean(axis=1, skipna=False).dropna()  # a layer a dataset lacks: none
        means.append(
            pd.DataFrame(
                {
                    **dict(zip(keys, key, strict=True)),
                    "dataset": MEAN_DATASET,
                    "layer": mean.index,
                    "value": mean.to_numpy(),
                }
            )
        )
    out = pd.concat([df, *means], ignore_index=True) if means else df
    return out.sort_values([*keys, "dataset", "layer"], ignore_index=True)


def nonfinite_notes(metrics: pd.DataFrame) -> list[str]:
    """One line per (model, metric, variant, dataset) with NaN or inf values, naming the
    layers: those layers have no value for rules and correlations (nor in the datasets' mean)."""
    if metrics.empty:
        return []
    value = pd.to_numeric(metrics["value"], errors="coerce").astype(float)
    bad = metrics[~np.isfinite(value)].assign(value=value[~np.isfinite(value)])
    notes = []
    keys = ["model", "revision", "pooling", "final_norm", "metric", "variant", "dataset"]
    for key, rows in bad.fillna({"pooling": ""}).groupby(keys, dropna=False, sort=True):
        k = dict(zip(keys, key, strict=True))
        where = ", ".join(
            f"layer {int(r.layer)} ({r.value})" for r in rows.sort_values("layer").itertuples()
        )
        notes.append(
            f"non-finite metric values left out: {k['model']} {k['metric']}/{k['variant']} on "
            f"{k['dataset']}: {where}; these layers have no value for rules and correlations"
        )
    return notes


def matching_series(series: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The metric series computed for `config`'s model, revision, pooling and final norm.

    Metric rows carry no dim or normalisation (they are computed on the full pooled vector), so
    every dim and normalisation of a configuration shares them. A row without pooling matches
    any pooling.
    """
    sel = (series["model"] == config["model"]) & (series["revision"] == config["revision"])
    sel &= series["final_norm"] == config.get("final_norm", frames.DEFAULT_FINAL_NORM)
    pooling = series["pooling"]
    return series[sel & ((pooling == config["pooling"]) | (pooling == ""))]


def link_frames(layer_scores: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """`link` on frames: one row per (configuration, dim, metric, variant, dataset, task type).

    Only layers with every expected task count (`frames.complete`): a layer missing a task is
    never correlated on a smaller average.
    """
    scores = frames.complete(frames.single_layers(layer_scores)).dropna(subset=["score"])
    series = metric_series(metrics)
    rows = []
    config_keys = [*frames.CONFIG_COLUMNS, "dim"]
    for key, cell in scores.groupby(config_keys, dropna=False, sort=True):
        config = dict(zip(config_keys, key, strict=True))
        mine = matching_series(series, config)
        if mine.empty:
            continue
        for (metric, variant, dataset), m in mine.groupby(["metric", "variant", "dataset"]):
            m_by_layer = m.dropna(subset=["value"]).set_index("layer")["value"]
            for task_type, s in cell.groupby("task_type", sort=True):
                s_by_layer = s.set_index("layer")["score"]
                layers = sorted(set(m_by_layer.index) & set(s_by_layer.index))
                stats_row = correlations(m_by_layer[layers], s_by_layer[layers])
                rows.append(
                    {
                        **config,
                        "metric": metric,
                        "variant": variant,
                        "dataset": dataset,
                        "task_type": task_type,
                        **stats_row,
                    }
                )
    return pd.DataFrame(rows, columns=LINK_COLUMNS)


def link(
    results_dir,
    *,
    model: str | None = None,
    tasks: Sequence[str] | None = None,
    metrics_dir=None,
) -> pd.DataFrame:
    """Tidy correlation rows between every metric and the per-layer score of `results_dir`.

    Scores come from mteb's result files under `results_dir`; metric rows from
    `metrics_dir` (default `results_dir/metrics`). Empty when either is missing.
    """
    scores = frames.scores_frame(results_dir, model=model, tasks=tasks)
    metrics = frames.metrics_frame(metrics_dir or results_dir, model=model)
    if scores.empty or metrics.empty:
        return pd.DataFrame(columns=LINK_COLUMNS)
    return link_frames(frames.layer_scores(scores, tasks=tasks), metrics)
