"""The metrics driver's work on an executor: one unit per (model, task), run anywhere.

A `MetricsUnit` carries plain data (the model spec as a dict, the task's name and data folder
or the corpus itself, the settings that key its file), so a Ray task or a Slurm job can load
the model (once per process), compute the task's rows and write its parquet file under the
shared result root, exactly as `layer_metrics` does in one process. A task whose file stands
is read back, not recomputed, so a rerun after a killed worker only does what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

#: This process's model, keyed by its spec (a worker runs one model's units).
_MODELS: dict[str, Any] = {}


class MetricsUnitError(RuntimeError):
    """The worker's model is not the one the driver planned with."""


@dataclass(frozen=True)
class MetricsUnit:
    """One task's (or corpus's) metric rows for one model."""

    model: dict[str, Any]
    settings: dict[str, Any]
    task: Any  # a task name (rebuilt from `data_dir`) or a `Corpus`
    data_dir: str | None
    out_dir: str
    chosen: tuple[str, ...]
    layers: tuple[int, ...]
    pooling: str
    n: int
    seed: int
    alpha: float
    n_views: int
    batch_size: int
    overwrite: bool

    @property
    def name(self) -> str:
        return self.task if isinstance(self.task, str) else self.task.dataset


@dataclass(frozen=True)
class MetricsReport:
    rows: pd.DataFrame
    seconds: dict[str, float]


def metrics_units(
    lm: Any, tasks: Sequence[Any], model: dict[str, Any], **common: Any
) -> list[MetricsUnit]:
    """One unit per task object or corpus of `layer_metrics`."""
    from .corpus import Corpus

    units = []
    for task in tasks:
        if isinstance(task, Corpus):
            units.append(MetricsUnit(model=model, task=task, data_dir=None, **common))
            continue
        folder = getattr(task, "local_data_dir", None)
        data_dir = str(Path(folder).absolute().parent) if folder is not None else None
        units.append(MetricsUnit(model=model, task=task.metadata.name, data_dir=data_dir, **common))
    return units


def _model(unit: MetricsUnit) -> Any:
    from ..model import LayerModel
    from ..spec import ModelSpec

    key = json.dumps(unit.model, sort_keys=True, default=str)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = LayerModel.load(spec=ModelSpec.from_dict(unit.model))
    lm = _MODELS[key]
    for field in ("model", "revision", "max_length"):
        have = getattr(lm, "name" if field == "model" else field)
        if have != unit.settings[field]:
            raise MetricsUnitError(
                f"The worker's model has {field}={have!r}, the plan {unit.settings[field]!r}: "
                "the model changed since the plan was made."
            )
    return lm


def run_metrics_unit(unit: MetricsUnit) -> MetricsReport:
    """A worker's side: load the model and the task, compute (or read back) the task's rows."""
    from ..sweep import select_tasks
    from .driver import Timer, _task_metrics

    lm = _model(unit)
    task = unit.task
    if isinstance(task, str):
        task = select_tasks([task], None, unit.data_dir)[0]
    timer = Timer(lm.device)
    try:
        rows = _task_metrics(
            lm, task, unit.settings, Path(unit.out_dir), list(unit.chosen), list(unit.layers),
            unit.pooling, timer, n=unit.n, seed=unit.seed, alpha=unit.alpha,
            n_views=unit.n_views, batch_size=unit.batch_size, overwrite=unit.overwrite,
            show_progress=False,
        )  # fmt: skip
    finally:
        if getattr(task, "data_loaded", False) and hasattr(task, "unload_data"):
            task.unload_data()
    return MetricsReport(rows=rows, seconds=dict(timer.seconds))


def run_metrics_units(
    executor: Any, units: Sequence[MetricsUnit], failures: dict[str, str], *, raise_error: bool
) -> tuple[list[pd.DataFrame], dict[str, float]]:
    """Run `units` on `executor`; the tasks' rows in plan order and the summed phase seconds.
    A failing unit is recorded in `failures` (name -> reason) and the others still run."""
    import logging

    logger = logging.getLogger(__name__)
    rows: dict[str, pd.DataFrame] = {}
    seconds: dict[str, float] = {}
    for unit, result in executor.map(run_metrics_unit, units, gpu=True):
        if isinstance(result, BaseException):
            if raise_error or not isinstance(result, Exception):
                raise result
            failures[unit.name] = f"{type(result).__name__}: {result}"
            logger.error("Metrics of task %s failed: %s", unit.name, failures[unit.name])
            continue
        rows[unit.name] = result.rows
        for phase, value in result.seconds.items():
            seconds[phase] = seconds.get(phase, 0.0) + value
    return [rows[u.name] for u in units if u.name in rows], seconds
