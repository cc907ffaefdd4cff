"""The all-layer sweep: one forward pass per text, every `(layer, dim)` scored by mteb.

For each task: the first slice's `mteb.evaluate` run fills the store (every requested layer
pooled in the same pass), every later slice replays from it. Results go to an mteb
`ResultCache` under `output`, one experiment folder per `(layer, dim, pooling, normalize)`, and
`overwrite_strategy="only-missing"` makes a rerun skip every finished slice. A crash loses at
most one shard of embeddings and the slice in flight.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mteb
import pandas as pd
from tqdm.auto import tqdm

from .encoder import resolve_dim
from .layers import resolve_layers
from .model import LayerModel
from .pooling import check_pooling
from .replay import EmbeddingSource, StoreEncoder
from .search import resolve_search_backend, with_search_backend
from .tables import layer_results, layer_table

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

    @property
    def slices(self) -> list[tuple[int, int]]:
        return [(layer, dim) for layer in self.layers for dim in self.dims]


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
    tasks: Sequence[Any] | None, benchmark: str | None, data_dir: Path | str | None
) -> list[Any]:
    """mteb task objects from names, task objects, or a benchmark; local data swapped in.

    With neither tasks nor benchmark: every task that has a folder in `data_dir`, restricted to
    its English subsets as in the paper's benchmark (the tables average nothing else), else the
    paper's `layer-by-layer-32`. Local folders are checked when each task loads, so one bad
    folder fails its task (with file and line), not the whole run.
    """
    from .tasks.benchmark import LAYER_BY_LAYER_32, english_only, resolve_tasks
    from .tasks.local import local_task

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
            return [local_task(english_only(mteb.get_task(n)), data_dir / n) for n in names]
        else:
            benchmark = LAYER_BY_LAYER_32
    resolved = (
        resolve_tasks(names or None, benchmark, data_dir, validate=False)
        if names or benchmark
        else []
    )
    return objects + resolved


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
    model: Any,
    *,
    tasks: Sequence[Any] | None = None,
    benchmark: str | None = None,
    layers: Sequence[int] | str | None = "all",
    dims: Sequence[int] | str | None = None,
    pooling: str | None = None,
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
    shard_size: int | None = None,
    show_progress: bool = True,
    raise_error: bool = False,
    search_backend: str = "auto",  # issue 14: retrieval/reranking search, auto | faiss | torch
) -> pd.DataFrame:
    """Score every requested `(layer, dim)` of `model` on `tasks` with mteb; return the table.

    `pooling` and `normalize` default to the model's own (a sentence-transformers model's
    Pooling and Normalize modules), so the last layer scores exactly as the published model.
    Returns the wide layer x task table of main scores (rows: layer, dim), with `mean`,
    `n_tasks` and `missing` columns; tasks that failed are listed in `df.attrs["failures"]`
    (task name -> reason) and did not stop the others. `search_backend`: how retrieval and
    reranking tasks search (`auto`: faiss when installed; scores move at rounding level only).
    """
    search_backend = resolve_search_backend(search_backend)  # fail before any work
    lm = LayerModel.coerce(
        model,
        tokenizer,
        name=name,
        revision=revision,
        device=device,
        dtype=dtype,
        max_length=max_length,
        trust_remote_code=trust_remote_code,
    )
    pooling = check_pooling(pooling or lm.default_pooling)
    normalize = lm.default_normalize if normalize is None else bool(normalize)
    task_objects = select_tasks(tasks, benchmark, data_dir)
    plan = SweepPlan(
        layers=resolve_layers(layers, lm.n_layers),
        dims=parse_dims(dims, lm.hidden_size),
        pooling=pooling,
        normalize=normalize,
        tasks=list(task_objects),
    )
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    source = EmbeddingSource(
        lm,
        output / "store",
        pooling=pooling,
        layers=plan.layers,
        batch_size=batch_size,
        shard_size=shard_size,
        show_progress=show_progress,
    )
    run_plan(
        plan,
        source,
        output,
        raise_error=raise_error,
        show_progress=show_progress,
        search_backend=search_backend,
    )
    long = layer_results(output, model=lm.name, revision=lm.revision, pooling=pooling)
    long = long[long["task"].isin([t.metadata.name for t in plan.tasks])]
    long = long[long["layer"].isin(plan.layers) & long["dim"].isin(plan.dims)]
    long = long[long["normalize"] == normalize]
    table = layer_table(long, tasks=[t.metadata.name for t in plan.tasks])
    table.attrs["failures"] = dict(plan.failures)
    table.attrs["n_encoded"] = source.n_encoded
    return table


def run_plan(
    plan: SweepPlan,
    source: EmbeddingSource,
    output: Path,
    *,
    raise_error: bool = False,
    show_progress: bool = True,
    search_backend: str = "torch",  # issue 14: see search.with_search_backend
) -> None:
    """Evaluate every slice on every task; a failing task is recorded and skipped."""
    cache = mteb.ResultCache(output)
    encoders = [
        StoreEncoder(source, layer=layer, dim=dim, normalize=plan.normalize)
        for layer, dim in plan.slices
    ]
    bar = tqdm(
        total=len(plan.tasks) * len(encoders),
        desc="Scoring",
        unit="slice",
        disable=not show_progress,
    )
    try:
        for task in plan.tasks:
            task_name = task.metadata.name
            # Load once for all slices (mteb.evaluate leaves preloaded data alone), unless
            # every slice already has its result file.
            pending = [
                e
                for e in encoders
                if not cache.get_task_result_path(task_name, e.mteb_model_meta).exists()
            ]
            if pending and task.superseded_by:
                logger.warning(
                    "%s is superseded by %s in mteb; scoring %s as named.",
                    task_name,
                    task.superseded_by,
                    task_name,
                )
            if pending and not task.data_loaded:
                try:
                    task.load_data()
                except Exception as exc:
                    if raise_error:
                        raise
                    plan.failures[task_name] = f"{type(exc).__name__}: {exc}"
                    logger.error("Task %s failed to load: %s", task_name, exc)
                    bar.update(len(encoders))
                    continue
            for encoder in encoders:
                bar.set_postfix_str(f"{task_name} L{encoder.layer} d{encoder.dim}")
                try:
                    with _quiet_scoring():
                        mteb.evaluate(
                            with_search_backend(encoder, search_backend),
                            task,
                            cache=cache,
                            overwrite_strategy="only-missing",
                            show_progress_bar=False,
                            raise_error=True,
                            encode_kwargs={
                                "batch_size": source.batch_size,
                                "show_progress_bar": False,
                            },
                        )
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    if raise_error:
                        raise
                    reason = f"{type(exc).__name__}: {exc}"
                    plan.failures[task_name] = reason
                    logger.error(
                        "Task %s failed: %s\n%s", task_name, reason, traceback.format_exc()
                    )
                    bar.update(len(encoders) - encoders.index(encoder))
                    break
                bar.update(1)
            if task.data_loaded:
                task.unload_data()
    finally:
        bar.close()


class _SupersededFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is superseded by" not in record.getMessage()


@contextlib.contextmanager
def _quiet_scoring() -> Iterator[None]:
    """Silence what mteb and datasets repeat on every slice of a task.

    mteb's "task is superseded" notice (`run_plan` says it once per task instead) and the
    progress bars of datasets' per-slice reformatting; the sweep's own bars stay.
    """
    import datasets

    mteb_logger = logging.getLogger("mteb.abstasks.abstask")
    quiet = _SupersededFilter()
    mteb_logger.addFilter(quiet)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is superseded by")
            yield
    finally:
        mteb_logger.removeFilter(quiet)
        if bars:
            datasets.enable_progress_bars()
