"""select over fused slices: best slice, budgets (a fusion costs its deepest layer), Pareto,
stability, and the per-layer rules that must ignore fusions."""

from __future__ import annotations

import pandas as pd
import pytest

from mteb_midlayer import frames
from mteb_midlayer.select import Budget, select_frames
from mteb_midlayer.select.links import link_frames


def _scores(rows):
    base = {
        "model": "m", "revision": "r", "pooling": "mean", "normalize": True,
        "final_norm": "last", "max_length": 0, "dtype": "", "prompts": "",
        "include_prompt": True, "task_type": "STS", "mteb_version": "x", "n_layers": 6.0,
    }  # fmt: skip
    df = pd.DataFrame([base | r for r in rows])
    return df[[*frames.SCORE_COLUMNS, frames.FUSE]]


def test_select_best_and_budgets_count_a_fusions_deepest_layer():
    rows = []
    for task, bonus in (("A", 0.0), ("B", 0.01)):
        rows += [
            {"layer": 3, "dim": 8, "task": task, "score": 0.70 + bonus, "fuse": ""},
            {"layer": 6, "dim": 8, "task": task, "score": 0.79 + bonus, "fuse": ""},
            {"layer": 6, "dim": 8, "task": task, "score": 0.81 + bonus, "fuse": "0+6"},
            {"layer": 3, "dim": 8, "task": task, "score": 0.72 + bonus, "fuse": "0+3"},
        ]
    selection = select_frames(
        _scores(rows), pd.DataFrame(), budgets=[Budget(max_layer=3), Budget(max_layer=2)]
    )
    best = selection.chosen()
    assert (best["fuse"], best["layer"]) == ("0+6", 6)
    assert best["score"] == pytest.approx(0.815)
    under = selection.chosen("layer<=3")
    assert (under["fuse"], under["layer"]) == ("0+3", 3)  # costs its deepest layer: fits
    assert selection.chosen("layer<=2") is None
    assert set(selection.pareto["fuse"]) == {"0+6", "0+3"}
    assert selection.stability[0]["same_as_best"] == 1.0
    assert all(f["fuse"] == "0+6" for f in selection.stability[0]["folds"])
    record = selection.to_dict()["scores"][0]
    assert "fuse" in record


def test_metric_links_line_up_single_layers_only():
    """A metric is per layer: a fusion at layer 6 must not be read as layer 6's score."""
    rows = [
        {"layer": layer, "dim": 8, "task": "A", "score": score, "fuse": fuse}
        for layer, score, fuse in [(0, 0.5, ""), (3, 0.6, ""), (6, 0.7, ""), (6, 0.1, "0+6")]
    ]
    per_layer = frames.layer_scores(_scores(rows))
    metrics = pd.DataFrame(
        [
            {"model": "m", "revision": "r", "dataset": "A", "layer": layer, "metric": "x",
             "variant": "v", "value": float(layer), "n": 10, "pooling": "mean", "alpha": 1.0,
             "seed": 0, "final_norm": "last"}
            for layer in (0, 3, 6)
        ]
    )  # fmt: skip
    links = link_frames(per_layer, metrics)
    overall = links[(links["task_type"] == "all") & (links["dataset"] == "A")]
    assert overall["spearman"].iloc[0] == pytest.approx(1.0)  # 0.5 < 0.6 < 0.7, not 0.1
