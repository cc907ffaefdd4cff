"""The metrics driver: `layer_metrics` runs every unsupervised metric for every layer over
tasks (or a corpus), here or one unit per task on an executor; `compute` does one task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..batching import check_batch_limits
from ..executors.work import run_metrics_unit, seed_model
from ..layers import check_final_norms, resolve_layers
from ..model import LayerModel, warn_constant_pooling
from ..plan import MetricsUnit, request_spec
from ..pooling import check_poolings
from ..spec import ModelSpec
from ..tasks.selection import (
    check_output_outside_tasks,
    select_tasks,
    task_data_dir,
    task_subsets,
)
from ..tempfiles import clean_temp_files
from .compute import (
    ROW_COLUMNS,
    VIEW_METRICS,
    Timer,
    dataset_name,
    parse_metrics,
    task_metrics,
)
from .corpus import Corpus, read_corpus

__all__ = ["layer_metrics"]

logger = logging.getLogger(__name__)


def layer_metrics(
    model: Any = None,
    *,
    spec: ModelSpec | None = None,
    tasks: Sequence[Any] | None = None,
    benchmark: str | None = None,
    data_dir: Path | str | None = None,
    texts: Path | str | Sequence[str] | None = None,
    output: Path | str = "results",
    n: int = 1000,
    metrics: Sequence[str] | str | None = "all",
    alpha: float = 1.0,
    seed: int = 42,
    n_views: int = 16,
    layers: Sequence[int] | str | None = "all",
    pooling: Sequence[str] | str | None = None,
    name: str | None = None,
    revision: str | None = None,
    tokenizer: Any = None,
    batch_size: int = 32,
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    raise_error: bool = False,
    executor: Any = None,
    final_norm: Sequence[str] | str = "last",
    max_tokens_per_batch: int | None = None,
) -> pd.DataFrame:
    """Compute the layer metrics of `model` on each task; write and return tidy rows.

    `final_norm`: "last", "every" or both; each setting's rows carry it in `final_norm` (and
    its own file). Both come from one pass per text and view (see `compute.task_metrics` for the
    memory this takes); a setting whose file exists is read back and only the missing ones are
    computed. `max_tokens_per_batch`: batch by padded tokens (changes no value).
    `pooling`: one mode, or several ("mean,weightedmean,last" or a list): every metric under
    each, rows (and files) keyed by pooling, all from the same passes; the same rows and files
    as one run per pooling.
    `executor` (an `executors.base.Executor`, e.g. `ProcessExecutor(devices=["cuda:0",
    "cuda:1"])`) runs one metrics unit per task there (the model is loaded from its spec in
    each worker); a `--texts` corpus is computed here.

    `texts`: a corpus file (plain text, one text a line, or JSON Lines with a `text` field) or a
    list of texts, computed instead of the tasks (beside them if `tasks` or `benchmark` is also
    given), sampled like a task and filed as dataset `"<file stem>-<hash of its texts>"`.
    Model options come as a `ModelSpec` or keywords, as for `sweep`. A task whose file already
    exists with the same settings (model files, max length, dtype, task data) is read back, not
    recomputed; an unreadable file is recomputed with a warning. A task that fails is recorded
    in `df.attrs["failures"]` (name -> reason) and the others still run.
    `df.attrs["timings"]` holds seconds per phase (encoding, each metric) of what was computed.
    `executor` (`executors.make_executor("ray" | "submitit", roots=[output])`): one unit per
    task (`plan.MetricsUnit`, run by `executors.work.run_metrics_unit` in a worker that loads the
    model); else all here.
    """
    check_output_outside_tasks(output, data_dir)
    chosen = parse_metrics(metrics)
    if n_views < 2 and VIEW_METRICS & set(chosen):
        raise ValueError("InfoNCE, DiME and LiDAR need n_views >= 2.")
    corpus = read_corpus(texts) if texts is not None else None  # a bad file fails before loading
    final_norms = check_final_norms(final_norm)
    check_batch_limits(batch_size, max_tokens_per_batch)
    lm = LayerModel.coerce(
        model,
        tokenizer,
        spec=spec,
        name=name,
        revision=revision,
        device=device,
        dtype=dtype,
        max_length=max_length,
        trust_remote_code=trust_remote_code,
    )
    poolings = check_poolings(pooling or (spec and spec.pooling) or lm.default_pooling)
    for mode in poolings:
        warn_constant_pooling(lm, mode)
    pooling = ",".join(poolings)  # one mode: as before; several: each file keys its own
    layer_list = resolve_layers(layers, lm.n_layers)
    if executor is not None:  # a worker elsewhere would resolve a relative path from its own cwd
        output = Path(output).absolute()
        data_dir = Path(data_dir).absolute() if data_dir else None
    failures: dict[str, str] = {}
    # A corpus stands in for a task (`task_texts` reads it); tasks too only if asked for.
    task_objects: list[Any] = [corpus] if corpus is not None else []
    if corpus is None or tasks or benchmark:
        task_objects += select_tasks(tasks, benchmark, data_dir, failures)
    if Path(output).exists() and not Path(output).is_dir():
        raise NotADirectoryError(f"--output {output} is a file; name a folder for the results.")
    out_dir = Path(output) / "metrics"
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_temp_files(out_dir)  # what killed writers left (never a live writer's)
    settings = {
        "model": lm.name,
        "revision": lm.revision,
        "pooling": pooling,
        "n": n,
        "seed": seed,
        "alpha": alpha,
        "n_views": n_views,
        "metrics": chosen,
        "layers": layer_list,
        "max_length": lm.max_length,
        "dtype": str(lm.dtype),
    }
    timer = Timer(lm.device)
    frames = []
    if executor is not None:
        remote = [t for t in task_objects if not isinstance(t, Corpus)]
        task_objects = [t for t in task_objects if isinstance(t, Corpus)]
        frames += _run_units(
            executor, lm, remote, settings, out_dir, chosen, layer_list, pooling, timer, failures,
            n=n, seed=seed, alpha=alpha, n_views=n_views, batch_size=batch_size,
            overwrite=overwrite, raise_error=raise_error, final_norms=tuple(final_norms),
            max_tokens_per_batch=max_tokens_per_batch,
        )  # fmt: skip
    for task in tqdm(task_objects, desc="Metrics", unit="task", disable=not show_progress):
        task_name = dataset_name(task)
        try:
            df = task_metrics(
                lm, task, settings, out_dir, chosen, layer_list, pooling, timer,
                n=n, seed=seed, alpha=alpha, n_views=n_views, batch_size=batch_size,
                overwrite=overwrite, show_progress=show_progress, final_norms=final_norms,
                max_tokens_per_batch=max_tokens_per_batch,
            )  # fmt: skip
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if raise_error:
                raise
            failures[task_name] = f"{type(exc).__name__}: {exc}"
            logger.error("Metrics of task %s failed: %s", task_name, exc)
            continue
        finally:
            if getattr(task, "data_loaded", False) and hasattr(task, "unload_data"):
                task.unload_data()
        frames.append(df)
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROW_COLUMNS)
    result.attrs["timings"] = dict(timer.seconds)
    result.attrs["failures"] = failures
    return result


def _run_units(
    executor: Any,
    lm: LayerModel,
    tasks: Sequence[Any],
    settings: dict[str, Any],
    out_dir: Path,
    chosen: list[str],
    layer_list: list[int],
    pooling: str,
    timer: Timer,
    failures: dict[str, str],
    *,
    raise_error: bool,
    **options: Any,
) -> list[pd.DataFrame]:
    """One `MetricsUnit` per task, run by `executor`; rows in task order, failures recorded."""
    units = [
        MetricsUnit(
            model=request_spec(lm),
            resolved=lm.current_spec().to_dict(),
            task=task.metadata.name,
            data_dir=task_data_dir(task),
            hf_subsets=task_subsets(task),
            output=str(out_dir),
            settings=settings,
            metrics=tuple(chosen),
            layers=tuple(layer_list),
            pooling=pooling,
            **options,
        )
        for task in tasks
    ]
    if units:
        seed_model(units[0].model, lm)
    done: dict[str, pd.DataFrame] = {}
    for unit, result in executor.map(run_metrics_unit, units, gpu=True):
        if isinstance(result, BaseException):
            if raise_error:
                raise result
            failures[unit.task] = f"{type(result).__name__}: {result}"
            logger.error("Metrics of task %s failed: %s", unit.task, result)
            continue
        for phase, seconds in result.attrs.get("timings", {}).items():
            timer.seconds[phase] += seconds
        done[unit.task] = result
    return [done[u.task] for u in units if u.task in done]
