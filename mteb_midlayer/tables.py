"""Tidy tables from mteb's own result files.

mteb's `to_dataframe` keys rows by model, not by experiment, so the layer x task table is built
here from `ResultCache.load_results`, whose `ModelResult.model_meta.experiment_kwargs` say which
`(layer, dim, pooling, normalize)` each result belongs to.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import mteb
import pandas as pd

LONG_COLUMNS = [
    "model",
    "revision",
    "layer",
    "dim",
    "pooling",
    "normalize",
    "task",
    "task_type",
    "score",
    "mteb_version",
]


def layer_results(
    output: Path | str,
    *,
    model: str | None = None,
    revision: str | None = None,
    pooling: str | None = None,
) -> pd.DataFrame:
    """One row per (model, revision, layer, dim, pooling, normalize, task) with its main score.

    The score follows TASKS.md (English subsets, STS17 en-en; see `tasks.benchmark`).
    """
    from .tasks.benchmark import task_main_score

    cache = mteb.ResultCache(output)
    results = cache.load_results(
        models=[model] if model else None,
        include_remote=False,
        load_experiments="match_name",
        require_model_meta=True,
    )
    rows = []
    for model_result in results.model_results:
        meta = model_result.model_meta
        kwargs = dict(getattr(meta, "experiment_kwargs", None) or {})
        if "layer" not in kwargs:
            continue  # not one of ours
        if revision is not None and model_result.model_revision != revision:
            continue
        if pooling is not None and kwargs.get("pooling") != pooling:
            continue
        for task_result in model_result.task_results:
            split = (
                "test" if "test" in task_result.scores else next(iter(task_result.scores), "test")
            )
            try:
                score = task_main_score(task_result, split=split)
            except (KeyError, ValueError):
                continue
            rows.append(
                {
                    "model": model_result.model_name,
                    "revision": model_result.model_revision,
                    "layer": int(kwargs["layer"]),
                    "dim": int(kwargs.get("dim") or 0),
                    "pooling": kwargs.get("pooling"),
                    "normalize": bool(kwargs.get("normalize", False)),
                    "task": task_result.task_name,
                    "task_type": _task_type(task_result.task_name),
                    "score": score,
                    "mteb_version": task_result.mteb_version,
                }
            )
    df = pd.DataFrame(rows, columns=LONG_COLUMNS)
    return df.sort_values(["model", "revision", "layer", "dim", "task"], ignore_index=True)


@functools.cache
def _task_type(name: str) -> str | None:
    try:
        return mteb.get_task(name).metadata.type
    except Exception:
        return None


def layer_table(long: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Wide layer x task table of main scores, with `mean`, `n_tasks` and `missing`.

    One block per Matryoshka width: the index is `layer` for a single width, else
    `(dim, layer)`. `long` holds one configuration (model, revision, pooling, normalize).
    """
    from .tasks.benchmark import layer_average

    dims = sorted(long["dim"].unique(), reverse=True) if len(long) else []
    if len(dims) <= 1:
        return layer_average(long, tasks=tasks)
    blocks = {int(d): layer_average(long[long["dim"] == d], tasks=tasks) for d in dims}
    return pd.concat(blocks, names=["dim", "layer"])
