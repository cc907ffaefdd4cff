"""The metrics driver: `layer_metrics` runs every unsupervised metric for every layer over
tasks (or a corpus), here or one unit per task on an executor; `compute` does one task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..batching import check_batch_limits
from ..devices import parse_devices
from ..executors.local import ProcessExecutor
from ..executors.work import run_metrics_unit, seed_model
from ..fusion import check_fusable, fusion_label, parse_fusions
from ..layers import check_final_norms, resolve_layers
from ..model import LayerModel, warn_constant_pooling
from ..options import MetricOptions, PassOptions, RunOptions, route_options, with_options
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

__all__ = ["MetricsResult", "layer_metrics"]

logger = logging.getLogger(__name__)


#: Options of a sweep that `layer_metrics` does not read: naming one is a `TypeError`.
_NOT_READ = frozenset(
    {"dims", "normalize", "shard_size", "search_backend", "jobs", "dry_run"}
    | {"prompts", "include_prompt"}
)


@dataclass
class MetricsResult:
    """What `layer_metrics` returns: the metric rows and how the run went.

    `metrics`: the tidy rows (`compute.ROW_COLUMNS`; a `fuse` column with fused slices; in a
    series, `checkpoint` and `step` columns). `failures`: task name -> reason, for the tasks
    that failed (they did not stop the others). `timings`: seconds per phase (encoding, each
    metric) of what was computed, not read back. `model`: the name the rows are filed under.
    """

    metrics: pd.DataFrame
    failures: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    model: str | None = None


def layer_metrics(
    model: Any = None,
    *,
    spec: ModelSpec | None = None,
    passes: PassOptions | None = None,
    run: RunOptions | None = None,
    measure: MetricOptions | None = None,
    tasks: Sequence[Any] | None = None,
    benchmark: str | None = None,
    data_dir: Path | str | None = None,
    texts: Path | str | Sequence[str] | None = None,
    output: Path | str = "results",
    tokenizer: Any = None,
    **options: Any,
) -> MetricsResult:
    """Compute the layer metrics of `model` on each task; write the tidy rows, return them
    with the run's failures and timings (`MetricsResult`).

    Options come as objects or keywords, as for `sweep` (`options.route_options`): the model
    (`ModelSpec`), the pass (`PassOptions`: `layers`, `pooling`, `final_norm`, `fuse`: fused
    slices' pooled-vector metrics too, batching), how it runs (`RunOptions`) and what is
    measured (`MetricOptions`). Each pooling and final norm has its own rows (and file), all
    from one pass per text and view (`compute.task_metrics`); a setting whose file exists is
    read back and only the missing ones are computed.

    `texts`: a corpus file (plain text, one text a line, or JSON Lines with a `text` field) or a
    list of texts, computed instead of the tasks (beside them if `tasks` or `benchmark` is also
    given), sampled like a task and filed as dataset `"<file stem>-<hash of its texts>"`.
    A task whose file already exists with the same settings (model files, max length, dtype,
    task data) is read back, not recomputed; an unreadable file is recomputed with a warning.
    A task that fails is recorded in `failures` (name -> reason) and the others still run.
    `executor` (`make_executor("ray",
    roots=[output])`): one unit per task (`plan.MetricsUnit`, `executors.work.run_metrics_unit`
    in a worker that loads the model); a corpus is computed here.
    """
    routed = route_options("layer_metrics", options, unused=_NOT_READ)
    passes = with_options(passes, PassOptions, routed["passes"])
    run = with_options(run, RunOptions, routed["run"])
    measure = with_options(measure, MetricOptions, routed["measure"])
    check_output_outside_tasks(output, data_dir)
    chosen = parse_metrics(measure.metrics)
    if measure.n_views < 2 and VIEW_METRICS & set(chosen):
        raise ValueError("InfoNCE, DiME and LiDAR need n_views >= 2.")
    corpus = read_corpus(texts) if texts is not None else None  # a bad file fails before loading
    final_norms = check_final_norms(passes.final_norm)
    check_batch_limits(passes.batch_size, passes.max_tokens_per_batch)
    devices = parse_devices(run.devices)  # a device this machine lacks: one line, before loading
    lm = LayerModel.coerce(model, tokenizer, spec=spec, **routed["model"])
    poolings = check_poolings(passes.pooling or (spec and spec.pooling) or lm.default_pooling)
    for mode in poolings:
        warn_constant_pooling(lm, mode)
    layer_list = resolve_layers(passes.layers, lm.n_layers)
    fusions = _fusions(passes.fuse, poolings, lm.n_layers)
    if run.executor is not None or devices:  # a worker resolves a relative path from its cwd
        output = Path(output).absolute()
        data_dir = Path(data_dir).absolute() if data_dir else None
    failures: dict[str, str] = {}
    # A corpus stands in for a task (`task_texts` reads it); tasks too only if asked for.
    task_objects: list[Any] = [corpus] if corpus is not None else []
    if corpus is None or tasks or benchmark:
        task_objects += select_tasks(tasks, benchmark, data_dir, failures)
    out_dir = _metrics_dir(Path(output))
    settings = _settings(lm, ",".join(poolings), measure, chosen, layer_list, fusions)
    timer = Timer(lm.device)
    common = dict(
        batch_size=passes.batch_size, overwrite=measure.overwrite,
        final_norms=tuple(final_norms), max_tokens_per_batch=passes.max_tokens_per_batch,
    )  # fmt: skip
    frames = []
    if run.executor is not None or devices:
        remote = [t for t in task_objects if not isinstance(t, Corpus)]
        task_objects = [t for t in task_objects if isinstance(t, Corpus)]
        with _engine(run.executor, devices) as executor:
            frames += _run_units(
                executor, lm, remote, settings, out_dir, timer, failures,
                raise_error=run.raise_error, **common,
            )  # fmt: skip
    frames += _run_here(lm, task_objects, settings, out_dir, timer, failures, run, common)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROW_COLUMNS)
    return MetricsResult(rows, failures, dict(timer.seconds), lm.name)


@contextmanager
def _engine(executor: Any, devices: list[str] | None) -> Iterator[Any]:
    """Where the units run: `executor` if given, else one worker process per device of
    `devices` (`--devices cuda:0,cuda:1`: whole tasks on each), shut down afterwards."""
    if executor is not None:
        yield executor
        return
    with ProcessExecutor(devices=devices) as pool:
        yield pool


def _metrics_dir(output: Path) -> Path:
    """`<output>/metrics`, made, and cleaned of what killed writers left (never a live
    writer's)."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file; name a folder for the results.")
    out_dir = output / "metrics"
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_temp_files(out_dir)
    return out_dir


def _fusions(fuse: Any, poolings: Sequence[str], n_layers: int) -> list[tuple[int, ...]]:
    """The fused slices asked for (`fusion.parse_fusions`); a pooling that cannot fuse is refused."""
    fusions = parse_fusions(fuse, n_layers)
    for mode in poolings if fusions else ():
        check_fusable(mode)
    return fusions


def _settings(
    lm: LayerModel,
    pooling: str,
    measure: MetricOptions,
    chosen: list[str],
    layers: list[int],
    fusions: Sequence[tuple[int, ...]] = (),
) -> dict[str, Any]:
    """The run's record: what names each task's file (`compute.task_metrics`); `"fuse"` only
    with fusions (so files of runs without keep their names; like `layers`, it is no part of
    the run identity)."""
    return {
        "model": lm.name,
        "revision": lm.revision,
        "pooling": pooling,
        "n": measure.n,
        "seed": measure.seed,
        "alpha": measure.alpha,
        "n_views": measure.n_views,
        "metrics": chosen,
        "layers": layers,
        "max_length": lm.max_length,
        "dtype": str(lm.dtype),
    } | ({"fuse": [fusion_label(f) for f in fusions]} if fusions else {})


def _failed(failures: dict[str, str], task: str, exc: BaseException, raise_error: bool) -> None:
    """A task's failure recorded (and logged), or raised with `raise_error`: the same here and
    from a worker."""
    if raise_error:
        raise exc
    failures[task] = f"{type(exc).__name__}: {exc}"
    logger.error("Metrics of task %s failed: %s", task, exc)


def _run_here(
    lm: LayerModel,
    tasks: Sequence[Any],
    settings: dict[str, Any],
    out_dir: Path,
    timer: Timer,
    failures: dict[str, str],
    run: RunOptions,
    common: dict[str, Any],
) -> list[pd.DataFrame]:
    """Each task's rows computed in this process, in order; a failing task is recorded."""
    frames = []
    for task in tqdm(tasks, desc="Metrics", unit="task", disable=not run.show_progress):
        task_name = dataset_name(task)
        try:
            df = task_metrics(
                lm, task, settings, out_dir, timer, show_progress=run.show_progress, **common
            )
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            _failed(failures, task_name, exc, run.raise_error)
            continue
        finally:
            if getattr(task, "data_loaded", False) and hasattr(task, "unload_data"):
                task.unload_data()
        frames.append(df)
    return frames


def _run_units(
    executor: Any,
    lm: LayerModel,
    tasks: Sequence[Any],
    settings: dict[str, Any],
    out_dir: Path,
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
            **options,
        )
        for task in tasks
    ]
    if units:
        seed_model(units[0].model, lm)
    done: dict[str, pd.DataFrame] = {}
    for unit, result in executor.map(run_metrics_unit, units, gpu=True):
        if isinstance(result, BaseException):
            _failed(failures, unit.task, result, raise_error)
            continue
        for phase, seconds in result.timings.items():
            timer.seconds[phase] += seconds
        done[unit.task] = result.rows
    return [done[u.task] for u in units if u.task in done]
