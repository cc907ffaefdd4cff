"""Best (layer, dim) under budgets, the Pareto front, leave-one-task-out stability."""

from __future__ import annotations

import pandas as pd
import pytest

from mteb_midlayer import frames
from mteb_midlayer.select import Budget, BudgetError, best_frame, pareto_frame, stability_folds
from mteb_midlayer.select.budgets import stability_summary

from .conftest import scores

# (layer, dim) -> score, one task
GRID = {
    (1, 8): 0.30,
    (1, 4): 0.35,  # narrower *and* better than (1, 8): (1, 8) is dominated
    (2, 8): 0.50,
    (2, 4): 0.45,
    (3, 8): 0.70,
    (3, 4): 0.60,
    (4, 8): 0.65,
    (4, 4): 0.55,
}


def _grid_scores() -> pd.DataFrame:
    return scores([dict(layer=lay, dim=d, task="A", score=s) for (lay, d), s in GRID.items()])


def test_best_unconstrained_and_under_budgets():
    ls = frames.layer_scores(_grid_scores())
    budgets = [Budget(max_dim=4), Budget(max_layer=2), Budget(max_depth=0.5), Budget(max_dim=2)]
    best = best_frame(ls, budgets).set_index("budget")
    assert best.loc["none", ["layer", "dim"]].tolist() == [3, 8]
    assert best.loc["none", "score"] == pytest.approx(0.70)
    assert best.loc["dim<=4", ["layer", "dim"]].tolist() == [3, 4]
    assert best.loc["layer<=2", ["layer", "dim"]].tolist() == [2, 8]
    assert best.loc["depth<=0.5", ["layer", "dim"]].tolist() == [2, 8]  # L = 4
    assert "dim<=2" not in best.index  # nothing fits: no row
    assert (best["n_layers"] == 4).all()


def test_max_depth_uses_the_recorded_layer_count_when_the_sweep_stopped_short():
    # layers 1..4 scored of an 8-layer model: depth 0.5 allows layer 4, not layer 2
    recorded = _grid_scores().assign(n_layers=8.0)
    best = best_frame(frames.layer_scores(recorded), [Budget(max_depth=0.5)])
    best = best.set_index("budget")
    assert best.loc["depth<=0.5", ["layer", "dim"]].tolist() == [3, 8]
    assert (best["n_layers"] == 8).all()


def test_budget_validation_and_label():
    assert Budget().label == "none" and Budget().is_none
    assert Budget(max_dim=128, max_depth=0.5).label == "dim<=128,depth<=0.5"
    with pytest.raises(BudgetError, match="max_depth"):
        Budget(max_depth=1.5)
    with pytest.raises(BudgetError, match="max_dim must be a non-negative integer"):
        Budget(max_dim=-1)


def test_pareto_front_keeps_only_undominated_slices():
    front = pareto_frame(frames.layer_scores(_grid_scores()))
    got = {(r.layer, r.dim) for r in front.itertuples()}
    assert got == {(1, 4), (2, 8), (2, 4), (3, 8), (3, 4)}
    # (1, 8) loses to (1, 4); (4, *) lose to (3, *) at fewer layers


def test_leave_one_task_out_stability():
    rows = []
    # task A and B agree on layer 2; task C prefers layer 3
    table = {"A": [0.1, 0.9, 0.5], "B": [0.2, 0.8, 0.6], "C": [0.1, 0.3, 0.9]}
    for task, values in table.items():
        rows += [dict(layer=lay + 1, task=task, score=v) for lay, v in enumerate(values)]
    sc = scores(rows)
    folds = stability_folds(sc).set_index("left_out")
    # without A: mean of B, C per layer = [0.15, 0.55, 0.75] -> layer 3; regret on A 0.9 - 0.5
    assert folds.loc["A", "layer"] == 3 and folds.loc["A", "regret"] == pytest.approx(0.4)
    assert folds.loc["B", "layer"] == 3 and folds.loc["B", "regret"] == pytest.approx(0.2)
    # without C: layer 2; regret on C 0.9 - 0.3
    assert folds.loc["C", "layer"] == 2 and folds.loc["C", "regret"] == pytest.approx(0.6)
    best = best_frame(frames.layer_scores(sc))
    (summary,) = stability_summary(stability_folds(sc), best)
    assert summary["mean_regret"] == pytest.approx((0.4 + 0.2 + 0.6) / 3)
    # best on all three: means [0.133, 0.667, 0.667] -> tie -> fewer layers: layer 2
    assert summary["same_as_best"] == pytest.approx(1 / 3)
    assert summary["n_tasks"] == 3 and len(summary["folds"]) == 3


def test_stability_needs_two_tasks():
    assert stability_folds(scores([dict(layer=1, task="A", score=0.5)])).empty
