"""`select`: everything a practitioner needs to choose a layer, as frames plus notes.

Reads a results folder (mteb result files from `sweep`, metric rows from `metrics`) and returns
a `Selection`; `to_json` writes the contract other tools read (issue 12), `render` the terminal
view. Computation lives in `links`, `rules` and `budgets`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import frames
from ..tasks.benchmark import get_benchmark
from .budgets import Budget, best_frame, pareto_frame, stability_folds, stability_summary
from .links import LINK_COLUMNS, link_frames, nonfinite_notes
from .priors import DEFAULT_PRIOR, check_prior
from .recommend import Recommendation, RecommendationError, recommend_frames, render_lines
from .recommend import to_dict as recommendation_dict
from .rules import RULE_COLUMNS, losing_notes, rules_frame
from .series import checkpoint_best

#: JSON keys of each section's rows (the contract; extra keys may follow).
_SCORE_KEYS = [*frames.CONFIG_COLUMNS, "dim", "layer", "task_type", "score", "n_tasks"]
#: Extra key of every scores/best/pareto row: a fused slice's label ("" for one layer).
_FUSE_KEY = "fuse"


@dataclass
class Selection:
    """The frames of one `select` run, plus plain-language notes (what is missing, and why)."""

    scores: pd.DataFrame
    correlations: pd.DataFrame
    rules: pd.DataFrame
    best: pd.DataFrame
    pareto: pd.DataFrame
    stability: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    prior: str = DEFAULT_PRIOR
    #: The tasks the configurations are ranked against each other on, when their own tasks
    #: differ (the ones they all have; empty: they share none, and none is chosen across
    #: them); None when every configuration has the same tasks.
    ranked_on: list[str] | None = None
    #: `best` recomputed on `ranked_on` (None when `ranked_on` is): what `chosen` ranks.
    across: pd.DataFrame | None = None
    #: The recommended label-free pick per model (`recommend`); empty with one model.
    recommendation: Recommendation = field(default_factory=Recommendation)
    #: The best layer of each checkpoint of a series, in step order (None: no series).
    checkpoints: pd.DataFrame | None = None

    @property
    def has_scores(self) -> bool:
        return not self.scores.empty

    def chosen(self, budget: str | None = None) -> dict[str, Any] | None:
        """The single best slice over every configuration, under `budget`'s label (or "none").

        Configurations with different tasks are compared on the tasks they all have
        (`across`, `ranked_on`), never a mean over 2 tasks against a mean over 1.
        """
        best = self.across if self.across is not None else self.best
        rows = best[best["budget"] == (budget or "none")]
        if rows.empty:
            return None
        rows = frames.with_fuse(rows)
        order = ["score", "layer", "dim", "fuse"]
        return rows.sort_values(order, ascending=[False, True, True, True]).iloc[0].to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": _records(self.scores, [*_SCORE_KEYS, "n_expected", "missing", _FUSE_KEY]),
            "correlations": _records(self.correlations, LINK_COLUMNS),
            "rules": _records(self.rules, RULE_COLUMNS),
            "best": _records(self.best, list(self.best.columns)),
            "pareto": _records(self.pareto, list(self.pareto.columns)),
            "stability": _clean(self.stability),
            "prior": self.prior,
            "notes": list(self.notes),
            "ranked_on": self.ranked_on,
            "best_across": None
            if self.across is None
            else _records(self.across, list(self.across.columns)),
            **_clean(recommendation_dict(self.recommendation)),
            **(
                {}
                if self.checkpoints is None
                else {"checkpoints": _records(self.checkpoints, list(self.checkpoints.columns))}
            ),
        }


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> null, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    return _clean(df[[c for c in columns if c in df.columns]].to_dict("records"))


def to_json(selection: Selection, path: Path | str) -> Path:
    """Write the selection's JSON (keys: scores, correlations, rules, best, stability, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(selection.to_dict(), indent=2) + "\n")
    return path


def _incomplete_notes(layer_scores: pd.DataFrame) -> list[str]:
    overall = layer_scores[layer_scores["task_type"] == frames.ALL_TYPES]
    notes = []
    for row in frames.with_fuse(overall[overall["n_tasks"] < overall["n_expected"]]).itertuples():
        what = f"fusion {row.fuse}" if row.fuse else f"layer {row.layer}"
        notes.append(
            f"{row.model} {what} dim {row.dim}: missing {row.missing} "
            f"({row.n_tasks}/{row.n_expected} tasks); left out of every choice"
        )
    return notes


#: How the note on configurations with different tasks begins.
_RANKED_ON = "ranked on the tasks they all have:"


def _task_sets(scores: pd.DataFrame, best: pd.DataFrame) -> dict[tuple, list[str]]:
    """Each configuration's tasks (in first-seen order), for the configurations `best` ranks."""
    ranked = set(map(tuple, best[frames.CONFIG_COLUMNS].itertuples(index=False)))
    sets = {}
    for key, cell in scores.groupby(frames.CONFIG_COLUMNS, dropna=False, sort=True):
        if key in ranked:
            sets[key] = list(dict.fromkeys(cell["task"]))
    return sets


def _rank_across(
    selection: Selection,
    scores: pd.DataFrame,
    budgets: Sequence[Budget],
    tasks: Sequence[str] | None,
) -> None:
    """Where configurations have different tasks, rank them on the ones they all have."""
    if tasks is not None:  # every configuration is judged on these (a lacking layer is left out)
        scores = scores[scores["task"].isin(list(tasks))]
    sets = _task_sets(scores, selection.best)
    if len({frozenset(t) for t in sets.values()}) <= 1:
        return
    first = next(iter(sets.values()))
    common = [t for t in first if all(t in other for other in sets.values())]
    extra = []
    for key, names in sets.items():
        own = [t for t in names if t not in common]
        if own:
            extra.append(f"{key[0]} ({key[2]}) also has {', '.join(own)}")
    selection.ranked_on = common
    if not common:
        selection.across = selection.best.iloc[0:0]
        selection.notes.append(
            "the configurations share no task, so each is ranked apart (its own best above) "
            "and none is chosen across them: "
            + "; ".join(extra)
            + "; name one with --model (or --tasks)"
        )
        return
    shared = frames.layer_scores(scores[scores["task"].isin(common)], tasks=common)
    selection.across = best_frame(shared, list(budgets))
    selection.notes.append(
        f"{_RANKED_ON} {', '.join(common)} (the configurations' tasks differ: "
        + "; ".join(extra)
        + "); the best across configurations is their mean on these, each configuration's "
        "own best above is on its own tasks"
    )


def select_frames(
    scores: pd.DataFrame,
    metrics: pd.DataFrame,
    *,
    tasks: Sequence[str] | None = None,
    budgets: Sequence[Budget] = (),
    prior: str = DEFAULT_PRIOR,
) -> Selection:
    """`select` on frames (a scores frame and a metrics frame, either may be empty)."""
    prior = check_prior(prior)
    empty = Selection(
        scores=pd.DataFrame(columns=frames.LAYER_SCORE_COLUMNS),
        correlations=pd.DataFrame(columns=LINK_COLUMNS),
        rules=pd.DataFrame(columns=RULE_COLUMNS),
        best=best_frame(pd.DataFrame(columns=frames.LAYER_SCORE_COLUMNS)),
        pareto=pareto_frame(pd.DataFrame(columns=frames.LAYER_SCORE_COLUMNS)),
        stability=[],
        prior=prior,
    )
    if scores.empty:
        empty.notes.append(
            "no sweep results (mteb result files of layer slices) found: run "
            "`mteb-midlayer sweep` first"
        )
        return empty
    layer_scores = frames.layer_scores(scores, tasks=tasks)
    best = best_frame(layer_scores, list(budgets))
    selection = Selection(
        scores=layer_scores,
        correlations=empty.correlations,
        rules=empty.rules,
        best=best,
        pareto=pareto_frame(layer_scores),
        stability=stability_summary(stability_folds(scores, list(tasks) if tasks else None), best),
        notes=_incomplete_notes(layer_scores),
        prior=prior,
    )
    _rank_across(selection, scores, budgets, tasks)
    selection.checkpoints = checkpoint_best(scores, best)
    for budget in budgets:
        if not budget.is_none and best[best["budget"] == budget.label].empty:
            selection.notes.append(f"no swept slice fits the budget {budget.label}")
    metrics, dropped = frames.newest_metric_runs(metrics)
    selection.notes.extend(dropped)
    if metrics.empty:
        selection.notes.append("no metric rows found: only the score-based choice is shown")
        return selection
    selection.notes.extend(nonfinite_notes(metrics))
    per_layer = frames.single_layers(layer_scores)  # metrics are per layer, not per fusion
    selection.correlations = link_frames(per_layer, metrics)
    if selection.correlations.empty:
        selection.notes.append(
            "no metric rows match a swept configuration (model, revision, pooling)"
        )
    selection.rules = rules_frame(per_layer, metrics, selection.correlations, prior=prior)
    selection.notes.extend(losing_notes(selection.rules))
    selection.recommendation = recommend_frames(
        per_layer, metrics, selection.correlations, prior=prior
    )
    return selection


def select(
    results_dir: Path | str,
    *,
    model: str | None = None,
    tasks: Sequence[str] | None = None,
    metrics_dir: Path | str | None = None,
    budgets: Sequence[Budget] = (),
    prior: str = DEFAULT_PRIOR,
    label_free: bool = False,
    benchmark: str | None = None,
) -> Selection:
    """Read `results_dir` (and `metrics_dir`, default `results_dir/metrics`) and choose.

    `benchmark` (e.g. "layer-by-layer-32") names the tasks instead of `tasks`.

    A `model` or task that matches no result is named in a note (with what is there), so a
    misspelt name is never mistaken for a missing sweep. `model` keeps only that model; with
    `label_free` it names the *judged* model instead: every model is read, so its rules are
    learned on the others (`recommend`), and the frames are then narrowed to it.
    """
    if benchmark is not None:
        tasks = [task.metadata.name for task in get_benchmark(benchmark).tasks]
    everything = frames.scores_frame(results_dir)
    of_model = everything if model is None else everything[everything["model"] == model]
    filter_notes = _filter_notes(results_dir, everything, of_model, model, tasks)
    read = None if label_free else model
    scores = everything if read is None else of_model
    if tasks is not None:
        scores = scores[scores["task"].isin(list(tasks))]
    read_notes: list[str] = []
    metrics = frames.metrics_frame(metrics_dir or results_dir, model=read, notes=read_notes)
    selection = select_frames(
        scores.reset_index(drop=True), metrics, tasks=tasks, budgets=budgets, prior=prior
    )
    if not selection.has_scores and filter_notes:
        selection.notes = filter_notes  # not "no sweep results": the filters matched nothing
    else:
        selection.notes[:0] = filter_notes + read_notes
    return _judged_only(selection, model) if label_free and model else selection


def _filter_notes(
    results_dir: Path | str,
    everything: pd.DataFrame,
    of_model: pd.DataFrame,
    model: str | None,
    tasks: Sequence[str] | None,
) -> list[str]:
    """What a `model` or `tasks` filter matched nothing of, naming what is there."""
    if everything.empty:
        return []
    if model is not None and of_model.empty:
        there = ", ".join(sorted(everything["model"].unique()))
        return [f"model {model!r} matched no result under {results_dir} (models there: {there})"]
    unmatched = [t for t in tasks or [] if t not in set(of_model["task"])]
    if not unmatched:
        return []
    there = ", ".join(sorted(of_model["task"].unique()))
    whose = f" of {model}" if model else ""
    return [
        f"task {', '.join(unmatched)} matched no result{whose} under {results_dir} "
        f"(tasks there: {there})"
    ]


def _judged_only(selection: Selection, model: str) -> Selection:
    """`selection` narrowed to `model`'s rows (learned on every model; the recommendation's
    summary stays over every model). A model without scores is a `RecommendationError`."""
    if not selection.has_scores:
        return selection
    if model not in set(selection.scores["model"]):
        have = ", ".join(sorted(selection.scores["model"].unique()))
        raise RecommendationError(f"No scores of {model} in the results (models: {have}).")

    others = set(selection.scores["model"]) - {model}

    def mine(df: pd.DataFrame) -> pd.DataFrame:
        return df[df["model"] == model].reset_index(drop=True) if "model" in df else df

    return Selection(
        scores=mine(selection.scores),
        correlations=mine(selection.correlations),
        rules=mine(selection.rules),
        best=mine(selection.best),
        pareto=mine(selection.pareto),
        stability=[s for s in selection.stability if s.get("model") == model],
        notes=[n for n in selection.notes if model in n or not any(o in n for o in others)],
        prior=selection.prior,
        ranked_on=selection.ranked_on,
        across=None if selection.across is None else mine(selection.across),
        recommendation=selection.recommendation.only(model),
    )


def _summary_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows on the datasets' mean where a metric has one, else on its single dataset."""
    if df.empty:
        return df
    keys = [*frames.CONFIG_COLUMNS, "dim", "metric", "variant"]
    has_mean = df.groupby(keys, dropna=False)["dataset"].transform(lambda d: (d == "mean").any())
    return df[(df["dataset"] == "mean") | ~has_mean]


def render(selection: Selection, *, top_rules: int | None = None) -> str:
    """The terminal view: best slices, Pareto front, stability, rules and correlations."""
    out: list[str] = []
    # Configuration columns with one value everywhere are printed once, not in every table.
    constant = [
        c
        for c in frames.CONFIG_COLUMNS
        if c in selection.scores.columns and selection.scores[c].nunique(dropna=False) == 1
    ]
    if constant and selection.has_scores:
        first = selection.scores.iloc[0]
        # run settings that older results did not record are left out rather than shown empty
        shown = [c for c in constant if frames.RUN_DEFAULTS.get(c, object()) != first[c]]
        out.append("Configuration: " + "  ".join(f"{c}={first[c]}" for c in shown))
    rec = selection.recommendation
    if selection.has_scores and (not rec.rows.empty or rec.notes):
        out.append("")
        out.extend(render_lines(rec, drop=constant))

    def table(title: str, df: pd.DataFrame) -> None:
        out.append(f"\n== {title} ==")
        df = df.drop(columns=[c for c in constant if c in df.columns])
        with pd.option_context(
            "display.max_columns", 50, "display.width", 200, "display.float_format", "{:.4f}".format
        ):
            out.append(df.to_string(index=False) if not df.empty else "(none)")

    if selection.has_scores:
        table("Best (layer, dim) per configuration and budget", selection.best)
        if selection.checkpoints is not None:
            table("Best layer per checkpoint", selection.checkpoints)
        if selection.ranked_on:
            title = "Best across configurations, on the tasks they all have: "
            table(title + ", ".join(selection.ranked_on), selection.across)
        table("Pareto front: score vs layers run vs dim", selection.pareto)
        stab = pd.DataFrame(
            [{k: v for k, v in s.items() if k != "folds"} for s in selection.stability]
        )
        table("Stability (leave one task out: mean regret of the pick)", stab)
    if not selection.rules.empty:
        cols = [
            "model",
            "dim",
            "rule",
            "direction_from",
            "chosen_layer",
            "chosen_score",
            "oracle_layer",
            "oracle_score",
            "regret",
            "last_layer_score",
            "gain",
        ]
        rules = _summary_rows(selection.rules).sort_values(["model", "dim", "regret"])
        table("Label-free rules (scores on all tasks)", rules[cols].head(top_rules or len(rules)))
    if not selection.correlations.empty:
        corr = _summary_rows(selection.correlations)
        corr = corr[corr["task_type"] == frames.ALL_TYPES]
        cols = [
            "model",
            "dim",
            "metric",
            "variant",
            "dataset",
            "n_layers",
            "spearman",
            "pearson",
            "kendall",
            "dcor",
        ]
        table("Metric-score correlations across layers (all tasks)", corr[cols])
    if not selection.rules.empty:
        out.append(
            "\n(rules and correlations on the datasets' mean; every dataset and task type: --json)"
        )
    for note in selection.notes:
        out.append(f"note: {note}")
    return "\n".join(out).lstrip("\n")
