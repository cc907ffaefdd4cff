"""`select` over a checkpoint series: the best layer of each checkpoint, in step order."""

from __future__ import annotations

import pandas as pd

from ..checkpoints import SERIES_COLUMNS


def checkpoint_best(scores: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame | None:
    """`best`'s unconstrained rows of the configurations that belong to a checkpoint series,
    with `checkpoint` and `step` first, ordered by model and step; None without a series."""
    if "checkpoint" not in scores.columns or scores["checkpoint"].isna().all():
        return None
    keys = ["model", "revision"]
    names = scores.dropna(subset=["checkpoint"]).drop_duplicates(keys)[[*keys, *SERIES_COLUMNS]]
    rows = best[best["budget"] == "none"].merge(names, on=keys, how="inner")
    rows = rows.sort_values(["model", "step", "checkpoint"], ignore_index=True)
    first = ["model", *SERIES_COLUMNS]
    return rows[first + [c for c in rows.columns if c not in first and c != "budget"]]
