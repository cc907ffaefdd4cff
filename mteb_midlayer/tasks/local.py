"""Offline task data: an mteb task that reads its evaluation data from a folder of JSON Lines.

A task whose folder ``DIR/<TaskName>/`` exists is scored on the data in that folder by
mteb's own task class and evaluator: :func:`local_task` returns an instance of a subclass of
the real task class that overrides only ``load_data`` (the same way mteb's own mock tasks
provide their data). Splits, subsets, scorer, seeds and every other attribute stay mteb's.

The layout (the one ``../shared/data/README.md`` defines) is described per task kind in
:mod:`mteb_midlayer.tasks.kinds`, where each kind's reader sits next to its writer;
:mod:`mteb_midlayer.tasks.layout` scans and reads one folder.

The folder holds the data *as mteb evaluates it*, i.e. after the task's ``dataset_transform``
(this is what :func:`mteb_midlayer.tasks.mirror.mirror_task` writes), so the transform is not
run again; a warning says so for the few task classes that define one.

Only the splits and subsets present are evaluated (``eval_splits`` / ``hf_subsets`` are narrowed
and a warning names what is missing). Malformed data raise :class:`LocalDataError`, whose message
names the file and the line.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from mteb.abstasks import AbsTask

from .kinds import (
    CLASSIFICATION,
    CLUSTERING,
    CLUSTERING_LEGACY,
    PAIR_CLASSIFICATION,
    RETRIEVAL,
    STS,
    task_kind,
)
from .kinds.base import LocalDataError, read_jsonl
from .kinds.retrieval import QRELS_HEADER
from .layout import LocalLayout, local_layout, read_task_data

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSIFICATION",
    "CLUSTERING",
    "CLUSTERING_LEGACY",
    "PAIR_CLASSIFICATION",
    "QRELS_HEADER",
    "RETRIEVAL",
    "STS",
    "LocalDataError",
    "LocalLayout",
    "is_local_task",
    "local_layout",
    "local_task",
    "read_jsonl",
    "read_task_data",
    "task_kind",
]


class _LocalDataMixin:
    """Overrides ``load_data`` only; put before the real task class in the bases."""

    local_data_dir: Path
    local_layout: LocalLayout | None
    #: The folder's fault, found when the task was made with ``defer_errors``; raised on load.
    local_error: LocalDataError | None = None

    def load_data(self, num_proc: int | None = None, *, timer: Any = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        err = self.local_error
        if err is not None:
            raise LocalDataError(err.reason, err.path, err.line)
        from mteb.timing import TimingStack

        timer = timer or TimingStack()
        with timer(
            "Data loading",
            log_message=f"Loading dataset {self.metadata.name} from {self.local_data_dir}...",
        ):
            self.dataset = read_task_data(self, self.local_data_dir, self.local_layout)
        self.data_loaded = True

    def __reduce__(self) -> tuple[Any, ...]:
        base = type(self).__mro__[2]
        return (_rebuild_local_task, (base, dict(self.__dict__)))


_LOCAL_CLASSES: dict[type, type] = {}


def _local_class(base: type[AbsTask]) -> type[AbsTask]:
    if base not in _LOCAL_CLASSES:
        name = f"Local{base.__name__}"
        cls = type(name, (_LocalDataMixin, base), {"__module__": __name__, "__qualname__": name})
        _LOCAL_CLASSES[base] = cls
    return _LOCAL_CLASSES[base]


def _rebuild_local_task(base: type[AbsTask], state: dict[str, Any]) -> AbsTask:
    cls = _local_class(base)
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def is_local_task(task: AbsTask) -> bool:
    """Whether a task reads its data from a local folder (see :func:`local_task`)."""
    return isinstance(task, _LocalDataMixin)


def local_task(
    task: AbsTask, folder: Path, *, validate: bool = False, defer_errors: bool = False
) -> AbsTask:
    """The same mteb task, with its data read from ``folder`` instead of the Hub.

    Returns a new instance of a subclass of ``type(task)`` (named ``Local<Class>``) that
    overrides only ``load_data``; metadata, scorer, seed, subset and split filters are the
    task's. Its ``hf_subsets`` / ``eval_splits`` are narrowed to those present in the folder
    (a warning names what is missing). ``task.local_data_dir`` holds the folder. Nothing here
    touches the network.

    Args:
        task: an mteb task (e.g. from ``mteb.get_task``); not modified.
        folder: the task's folder (``DIR/<TaskName>``).
        validate: read and check all files now (then drop the data) instead of at load time.
        defer_errors: a folder that does not fit the task (e.g. its split file is missing)
            gives a task whose ``load_data`` raises the error, so that a run over many tasks
            fails this one alone (the sweep) instead of stopping before any work.

    Raises:
        LocalDataError: the folder does not fit the task (at once, unless ``defer_errors``),
            or, with ``validate`` or later at ``load_data``, a file or line is malformed.
    """
    base = type(task)
    if isinstance(task, _LocalDataMixin):
        base = type(task).__mro__[2]
    cls = _local_class(base)
    new = cls(seed=task.seed)
    if "metadata" in task.__dict__:
        new.metadata = task.__dict__["metadata"]
    new.local_data_dir = Path(folder)
    try:
        layout = local_layout(task, Path(folder))
    except LocalDataError as exc:
        if not defer_errors:
            raise
        logger.warning("%s: %s (the task will fail when it loads)", task.metadata.name, exc)
        new.hf_subsets = list(task.hf_subsets)
        new.filter_eval_splits(list(task.eval_splits))
        new.local_layout = None
        new.local_error = exc
        return new
    new.hf_subsets = (
        list(layout.subsets) if task.metadata.is_multilingual else list(task.hf_subsets)
    )
    new.filter_eval_splits(list(layout.splits))
    new.local_layout = layout

    name = task.metadata.name
    notes = []
    if layout.missing_splits:
        notes.append(f"split(s) {', '.join(layout.missing_splits)} absent, not evaluated")
    if layout.missing_subsets:
        notes.append(f"subset(s) {', '.join(layout.missing_subsets)} absent, not evaluated")
    if notes:
        msg = (
            f"{name}: local data in {folder}: {'; '.join(notes)}; evaluating split(s) "
            f"{', '.join(layout.splits)} of subset(s) {', '.join(layout.subsets)}"
        )
        logger.warning(msg)
        warnings.warn(msg, stacklevel=2)
    if "dataset_transform" in _own_methods(base):
        logger.warning(
            "%s: its dataset_transform is not applied to local data; the folder must hold the "
            "data as mteb evaluates it (what `mteb-midlayer mirror` writes)",
            name,
        )
    if validate:
        read_task_data(new, new.local_data_dir, layout)
    return new


def _own_methods(cls: type) -> set[str]:
    """Methods defined by the concrete task class(es) below mteb's abstract task classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("mteb.abstasks") or klass is object:
            break
        names.update(klass.__dict__)
    return names
