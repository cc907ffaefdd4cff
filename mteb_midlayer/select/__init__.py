"""Choose a layer: metric-score links, label-free rules with regret, budgets and stability.

Imports go one way: `frames` <- `select` (never `sweep` or `cli`).
"""

from .budgets import Budget, BudgetError, best_frame, pareto_frame, stability_folds
from .links import correlations, link, link_frames, metric_series
from .priors import DEFAULT_PRIOR, PRIOR_TABLE, UnknownPriorError, prior_direction
from .recommend import Recommendation, RecommendationError, recommend_frames
from .rules import Rule, RuleError, judge, make_rule, rules_frame
from .selection import Selection, render, select, select_frames, to_json
from .ship import NothingToExport, Shipment, ship

__all__ = [
    "DEFAULT_PRIOR",
    "PRIOR_TABLE",
    "Budget",
    "BudgetError",
    "NothingToExport",
    "Recommendation",
    "RecommendationError",
    "Rule",
    "RuleError",
    "Selection",
    "Shipment",
    "UnknownPriorError",
    "best_frame",
    "correlations",
    "judge",
    "link",
    "link_frames",
    "make_rule",
    "metric_series",
    "pareto_frame",
    "prior_direction",
    "recommend_frames",
    "render",
    "rules_frame",
    "select",
    "select_frames",
    "ship",
    "stability_folds",
    "to_json",
]
