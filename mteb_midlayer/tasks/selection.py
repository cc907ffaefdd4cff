"""Which tasks a run evaluates, with their local data swapped in: chosen once by the driver,
rebuilt the same way by a worker from a unit's plain fields (name, data folder, subsets)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mteb

from .benchmark import LAYER_BY_LAYER_32, english_only, resolve_tasks
from .local import LocalDataError, local_task

__all__ = [
    "check_output_outside_tasks",
    "rebuild_task",
    "select_tasks",
    "task_data_dir",
    "task_subsets",
]

logger = logging.getLogger(__name__)


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
    data_dir = Path(data_dir) if data_dir else None
    if isinstance(tasks, str):
        tasks = [tasks]
    objects = [t for t in tasks or [] if not isinstance(t, str)]
    names = [t for t in tasks or [] if isinstance(t, str)]
    if not names and not objects and not benchmark:
        if data_dir is not None and data_dir.is_dir():
            names = _local_task_names(data_dir)
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


def _local_task_names(data_dir: Path) -> list[str]:
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


def task_data_dir(task: Any) -> str | None:
    """The `data_dir` a task read from --data-dir came from (what a worker rebuilds it with)."""
    folder = getattr(task, "local_data_dir", None)
    return str(Path(folder).parent) if folder is not None else None


def task_subsets(task: Any) -> tuple[str, ...] | None:
    """The subsets a task object evaluates (what a worker must rebuild), None if it has none."""
    subsets = getattr(task, "hf_subsets", None)
    return tuple(subsets) if subsets else None


def rebuild_task(name: str, data_dir: str | None, hf_subsets: Sequence[str] | None = None) -> Any:
    """The task object the driver planned, rebuilt from a unit's fields: the same data folder
    and the same subsets (the default sweep keeps only English subsets, which a task rebuilt
    from its name alone would not)."""
    with _driver_said_it():
        task = select_tasks([name], None, data_dir)[0]
        if hf_subsets and task_subsets(task) != tuple(hf_subsets):
            task = mteb.get_task(name, hf_subsets=list(hf_subsets))
            if data_dir is not None:
                task = _localize([task], Path(data_dir), None)[0]
    return task


@contextlib.contextmanager
def _driver_said_it() -> Iterator[None]:
    """Silence the notes on a task's local data (absent splits, transforms not applied) while a
    worker rebuilds the task: the driver said them once when it planned; errors still raise."""
    names = ("mteb_midlayer.tasks.local", "mteb_midlayer.tasks.benchmark")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*local data in ")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
