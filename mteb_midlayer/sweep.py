"""The all-layer sweep: one forward pass per text, every `(layer, dim)` scored by mteb.

For each task: the first slice's `mteb.evaluate` run fills the store (every requested layer
pooled in the same pass), every later slice replays from it. Results go to an mteb
`ResultCache` under `output`, one experiment folder per `(layer, dim, pooling, normalize,
final_norm)`, and
`overwrite_strategy="only-missing"` makes a rerun skip every finished slice. A crash loses at
most one shard of embeddings and the slice in flight.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .batching import check_batch_limits
from .encoder import resolve_dim
from .executors.local import ProcessExecutor, SerialExecutor
from .executors.work import run_encode_unit, run_score_unit, seed_model, seed_task
from .fusion import check_fusable, fusion_label, parse_fusions
from .layers import check_final_norms, resolve_layers
from .model import LayerModel, dtype_name, warn_constant_pooling
from .plan import Plan, RecordedTexts, ScoreUnit, SweepPlan, plan_units
from .pooling import check_poolings
from .replay import EmbeddingSource
from .search import resolve_search_backend
from .spec import ModelSpec, prompts_hash
from .store import raise_if_disk_full
from .tables import layer_results, layer_table
from .tasks.selection import check_output_outside_tasks, select_tasks, task_data_dir
from .tempfiles import clean_output

logger = logging.getLogger(__name__)


def parse_dims(dims: Sequence[int] | str | None, hidden_size: int) -> list[int]:
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
    tasks: Sequence[Any] | None = None,
    benchmark: str | None = None,
    layers: Sequence[int] | str | None = "all",
    dims: Sequence[int] | str | None = None,
    pooling: Sequence[str] | str | None = None,
    normalize: bool | None = None,
    data_dir: Path | str | None = None,
    output: Path | str = "results",
    name: str | None = None,
    revision: str | None = None,
    tokenizer: Any = None,
    batch_size: int = 32,
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
    prompts: dict[str, str] | None = None,
    shard_size: int | None = None,
    show_progress: bool = True,
    raise_error: bool = False,
    jobs: int = 1,
    devices: Sequence[str] | str | None = None,
    dry_run: bool = False,
    search_backend: str = "auto",  # issue 14: retrieval/reranking search, auto | faiss | torch
    final_norm: Sequence[str] | str = "last",
    max_tokens_per_batch: int | None = None,
    executor: Any = None,
    include_prompt: bool | None = None,
    fuse: str | Sequence[Any] | None = None,
    recorded: RecordedTexts | None = None,
) -> pd.DataFrame:
    """Score every requested `(layer, dim)` of `model` on `tasks` with mteb; return the table.

    The sweep is first written down as a plan of work units (`plan.py`): encode units (a
    shard of a task's texts, every layer) and score units (one `(task, slice)`). `jobs` > 1
    scores the slices of a task in that many worker processes while this process encodes the
    next task; `devices` (e.g. ``"cuda:0,cuda:1"``) encodes in one worker process per device.
    `executor` (e.g. `executors.make_executor("ray", roots=[output])`) runs every unit on an
    engine instead (Ray, Slurm); `jobs` and `devices` are then unused.
    `dry_run` returns an empty table with the plan in `attrs["plan"]` and runs nothing.

    `pooling` and `normalize` default to the model's own (a sentence-transformers model's
    Pooling and Normalize modules), so the last layer scores exactly as the published model.
    Model options come as a `ModelSpec` or as keywords (a keyword contradicting the spec or an
    already loaded `LayerModel` is a `SpecConflictError`).
    Returns the wide layer x task table of main scores (rows: layer, dim), with `mean`,
    `n_tasks` and `missing` columns; tasks that failed are listed in `df.attrs["failures"]`
    (task name -> reason) and did not stop the others. An existing result is reused only if it
    is complete and was computed from the same model files, settings and task data
    (`results.unfinished_reason`); otherwise it is recomputed with a warning saying why.
    `search_backend`: how retrieval and reranking tasks search (`auto`: faiss when installed;
    scores move at rounding level only); recorded in each result's run identity.
    `final_norm`: "last", "every" or both ("last,every"): each is its own slice, all from one
    forward pass per text. With several, the table gains a `final_norm` index level.
    `pooling`: one mode, or several ("mean,weightedmean,last" or a list): each is its own slice
    and store, exactly as its single-pooling sweep files it, all pooled in one forward pass per
    text; with several, the table gains a leading `pooling` index level.
    `max_tokens_per_batch`: batch by a budget of padded tokens (no effect on any result).
    `include_prompt`: False leaves prompt tokens out of the vectors (sentence-transformers'
    `Pooling(include_prompt=False)`; default: the model's own); with prompts, part of every
    result's and stored vector's identity.
    `fuse`: fused layer sets scored too, from the same store (`fusion.parse_fusions`:
    ``"0+6,4-6"``, ``"windows:2"``, ``"first-last"``); their layers join the store's, their
    rows follow the layer rows of the table, labelled by the fusion (e.g. ``"0+6"``).
    `recorded`: task texts already recorded by an earlier sweep of the same tasks (a checkpoint
    series, `series.sweep_series`): reused instead of recording them again.
    """
    search_backend = resolve_search_backend(search_backend)  # fail before any work
    final_norms = check_final_norms(final_norm)
    device_list = parse_devices(devices)  # a device this machine lacks: one line, now
    check_output_outside_tasks(output, data_dir)
    check_batch_limits(batch_size, max_tokens_per_batch)
    lm = LayerModel.coerce(
        model,
        tokenizer,
        spec=spec,
        prompts=prompts,
        name=name,
        revision=revision,
        device=device,
        dtype=dtype,
        max_length=max_length,
        trust_remote_code=trust_remote_code,
        include_prompt=include_prompt,
    )
    poolings = check_poolings(pooling or (spec and spec.pooling) or lm.default_pooling)
    pooling = poolings[0]
    for mode in poolings:
        warn_constant_pooling(lm, mode)
    normalize = lm.default_normalize if normalize is None else bool(normalize)
    fusions = parse_fusions(fuse, lm.n_layers)
    for mode in poolings if fusions else ():
        check_fusable(mode)
    if executor is not None:  # a worker elsewhere would resolve a relative path from its own cwd
        output = Path(output).absolute()
        data_dir = Path(data_dir).absolute() if data_dir else None
    failures: dict[str, str] = {}
    task_objects = select_tasks(tasks, benchmark, data_dir, failures)
    plan = SweepPlan(
        layers=resolve_layers(layers, lm.n_layers),
        dims=parse_dims(dims, lm.hidden_size),
        pooling=pooling,
        normalize=normalize,
        tasks=list(task_objects),
        failures=failures,
        final_norms=final_norms,
        fusions=fusions,
        poolings=poolings,
    )
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file; name a folder for the results.")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    if not dry_run:
        output.mkdir(parents=True, exist_ok=True)
        clean_output(output)  # what killed writers left (never a live writer's)
    source = EmbeddingSource(
        lm,
        output / "store",
        pooling=poolings,
        layers=plan.store_layers,
        batch_size=batch_size,
        shard_size=shard_size,
        show_progress=show_progress,
        final_norms=final_norms,
        max_tokens_per_batch=max_tokens_per_batch,
    )
    if dry_run:
        units = plan_units(
            plan, source, output, dry_run=True, raise_error=raise_error,
            search_backend=search_backend, recorded=recorded,
        )  # fmt: skip
        table = pd.DataFrame()
        table.attrs["plan"] = units
        table.attrs["failures"] = dict(plan.failures)
        return table
    timings: dict[str, float] = {}
    # An engine's executor (`executors.make_executor("ray" | "submitit")`) runs both kinds.
    executors = (
        contextlib.nullcontext((executor, executor))
        if executor is not None
        else local_executors(jobs, device_list)
    )
    with executors as (encoder, scorer):
        t0 = time.perf_counter()
        units = plan_units(
            plan, source, output, raise_error=raise_error, search_backend=search_backend,
            recorded=recorded,
        )  # fmt: skip
        timings["plan_s"] = time.perf_counter() - t0
        n_encoded = run_units(
            units,
            plan,
            lm,
            output,
            encoder=encoder,
            scorer=scorer,
            raise_error=raise_error,
            show_progress=show_progress,
            timings=timings,
        )
    long = layer_results(
        output, model=lm.name, revision=lm.revision, pooling=pooling if len(poolings) == 1 else None
    )
    long = long[long["pooling"].isin(poolings)] if len(poolings) > 1 else long
    long = long[long["task"].isin([t.metadata.name for t in plan.tasks])]
    labels = [fusion_label(fused) for fused in plan.fusions]
    single = (long["fuse"] == "") & long["layer"].isin(plan.layers)
    long = long[(single | long["fuse"].isin(labels)) & long["dim"].isin(plan.dims)]
    long = long[(long["normalize"] == normalize) & long["final_norm"].isin(final_norms)]
    long = long[
        (long["max_length"] == lm.max_length)
        & (long["dtype"] == dtype_name(lm.dtype))
        & (long["prompts"] == prompts_hash(lm.prompts))
        & (long["include_prompt"] == (not lm.excludes_prompt()))
    ]
    table = layer_table(long, tasks=[t.metadata.name for t in plan.tasks])
    table.attrs["failures"] = dict(plan.failures)
    table.attrs["n_encoded"] = n_encoded
    table.attrs["plan"] = units
    table.attrs["timings"] = timings
    return table


def parse_devices(devices: Sequence[str] | str | None) -> list[str] | None:
    """``"cuda:0,cuda:1"`` -> one encode worker per entry (`None`: encode in this process)."""
    if devices is None:
        return None
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    out = [d.strip() for d in items if d.strip()]
    if not out:
        raise ValueError("--devices names no device; give e.g. cuda:0,cuda:1.")
    for device in out:
        try:
            parsed = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"--devices: {device!r} is not a device ({exc}).") from None
        check_device_present(parsed, device)
    return out


def check_device_present(device: torch.device, given: str) -> None:
    """A CUDA (or MPS) device this machine lacks is a one-line `ValueError` before any work,
    not a traceback per task from a worker that cannot start on it."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (device.index is None or device.index < count):
            return
        have = f"cuda:0..cuda:{count - 1}" if count > 1 else "cuda:0" if count else "no CUDA device"
        raise ValueError(
            f"--devices: {given} is not on this machine (it has {have}); name devices it has, "
            "or leave --devices out to encode in this process."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"--devices: {given} is not on this machine (no MPS); leave --devices out."
        )


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
    n_encoded = 0
    total = sum(units.done.values()) + len(units.score)
    bar = tqdm(total=total, desc="Scoring", unit="slice", disable=not show_progress)
    bar.update(sum(units.done.values()))

    def failed(task: str, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        raise_if_disk_full(exc, output)  # stops the run: every later task would fail
        if raise_error:
            raise exc
        if task not in plan.failures:
            plan.failures[task] = f"{type(exc).__name__}: {exc}"
            trace = "".join(traceback.format_exception(exc))
            logger.error("Task %s failed: %s\n%s", task, plan.failures[task], trace)

    clock = timings if timings is not None else {}
    for key in ("encode_s", "score_s", "drain_s"):
        clock.setdefault(key, 0.0)

    def scored(results: Iterable[tuple[ScoreUnit | None, Any]], counted: bool = False) -> None:
        for unit, result in results:
            if unit is None:  # the executor itself broke (not one unit): stop the run
                raise result
            if not counted:
                bar.update(1)
            if isinstance(result, BaseException):
                failed(unit.task, result)
            else:
                clock["score_s"] += result.seconds

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
            for unit, result in encoder.map(run_encode_unit, units.encode_for(name), gpu=True):
                if isinstance(result, BaseException):
                    failed(unit.task, result)
                else:
                    n_encoded += result.n_encoded
                    clock["encode_s"] += result.seconds
            scored(in_flight.ready(), counted=True)  # earlier tasks' slices finished meanwhile
            if name in plan.failures:
                bar.update(len(units.score_for(name)))
                continue
            bar.set_postfix_str(f"scoring {name}")
            if isinstance(scorer, SerialExecutor):
                seed_task(name, task_data_dir(task), task)
                scored(scorer.map(run_score_unit, units.score_for(name), gpu=False))
                if task.data_loaded:
                    task.unload_data()
            else:
                in_flight.add(scorer.map(run_score_unit, units.score_for(name), gpu=False))
        t0 = time.perf_counter()
        scored(in_flight.wait(), counted=True)
        clock["drain_s"] += time.perf_counter() - t0
    finally:
        bar.close()
    return n_encoded


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
def local_executors(jobs: int, devices: Sequence[str] | None) -> Iterator[tuple[Any, Any]]:
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
