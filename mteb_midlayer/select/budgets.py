"""The practitioner's choice: the best (layer, dim) overall and under budgets, the Pareto
front of (score, layers run, dim), and how stable the choice is when a task is left out.

Everything reads the per-layer aggregate of `frames.layer_scores` and only its complete layers
(every expected task present); the best is taken over (layer, dim) within each configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .. import frames

#: A configuration without its width: the best is taken over (layer, dim) inside one.
_GROUP = frames.CONFIG_COLUMNS
#: `fuse`: a fused slice's label ("" for one layer); its `layer` is its deepest fused layer,
#: so budgets and the Pareto front count what a fusion costs (its deepest layer's blocks).
_BEST_COLUMNS = [*_GROUP, "budget", "layer", "dim", "score", "n_layers", "fuse"]
_PARETO_COLUMNS = [*_GROUP, "layer", "dim", "score", "fuse"]
_FOLD_COLUMNS = [*_GROUP, "left_out", "layer", "dim", "score", "best_score", "regret", "fuse"]


class BudgetError(ValueError):
    """A budget that no slice could meet by construction (zero or negative, depth > 1)."""


@dataclass(frozen=True)
class Budget:
    """Limits on the exported slice: width (storage), layer index or depth fraction (latency)."""

    max_dim: int | None = None
    max_layer: int | None = None
    max_depth: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_dim", "max_layer"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
                raise BudgetError(f"{name} must be a non-negative integer, got {value!r}.")
        if self.max_depth is not None and not 0 < self.max_depth <= 1:
            raise BudgetError(
                f"max_depth is a fraction of the layers in (0, 1], got {self.max_depth}."
            )

    @property
    def is_none(self) -> bool:
        return self.max_dim is None and self.max_layer is None and self.max_depth is None

    @property
    def label(self) -> str:
        """ "none", or the limits, e.g. "dim<=128,layer<=3"."""
        parts = []
        if self.max_dim is not None:
            parts.append(f"dim<={self.max_dim}")
        if self.max_layer is not None:
            parts.append(f"layer<={self.max_layer}")
        if self.max_depth is not None:
            parts.append(f"depth<={self.max_depth:g}")
        return ",".join(parts) or "none"

    def allows(self, layer: int, dim: int, n_layers: int) -> bool:
        """Whether slice (layer, dim) of a model with `n_layers` blocks fits."""
        if self.max_dim is not None and dim > self.max_dim:
            return False
        if self.max_layer is not None and layer > self.max_layer:
            return False
        return self.max_depth is None or layer <= self.max_depth * n_layers


def _overall(layer_scores: pd.DataFrame) -> pd.DataFrame:
    df = frames.complete(frames.with_fuse(layer_scores))
    return df[df["task_type"] == frames.ALL_TYPES].dropna(subset=["score"])


def _pick(cell: pd.DataFrame) -> pd.Series:
    """Highest score; ties go to fewer layers run, then the narrower slice, then a single
    layer before a fusion."""
    order = ["score", "layer", "dim", "fuse"]
    return cell.sort_values(order, ascending=[False, True, True, True]).iloc[0]


def best_frame(layer_scores: pd.DataFrame, budgets: list[Budget] | None = None) -> pd.DataFrame:
    """The best (layer, dim) per configuration, unconstrained ("none") and under each budget.

    `n_layers` is the model's layer count L recorded with its results, else (results written
    before it was recorded) the deepest layer swept for the configuration; `max_depth` is a
    fraction of it. A budget nothing meets gives no row.
    """
    budgets = [Budget(), *[b for b in budgets or [] if not b.is_none]]
    rows = []
    for key, cell in _overall(layer_scores).groupby(_GROUP, dropna=False, sort=True):
        recorded = frames.model_layers(cell)
        n_layers = int(recorded) if recorded == recorded else int(cell["layer"].max())
        for budget in budgets:
            ok = [budget.allows(int(r.layer), int(r.dim), n_layers) for r in cell.itertuples()]
            fits = cell[ok]
            if fits.empty:
                continue
            top = _pick(fits)
            rows.append(
                {
                    **dict(zip(_GROUP, key, strict=True)),
                    "budget": budget.label,
                    "layer": int(top["layer"]),
                    "dim": int(top["dim"]),
                    "score": float(top["score"]),
                    "n_layers": n_layers,
                    "fuse": top["fuse"],
                }
            )
    return pd.DataFrame(rows, columns=_BEST_COLUMNS)


def pareto_frame(layer_scores: pd.DataFrame) -> pd.DataFrame:
    """Slices no other slice beats on all of score (higher), layers run and dim (fewer).

    Layers run = the layer index: the exported model runs blocks 1..layer (a fusion's deepest).
    """
    rows = []
    for key, cell in _overall(layer_scores).groupby(_GROUP, dropna=False, sort=True):
        points = cell[["layer", "dim", "score", "fuse"]].to_numpy()
        for layer, dim, score, fuse in points:
            dominated = any(
                s >= score and lay <= layer and d <= dim and (s, lay, d) != (score, layer, dim)
                for lay, d, s, _ in points
            )
            if not dominated:
                rows.append(
                    {
                        **dict(zip(_GROUP, key, strict=True)),
                        "layer": int(layer),
                        "dim": int(dim),
                        "score": float(score),
                        "fuse": fuse,
                    }
                )
    df = pd.DataFrame(rows, columns=_PARETO_COLUMNS)
    return df.drop_duplicates().sort_values([*_GROUP, "layer", "dim"], ignore_index=True)


def stability_folds(scores: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """Leave-one-task-out: per configuration and left-out task, the (layer, dim) that is best
    on the other tasks, and its regret on the left-out one (best score there minus its score).

    Needs two tasks or more; a slice missing any of the other tasks is not a candidate.
    Fused slices are candidates like layers (`fuse` names the pick's fusion, "" for a layer).
    """
    frames.check_scores(frames.with_fuse(scores))
    scores = frames.with_fuse(scores)
    rows = []
    for key, cell in scores.groupby(_GROUP, dropna=False, sort=True):
        names = list(dict.fromkeys(tasks if tasks is not None else cell["task"]))
        if len(names) < 2:
            continue
        wide = cell.pivot_table(index=["layer", "dim", "fuse"], columns="task", values="score")
        wide = wide.reindex(columns=names)
        for task in names:
            others = wide.drop(columns=task).dropna()
            held = wide[task].dropna()
            if others.empty or held.empty:
                continue
            mean = others.mean(axis=1).rename("score").reset_index()
            pick = _pick(mean)
            at = (int(pick["layer"]), int(pick["dim"]), pick["fuse"])
            score = float(held.get(at, math.nan))
            best = float(held.max())
            rows.append(
                {
                    **dict(zip(_GROUP, key, strict=True)),
                    "left_out": task,
                    "layer": at[0],
                    "dim": at[1],
                    "score": score,
                    "best_score": best,
                    "regret": best - score,
                    "fuse": at[2],
                }
            )
    return pd.DataFrame(rows, columns=_FOLD_COLUMNS)


def stability_summary(folds: pd.DataFrame, best: pd.DataFrame) -> list[dict]:
    """Per configuration: mean leave-one-task-out regret, and how often the fold's pick is the
    pick made on every task (1.0 = the choice does not hinge on any single task)."""
    out = []
    unconstrained = best[best["budget"] == "none"]
    for key, cell in folds.groupby(_GROUP, dropna=False, sort=True):
        config = dict(zip(_GROUP, key, strict=True))
        match = unconstrained
        for col, value in config.items():
            match = match[match[col] == value]
        same = math.nan
        if not match.empty:
            top = match.iloc[0]
            fuse = top["fuse"] if "fuse" in top.index else frames.NO_FUSION
            same = float(
                (
                    (cell["layer"] == top["layer"])
                    & (cell["dim"] == top["dim"])
                    & (cell["fuse"] == fuse)
                ).mean()
            )
        out.append(
            {
                **config,
                "n_tasks": len(cell),
                "mean_regret": float(cell["regret"].mean()),
                "same_as_best": same,
                "folds": cell[
                    ["left_out", "layer", "dim", "score", "best_score", "regret", "fuse"]
                ].to_dict("records"),
            }
        )
    return out
