"""Offline task data: read an mteb task's evaluation data from a folder of JSON Lines.

A task whose folder ``DIR/<TaskName>/`` exists is scored on the data in that folder by
mteb's own task class and evaluator: :func:`local_task` returns an instance of a subclass of
the real task class that overrides only ``load_data`` (the same way mteb's own mock tasks
provide their data). Splits, subsets, scorer, seeds and every other attribute stay mteb's.

Layout (the one ``../shared/data/README.md`` defines; UTF-8 JSON Lines, one object a line;
a multilingual task has one sub-folder per mteb subset name holding the same files):

==================  ====================================  ============================================
Task type           Files                                 Fields
==================  ====================================  ============================================
STS                 ``<split>.jsonl``                     ``sentence1``, ``sentence2``, ``score``
Classification      ``train.jsonl``, ``<split>.jsonl``    ``text``, ``label`` (int or str)
PairClassification  ``<split>.jsonl``                     ``sentence1``, ``sentence2``, ``label`` 0/1
Clustering          ``<split>.jsonl``                     ``sentences`` (list), ``labels`` (list):
                                                          one clustering set a line. For mteb's
                                                          newer (v2) clustering tasks also one
                                                          document a line: ``sentences`` (str),
                                                          ``labels`` (label or list of levels)
Retrieval           ``corpus.jsonl``, ``queries.jsonl``,  corpus ``_id``, ``text``, optional
                    ``qrels/<split>.tsv``                 ``title``; queries ``_id``, ``text``; qrels
                                                          TSV with header ``query-id corpus-id score``
Reranking           as Retrieval + ``top_ranked.jsonl``   ``query-id``, ``corpus-ids`` (list)
==================  ====================================  ============================================

The folder holds the data *as mteb evaluates it*, i.e. after the task's ``dataset_transform``
(this is what :func:`mteb_midlayer.tasks.mirror.mirror_task` writes), so the transform is not
run again; a warning says so for the few task classes that define one.

Only the splits and subsets present are evaluated (``eval_splits`` / ``hf_subsets`` are narrowed
and a warning names what is missing). Malformed data raise :class:`LocalDataError`, whose message
names the file and the line.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks import (
    AbsTask,
    AbsTaskClassification,
    AbsTaskClustering,
    AbsTaskClusteringLegacy,
    AbsTaskMultilabelClassification,
    AbsTaskPairClassification,
    AbsTaskRegression,
    AbsTaskRetrieval,
    AbsTaskSTS,
)
from mteb.abstasks.aggregated_task import AbsTaskAggregate
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

logger = logging.getLogger(__name__)

__all__ = [
    "QRELS_HEADER",
    "LocalDataError",
    "LocalLayout",
    "is_local_task",
    "local_layout",
    "local_task",
    "read_jsonl",
    "read_task_data",
    "task_kind",
]

QRELS_HEADER = ("query-id", "corpus-id", "score")

# task kinds
STS = "sts"
CLASSIFICATION = "classification"
PAIR_CLASSIFICATION = "pair_classification"
CLUSTERING_LEGACY = "clustering_legacy"
CLUSTERING = "clustering"
RETRIEVAL = "retrieval"


class LocalDataError(ValueError):
    """A task folder that does not hold valid data in the layout.

    Attributes:
        path: the file (or folder) at fault, if any.
        line: the 1-based line number in ``path``, if the fault is on one line.
    """

    def __init__(self, message: str, path: Path | str | None = None, line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        self.reason = message
        where = ""
        if path is not None:
            where = f"{path}, line {line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


# --------------------------------------------------------------------------------------------
# task kinds
# --------------------------------------------------------------------------------------------


def task_kind(task: AbsTask | type[AbsTask]) -> str:
    """The layout kind of an mteb task (``"sts"``, ``"classification"``, ...).

    Raises:
        LocalDataError: for task types the layout does not cover (bitext mining, summarization,
            multilabel classification, regression, aggregate and non-text tasks, ...).
    """
    cls = task if isinstance(task, type) else type(task)
    name = cls.metadata.name
    if issubclass(cls, AbsTaskAggregate):
        raise LocalDataError(
            f"{name} is an aggregate of other tasks; local data are read per sub-task, "
            "not for the aggregate"
        )
    if list(cls.metadata.modalities) != ["text"]:
        raise LocalDataError(
            f"{name} is not a text-only task (modalities {cls.metadata.modalities}); "
            "the local data layout only covers text tasks"
        )
    if issubclass(cls, AbsTaskSTS):
        return STS
    if issubclass(cls, AbsTaskMultilabelClassification | AbsTaskRegression):
        pass
    elif issubclass(cls, AbsTaskClassification):
        return CLASSIFICATION
    if issubclass(cls, AbsTaskPairClassification):
        return PAIR_CLASSIFICATION
    if issubclass(cls, AbsTaskClusteringLegacy):
        return CLUSTERING_LEGACY
    if issubclass(cls, AbsTaskClustering):
        return CLUSTERING
    if issubclass(cls, AbsTaskRetrieval):
        return RETRIEVAL
    raise LocalDataError(
        f"{name} is a {cls.metadata.type} task ({cls.__mro__[1].__name__}); the local data layout "
        "covers STS, Classification, PairClassification, Clustering, Retrieval and Reranking"
    )


# --------------------------------------------------------------------------------------------
# field checks: each returns the (possibly converted) value or raises _FieldError
# --------------------------------------------------------------------------------------------


class _FieldError(Exception):
    pass


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _FieldError(f"expected a string, got {_type_name(value)} {value!r:.60}")
    return value


def _id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _FieldError(f"expected a string or integer id, got {_type_name(value)} {value!r:.60}")
    return str(value)


def _number(value: Any) -> float:
    """A finite JSON number, as a float (one column type whether a file writes 2 or 2.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(f"expected a number, got {_type_name(value)} {value!r:.60}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _FieldError(f"expected a finite number, got {value!r:.60}")
    return number


def _label(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _FieldError(
            f"expected an integer or string label, got {_type_name(value)} {value!r:.60}"
        )
    return value


def _binary(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise _FieldError(f"expected 0 or 1, got {_type_name(value)} {value!r:.60}")
    return value


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _FieldError(f"expected a non-empty list of strings, got {_type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _FieldError(f"item {i} is {_type_name(item)} {item!r:.60}, expected a string")
    return value


def _id_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _FieldError(f"expected a non-empty list of ids, got {_type_name(value)}")
    try:
        return [_id(item) for item in value]
    except _FieldError as e:
        raise _FieldError(f"in the list: {e}") from None


def _label_list(value: Any) -> list[int | str]:
    if not isinstance(value, list) or not value:
        raise _FieldError(f"expected a non-empty list of labels, got {_type_name(value)}")
    try:
        return [_label(item) for item in value]
    except _FieldError as e:
        raise _FieldError(f"in the list: {e}") from None


def _label_or_levels(value: Any) -> int | str | list[int | str]:
    return _label_list(value) if isinstance(value, list) else _label(value)


def _sentence_or_set(value: Any) -> str | list[str]:
    return _str_list(value) if isinstance(value, list) else _str(value)


@dataclass(frozen=True)
class _Field:
    name: str
    check: Callable[[Any], Any]
    required: bool = True
    default: Any = None


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file, with 1-based line numbers."""
    if not path.is_file():
        raise LocalDataError("missing file" if not path.exists() else "not a file", path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LocalDataError(f"not valid UTF-8 ({e.reason})", path, lineno) from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if text.strip():
                yield lineno, text


def read_jsonl(
    path: Path,
    fields: Sequence[_Field],
    *,
    row_check: Callable[[dict[str, Any]], None] | None = None,
    consistent: Sequence[str] = (),
) -> dict[str, list[Any]]:
    """Read a JSON Lines file into columns, checking every line.

    Args:
        path: the file.
        fields: the fields to keep, with their checks; other fields of a line are ignored.
        row_check: an extra check on the checked row (raise ``_FieldError``).
        consistent: fields whose values (or list items) must all have one JSON type (a column
            of a dataset holds one type).

    Raises:
        LocalDataError: naming the file and line of the first fault, or the file if it holds
            no record.
    """
    columns: dict[str, list[Any]] = {f.name: [] for f in fields}
    seen_type: dict[str, tuple[type, int]] = {}
    n = 0
    for lineno, text in _iter_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise LocalDataError(f"bad JSON: {e.msg} (column {e.colno})", path, lineno) from None
        if not isinstance(obj, dict):
            raise LocalDataError(f"expected a JSON object, got {_type_name(obj)}", path, lineno)
        missing = [f.name for f in fields if f.required and f.name not in obj]
        if missing:
            raise LocalDataError(
                f"missing field(s) {', '.join(map(repr, missing))}; the line has "
                f"{', '.join(map(repr, obj)) or 'no fields'}",
                path,
                lineno,
            )
        row: dict[str, Any] = {}
        for f in fields:
            if f.name not in obj:
                row[f.name] = f.default
                continue
            try:
                row[f.name] = f.check(obj[f.name])
            except _FieldError as e:
                raise LocalDataError(f"field {f.name!r}: {e}", path, lineno) from None
        if row_check is not None:
            try:
                row_check(row)
            except _FieldError as e:
                raise LocalDataError(str(e), path, lineno) from None
        for name in consistent:
            value = row[name]
            items = value if isinstance(value, list) else [value]
            for item in items:
                t = type(item)
                if name not in seen_type:
                    seen_type[name] = (t, lineno)
                elif seen_type[name][0] is not t:
                    first_t, first_line = seen_type[name]
                    raise LocalDataError(
                        f"field {name!r}: {t.__name__} value {item!r:.60}, but line {first_line} "
                        f"has a {first_t.__name__}; a column must hold one type",
                        path,
                        lineno,
                    )
        for name, value in row.items():
            columns[name].append(value)
        n += 1
    if n == 0:
        raise LocalDataError("no records (empty split)", path)
    return columns


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    lines = _iter_lines(path)
    first = next(lines, None)
    if first is None:
        raise LocalDataError(
            "empty file; expected a header 'query-id<TAB>corpus-id<TAB>score'", path
        )
    lineno, header = first
    if tuple(header.rstrip("\r\n").split("\t")) != QRELS_HEADER:
        raise LocalDataError(
            f"bad header {header.rstrip()!r}; expected 'query-id<TAB>corpus-id<TAB>score'",
            path,
            lineno,
        )
    n = 0
    for lineno, text in lines:
        parts = text.rstrip("\r\n").split("\t")
        if len(parts) != 3:
            raise LocalDataError(
                f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(parts)}",
                path,
                lineno,
            )
        qid, did, score = parts
        if not qid or not did:
            raise LocalDataError("empty query-id or corpus-id", path, lineno)
        try:
            value = int(score)
        except ValueError:
            raise LocalDataError(f"score {score!r} is not an integer", path, lineno) from None
        if did in qrels.setdefault(qid, {}):
            raise LocalDataError(f"duplicate pair ({qid!r}, {did!r})", path, lineno)
        qrels[qid][did] = value
        n += 1
    if n == 0:
        raise LocalDataError("no qrels after the header (empty split)", path)
    return qrels


def _unique_ids(ids: list[str], path: Path) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for i, x in enumerate(ids):
            if x in seen:
                raise LocalDataError(f"duplicate _id {x!r} (record {i + 1})", path)
            seen.add(x)


# --------------------------------------------------------------------------------------------
# layout of one task folder
# --------------------------------------------------------------------------------------------


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


def _split_file(kind: str, subset_folder: Path, split: str) -> Path:
    if kind == RETRIEVAL:
        return subset_folder / "qrels" / f"{split}.tsv"
    return subset_folder / f"{split}.jsonl"


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

    multilingual = task.metadata.is_multilingual
    wanted = list(task.hf_subsets) if multilingual else ["default"]
    if multilingual:
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
    else:
        present = ["default"]
    missing_subsets = [s for s in wanted if s not in present]

    eval_splits = list(task.eval_splits)
    splits = []
    for split in eval_splits:
        files = [_split_file(kind, folder / s if multilingual else folder, split) for s in present]
        if all(f.is_file() for f in files):
            splits.append(split)
        elif any(f.is_file() for f in files):
            absent = next(f for f in files if not f.is_file())
            raise LocalDataError(
                f"split {split!r} is present in some subsets but not in this one", absent
            )
    if not splits:
        example = _split_file(kind, folder / present[0] if multilingual else folder, eval_splits[0])
        raise LocalDataError(
            f"none of {name}'s eval splits ({', '.join(eval_splits)}) is present; expected e.g. "
            f"{example}",
            folder,
        )
    missing_splits = [s for s in eval_splits if s not in splits]
    if kind == CLASSIFICATION:
        for s in present:
            train = (folder / s if multilingual else folder) / f"{task.train_split}.jsonl"
            if not train.is_file():
                raise LocalDataError(
                    f"missing file: classification trains on the {task.train_split!r} split", train
                )
    return LocalLayout(folder, kind, present, splits, missing_subsets, missing_splits)


# --------------------------------------------------------------------------------------------
# reading a task's data into the structure mteb's load_data produces
# --------------------------------------------------------------------------------------------


def _read_sts(task: AbsTask, sub: Path, split: str) -> Dataset:
    c1, c2 = task.column_names
    path = sub / f"{split}.jsonl"
    cols = read_jsonl(
        path, [_Field("sentence1", _str), _Field("sentence2", _str), _Field("score", _number)]
    )
    return Dataset.from_dict({c1: cols["sentence1"], c2: cols["sentence2"], "score": cols["score"]})


def _read_classification(task: AbsTask, sub: Path, split: str) -> Dataset:
    path = sub / f"{split}.jsonl"
    cols = read_jsonl(path, [_Field("text", _str), _Field("label", _label)], consistent=["label"])
    return Dataset.from_dict(
        {task.input_column_name: cols["text"], task.label_column_name: cols["label"]}
    )


def _read_pair_classification(task: AbsTask, sub: Path, split: str) -> Dataset:
    path = sub / f"{split}.jsonl"
    cols = read_jsonl(
        path, [_Field("sentence1", _str), _Field("sentence2", _str), _Field("label", _binary)]
    )
    if len(cols["label"]) < 2:
        # mteb reads a one-row split as the old one-row-of-lists format
        raise LocalDataError("a pair-classification split needs at least 2 pairs", path)
    return Dataset.from_dict(
        {
            task.input1_column_name: cols["sentence1"],
            task.input2_column_name: cols["sentence2"],
            task.label_column_name: cols["label"],
        }
    )


def _same_length(row: dict[str, Any]) -> None:
    if len(row["sentences"]) != len(row["labels"]):
        raise _FieldError(
            f"'sentences' has {len(row['sentences'])} items but 'labels' has {len(row['labels'])}"
        )


def _read_clustering_legacy(task: AbsTask, sub: Path, split: str) -> Dataset:
    path = sub / f"{split}.jsonl"
    cols = read_jsonl(
        path,
        [_Field("sentences", _str_list), _Field("labels", _label_list)],
        row_check=_same_length,
        consistent=["labels"],
    )
    return Dataset.from_dict(
        {task.input_column_name: cols["sentences"], task.label_column_name: cols["labels"]}
    )


def _read_clustering(task: AbsTask, sub: Path, split: str) -> Dataset:
    """mteb's v2 clustering: one document a row; a line holding a whole set is spread out."""
    path = sub / f"{split}.jsonl"

    def check(row: dict[str, Any]) -> None:
        if isinstance(row["sentences"], list):
            if not isinstance(row["labels"], list):
                raise _FieldError("'sentences' is a list (a clustering set) but 'labels' is not")
            _same_length(row)

    cols = read_jsonl(
        path,
        [_Field("sentences", _sentence_or_set), _Field("labels", _label_or_levels)],
        row_check=check,
    )
    sentences: list[str] = []
    labels: list[Any] = []
    for s, lab in zip(cols["sentences"], cols["labels"], strict=True):
        if isinstance(s, list):
            sentences.extend(s)
            labels.extend(lab)
        else:
            sentences.append(s)
            labels.append(lab)
    kinds = {type(x) for x in labels}
    if len(kinds) > 1 or (kinds == {list} and len({type(y) for x in labels for y in x}) > 1):
        raise LocalDataError("labels mix types (strings, integers, lists); use one", path)
    return Dataset.from_dict({task.input_column_name: sentences, task.label_column_name: labels})


def _read_retrieval_subset(sub: Path, splits: Sequence[str]) -> dict[str, RetrievalSplitData]:
    corpus_path = sub / "corpus.jsonl"
    corpus = read_jsonl(
        corpus_path,
        [_Field("_id", _id), _Field("title", _str, required=False), _Field("text", _str)],
    )
    _unique_ids(corpus["_id"], corpus_path)
    corpus_cols = {"id": corpus["_id"]}
    if any(t is not None for t in corpus["title"]):
        corpus_cols["title"] = [t if t is not None else "" for t in corpus["title"]]
    corpus_cols["text"] = corpus["text"]
    corpus_ds = Dataset.from_dict(corpus_cols)

    queries_path = sub / "queries.jsonl"
    queries = read_jsonl(queries_path, [_Field("_id", _id), _Field("text", _str)])
    _unique_ids(queries["_id"], queries_path)
    queries_ds = Dataset.from_dict({"id": queries["_id"], "text": queries["text"]})

    top_ranked = None
    top_path = sub / "top_ranked.jsonl"
    if top_path.exists():
        cols = read_jsonl(top_path, [_Field("query-id", _id), _Field("corpus-ids", _id_list)])
        top_ranked = dict(zip(cols["query-id"], cols["corpus-ids"], strict=True))
        if len(top_ranked) != len(cols["query-id"]):
            raise LocalDataError("a query-id appears on several lines", top_path)

    out: dict[str, RetrievalSplitData] = {}
    query_ids = set(queries_ds["id"])
    for split in splits:
        qrels_path = sub / "qrels" / f"{split}.tsv"
        qrels = _read_qrels(qrels_path)
        unknown = [q for q in qrels if q not in query_ids]
        if unknown:
            # mteb's own loader keeps such qrels too; they score nothing (no query to run)
            logger.warning(
                "%s: %d query id(s) of the qrels are not in %s (e.g. %r); they are not evaluated",
                qrels_path,
                len(unknown),
                queries_path.name,
                unknown[0],
            )
        keep = [i for i, q in enumerate(queries_ds["id"]) if q in qrels]
        split_top = None
        if top_ranked is not None:
            split_top = {q: top_ranked[q] for q in qrels if q in top_ranked}
            absent = [q for q in qrels if q not in top_ranked]
            if absent:
                raise LocalDataError(
                    f"{len(absent)} query id(s) of {qrels_path.relative_to(sub)} have no "
                    f"candidates, e.g. {absent[0]!r}",
                    top_path,
                )
        out[split] = RetrievalSplitData(
            corpus=corpus_ds,
            queries=queries_ds.select(keep),
            relevant_docs=qrels,
            top_ranked=split_top,
        )
    return out


_READERS: dict[str, Callable[[AbsTask, Path, str], Dataset]] = {
    STS: _read_sts,
    CLASSIFICATION: _read_classification,
    PAIR_CLASSIFICATION: _read_pair_classification,
    CLUSTERING_LEGACY: _read_clustering_legacy,
    CLUSTERING: _read_clustering,
}


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
            per_subset[subset] = _read_retrieval_subset(sub, layout.splits)
            continue
        splits = list(layout.splits)
        if kind == CLASSIFICATION and task.train_split not in splits:
            splits.insert(0, task.train_split)
        reader = _READERS[kind]
        per_subset[subset] = DatasetDict({split: reader(task, sub, split) for split in splits})
    if kind == RETRIEVAL or task.metadata.is_multilingual:
        return per_subset
    return per_subset["default"]


# --------------------------------------------------------------------------------------------
# the local task: a subclass of the real task class that reads the folder
# --------------------------------------------------------------------------------------------


class _LocalDataMixin:
    """Overrides ``load_data`` only; put before the real task class in the bases."""

    local_data_dir: Path
    local_layout: LocalLayout

    def load_data(self, num_proc: int | None = None, *, timer: Any = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
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


def local_task(task: AbsTask, folder: Path, *, validate: bool = False) -> AbsTask:
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

    Raises:
        LocalDataError: the folder does not fit the task (at once), or, with ``validate`` or
            later at ``load_data``, a file or line is malformed.
    """
    base = type(task)
    if isinstance(task, _LocalDataMixin):
        base = type(task).__mro__[2]
    layout = local_layout(task, Path(folder))
    cls = _local_class(base)
    new = cls(seed=task.seed)
    if "metadata" in task.__dict__:
        new.metadata = task.__dict__["metadata"]
    new.hf_subsets = (
        list(layout.subsets) if task.metadata.is_multilingual else list(task.hf_subsets)
    )
    new.filter_eval_splits(list(layout.splits))
    new.local_data_dir = Path(folder)
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
