"""The work functions every executor runs, and what they keep per process.

`run_encode_unit`, `run_score_unit` and `run_metrics_unit` are module-level (picklable by
reference, so any engine runs them) and rebuild what they need from the unit alone: the model
once per process (cached; the driver hands its own over with `seed_model`), the task once per
task (the last one kept; `seed_task`), the store and result root from their paths. Encode units are claimed (`claims.py`), so two drivers or
workers never encode the same texts twice; a score unit whose result stands is skipped.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..metrics.compute import Timer, task_metrics
from ..model import LayerModel
from ..plan import EncodeUnit, MetricsUnit, ScoreUnit, read_texts
from ..replay import EmbeddingSource, ModelInfo, StoreEncoder
from ..results import AtomicResultCache, pending_slices
from ..scoring import score_slice
from ..spec import ModelSpec
from ..store import chain, is_disk_full
from ..tasks.selection import rebuild_task, task_subsets
from . import claims

logger = logging.getLogger(__name__)

U = TypeVar("U")
R = TypeVar("R")

#: How often a unit waiting on another holder's claim looks again (seconds).
_CLAIM_POLL_S = 0.5


class UnitError(RuntimeError):
    """A unit cannot run as planned (e.g. a worker's model differs from the driver's)."""


@dataclass(frozen=True)
class EncodeReport:
    key: str
    task: str
    n_texts: int
    n_encoded: int
    waited_s: float
    seconds: float
    pid: int


@dataclass(frozen=True)
class ScoreReport:
    key: str
    task: str
    layer: int
    dim: int
    skipped: bool
    main_score: float | None
    seconds: float
    pid: int


@dataclass(frozen=True)
class MetricsReport:
    """One task's metric rows (also written to the unit's output) and seconds per phase."""

    key: str
    rows: Any
    timings: dict[str, float]


# ----------------------------------------------------------------------------- per process
_MODELS: dict[str, Any] = {}
_TASK: dict[str, Any] = {}
#: Set in a worker process that owns one device (`--devices`): overrides the spec's device.
_DEVICE: list[str] = []


def _model_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def seed_model(spec: dict[str, Any], lm: Any) -> None:
    """Hand this process's loaded model to the work functions (the serial executor and the
    driver reuse it instead of loading it again)."""
    _MODELS[_model_key(spec)] = lm


def seed_task(name: str, data_dir: str | None, task: Any) -> None:
    """Hand this process's task object to `run_score_unit` (the serial executor reuses the
    driver's, so tasks given as objects need not be rebuildable from their name)."""
    key = _task_key(name, data_dir, task_subsets(task))
    if key not in _TASK or _TASK[key] is not task:
        for old in _TASK.values():
            if old.data_loaded and old is not task:
                old.unload_data()
        _TASK.clear()
        _TASK[key] = task


def set_device(device: str) -> None:
    """Pin this worker process's encode units to `device` (one worker per GPU)."""
    _DEVICE[:] = [device]


def _load_model(unit: EncodeUnit | MetricsUnit) -> Any:
    """The unit's model, loaded once per process and checked against the driver's."""
    spec = dict(unit.model)
    if _DEVICE:
        spec["device"] = _DEVICE[0]
    key = _model_key(spec)
    if key not in _MODELS and _model_key(unit.model) in _MODELS and not _DEVICE:
        key = _model_key(unit.model)
    if key not in _MODELS:
        if not spec.get("source"):
            raise UnitError(
                "A model passed as an object cannot be loaded in a worker process; "
                "pass a Hub id or a folder to run with --jobs/--devices/--executor."
            )
        _MODELS.clear()  # one model per process
        _MODELS[key] = LayerModel.load(spec=ModelSpec.from_dict(spec))
    lm = _MODELS[key]
    have = lm.current_spec()
    for field in ("name", "revision", "dtype", "max_length", "include_prompt"):
        if getattr(have, field) != unit.resolved.get(field):
            raise UnitError(
                f"The worker's model has {field}={getattr(have, field)!r}, the plan "
                f"{unit.resolved.get(field)!r}: the model changed since the plan was made."
            )
    return lm


def _task_key(name: str, data_dir: str | None, hf_subsets: Sequence[str] | None) -> str:
    return f"{name}\0{data_dir}\0{','.join(hf_subsets or [])}"


def _task(name: str, data_dir: str | None, hf_subsets: Sequence[str] | None = None) -> Any:
    """The task object the driver planned (`tasks.selection.rebuild_task`), built once per
    task in this process (only the last one is kept)."""
    key = _task_key(name, data_dir, hf_subsets)
    if key not in _TASK:
        for old in _TASK.values():
            if old.data_loaded:
                old.unload_data()
        _TASK.clear()
        _TASK[key] = rebuild_task(name, data_dir, hf_subsets)
    return _TASK[key]


# ----------------------------------------------------------------------------- work functions
def _disk_full_crosses_processes(fn: Callable[..., R]) -> Callable[..., R]:
    """A full disk in a worker reaches the driver as a plain ENOSPC `OSError` (pickled
    exceptions lose their chain, and `StoreFullError` does not pickle), so the driver's
    `raise_if_disk_full` still stops the run with its one message."""
    import functools

    @functools.wraps(fn)
    def wrapped(unit: U, *args: Any, **kwargs: Any) -> R:
        try:
            return fn(unit, *args, **kwargs)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            where = next(
                (e.filename for e in chain(exc) if isinstance(e, OSError) and e.filename), None
            )
            raise OSError(errno.ENOSPC, f"No space left on device ({exc})", where) from None

    return wrapped


def claim_path(unit: EncodeUnit) -> Path:
    return Path(unit.store_root) / "claims" / f"{unit.key}.claim"


@_disk_full_crosses_processes
def run_encode_unit(
    unit: EncodeUnit,
    *,
    stale_s: float = claims.DEFAULT_STALE_S,
    poll_s: float = _CLAIM_POLL_S,
    heartbeat_s: float = claims.DEFAULT_HEARTBEAT_S,
    heartbeat_stale_s: float = claims.DEFAULT_HEARTBEAT_STALE_S,
) -> EncodeReport:
    """Put the unit's texts (every layer) into the store, unless they are there already.

    The unit is claimed first, and its claim beaten every `heartbeat_s` while held; while
    another live holder has it, wait and look again (it either writes the texts, so there is
    nothing left to do, or dies and its claim is taken over: at once on this host, after
    `heartbeat_stale_s` without heartbeat from another). Returns how many texts this call ran
    through the network.
    """
    t0 = time.perf_counter()
    texts = read_texts(unit)
    lm = _load_model(unit)
    source = EmbeddingSource(
        lm,
        unit.store_root,
        pooling=unit.pooling,
        layers=unit.layers,
        batch_size=unit.batch_size,
        shard_size=max(1, len(texts)),
        show_progress=False,
        final_norms=unit.final_norms,
        max_tokens_per_batch=unit.max_tokens_per_batch,
    )
    stores = [
        source.store(unit.prompt_type, norm, mode)
        for mode in source.poolings
        for norm in source.final_norms
    ]

    def complete() -> bool:
        for store in stores:
            store.refresh()
        entries = source.entries(texts, unit.prompt)
        return not any(store.missing(entries, source.layers) for store in stores)

    path = claim_path(unit)
    waited = 0.0
    while True:
        if complete():
            break
        if claims.try_claim(path, heartbeat_s):
            with claims.holding(path, heartbeat_s) as heart:
                for store in stores:
                    store.refresh()
                namespace = (unit.task, unit.prompt_type or "none")
                source.fill(texts, unit.prompt_type, namespace, unit.prompt)
            if heart.lost:  # harmless: shards are write-once, a text is read once
                logger.warning("The claim %s was taken over while held: encoded twice.", path)
            break
        if claims.take_over_if_stale(path, stale_s, heartbeat_stale_s=heartbeat_stale_s):
            logger.warning("Took over the stale claim %s.", path)
            continue
        time.sleep(poll_s)
        waited += poll_s
    return EncodeReport(
        key=unit.key,
        task=unit.task,
        n_texts=len(texts),
        n_encoded=source.n_encoded,
        waited_s=waited,
        seconds=time.perf_counter() - t0,
        pid=os.getpid(),
    )


@_disk_full_crosses_processes
def run_score_unit(unit: ScoreUnit) -> ScoreReport:
    """Score one `(task, slice)` from the store with mteb; skipped when its result stands.

    Never runs the network: a text missing from the store is an error (its encode unit did
    not run). The task's data is loaded once per task in this process.
    """
    t0 = time.perf_counter()
    info = ModelInfo(unit.resolved, unit.n_parameters, unit.hidden_size, unit.n_layers)
    source = EmbeddingSource(
        info,
        unit.store_root,
        pooling=unit.pooling,
        layers=unit.layers,
        batch_size=unit.batch_size,
        show_progress=False,
        replay_only=True,
        final_norms=unit.final_norms,
    )
    encoder = StoreEncoder(
        source,
        layer=unit.layer,
        dim=unit.dim,
        normalize=unit.normalize,
        final_norm=unit.final_norm,
        fuse=unit.fuse,
    )
    cache = AtomicResultCache(unit.output)
    task = _task(unit.task, unit.data_dir, unit.hf_subsets)
    if not pending_slices(task, [encoder], cache, unit.search_backend):
        return ScoreReport(unit.key, unit.task, unit.layer, unit.dim, True, None, 0.0, os.getpid())
    if not task.data_loaded:
        task.load_data()
    score = score_slice(encoder, task, cache, unit.batch_size, unit.search_backend)
    return ScoreReport(
        key=unit.key,
        task=unit.task,
        layer=unit.layer,
        dim=unit.dim,
        skipped=False,
        main_score=score,
        seconds=time.perf_counter() - t0,
        pid=os.getpid(),
    )


def run_metrics_unit(unit: MetricsUnit) -> MetricsReport:
    """The metric rows of one task (a `DataFrame`, also written to `unit.output`; read back
    when its file exists with the same settings) and the seconds each phase took."""
    lm = _load_model(unit)
    task = _task(unit.task, unit.data_dir, unit.hf_subsets)
    timer = Timer(lm.device)
    try:
        df = task_metrics(
            lm, task, dict(unit.settings), Path(unit.output), timer, batch_size=unit.batch_size,
            overwrite=unit.overwrite, show_progress=False, final_norms=unit.final_norms,
            max_tokens_per_batch=unit.max_tokens_per_batch,
        )  # fmt: skip
    finally:
        if task.data_loaded:
            task.unload_data()
    return MetricsReport(unit.key, df, dict(timer.seconds))
