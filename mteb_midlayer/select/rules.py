"""Label-free rules: pick a layer by one metric, judged against the scores.

A rule's direction is never fitted on the model it is judged on (METRICS.md): it is the sign of
the mean Spearman correlation of the metric with `s(l)` on the *other* models in the results
(leave-one-model-out), else the prior table's row (`priors`), else there is no rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import frames
from .links import matching_series, metric_series
from .priors import DEFAULT_PRIOR, check_prior, prior_direction

_DIRECTIONS = ("max", "min")
RULE_COLUMNS = [
    *frames.CONFIG_COLUMNS,
    "dim",
    "rule",
    "metric",
    "variant",
    "dataset",
    "direction",
    "direction_from",
    "chosen_layer",
    "chosen_score",
    "oracle_layer",
    "oracle_score",
    "regret",
    "last_layer",
    "last_layer_score",
    "gain",
    "missing_layers",
]


class RuleError(ValueError):
    """A rule built with a direction or source it cannot have."""


@dataclass(frozen=True)
class Rule:
    """Take the layer where `metric/variant` on `dataset` is largest ("max") or smallest."""

    metric: str
    variant: str
    dataset: str
    direction: str
    direction_from: str

    def __post_init__(self) -> None:
        if self.direction not in _DIRECTIONS:
            raise RuleError(f"Rule direction {self.direction!r} is not one of {_DIRECTIONS}.")
        if not self.direction_from.startswith(("prior:", "models:")):
            raise RuleError(
                f"direction_from {self.direction_from!r} must start with 'prior:' or 'models:'."
            )

    @property
    def name(self) -> str:
        return f"arg{self.direction} {self.metric}/{self.variant} @ {self.dataset}"

    def choose(self, values: pd.Series) -> int:
        """The layer (index of `values`) the rule picks; ties go to the shallower layer.

        NaN and inf are no value: an inf is never "the largest"."""
        values = values.astype(float)
        values = values[np.isfinite(values)].sort_index()
        if values.empty:
            raise RuleError(f"{self.name}: no metric values to choose from.")
        best = values.max() if self.direction == "max" else values.min()
        return int(values.index[values == best][0])


def _learned_direction(
    correlations: pd.DataFrame, metric: str, variant: str, dataset: str, judged_model: str
) -> tuple[str, str] | None:
    """("max"|"min", "models:<names>") from the other models' mean Spearman, or None.

    Each other model counts once (its configurations and dims averaged first); rows of
    `judged_model` are dropped before anything is computed.
    """
    rows = correlations[
        (correlations["model"] != judged_model)
        & (correlations["task_type"] == frames.ALL_TYPES)
        & (correlations["metric"] == metric)
        & (correlations["variant"] == variant)
        & (correlations["dataset"] == dataset)
    ].dropna(subset=["spearman"])
    if rows.empty:
        return None
    per_model = rows.groupby("model")["spearman"].mean()
    mean = float(per_model.mean())
    if mean == 0 or math.isnan(mean):
        return None
    return ("max" if mean > 0 else "min"), "models:" + ",".join(sorted(per_model.index))


def make_rule(
    correlations: pd.DataFrame,
    metric: str,
    variant: str,
    dataset: str,
    judged_model: str,
    prior: str = DEFAULT_PRIOR,
) -> Rule | None:
    """The rule for one metric on one model: learned on other models, else the prior row."""
    learned = _learned_direction(correlations, metric, variant, dataset, judged_model)
    if learned is not None:
        return Rule(metric, variant, dataset, *learned)
    direction = prior_direction(metric, variant, prior)
    if direction is None:
        return None
    return Rule(metric, variant, dataset, direction, f"prior:{check_prior(prior)}")


def judge(rule: Rule, values: pd.Series, scores: pd.Series) -> dict:
    """Chosen, oracle and last layer with their scores, regret and gain.

    `values` and `scores` are indexed by layer; only layers with both count. The last layer
    is the deepest layer with a score. `missing_layers` names the scored layers where the
    metric has no (finite) value: the rule could not consider them.
    """
    scores = scores.dropna().sort_index()
    values = values[np.isfinite(pd.to_numeric(values, errors="coerce").astype(float))]
    layers = sorted(set(values.index) & set(scores.index))
    chosen = rule.choose(values[layers])
    missing = ", ".join(str(int(x)) for x in scores.index if x not in set(layers))
    return {**outcome(scores, chosen), "missing_layers": missing}


def outcome(scores: pd.Series, chosen: int) -> dict:
    """What choosing layer `chosen` gives against the oracle and the last layer of `scores`
    (layer -> score, no NaN): the row every rule, metric or baseline, reports."""
    oracle = int(scores.idxmax())
    last = int(scores.index.max())
    return {
        "chosen_layer": chosen,
        "chosen_score": float(scores[chosen]),
        "oracle_layer": oracle,
        "oracle_score": float(scores[oracle]),
        "regret": float(scores[oracle] - scores[chosen]),
        "last_layer": last,
        "last_layer_score": float(scores[last]),
        "gain": float(scores[chosen] - scores[last]),
    }


def rules_frame(
    layer_scores: pd.DataFrame,
    metrics: pd.DataFrame,
    correlations: pd.DataFrame,
    *,
    prior: str = DEFAULT_PRIOR,
) -> pd.DataFrame:
    """Every rule judged on every configuration and dim (scores on task type "all")."""
    check_prior(prior)
    scores = frames.complete(frames.single_layers(layer_scores))  # rules pick layers
    scores = scores[scores["task_type"] == frames.ALL_TYPES].dropna(subset=["score"])
    if scores.empty or metrics.empty:
        return pd.DataFrame(columns=RULE_COLUMNS)
    series = metric_series(metrics)
    rows = []
    config_keys = [*frames.CONFIG_COLUMNS, "dim"]
    for key, cell in scores.groupby(config_keys, dropna=False, sort=True):
        config = dict(zip(config_keys, key, strict=True))
        s = cell.set_index("layer")["score"]
        for (metric, variant, dataset), m in matching_series(series, config).groupby(
            ["metric", "variant", "dataset"]
        ):
            values = m.set_index("layer")["value"]
            if not set(values.dropna().index) & set(s.index):
                continue
            rule = make_rule(correlations, metric, variant, dataset, config["model"], prior)
            if rule is None:
                continue
            rows.append(
                {
                    **config,
                    "rule": rule.name,
                    "metric": metric,
                    "variant": variant,
                    "dataset": dataset,
                    "direction": rule.direction,
                    "direction_from": rule.direction_from,
                    **judge(rule, values, s),
                }
            )
    return pd.DataFrame(rows, columns=RULE_COLUMNS)


def losing_notes(rules: pd.DataFrame) -> list[str]:
    """One line per configuration where no label-free rule beats taking the last layer."""
    notes = []
    config_keys = [*frames.CONFIG_COLUMNS, "dim"]
    for key, cell in rules.groupby(config_keys, dropna=False, sort=True):
        if (cell["gain"] <= 0).all():
            label = ", ".join(f"{k}={v}" for k, v in zip(config_keys, key, strict=True))
            notes.append(
                f"no label-free rule beats the last layer on {label} "
                f"(best gain {cell['gain'].max():+.4f})"
            )
    return notes
