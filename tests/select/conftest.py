"""Hand-made score and metric frames for the select tests (no model runs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mteb_midlayer import frames

#: A real tiny results root, committed: packaged MiniLM swept on BIOSSES and STSBenchmark
#: (every layer, dims 384 and 128), plus `metrics --n 200 --n-views 4` rows.
RESULTS = Path(__file__).resolve().parents[1] / "data" / "select_results"


def scores(rows: list[dict], **config) -> pd.DataFrame:
    """A scores frame; `config` overrides the default configuration of every row."""
    base = dict(
        model="m/a",
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
        task_type="STS",
        mteb_version="2",
    )
    return pd.DataFrame([{**base, **config, **r} for r in rows])[frames.SCORE_COLUMNS]


def metrics(rows: list[dict], **config) -> pd.DataFrame:
    base = dict(
        model="m/a",
        revision="r",
        dataset="A",
        metric="lidar",
        variant="n_views=16",
        n=100,
        pooling="mean",
        alpha=1.0,
        seed=42,
        final_norm="last",
    )
    return pd.DataFrame([{**base, **config, **r} for r in rows])[frames.METRIC_COLUMNS]


def layer_series(model: str, score_by_layer: dict[int, float], task: str = "A", **config):
    return scores(
        [dict(layer=lay, task=task, score=s) for lay, s in score_by_layer.items()],
        model=model,
        **config,
    )


def metric_by_layer(model: str, values: dict[int, float], **config):
    return metrics([dict(layer=lay, value=v) for lay, v in values.items()], model=model, **config)
