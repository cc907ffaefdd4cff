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
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mteb
import pandas as pd
import torch
from tqdm.auto import tqdm

from .batching import check_batch_limits
from .encoder import resolve_dim
from .frames import layer_results, layer_table
from .fusion import check_fusable, fusion_label, parse_fusions
from .layers import check_final_norms, resolve_layers
from .model import LayerModel, dtype_name, warn_constant_pooling
from .plan import (
    Plan,
    RecordedTexts,
    ScoreUnit,
    encode_units,
    record_requests,
    texts_path,
    write_texts,
)
from .pooling import check_poolings
from .replay import EmbeddingSource, StoreEncoder
from .results import AtomicResultCache, task_fingerprint, unfinished_reason
from .search import resolve_search_backend, with_search_backend
from .spec import ModelSpec, excludes_prompt, prompts_hash
from .store import plan_digest, raise_if_disk_full
from .tempfiles import clean_output

logger = logging.getLogger(__name__)


@dataclass
class SweepPlan:
    """What a sweep will do, resolved and validated before any work starts."""

    layers: list[int]
    dims: list[int]
    pooling: str
    normalize: bool
    tasks: list[Any]
    failures: dict[str, str] = field(default_factory=dict)
    final_norms: tuple[str, ...] = ("last",)
    #: fused layer sets (`fusion.py`), each scored at every dim and final norm
    fusions: list[tuple[int, ...]] = field(default_factory=list)
    #: every pooling of the pass (`pooling` is the first); each is its own slice
    poolings: tuple[str, ...] = ()

    @property
    def slices(self) -> list[tuple[int, int, str]]:
        """Every `(layer, dim, final_norm)` to score."""
        return [
            (layer, dim, norm)
            for norm in self.final_norms
            for layer in self.layers
            for dim in self.dims
        ]

    @property
    def fused_slices(self) -> list[tuple[tuple[int, ...], int, str]]:
        """Every `(fusion, dim, final_norm)` to score."""
        return [
            (fused, dim, norm)
            for norm in self.final_norms
            for fused in self.fusions
            for dim in self.dims
        ]

    @property
    def store_layers(self) -> list[int]:
        """The layers the store holds: the swept ones and every fused one."""
        return sorted({*self.layers, *(x for fused in self.fusions for x in fused)})


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


def select_tasks(
    tasks: Sequence[Any] | None,
    benchmark: str | None,
    data_dir: Path | str | None,
    failures: dict[str, str] | None = None,
) -> list[Any]:
    """mteb task objects from names, task objects, or a benchmark; local data swapped in.

    With neither tasks nor benchmark: every task that has a folder in `data_dir`, restricted to
    its English subsets as in the paper's benchmark (the tables average nothing else), else the
    paper's `layer-by-layer-32`. Given `failures`, a task whose folder does not fit it (e.g. its
    split file is missing) is recorded there (name -> reason, naming the file) and left out, so
    the other tasks still run; without it, the `LocalDataError` is raised.
    """
    from .tasks.benchmark import LAYER_BY_LAYER_32, english_only, resolve_tasks
    from .tasks.local import LocalDataError

    data_dir = Path(data_dir) if data_dir else None
    if isinstance(tasks, str):
        tasks = [tasks]
    objects = [t for t in tasks or [] if not isinstance(t, str)]
    names = [t for t in tasks or [] if isinstance(t, str)]
    if not names and not objects and not benchmark:
        if data_dir is not None and data_dir.is_dir():
            names = local_task_names(data_dir)
            if not names:
                raise ValueError(f"{data_dir} holds no folder named after an mteb task.")
            found = [english_only(mteb.get_task(n)) for n in names]
            return _localize(found, data_dir, failures)
        else:
            benchmark = LAYER_BY_LAYER_32
    if not names and not benchmark:
        return objects
    try:
        resolved = resolve_tasks(names or None, benchmark, data_dir, validate=False)
    except LocalDataError:
        if failures is None or data_dir is None:
            raise
        resolved = _localize(resolve_tasks(names or None, benchmark, None), data_dir, failures)
    return objects + resolved


def _localize(tasks: Sequence[Any], data_dir: Path, failures: dict[str, str] | None) -> list[Any]:
    """Each task with a folder in `data_dir` reads it; one that does not fit fails alone."""
    from .tasks.local import LocalDataError, local_task

    out = []
    for task in tasks:
        folder = data_dir / task.metadata.name
        if not folder.is_dir():
            out.append(task)
            continue
        try:
            out.append(local_task(task, folder))
        except LocalDataError as exc:
            if failures is None:
                raise
            failures[task.metadata.name] = f"{type(exc).__name__}: {exc}"
            logger.error("Task %s cannot run: %s", task.metadata.name, exc)
    return out


def check_output_outside_tasks(output: Path | str, data_dir: Path | str | None) -> None:
    """Refuse an output folder inside a task folder of `data_dir` (one line, saying where to
    put it): every write there would change that task's data fingerprint
    (`results.task_fingerprint`), so every rerun would rescore everything as "data changed"."""
    if data_dir is None:
        return
    root, out = Path(data_dir).resolve(), Path(output).resolve()
    if out == root or root not in out.parents:
        return
    folder = root / out.relative_to(root).parts[0]
    try:
        mteb.get_task(folder.name)
    except KeyError:
        return  # not a task folder: nothing read as task data changes
    raise ValueError(
        f"--output {output} lies inside the task folder {folder} of --data-dir: writing there "
        f"changes that task's data, so every rerun would rescore it; put --output outside "
        f"{folder} (e.g. beside {Path(data_dir)})."
    )


def local_task_names(data_dir: Path) -> list[str]:
    """Folders of `data_dir` that are mteb task names, sorted."""
    names = []
    for folder in sorted(Path(data_dir).iterdir()):
        try:
            if folder.is_dir():
                mteb.get_task(folder.name)
                names.append(folder.name)
        except KeyError:
            logger.warning("%s is not an mteb task name; skipped.", folder)
    return names


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


def slice_identity(
    encoder: StoreEncoder, data: str, search_backend: str | None = None
) -> dict[str, Any]:
    """Everything a slice's score depends on, recorded beside its result and compared on
    resume (`results.unfinished_reason`), plus what is only recorded: the model's layer count
    (relative depth) and the retrieval search backend."""
    spec = encoder.source.lm.current_spec()
    return {
        "model": spec.name,
        "revision": spec.revision,
        "max_length": spec.max_length,
        "dtype": spec.dtype,
        "prompts": dict(encoder.model_prompts) if encoder.model_prompts else None,
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        "layer": encoder.layer,
        "dim": encoder.dim,
        "final_norm": encoder.final_norm,
        "include_prompt": not excludes_prompt(spec.include_prompt, encoder.model_prompts),
        "data": data,
        "n_layers": encoder.source.lm.n_layers,
        "search_backend": search_backend,
    } | ({"fuse": encoder.fuse_label} if encoder.fuse else {})


def pending_slices(
    task: Any,
    encoders: Sequence[StoreEncoder],
    cache: AtomicResultCache,
    search_backend: str | None = None,
    *,
    remove_stale: bool = True,
) -> list[StoreEncoder]:
    """The slices of `task` to (re)compute; a stale or broken result is removed (unless
    `remove_stale` is off, as in a dry run), with a warning naming the file and why."""
    data = task_fingerprint(task)
    pending = []
    for encoder in encoders:
        path = cache.get_task_result_path(task.metadata.name, encoder.mteb_model_meta)
        identity = slice_identity(encoder, data, search_backend)
        cache.expect(path, identity)
        reason = unfinished_reason(path, task, identity)
        if reason is None:
            continue
        if reason != "missing" and remove_stale:
            logger.warning("Recomputing %s: %s.", path, reason)
            path.unlink()
        pending.append(encoder)
    return pending


def score_slice(
    encoder: StoreEncoder,
    task: Any,
    cache: AtomicResultCache,
    batch_size: int,
    search_backend: str = "torch",
) -> float | None:
    """Score one slice with mteb into `cache`; return the first split's main score."""
    with _quiet_scoring():
        res = mteb.evaluate(
            with_search_backend(encoder, search_backend),
            task,
            cache=cache,
            overwrite_strategy="only-missing",
            show_progress_bar=False,
            raise_error=True,
            encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
        )
    results = getattr(res, "task_results", None) or []
    return float(results[0].get_score()) if results else None


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


def request_spec(lm: LayerModel) -> dict[str, Any]:
    """The spec a fresh process loads `lm` from: its resolved spec, with a local folder's
    fingerprint taken off the revision (loading adds it again) and the device left to it."""
    spec = lm.current_spec()
    revision = spec.revision
    if revision and revision.startswith("local-"):
        revision = None
    elif revision and "-local-" in revision:
        revision = revision.split("-local-")[0]
    elif revision and revision.startswith("weights-"):
        revision = None
    return spec.replace(revision=revision, device=None).to_dict()


def _data_dir(task: Any) -> str | None:
    folder = getattr(task, "local_data_dir", None)
    return str(Path(folder).parent) if folder is not None else None


def plan_units(
    plan: SweepPlan,
    source: EmbeddingSource,
    output: Path,
    *,
    dry_run: bool = False,
    raise_error: bool = False,
    search_backend: str = "torch",
    recorded: RecordedTexts | None = None,
) -> Plan:
    """Write down every unit of the sweep before anything runs.

    Per task: the slices whose result does not stand become score units; if any, mteb is run
    once with a recording encoder to learn the task's texts (`plan.record_requests`), which
    are written under `<output>/plan/` (not in a dry run) and cut into encode units of one
    store shard each. A task that cannot be planned is recorded in `plan.failures`.
    With `recorded` (a checkpoint series), a task recorded before is not recorded again and
    its texts file is the one written then.
    """
    from .executors.base import task_subsets

    lm = source.lm
    model = request_spec(lm)
    resolved = lm.current_spec().to_dict()
    # One name for several poolings ("mean,last"); a single pooling's is unchanged.
    pass_pooling = ",".join(source.poolings)
    digest = plan_digest(resolved, pass_pooling)
    absent = not output.exists()
    cache = AtomicResultCache(output)  # mteb's cache makes its folder
    if dry_run and absent:
        output.rmdir()
    encoders = [
        StoreEncoder(
            source, layer=layer, dim=dim, normalize=plan.normalize, final_norm=norm, pooling=mode
        )
        for mode in source.poolings
        for layer, dim, norm in plan.slices
    ] + [
        StoreEncoder(
            source,
            layer=-1,
            dim=dim,
            normalize=plan.normalize,
            final_norm=norm,
            fuse=f,
            pooling=mode,
        )
        for mode in source.poolings
        for f, dim, norm in plan.fused_slices
    ]
    units = Plan(failures=plan.failures)
    for task in plan.tasks:
        name = task.metadata.name
        try:
            pending = pending_slices(
                task, encoders, cache, search_backend, remove_stale=not dry_run
            )
            units.done[name] = len(encoders) - len(pending)
            if not pending:
                continue
            memo_key = (name, task_fingerprint(task), prompts_hash(lm.prompts))
            if recorded is not None and memo_key in recorded.entries:
                requests = recorded.entries[memo_key]
            else:
                loaded_here = not task.data_loaded
                if loaded_here:
                    task.load_data()
                try:
                    requests = record_requests(task, lm.prompts, lm.name)
                finally:
                    if loaded_here:
                        task.unload_data()
                if recorded is not None:
                    recorded.entries[memo_key] = requests
                    recorded.n_recorded += 1
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise_if_disk_full(exc, output)
            if raise_error:
                raise
            plan.failures[name] = f"{type(exc).__name__}: {exc}"
            logger.error("Task %s cannot be planned: %s", name, exc)
            continue
        units.texts[name] = requests
        depends = []
        for texts in requests:
            path = texts_path(output, digest, name, texts.prompt_type)
            if recorded is not None:  # a series: every checkpoint reads the first one's file
                path = recorded.files.setdefault((memo_key, texts.prompt_type), path)
            if not dry_run:
                try:
                    for mode in source.poolings:  # the store's config first, then the plan
                        for norm in source.final_norms:
                            source.store(texts.prompt_type, norm, mode)
                    write_texts(path, texts)
                except OSError as exc:
                    raise_if_disk_full(exc, path)  # stops the run, as in the store
                    raise
            new = encode_units(
                texts,
                path,
                source.shard_size,
                model=model,
                resolved=resolved,
                data_dir=_data_dir(task),
                store_root=str(source.root),
                layers=tuple(source.layers),
                pooling=pass_pooling,
                batch_size=source.batch_size,
                final_norms=tuple(source.final_norms),
                max_tokens_per_batch=source.max_tokens_per_batch,
            )
            units.encode.extend(new)
            depends.extend(u.key for u in new)
        units.score.extend(
            ScoreUnit(
                model=model,
                resolved=resolved,
                n_parameters=lm.n_parameters,
                hidden_size=lm.hidden_size,
                n_layers=lm.n_layers,
                task=name,
                data_dir=_data_dir(task),
                hf_subsets=task_subsets(task),
                store_root=str(source.root),
                output=str(output),
                layer=enc.layer,
                dim=enc.dim,
                normalize=enc.normalize,
                pooling=enc.pooling,
                layers=tuple(source.layers),
                batch_size=source.batch_size,
                final_norm=enc.final_norm,
                final_norms=tuple(source.final_norms),
                search_backend=search_backend,
                depends_on=tuple(depends),
                fuse=enc.fuse,
            )
            for enc in pending
        )
    return units


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
    from .executors.base import run_encode_unit, run_score_unit, seed_model, seed_task
    from .executors.local import SerialExecutor

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
                seed_task(name, _data_dir(task), task)
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
    from .executors.local import ProcessExecutor, SerialExecutor

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


class _SupersededFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is superseded by" not in record.getMessage()


def _is_scorer_warning(w: warnings.WarningMessage) -> bool:
    """A warning of scikit-learn's scorers (e.g. `UndefinedMetricWarning` when an inner layer
    predicts one class): expected on some slices, noise between the progress bars."""
    return type(w.message).__module__.startswith("sklearn") or w.category.__module__.startswith(
        "sklearn"
    )


@contextlib.contextmanager
def scorer_warnings_to_log() -> Iterator[None]:
    """Route scikit-learn's scorer warnings to this module's log (one INFO line with their
    count and the first message; `-v` shows it) instead of the terminal; every other warning
    is shown as before (re-issued once the block ends)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("ignore", message=r".*is superseded by")
        try:
            yield
        finally:
            scorer = [w for w in caught if _is_scorer_warning(w)]
            others = [w for w in caught if not _is_scorer_warning(w)]
    if scorer:
        first = scorer[0]
        logger.info(
            "%d scikit-learn scorer warning(s) while scoring, first: %s: %s",
            len(scorer),
            first.category.__name__,
            " ".join(str(first.message).split()),
        )
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


@contextlib.contextmanager
def _quiet_scoring() -> Iterator[None]:
    """Silence what mteb and datasets repeat on every slice of a task.

    mteb's "task is superseded" notice (`run_plan` says it once per task instead), the
    progress bars of datasets' per-slice reformatting (the sweep's own bars stay) and
    scikit-learn's scorer warnings (to the log: `scorer_warnings_to_log`).
    """
    import datasets

    mteb_logger = logging.getLogger("mteb.abstasks.abstask")
    quiet = _SupersededFilter()
    mteb_logger.addFilter(quiet)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with scorer_warnings_to_log():
            yield
    finally:
        mteb_logger.removeFilter(quiet)
        if bars:
            datasets.enable_progress_bars()
