"""Write a task's evaluation data into the local layout (``mteb-midlayer mirror TASK... --to DIR``).

The writer is the inverse of :mod:`mteb_midlayer.tasks.local` (each kind's writer sits next to
its reader in :mod:`mteb_midlayer.tasks.kinds`): it writes ``task.dataset``
after mteb's ``load_data`` (so after the task's ``dataset_transform``: the data as mteb
evaluates it) for the task's subsets and eval splits, plus the train split of a
classification task. Reading the folder back gives the same datasets.

A task is written to a hidden temporary folder first and renamed into place when complete, so
a failure never leaves a partial task folder that ``--data-dir`` would then read.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mteb.abstasks import AbsTask

from mteb_midlayer.tasks.kinds import CLASSIFICATION, RETRIEVAL, SPLIT_KINDS, split_file, task_kind
from mteb_midlayer.tasks.kinds import retrieval as _retrieval

logger = logging.getLogger(__name__)

__all__ = ["HubUnreachableError", "mirror_task", "mirror_tasks", "write_task_data"]

#: Exception class names (anywhere in an exception's chain) that mean "no way to the Hub":
#: builtin, requests/urllib3, httpx and huggingface_hub spellings, matched by name so that
#: none of those libraries has to be imported here.
_NO_HUB = {
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "NameResolutionError",
    "MaxRetryError",
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "Timeout",
    "TimeoutException",
}


class HubUnreachableError(ConnectionError):
    """A task's data had to come from the Hugging Face Hub, and the Hub cannot be reached."""

    def __init__(self, task: str, source: str, reason: str):
        self.task, self.source, self.reason = task, source, reason
        super().__init__(
            f"cannot load {task} ({source}): the Hugging Face Hub is unreachable ({reason}); "
            "run `mirror` on a machine with Hub access, then copy the folder"
        )


def _hub_failure(exc: BaseException) -> str | None:
    """A one-line reason when ``exc`` (or one it came from) says the Hub is out of reach."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(k.__name__ in _NO_HUB for k in type(cur).__mro__):
            text = " ".join(str(cur).split()) or type(cur).__name__
            return text if len(text) <= 160 else text[:157] + "..."
        cur = cur.__cause__ or cur.__context__
    return None


def _load(task: AbsTask) -> None:
    """``task.load_data()``, with a lost connection to the Hub said in one line."""
    try:
        task.load_data()
    except Exception as exc:
        reason = _hub_failure(exc)
        if reason is None:
            raise
        source = str(task.metadata.dataset.get("path", "?"))
        raise HubUnreachableError(task.metadata.name, source, reason) from exc


def _choose_splits(task: AbsTask, all_splits: bool) -> None:
    """Narrow a task to its ``test`` split (what the tables score) unless ``all_splits``.

    With ``all_splits`` every eval split mteb defines for the task is written, also for a
    benchmark's task whose splits the benchmark narrowed.
    """
    if all_splits:
        task.filter_eval_splits(list(task.metadata.eval_splits))
    elif "test" in task.eval_splits and list(task.eval_splits) != ["test"]:
        task.filter_eval_splits(["test"])


def write_task_data(task: AbsTask, folder: Path) -> Path:
    """Write a loaded task's ``task.dataset`` into ``folder`` (created; must not exist).

    Writes the task's ``hf_subsets`` and ``eval_splits`` that are in ``task.dataset`` (and the
    train split of a classification task).

    Raises:
        ValueError: the task is not loaded, or its data do not fit the layout.
        LocalDataError: a task type the layout does not cover.
    """
    if not task.data_loaded or task.dataset is None:
        raise ValueError(f"{task.metadata.name}: load the task's data first")
    kind = task_kind(task)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    multilingual = task.metadata.is_multilingual
    dataset = task.dataset
    written = []
    for subset in task.hf_subsets if multilingual or kind == RETRIEVAL else ["default"]:
        if kind == RETRIEVAL:
            data = dataset[subset]
        else:
            data = dataset[subset] if multilingual else dataset
        out = folder / subset if multilingual else folder
        splits = [s for s in task.eval_splits if s in data]
        if not splits:
            raise ValueError(
                f"{task.metadata.name}: subset {subset!r} has none of the eval splits "
                f"{list(task.eval_splits)} (it has {list(data)})"
            )
        if kind == RETRIEVAL:
            _retrieval.write_subset(task, {s: data[s] for s in splits}, out)
        else:
            if kind == CLASSIFICATION and task.train_split not in splits:
                if task.train_split not in data:
                    raise ValueError(
                        f"{task.metadata.name}: subset {subset!r} has no "
                        f"{task.train_split!r} split to train on"
                    )
                splits = [task.train_split, *splits]
            write = SPLIT_KINDS[kind].write
            for split in splits:
                write(task, data[split], split_file(kind, out, split))
        written.append(f"{subset}: {', '.join(splits)}")
    logger.info("%s written to %s (%s)", task.metadata.name, folder, "; ".join(written))
    return folder


def mirror_task(task: AbsTask, to: Path, *, overwrite: bool = False) -> Path:
    """Write a task's evaluation data into ``to/<TaskName>/`` in the local layout.

    Loads the task's data if needed (from the Hub for an mteb task, from its folder for a
    local one) and writes it atomically: into a temporary folder next to the target, renamed
    into place when complete.

    Args:
        task: an mteb task (subset/split filters are honoured) or a local task.
        to: the data directory (created if needed).
        overwrite: replace an existing ``to/<TaskName>/``.

    Returns:
        The task folder.

    Raises:
        FileExistsError: the task folder exists and ``overwrite`` is false.
        HubUnreachableError: the data must come from the Hub, which cannot be reached.
    """
    to = Path(to)
    target = to / task.metadata.name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (use overwrite=True / --overwrite to replace it)")
    loaded_here = not task.data_loaded
    if loaded_here:
        _load(task)
    to.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task.metadata.name}.", dir=to))
    try:
        write_task_data(task, tmp / "data")
        if target.exists():
            shutil.rmtree(target)
        (tmp / "data").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if loaded_here:
            task.unload_data()
    return target


def mirror_tasks(
    tasks: Sequence[str] | None,
    to: Path,
    *,
    benchmark: str | None = None,
    overwrite: bool = False,
    all_splits: bool = False,
) -> list[Path]:
    """``mteb-midlayer mirror TASK... --to DIR``: load tasks (from the Hub) and write them.

    Give task names (each with mteb's default subsets and eval splits, as ``--tasks`` runs
    them) or a benchmark name (its tasks with the benchmark's subsets and splits, e.g.
    ``layer-by-layer-32``: test splits, English subsets only), exactly as
    :func:`~mteb_midlayer.tasks.benchmark.resolve_tasks` takes them. Only the ``test`` split
    is written (plus a classification task's train split), as the tables score it; with
    ``all_splits`` every eval split mteb defines for the task. A task without a ``test``
    split keeps its eval splits. Tasks are written one at a time, each unloaded after writing.

    Raises:
        ValueError: unknown names, or neither or both of ``tasks`` / ``benchmark``.
        FileExistsError: a task folder exists and ``overwrite`` is false (checked for all
            tasks before anything is downloaded).
        HubUnreachableError: the Hub cannot be reached (the first task stops the run: every
            other would fail the same way).
    """
    from mteb_midlayer.tasks.benchmark import resolve_tasks

    selected = resolve_tasks(tasks=tasks, benchmark=benchmark)
    for task in selected:
        _choose_splits(task, all_splits)
    to = Path(to)
    if not overwrite:
        exist = [t.metadata.name for t in selected if (to / t.metadata.name).exists()]
        if exist:
            raise FileExistsError(
                f"task folder(s) exist in {to}: {', '.join(exist)} (use --overwrite to replace them)"
            )
    paths = []
    for task in selected:
        paths.append(mirror_task(task, to, overwrite=overwrite))
        logger.info("mirrored %s to %s", task.metadata.name, paths[-1])
    return paths
