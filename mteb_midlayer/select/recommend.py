"""The recommended label-free pick: per judged model, the rule that does best on the *other*
models in the results, applied to the judged model.

Both choices are leave-one-model-out (METRICS.md: nothing is fitted on the model being judged):

- a metric rule's direction is learned on the other models (`rules.make_rule`, else the prior);
- the rule itself is the candidate with the lowest mean regret on the other models (each other
  model counts once: its configurations and dims are averaged first; a candidate must be
  judged on every other model). "last layer" and "middle layer" are candidates like the metric
  rules and win ties, so a metric is recommended only where it beats the default on the other
  models; among tied metric rules, one on the datasets' mean goes first.

The judged model's scores only *report* the pick (its regret and gain); they never make it, so
the pick is what a user without labels for their domain would get. With one model there is
nothing to learn the choice on: no recommendation, only the prior-direction rules.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .. import frames
from .links import MEAN_DATASET, matching_series, metric_series
from .priors import DEFAULT_PRIOR, check_prior
from .rules import Rule, judge, make_rule, outcome

#: The baseline rules: always the deepest scored layer, always the one nearest the middle.
LAST_RULE = "last layer"
MIDDLE_RULE = "middle layer"
_BASELINES = (LAST_RULE, MIDDLE_RULE)
#: JSON keys of a `recommended` row (the contract; issue 23), then extras.
_RECOMMENDED_COLUMNS = [
    *frames.CONFIG_COLUMNS,
    "dim",
    "rule",
    "metric",
    "variant",
    "dataset",
    "direction",
    "direction_from",
    "rule_from",
    "others_regret",
    "others_last_regret",
    "chosen_layer",
    "chosen_score",
    "oracle_layer",
    "oracle_score",
    "regret",
    "last_layer",
    "last_layer_score",
    "gain",
    "exported",
]
#: Every candidate rule of a judged model, scored on the other models.
_CANDIDATE_COLUMNS = [
    "model",
    "rule",
    "metric",
    "variant",
    "dataset",
    "direction",
    "direction_from",
    "rule_from",
    "n_models",
    "mean_regret",
    "mean_gain",
]
#: Mean regrets closer than this are a tie (floating-point noise is not a better rule).
_TIE = 1e-12


class RecommendationError(ValueError):
    """A judged model or an export row that the results cannot give."""


@dataclass
class Recommendation:
    """`recommended` rows (one per configuration and dim of each judged model), the candidates
    they were chosen from, the summary over models, and notes."""

    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_RECOMMENDED_COLUMNS))
    candidates: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=_CANDIDATE_COLUMNS)
    )
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def only(self, model: str) -> Recommendation:
        """The rows and candidates of `model`; the summary stays over every model."""
        return Recommendation(
            rows=self.rows[self.rows["model"] == model].reset_index(drop=True),
            candidates=self.candidates[self.candidates["model"] == model].reset_index(drop=True),
            summary=dict(self.summary),
            notes=list(self.notes),
        )


@dataclass
class _Cell:
    """One configuration and dim: its overall score per layer and its metric series."""

    config: dict[str, Any]
    scores: pd.Series
    n_layers: float
    series: dict[tuple[str, str, str], pd.Series]


def _cells(layer_scores: pd.DataFrame, metrics: pd.DataFrame) -> list[_Cell]:
    scores = frames.complete(layer_scores)
    scores = scores[scores["task_type"] == frames.ALL_TYPES].dropna(subset=["score"])
    series = metric_series(metrics) if not metrics.empty else None
    keys = [*frames.CONFIG_COLUMNS, "dim"]
    cells = []
    for key, cell in scores.groupby(keys, dropna=False, sort=True):
        config = dict(zip(keys, key, strict=True))
        s = cell.set_index("layer")["score"].sort_index()
        by_metric = {}
        if series is not None:
            for mkey, m in matching_series(series, config).groupby(
                ["metric", "variant", "dataset"]
            ):
                values = m.set_index("layer")["value"].dropna()
                if set(values.index) & set(s.index):
                    by_metric[mkey] = values
        cells.append(_Cell(config, s, frames.model_layers(cell), by_metric))
    return cells


def middle_layer(layers: list[int], n_layers: float) -> int:
    """The scored layer nearest L/2 (L recorded, else the deepest scored); ties go shallower."""
    depth = n_layers if n_layers == n_layers else max(layers)
    return min(sorted(layers), key=lambda lay: abs(lay - depth / 2))


def judge_baseline(name: str, scores: pd.Series, n_layers: float = math.nan) -> dict:
    """`rules.judge` for "last layer" or "middle layer" (the last layer: gain 0 by definition)."""
    scores = scores.dropna().sort_index()
    layers = [int(x) for x in scores.index]
    if name == LAST_RULE:
        chosen = max(layers)
    elif name == MIDDLE_RULE:
        chosen = middle_layer(layers, n_layers)
    else:
        raise RecommendationError(f"{name!r} is not a baseline rule; choose one of {_BASELINES}.")
    return outcome(scores, chosen)


def _describe(rule: Rule | str) -> dict[str, Any]:
    if isinstance(rule, str):
        return dict(rule=rule, metric=None, variant=None, dataset=None, direction=None)
    return dict(
        rule=rule.name,
        metric=rule.metric,
        variant=rule.variant,
        dataset=rule.dataset,
        direction=rule.direction,
        direction_from=rule.direction_from,
    )


def _apply(rule: Rule | str, cell: _Cell, key: tuple[str, str, str] | None) -> dict:
    if isinstance(rule, str):
        return judge_baseline(rule, cell.scores, cell.n_layers)
    return judge(rule, cell.series[key], cell.scores)


def _order(item: tuple[Any, float]) -> tuple:
    """Lowest mean regret; on a tie the last layer, then the middle, then a metric rule on the
    datasets' mean (less noisy than one dataset), then the other metric rules by name."""
    key, mean = item
    if isinstance(key, str):
        rank = _BASELINES.index(key)
    else:
        rank = len(_BASELINES) + (key[2] != MEAN_DATASET)
    return (round(mean / _TIE) if math.isfinite(mean) else math.inf, rank, str(key))


def recommend_frames(
    layer_scores: pd.DataFrame,
    metrics: pd.DataFrame,
    correlations: pd.DataFrame,
    *,
    prior: str = DEFAULT_PRIOR,
) -> Recommendation:
    """The recommended label-free pick of every model in `layer_scores` (see the module)."""
    prior = check_prior(prior)
    cells = _cells(layer_scores, metrics)
    models = sorted({c.config["model"] for c in cells})
    if len(models) < 2:
        which = f" ({models[0]})" if models else ""
        return Recommendation(
            notes=[
                f"one model in the results{which}: no label-free recommendation can be learned "
                "(it is chosen on the other models); the rules below take their directions "
                f"from the prior table (prior:{prior})"
            ]
        )
    rows, candidate_rows = [], []
    for judged in models:
        others = [m for m in models if m != judged]
        rules: dict[Any, Rule | str | None] = {b: b for b in _BASELINES}
        # per candidate and other model: the regrets and gains of its configurations
        regrets: dict[Any, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        gains: dict[Any, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for cell in (c for c in cells if c.config["model"] != judged):
            keys: list[Any] = [*_BASELINES, *cell.series]
            for key in keys:
                if key not in rules:
                    rules[key] = make_rule(correlations, *key, judged_model=judged, prior=prior)
                rule = rules[key]
                if rule is None:
                    continue
                result = _apply(rule, cell, None if isinstance(key, str) else key)
                regrets[key][cell.config["model"]].append(result["regret"])
                gains[key][cell.config["model"]].append(result["gain"])
        means: dict[Any, float] = {}
        rule_from = "models:" + ",".join(others)
        for key, per_model in regrets.items():
            if sorted(per_model) != others:
                continue  # not judged on every other model: no fair comparison
            means[key] = sum(sum(v) / len(v) for v in per_model.values()) / len(per_model)
            gain = sum(sum(v) / len(v) for v in gains[key].values()) / len(per_model)
            candidate_rows.append(
                {
                    "model": judged,
                    **_describe(rules[key]),
                    "rule_from": rule_from,
                    "n_models": len(per_model),
                    "mean_regret": means[key],
                    "mean_gain": gain,
                }
            )
        for cell in (c for c in cells if c.config["model"] == judged):
            usable = [(k, m) for k, m in means.items() if isinstance(k, str) or k in cell.series]
            key, mean = min(usable, key=_order)
            rule = rules[key]
            rows.append(
                {
                    **cell.config,
                    "direction_from": None,
                    **_describe(rule),
                    "rule_from": rule_from,
                    "others_regret": mean,
                    "others_last_regret": means[LAST_RULE],
                    **_apply(rule, cell, None if isinstance(key, str) else key),
                    "exported": False,
                }
            )
    out = Recommendation(
        rows=pd.DataFrame(rows, columns=_RECOMMENDED_COLUMNS),
        candidates=pd.DataFrame(candidate_rows, columns=_CANDIDATE_COLUMNS),
    )
    out.summary = _summarize(out.rows)
    return out


def _summarize(rows: pd.DataFrame) -> dict[str, Any]:
    """Over every judged model (each counts once, its configurations averaged first): the mean
    regret of the recommended pick against always taking the last layer, and the mean gain."""
    if rows.empty:
        return {}
    df = rows.assign(last_regret=rows["oracle_score"] - rows["last_layer_score"])
    per_model = df.groupby("model")[["regret", "last_regret", "gain"]].mean()
    mean_regret = float(per_model["regret"].mean())
    last_regret = float(per_model["last_regret"].mean())
    return {
        "n_models": len(per_model),
        "models": list(per_model.index),
        "mean_regret": mean_regret,
        "last_layer_mean_regret": last_regret,
        "mean_gain": float(per_model["gain"].mean()),
        "pays": bool(mean_regret < last_regret - _TIE),
    }


def to_dict(rec: Recommendation) -> dict[str, Any]:
    """The JSON sections: `recommended` rows, `recommendation` (summary, notes, candidates)."""
    return {
        "recommended": rec.rows.to_dict("records"),
        "recommendation": {
            **rec.summary,
            "notes": list(rec.notes),
            "candidates": rec.candidates.to_dict("records"),
        },
    }


def verdict(summary: dict[str, Any]) -> str:
    """One line: does label-free selection pay on these results?"""
    if not summary:
        return ""
    word = "pays" if summary["pays"] else "does not pay: take the last layer"
    return (
        f"Over {summary['n_models']} models (each judged on rules chosen on the others): "
        f"mean regret {summary['mean_regret']:.4f} for the recommended pick vs "
        f"{summary['last_layer_mean_regret']:.4f} for always the last layer "
        f"(mean gain {summary['mean_gain']:+.4f}): label-free selection {word} here."
    )


def render_lines(rec: Recommendation, drop: list[str] = ()) -> list[str]:
    """The terminal section (printed first by `select`): the recommended rows and the verdict."""
    out = ["== Recommended label-free pick (rule chosen on the other models) =="]
    if rec.rows.empty:
        out.extend(rec.notes or ["(none)"])
        return out
    cols = [
        "model",
        "pooling",
        "normalize",
        "final_norm",
        "dim",
        "rule",
        "rule_from",
        "chosen_layer",
        "chosen_score",
        "oracle_layer",
        "regret",
        "last_layer_score",
        "gain",
    ]
    cols = [c for c in cols if c not in drop]
    with pd.option_context(
        "display.max_columns", 50, "display.width", 200, "display.float_format", "{:.4f}".format
    ):
        out.append(rec.rows[cols].to_string(index=False))
    out.append(verdict(rec.summary))
    out.extend(rec.notes)
    return out


def export_row(
    rows: pd.DataFrame,
    model: str,
    *,
    pooling: str,
    normalize: bool,
    dim: int | None = None,
    final_norm: str = frames.DEFAULT_FINAL_NORM,
) -> tuple[int, list[str]]:
    """The index of the `recommended` row to export for `model`, and notes.

    The row of the configuration asked (pooling, normalize, final_norm; `dim` else the widest
    dim swept). Several rows that differ only in run settings (max_length, dtype, prompts):
    the first in sort order, named in a note. None: a `RecommendationError` listing what the
    results have.
    """
    mine = rows[rows["model"] == model]
    if mine.empty:
        have = ", ".join(sorted(rows["model"].unique())) or "none"
        raise RecommendationError(
            f"No recommended row for {model} (recommended models: {have}); the judged model "
            "needs scores and metrics in RESULTS and at least one other model beside it."
        )
    match = mine[
        (mine["pooling"] == pooling)
        & (mine["normalize"].astype(bool) == bool(normalize))
        & (mine["final_norm"] == final_norm)
    ]
    if dim is not None:
        match = match[match["dim"] == dim]
    elif not match.empty:
        match = match[match["dim"] == match["dim"].max()]
    if match.empty:
        have = sorted(
            {
                f"pooling={r.pooling} normalize={bool(r.normalize)} final_norm={r.final_norm} "
                f"dim={int(r.dim)}"
                for r in mine.itertuples()
            }
        )
        want = f"pooling={pooling} normalize={bool(normalize)} final_norm={final_norm}"
        if dim is not None:
            want += f" dim={dim}"
        raise RecommendationError(
            f"No recommended row of {model} with {want}; the results have: "
            f"{'; '.join(have)} (choose with --pooling/--dim)."
        )
    match = match.sort_values([*frames.CONFIG_COLUMNS, "dim"])
    notes = []
    if len(match) > 1:
        notes.append(
            f"{len(match)} configurations of {model} differ only in run settings "
            f"(max_length, dtype, prompts, include_prompt); exported the first "
            f"(max_length={match.iloc[0]['max_length']}, dtype={match.iloc[0]['dtype']})"
        )
    return int(match.index[0]), notes
