"""Sweep and metrics over a checkpoint series: several checkpoints of one model, in step order.

Each checkpoint is loaded once and run as today's single model (its own revision: a Hub commit
or a local folder's `local-<12 hex>`), under the series' one model name, so its results are
filed exactly like a single run's. What the series adds: the manifest `OUTPUT/series/<name>.json`
(revision -> checkpoint name and step, `checkpoints.record_checkpoint`), which gives the frames
their `checkpoint` and `step` columns; and one plan of the tasks' texts for the whole series
(`plan.RecordedTexts`): mteb's recording run happens once per task, not once per checkpoint.
Each checkpoint still encodes each text once (its own weights).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .checkpoints import Checkpoint, record_checkpoint, resolve_checkpoints, series_name
from .metrics.run import MetricsResult, layer_metrics
from .model import LayerModel
from .plan import RecordedTexts
from .spec import ModelSpec
from .sweep import sweep

__all__ = ["SeriesResult", "load_checkpoint", "metrics_series", "sweep_series"]


@dataclass
class SeriesResult:
    """What `sweep_series` returns: every checkpoint's table of scores, and how the run went.

    `scores`: one row per checkpoint and (layer, dim) with `checkpoint`, `step`, `revision`,
    `mean` and the task columns. `failures`: "checkpoint: task" -> reason. `recorded`: the
    series' `RecordedTexts` (tasks recorded once). `n_encoded`: texts that went through the
    network, all checkpoints together. `model`: the name the results are filed under.
    """

    scores: pd.DataFrame
    failures: dict[str, str]
    recorded: RecordedTexts
    n_encoded: int
    model: str


def load_checkpoint(checkpoint: Checkpoint, name: str, spec: ModelSpec | None) -> LayerModel:
    """One checkpoint as a `LayerModel` named `name` (the series' name), with its own revision."""
    base = spec or ModelSpec()
    if base.revision is not None:
        raise ValueError(
            "A series names each checkpoint's revision itself; drop --revision "
            "(use --revisions for Hub revisions)."
        )
    return LayerModel.coerce(
        None, spec=base.replace(source=checkpoint.source, name=name, revision=checkpoint.revision)
    )


def _series(model: Any, revisions: Any, spec: ModelSpec | None, name: str | None):
    source = model if model is not None else (spec.source if spec else None)
    checkpoints = resolve_checkpoints(source, revisions)
    name = name or (spec.name if spec else None) or series_name(source, revisions)
    if spec is not None:
        spec = spec.replace(name=None, source=None)
    return checkpoints, name, spec


def _with_pooling(options: dict[str, Any], spec: ModelSpec | None) -> dict[str, Any]:
    """The spec's pooling as the run's (a loaded model is passed on, not its spec)."""
    if spec is not None and spec.pooling and options.get("pooling") is None:
        return {**options, "pooling": spec.pooling}
    return options


def _over_checkpoints(
    model: Any,
    revisions: Any,
    spec: ModelSpec | None,
    name: str | None,
    options: dict[str, Any],
    run_one: Callable[[LayerModel, Checkpoint], Any],
) -> tuple[list[Any], dict[str, str], str]:
    """`run_one(lm, checkpoint)` for every checkpoint in step order, each loaded once and let go
    before the next: their results, their failures ("checkpoint: task" -> reason), and the
    name the results are filed under."""
    checkpoints, name, spec = _series(model, revisions, spec, name)
    options.update(_with_pooling(options, spec))
    results, failures, filed_as = [], {}, name
    for checkpoint in checkpoints:
        lm = load_checkpoint(checkpoint, name, spec)
        result = run_one(lm, checkpoint)
        filed_as = lm.name  # the name results are filed under (e.g. "local/run")
        failures.update({f"{checkpoint.name}: {t}": r for t, r in result.failures.items()})
        results.append(result)
        del lm
        gc.collect()
    return results, failures, filed_as


def sweep_series(
    model: Any = None,
    *,
    revisions: Sequence[str] | str | None = None,
    spec: ModelSpec | None = None,
    name: str | None = None,
    output: Any = "results",
    **options: Any,
) -> SeriesResult:
    """`sweep` every checkpoint of a series; return one long frame of the tables.

    `model`: a folder pattern (`run/checkpoint-*`, ordered by the step in each name) or, with
    `revisions` (`"step1000,step8000,main"`), a Hub id. `name`: the model name all checkpoints
    are filed under (default: the Hub id, or the folder holding the checkpoints). `options` go
    to `sweep` for every checkpoint. Returns a `SeriesResult`.
    """
    recorded = RecordedTexts()
    parts: list[pd.DataFrame] = []

    def one(lm: LayerModel, checkpoint: Checkpoint) -> Any:
        result = sweep(lm, output=output, recorded=recorded, **options)
        if not options.get("dry_run"):
            record_checkpoint(output, lm.name, lm.revision, checkpoint)
        flat = result.scores.reset_index()
        flat.insert(0, "revision", lm.revision)
        flat.insert(0, "step", checkpoint.step)
        flat.insert(0, "checkpoint", checkpoint.name)
        parts.append(flat)
        return result

    results, failures, filed_as = _over_checkpoints(model, revisions, spec, name, options, one)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    n_encoded = sum(r.n_encoded for r in results)
    return SeriesResult(out, failures, recorded, n_encoded, filed_as)


def metrics_series(
    model: Any = None,
    *,
    revisions: Sequence[str] | str | None = None,
    spec: ModelSpec | None = None,
    name: str | None = None,
    output: Any = "results",
    **options: Any,
) -> MetricsResult:
    """`layer_metrics` for every checkpoint of a series (as `sweep_series`); the rows of all
    checkpoints with `checkpoint` and `step` columns."""

    def one(lm: LayerModel, checkpoint: Checkpoint) -> MetricsResult:
        result = layer_metrics(lm, output=output, **options)
        record_checkpoint(output, lm.name, lm.revision, checkpoint)
        result.metrics = result.metrics.assign(checkpoint=checkpoint.name, step=checkpoint.step)
        return result

    results, failures, filed_as = _over_checkpoints(model, revisions, spec, name, options, one)
    rows = [r.metrics for r in results]
    timings: dict[str, float] = {}
    for r in results:
        for phase, seconds in r.timings.items():
            timings[phase] = timings.get(phase, 0.0) + seconds
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return MetricsResult(out, failures, timings, filed_as)
