"""One task folder of the local layout: which subsets and splits it holds, and reading it.

:func:`local_layout` scans a folder without parsing it (cheap, done when a local task is made);
:func:`read_task_data` parses it into the structure mteb's ``load_data`` leaves in
``task.dataset``, through each kind's reader (:mod:`mteb_midlayer.tasks.kinds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from mteb.abstasks import AbsTask

from .kinds import CLASSIFICATION, RETRIEVAL, SPLIT_KINDS, split_file, task_kind
from .kinds import retrieval as _retrieval
from .kinds.base import LocalDataError

__all__ = ["LocalLayout", "local_layout", "read_task_data"]


@dataclass(frozen=True)
class LocalLayout:
    """What a task folder holds: the kind, and the subsets and eval splits found.

    ``subsets`` are mteb subset names (``["default"]`` for a monolingual task); ``splits`` are
    the eval splits present in every one of them (in the task's order).
    """

    folder: Path
    kind: str
    subsets: list[str]
    splits: list[str]
    missing_subsets: list[str]
    missing_splits: list[str]

    def subset_folder(self, subset: str) -> Path:
        return self.folder if subset == "default" else self.folder / subset


def _present_subsets(task: AbsTask, folder: Path) -> tuple[list[str], list[str]]:
    """(subsets present, subsets wanted) of a task folder; sub-folders must be subsets."""
    name = task.metadata.name
    if not task.metadata.is_multilingual:
        return ["default"], ["default"]
    wanted = list(task.hf_subsets)
    known = set(task.metadata.hf_subsets)
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "qrels")
    unknown = [s for s in subdirs if s not in known]
    if unknown:
        raise LocalDataError(
            f"sub-folder(s) {', '.join(unknown)} are no subset of {name}; its subsets are "
            f"{', '.join(task.metadata.hf_subsets)}",
            folder,
        )
    present = [s for s in wanted if (folder / s).is_dir()]
    if not present:
        raise LocalDataError(
            f"{name} is multilingual: expected one sub-folder per subset among "
            f"{', '.join(wanted)}; found none",
            folder,
        )
    return present, wanted


def local_layout(task: AbsTask, folder: Path) -> LocalLayout:
    """Scan a task folder (no parsing): which of the task's subsets and eval splits it holds.

    Raises:
        LocalDataError: not a folder, an unsupported task type, a sub-folder that is no subset
            of the task, or none of the task's subsets / eval splits present.
    """
    folder = Path(folder)
    name = task.metadata.name
    kind = task_kind(task)
    if not folder.is_dir():
        raise LocalDataError(f"no data folder for task {name}", folder)
    present, wanted = _present_subsets(task, folder)
    layout = LocalLayout(folder, kind, present, [], [s for s in wanted if s not in present], [])

    eval_splits = list(task.eval_splits)
    splits = []
    for split in eval_splits:
        files = [split_file(kind, layout.subset_folder(s), split) for s in present]
        if all(f.is_file() for f in files):
            splits.append(split)
        elif any(f.is_file() for f in files):
            absent = next(f for f in files if not f.is_file())
            raise LocalDataError(
                f"split {split!r} is present in some subsets but not in this one", absent
            )
    if not splits:
        example = split_file(kind, layout.subset_folder(present[0]), eval_splits[0])
        raise LocalDataError(
            f"none of {name}'s eval splits ({', '.join(eval_splits)}) is present; expected e.g. "
            f"{example}",
            folder,
        )
    if kind == CLASSIFICATION:
        for s in present:
            train = layout.subset_folder(s) / f"{task.train_split}.jsonl"
            if not train.is_file():
                raise LocalDataError(
                    f"missing file: classification trains on the {task.train_split!r} split", train
                )
    missing_splits = [s for s in eval_splits if s not in splits]
    return LocalLayout(folder, kind, present, splits, layout.missing_subsets, missing_splits)


def read_task_data(task: AbsTask, folder: Path, layout: LocalLayout | None = None) -> Any:
    """Read a task folder into the structure mteb's ``load_data`` leaves in ``task.dataset``.

    - monolingual STS / classification / pair classification / clustering:
      ``DatasetDict({split: Dataset})``;
    - multilingual: ``{subset: DatasetDict({split: Dataset})}``;
    - retrieval and reranking: ``{subset: {split: RetrievalSplitData}}`` (``"default"`` when
      monolingual), queries restricted to those with qrels, as mteb's loader does.

    Classification also reads the task's train split. Only ``layout.subsets`` /
    ``layout.splits`` are read.

    Raises:
        LocalDataError: naming the file and line of the first fault.
    """
    layout = layout or local_layout(task, folder)
    kind = layout.kind
    per_subset: dict[str, Any] = {}
    for subset in layout.subsets:
        sub = layout.subset_folder(subset)
        if kind == RETRIEVAL:
            per_subset[subset] = _retrieval.read_subset(sub, layout.splits)
            continue
        splits = list(layout.splits)
        if kind == CLASSIFICATION and task.train_split not in splits:
            splits.insert(0, task.train_split)
        read = SPLIT_KINDS[kind].read
        per_subset[subset] = DatasetDict(
            {split: read(task, split_file(kind, sub, split)) for split in splits}
        )
    if kind == RETRIEVAL or task.metadata.is_multilingual:
        return per_subset
    return per_subset["default"]
