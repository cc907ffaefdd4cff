"""Write a task's evaluation data into the local layout (``mteb-midlayer mirror TASK... --to DIR``).

The writer is the inverse of :mod:`mteb_midlayer.tasks.local`: it writes ``task.dataset``
after mteb's ``load_data`` (so after the task's ``dataset_transform``: the data as mteb
evaluates it) for the task's subsets and eval splits, plus the train split of a
classification task. Reading the folder back gives the same datasets.

A task is written to a hidden temporary folder first and renamed into place when complete, so
a failure never leaves a partial task folder that ``--data-dir`` would then read.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset
from mteb.abstasks import AbsTask

from mteb_midlayer.tasks.local import (
    CLASSIFICATION,
    CLUSTERING,
    CLUSTERING_LEGACY,
    PAIR_CLASSIFICATION,
    QRELS_HEADER,
    RETRIEVAL,
    STS,
    task_kind,
)

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


def _plain(value: Any) -> Any:
    """numpy scalars and the like to JSON-able Python values."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        return value.item()
    return value


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    if n == 0:
        raise ValueError(f"refusing to write an empty split: {path}")
    return n


def _columns(ds: Dataset, names: Sequence[str], path: Path) -> list[list[Any]]:
    missing = [n for n in names if n not in ds.column_names]
    if missing:
        raise ValueError(
            f"cannot write {path}: the dataset has no column(s) {missing} (it has {ds.column_names})"
        )
    return [ds[n] for n in names]


def _pairs_dataset(ds: Dataset) -> Dataset:
    # mteb's older pair-classification data hold the whole split in one row of lists
    if len(ds) == 1 and all(isinstance(v, list) for v in ds[0].values()):
        return Dataset.from_dict(ds[0])
    return ds


def _write_split(task: AbsTask, kind: str, ds: Dataset, path: Path) -> int:
    if kind == STS:
        c1, c2 = task.column_names
        s1, s2, score = _columns(ds, [c1, c2, "score"], path)
        rows = (
            {"sentence1": a, "sentence2": b, "score": float(_plain(s))}
            for a, b, s in zip(s1, s2, score, strict=True)
        )
    elif kind == CLASSIFICATION:
        text, label = _columns(ds, [task.input_column_name, task.label_column_name], path)
        rows = ({"text": t, "label": _plain(lab)} for t, lab in zip(text, label, strict=True))
    elif kind == PAIR_CLASSIFICATION:
        ds = _pairs_dataset(ds)
        s1, s2, label = _columns(
            ds, [task.input1_column_name, task.input2_column_name, task.label_column_name], path
        )
        rows = (
            {"sentence1": a, "sentence2": b, "label": int(_plain(lab))}
            for a, b, lab in zip(s1, s2, label, strict=True)
        )
    elif kind in (CLUSTERING_LEGACY, CLUSTERING):
        sent, label = _columns(ds, [task.input_column_name, task.label_column_name], path)
        rows = (
            {
                "sentences": s,
                "labels": [_plain(x) for x in lab] if isinstance(lab, list) else _plain(lab),
            }
            for s, lab in zip(sent, label, strict=True)
        )
    else:  # pragma: no cover - task_kind only returns the kinds above
        raise ValueError(kind)
    return _write_jsonl(path, rows)


def _write_retrieval_subset(task: AbsTask, splits: dict[str, Any], out: Path) -> None:
    corpus: dict[str, dict[str, Any]] = {}
    queries: dict[str, dict[str, Any]] = {}
    top_ranked: dict[str, list[str]] = {}
    for split, data in splits.items():
        has_title = "title" in data["corpus"].column_names
        for row in data["corpus"]:
            doc = {"_id": str(row["id"])}
            if has_title:
                doc["title"] = row["title"] or ""
            doc["text"] = row["text"]
            if corpus.setdefault(doc["_id"], doc) != doc:
                raise ValueError(
                    f"{task.metadata.name}: document {doc['_id']!r} differs between splits; "
                    "the layout has one corpus.jsonl"
                )
        for row in data["queries"]:
            q = {"_id": str(row["id"]), "text": row["text"]}
            if queries.setdefault(q["_id"], q) != q:
                raise ValueError(
                    f"{task.metadata.name}: query {q['_id']!r} differs between splits; "
                    "the layout has one queries.jsonl"
                )
        qrels_path = out / "qrels" / f"{split}.tsv"
        qrels_path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with qrels_path.open("w", encoding="utf-8", newline="\n") as f:
            f.write("\t".join(QRELS_HEADER) + "\n")
            for qid, docs in data["relevant_docs"].items():
                for did, score in docs.items():
                    f.write(f"{qid}\t{did}\t{int(score)}\n")
                    n += 1
        if n == 0:
            raise ValueError(f"refusing to write an empty split: {qrels_path}")
        for qid, ids in (data.get("top_ranked") or {}).items():
            ids = [str(x) for x in ids]
            if top_ranked.setdefault(str(qid), ids) != ids:
                raise ValueError(
                    f"{task.metadata.name}: candidates of query {qid!r} differ between splits"
                )
    _write_jsonl(out / "corpus.jsonl", corpus.values())
    _write_jsonl(out / "queries.jsonl", queries.values())
    if top_ranked:
        _write_jsonl(
            out / "top_ranked.jsonl",
            ({"query-id": q, "corpus-ids": ids} for q, ids in top_ranked.items()),
        )


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
            _write_retrieval_subset(task, {s: data[s] for s in splits}, out)
        else:
            if kind == CLASSIFICATION and task.train_split not in splits:
                if task.train_split not in data:
                    raise ValueError(
                        f"{task.metadata.name}: subset {subset!r} has no "
                        f"{task.train_split!r} split to train on"
                    )
                splits = [task.train_split, *splits]
            for split in splits:
                _write_split(task, kind, data[split], out / f"{split}.jsonl")
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
