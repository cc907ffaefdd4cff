"""The all-layer sweep, one of the two drivers: plan the units, hand them out, collect.

Per task, the texts go once through the network (every requested layer pooled in the same
pass) into the embedding store, then every `(layer, dim, pooling, normalize, final_norm)` slice
is scored by mteb from the store (`plan.plan_units` writes the units down, `executors` run
them). Results go to an mteb `ResultCache` under `output`, one experiment folder per slice,
and `overwrite_strategy="only-missing"` makes a rerun skip every finished slice. A crash loses
at most one shard of embeddings and the slice in flight.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .batching import check_batch_limits
from .devices import parse_devices
from .encoder import resolve_dim
from .executors.local import ProcessExecutor, SerialExecutor
from .executors.work import run_encode_unit, run_score_unit, seed_model, seed_task
from .frames import layer_results, layer_table
from .fusion import check_fusable, fusion_label, parse_fusions
from .layers import check_final_norms, resolve_layers
from .model import LayerModel, dtype_name, warn_constant_pooling
from .options import (
    MetricOptions,
    PassOptions,
    RunOptions,
    option_names,
    route_options,
    with_options,
)
from .plan import EncodeUnit, Plan, RecordedTexts, ScoreUnit, SweepPlan, plan_units
from .pooling import check_poolings
from .replay import EmbeddingSource
from .search import resolve_search_backend
from .spec import ModelSpec, prompts_hash
from .store import raise_if_disk_full
from .tasks.selection import check_output_outside_tasks, select_tasks, task_data_dir
from .tempfiles import clean_output

logger = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What `sweep` returns: the table of scores and how the run went.

    `scores`: the wide layer x task table of main scores (rows: layer, dim; a leading
    `pooling` level with several poolings, a `final_norm` level with several final norms;
    fusion rows after the layer rows), with `mean`, `n_tasks` and `missing` columns; empty in a
    dry run. `failures`: task name -> reason, for the tasks that failed (they did not stop the
    others). `plan`: the work units (`plan.Plan`; what a dry run shows). `timings`: seconds per
    phase (plan, encode, score, drain). `n_encoded`: texts that went through the network (the
    rest came from the store).
    """

    scores: pd.DataFrame
    failures: dict[str, str] = field(default_factory=dict)
    plan: Plan | None = None
    timings: dict[str, float] = field(default_factory=dict)
    n_encoded: int = 0


def _parse_dims(dims: Sequence[int] | str | None, hidden_size: int) -> list[int]:
    """`None` = full width; else the given widths, each checked against the hidden size."""
    if dims is None or dims == "full":
        return [hidden_size]
    if isinstance(dims, str):
        dims = [int(x) for x in dims.split(",") if x.strip()]
    out = sorted({resolve_dim(int(d), hidden_size) for d in dims}, reverse=True)
    if not out:
        raise ValueError("No dims requested.")
    return out


def sweep(
    model: Any = None,
    *,
    spec: ModelSpec | None = None,
    passes: PassOptions | None = None,
    run: RunOptions | None = None,
    tasks: Sequence[Any] | None = None,
    benchmark: str | None = None,
    data_dir: Path | str | None = None,
    output: Path | str = "results",
    tokenizer: Any = None,
    recorded: RecordedTexts | None = None,
    **options: Any,
) -> SweepResult:
    """Score every requested `(layer, dim)` of `model` on `tasks` with mteb; return the table
    of scores and the run's status (`SweepResult`).

    Options come as objects or as keywords, each keyword going to the object with a field of
    that name (`options.route_options`; a keyword wins over the object's field): the model as
    a `ModelSpec` or its fields (one contradicting the spec or an already loaded `LayerModel`
    is a `SpecConflictError`), what the pass computes as `PassOptions`, how the work runs as
    `RunOptions` (their docstrings say what each option does).

    The sweep is first written down as a plan of work units (`plan.py`): encode units (a
    shard of a task's texts, every layer) and score units (one `(task, slice)`), then run
    (`run_units`). `dry_run` returns the plan and an empty table, and runs nothing. A task that
    fails is recorded in the result's `failures` and does not stop the others. An existing result is reused only if it is complete and was computed from the same
    model files, settings and task data (`results.unfinished_reason`); otherwise it is
    recomputed with a warning saying why. `recorded`: task texts already recorded by an
    earlier sweep of the same tasks (a checkpoint series, `series.sweep_series`): reused
    instead of recording them again.
    """
    routed = route_options("sweep", options, unused=option_names(MetricOptions))
    passes = with_options(passes, PassOptions, routed["passes"])
    run = with_options(run, RunOptions, routed["run"])
    search_backend = resolve_search_backend(passes.search_backend)  # fail before any work
    final_norms = check_final_norms(passes.final_norm)
    device_list = parse_devices(run.devices)  # a device this machine lacks: one line, now
    check_output_outside_tasks(output, data_dir)
    check_batch_limits(passes.batch_size, passes.max_tokens_per_batch)
    lm = LayerModel.coerce(model, tokenizer, spec=spec, **routed["model"])
    if run.executor is not None:  # a worker elsewhere would resolve a relative path from its cwd
        output = Path(output).absolute()
        data_dir = Path(data_dir).absolute() if data_dir else None
    plan = _sweep_plan(lm, spec, passes, final_norms, tasks, benchmark, data_dir)
    output = _prepare_output(Path(output), run)
    source = EmbeddingSource(
        lm,
        output / "store",
        pooling=plan.poolings,
        layers=plan.store_layers,
        batch_size=passes.batch_size,
        shard_size=passes.shard_size,
        show_progress=run.show_progress,
        final_norms=final_norms,
        max_tokens_per_batch=passes.max_tokens_per_batch,
    )
    planning = dict(raise_error=run.raise_error, search_backend=search_backend, recorded=recorded)
    if run.dry_run:
        units = plan_units(plan, source, output, dry_run=True, **planning)
        return SweepResult(pd.DataFrame(), dict(plan.failures), units)
    units, n_encoded, timings = _plan_and_run(plan, source, output, run, device_list, planning)
    table = _score_table(output, lm, plan)
    return SweepResult(table, dict(plan.failures), units, timings, n_encoded)


def _prepare_output(output: Path, run: RunOptions) -> Path:
    """`output` checked (a folder, not a file) and, unless in a dry run, made and cleaned of
    what killed writers left (never a live writer's)."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file; name a folder for the results.")
    if run.jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {run.jobs}.")
    if not run.dry_run:
        output.mkdir(parents=True, exist_ok=True)
        clean_output(output)
    return output


def _plan_and_run(
    plan: SweepPlan,
    source: EmbeddingSource,
    output: Path,
    run: RunOptions,
    devices: list[str] | None,
    planning: dict[str, Any],
) -> tuple[Plan, int, dict[str, float]]:
    """Plan the units while the executors start, then run them: (the plan, how many texts went
    through the network, seconds per phase)."""
    timings: dict[str, float] = {}
    # An engine's executor (`executors.make_executor("ray" | "submitit")`) runs both kinds.
    executors = (
        contextlib.nullcontext((run.executor, run.executor))
        if run.executor is not None
        else _local_executors(run.jobs, devices)
    )
    with executors as (encoder, scorer):
        t0 = time.perf_counter()
        units = plan_units(plan, source, output, **planning)
        timings["plan_s"] = time.perf_counter() - t0
        n_encoded = run_units(
            units, plan, source.lm, output, encoder=encoder, scorer=scorer,
            raise_error=run.raise_error, show_progress=run.show_progress, timings=timings,
        )  # fmt: skip
    return units, n_encoded, timings


def _sweep_plan(
    lm: LayerModel,
    spec: ModelSpec | None,
    passes: PassOptions,
    final_norms: list[str],
    tasks: Sequence[Any] | None,
    benchmark: str | None,
    data_dir: Path | str | None,
) -> SweepPlan:
    """The sweep's slices and tasks, resolved and checked against the model; tasks that cannot
    run are in its `failures`."""
    poolings = check_poolings(passes.pooling or (spec and spec.pooling) or lm.default_pooling)
    for mode in poolings:
        warn_constant_pooling(lm, mode)
    normalize = lm.default_normalize if passes.normalize is None else bool(passes.normalize)
    fusions = parse_fusions(passes.fuse, lm.n_layers)
    for mode in poolings if fusions else ():
        check_fusable(mode)
    failures: dict[str, str] = {}
    task_objects = select_tasks(tasks, benchmark, data_dir, failures)
    return SweepPlan(
        layers=resolve_layers(passes.layers, lm.n_layers),
        dims=_parse_dims(passes.dims, lm.hidden_size),
        pooling=poolings[0],
        normalize=normalize,
        tasks=list(task_objects),
        failures=failures,
        final_norms=final_norms,
        fusions=fusions,
        poolings=poolings,
    )


def _score_table(output: Path, lm: LayerModel, plan: SweepPlan) -> pd.DataFrame:
    """The wide layer x task table of what this sweep asked for, read from the result files
    (results of other settings under the same root are left out)."""
    poolings = plan.poolings
    one = plan.pooling if len(poolings) == 1 else None
    long = layer_results(output, model=lm.name, revision=lm.revision, pooling=one)
    long = long[long["pooling"].isin(poolings)] if len(poolings) > 1 else long
    long = long[long["task"].isin([t.metadata.name for t in plan.tasks])]
    labels = [fusion_label(fused) for fused in plan.fusions]
    single = (long["fuse"] == "") & long["layer"].isin(plan.layers)
    long = long[(single | long["fuse"].isin(labels)) & long["dim"].isin(plan.dims)]
    long = long[(long["normalize"] == plan.normalize) & long["final_norm"].isin(plan.final_norms)]
    long = long[
        (long["max_length"] == lm.max_length)
        & (long["dtype"] == dtype_name(lm.dtype))
        & (long["prompts"] == prompts_hash(lm.prompts))
        & (long["include_prompt"] == (not lm.excludes_prompt()))
    ]
    return layer_table(long, tasks=[t.metadata.name for t in plan.tasks])


def run_units(
    units: Plan,
    plan: SweepPlan,
    lm: LayerModel,
    output: Path,
    *,
    encoder: Any = None,
    scorer: Any = None,
    raise_error: bool = False,
    show_progress: bool = True,
    timings: dict[str, float] | None = None,
) -> int:
    """Run the plan as a pipeline; return how many texts went through the network.

    Task by task: its encode units run (in this process, or one worker per device), then its
    score units are handed to the scoring executor (`jobs` worker processes) and this process
    goes on encoding the next task. With a `SerialExecutor` scorer (the default) a task's
    slices are scored here, one after another, before the next task is encoded. Any
    `executors.base.Executor` fits either role. A failing unit fails its task, not the sweep.
    """
    encoder = encoder or SerialExecutor()
    scorer = scorer or SerialExecutor()

    for unit in units.encode[:1]:
        seed_model(unit.model, lm)
    total = sum(units.done.values()) + len(units.score)
    bar = tqdm(total=total, desc="Scoring", unit="slice", disable=not show_progress)
    bar.update(sum(units.done.values()))
    outcomes = _Outcomes(plan, output, raise_error, bar, timings if timings is not None else {})
    in_flight = _ScoreDrain(bar)
    try:
        for task in plan.tasks:
            name = task.metadata.name
            if name in plan.failures or not units.score_for(name):
                continue
            if task.superseded_by:
                logger.warning(
                    "%s is superseded by %s in mteb; scoring %s as named.",
                    name,
                    task.superseded_by,
                    name,
                )
            bar.set_postfix_str(f"encoding {name}")
            outcomes.encoded(encoder.map(run_encode_unit, units.encode_for(name), gpu=True))
            # earlier tasks' slices finished meanwhile
            outcomes.scored(in_flight.ready(), counted=True)
            if name in plan.failures:
                bar.update(len(units.score_for(name)))
                continue
            bar.set_postfix_str(f"scoring {name}")
            if isinstance(scorer, SerialExecutor):
                seed_task(name, task_data_dir(task), task)
                outcomes.scored(scorer.map(run_score_unit, units.score_for(name), gpu=False))
                if task.data_loaded:
                    task.unload_data()
            else:
                in_flight.add(scorer.map(run_score_unit, units.score_for(name), gpu=False))
        t0 = time.perf_counter()
        outcomes.scored(in_flight.wait(), counted=True)
        outcomes.clock["drain_s"] += time.perf_counter() - t0
    finally:
        bar.close()
    return outcomes.n_encoded


class _Outcomes:
    """What the driver does with each unit's result: count texts and seconds, record a failed
    task (a full disk, `raise_error` or an interrupt stop the run instead)."""

    def __init__(
        self, plan: SweepPlan, output: Path, raise_error: bool, bar: Any, clock: dict[str, float]
    ) -> None:
        self.plan, self.output, self.raise_error, self.bar = plan, output, raise_error, bar
        self.clock = clock
        for key in ("encode_s", "score_s", "drain_s"):
            clock.setdefault(key, 0.0)
        self.n_encoded = 0

    def failed(self, task: str, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        raise_if_disk_full(exc, self.output)  # stops the run: every later task would fail
        if self.raise_error:
            raise exc
        failures = self.plan.failures
        if task not in failures:
            failures[task] = f"{type(exc).__name__}: {exc}"
            trace = "".join(traceback.format_exception(exc))
            logger.error("Task %s failed: %s\n%s", task, failures[task], trace)

    def encoded(self, results: Iterable[tuple[EncodeUnit, Any]]) -> None:
        for unit, result in results:
            if isinstance(result, BaseException):
                self.failed(unit.task, result)
            else:
                self.n_encoded += result.n_encoded
                self.clock["encode_s"] += result.seconds

    def scored(
        self, results: Iterable[tuple[ScoreUnit | None, Any]], counted: bool = False
    ) -> None:
        for unit, result in results:
            if unit is None:  # the executor itself broke (not one unit): stop the run
                raise result
            if not counted:
                self.bar.update(1)
            if isinstance(result, BaseException):
                self.failed(unit.task, result)
            else:
                self.clock["score_s"] += result.seconds


class _ScoreDrain:
    """Score results of the tasks in flight, read as they finish by one thread per task.

    The driver is busy encoding the next task meanwhile; these threads only move the progress
    bar and queue each `(unit, result)`. Failures are handled by the driver when it takes them
    (`ready` between tasks, `wait` at the end), in its own thread, so `raise_error` and a full
    disk still stop the run there. An executor that breaks as a whole is queued as
    `(None, exception)`.
    """

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._done: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []

    def add(self, results: Iterator[tuple[ScoreUnit, Any]]) -> None:
        thread = threading.Thread(target=self._pump, args=(results,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pump(self, results: Iterator[tuple[ScoreUnit, Any]]) -> None:
        try:
            for item in results:
                self._bar.update(1)
                self._done.put(item)
        except BaseException as exc:  # handed to the driver's thread
            self._done.put((None, exc))

    def ready(self) -> list[tuple[ScoreUnit | None, Any]]:
        """What has finished so far, without waiting."""
        items = []
        while True:
            try:
                items.append(self._done.get_nowait())
            except queue.Empty:
                return items

    def wait(self) -> list[tuple[ScoreUnit | None, Any]]:
        """Everything, once every task in flight is scored."""
        for thread in self._threads:
            thread.join()
        return self.ready()


@contextlib.contextmanager
def _local_executors(jobs: int, devices: Sequence[str] | None) -> Iterator[tuple[Any, Any]]:
    """(encode executor, score executor) on this machine: worker processes where asked for
    (`jobs` > 1 scorers; one encoder per device), else this process. Workers start at once
    and are shut down on exit (pending units cancelled when an error leaves the block)."""
    encoder = ProcessExecutor(devices=devices) if devices else SerialExecutor()
    try:
        scorer = ProcessExecutor(jobs=jobs) if jobs > 1 else SerialExecutor()
    except BaseException:
        encoder.shutdown(cancel=True)
        raise
    failed = True
    try:
        yield encoder, scorer
        failed = False
    finally:
        for executor in (encoder, scorer):
            executor.shutdown(cancel=failed)
