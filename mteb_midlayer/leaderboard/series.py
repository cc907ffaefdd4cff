"""A checkpoint series on a leaderboard: checkpoint x layer tables, heatmaps and step curves.

Pure tables of the frames' `checkpoint`/`step` columns (`checkpoints.read_series` fills them);
the plots reuse the leaderboard's matplotlib helpers. A scores frame without a series gives
no table and no plot.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import frames
from . import plots as P

#: What tells one series from another: the configuration less the revision (one per checkpoint).
_SERIES_KEYS = [c for c in frames.CONFIG_COLUMNS if c != "revision"]


def _order(rows: pd.DataFrame) -> list[str]:
    """Checkpoint names in step order."""
    first = rows.drop_duplicates("checkpoint").sort_values(["step", "checkpoint"])
    return list(first["checkpoint"])


def _series_groups(scores: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """(series configuration, its rows at its widest dim) per series in `scores`."""
    if "checkpoint" not in scores.columns:
        return []
    rows = scores.dropna(subset=["checkpoint"])
    out = []
    for key, group in rows.groupby(_SERIES_KEYS, dropna=False, sort=True):
        group = group[group["dim"] == group["dim"].max()]
        out.append((dict(zip(_SERIES_KEYS, key, strict=True)), group))
    return out


def _checkpoint_score_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Checkpoints down (step order), layers across: the average main score over tasks.

    A layer that lacks a task the series has elsewhere is NaN (never a mean over fewer)."""
    avg = frames.complete(
        frames.layer_scores(rows.drop(columns=["checkpoint", "step"]), by_type=False)
    )
    names = rows.drop_duplicates("revision").set_index("revision")["checkpoint"]
    avg = avg.assign(checkpoint=avg["revision"].map(names))
    table = avg.pivot_table(index="checkpoint", columns="layer", values="score", dropna=False)
    return table.reindex(_order(rows))


def _checkpoint_metric_tables(metrics: pd.DataFrame, model: str) -> dict[str, pd.DataFrame]:
    """Per "metric (variant)": checkpoints down, layers across, mean over datasets."""
    if metrics.empty or "checkpoint" not in metrics.columns:
        return {}
    rows = metrics[(metrics["model"] == model) & metrics["checkpoint"].notna()]
    rows = rows[rows["dataset"] != "mean"]
    out = {}
    for (metric, variant), part in rows.groupby(["metric", "variant"], sort=True):
        table = part.pivot_table(index="checkpoint", columns="layer", values="value")
        out[f"{metric} ({variant})"] = table.reindex(_order(part))
    return out


def _steps_of(rows: pd.DataFrame) -> pd.Series:
    """Checkpoint name -> step."""
    return rows.drop_duplicates("checkpoint").set_index("checkpoint")["step"]


def curve_layers(layers: list[int]) -> list[int]:
    """A few layers to draw score-vs-step curves of: first, middle and last."""
    layers = sorted(layers)
    return sorted({layers[0], layers[len(layers) // 2], layers[-1]})


def publish_series(
    scores: pd.DataFrame, metrics: pd.DataFrame, folder: Path, name: str, *, with_plots: bool
) -> tuple[list[Path], list[Path]]:
    """Write each series' checkpoint x layer CSV (and heatmaps and step curves); return
    (every file written, the plots to show on the page)."""
    written: list[Path] = []
    shown: list[Path] = []
    for config, rows in _series_groups(scores):
        label = f"{config['model']} ({config['pooling']}, final_norm={config['final_norm']})"
        slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(config["model"]))
        slug = f"{name}-{slug}-{config['pooling']}-{config['final_norm']}"
        table = _checkpoint_score_table(rows)
        steps = _steps_of(rows)
        csv = folder / f"{slug}-checkpoints.csv"
        table.rename(columns=lambda c: f"layer {c}").assign(step=steps).to_csv(csv)
        written.append(csv)
        if not with_plots:
            continue
        plot_dir = folder / "plots"
        heat = {"average main score ×100": 100 * table}
        heat.update(_checkpoint_metric_tables(metrics, config["model"]))
        files = P.plot_checkpoint_heatmaps(
            heat, plot_dir / f"{slug}-checkpoint-heatmap", title=f"{label}: checkpoint x layer"
        )
        written += files
        shown.append(files[0])
        layers = curve_layers([int(c) for c in table.columns])
        files = P.plot_score_vs_step(
            table[layers],
            steps,
            plot_dir / f"{slug}-score-vs-step",
            title=f"{label}: average score by training step",
        )
        written += files
        shown.append(files[0])
    return written, shown
