"""Task kinds of the local layout, one module each holding its reader *and* its writer.

==================  ====================================  ============================================
Kind (module)       Files                                 Fields
==================  ====================================  ============================================
``sts``             ``<split>.jsonl``                     ``sentence1``, ``sentence2``, ``score``
``classification``  ``train.jsonl``, ``<split>.jsonl``    ``text``, ``label`` (int or str)
``pair_...``        ``<split>.jsonl``                     ``sentence1``, ``sentence2``, ``label`` 0/1
``clustering``      ``<split>.jsonl``                     ``sentences`` (list), ``labels`` (list):
                                                          one clustering set a line. For mteb's
                                                          newer (v2) clustering tasks also one
                                                          document a line: ``sentences`` (str),
                                                          ``labels`` (label or list of levels)
``retrieval``       ``corpus.jsonl``, ``queries.jsonl``,  corpus ``_id``, ``text``, optional
                    ``qrels/<split>.tsv``                 ``title``; queries ``_id``, ``text``; qrels
                                                          TSV with header ``query-id corpus-id score``
(reranking)         as retrieval + ``top_ranked.jsonl``   ``query-id``, ``corpus-ids`` (list)
==================  ====================================  ============================================

A multilingual task has one sub-folder per mteb subset name holding the same files. Rows are
validated by pydantic models (``<kind>.…Row``); :mod:`.base` holds what the kinds share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
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

from . import classification, clustering, pair_classification, retrieval, sts
from .base import LocalDataError

__all__ = [
    "CLASSIFICATION",
    "CLUSTERING",
    "CLUSTERING_LEGACY",
    "PAIR_CLASSIFICATION",
    "RETRIEVAL",
    "SPLIT_KINDS",
    "STS",
    "SplitKind",
    "split_file",
    "task_kind",
]

STS = sts.KIND
CLASSIFICATION = classification.KIND
PAIR_CLASSIFICATION = pair_classification.KIND
CLUSTERING_LEGACY = clustering.LEGACY_KIND
CLUSTERING = clustering.KIND
RETRIEVAL = retrieval.KIND


@dataclass(frozen=True)
class SplitKind:
    """A kind whose splits are one JSON Lines file each: how to read and write one."""

    read: Callable[[AbsTask, Path], Dataset]
    write: Callable[[AbsTask, Dataset, Path], int]


#: Every kind but retrieval (whose subset is read and written whole, see :mod:`.retrieval`).
SPLIT_KINDS: dict[str, SplitKind] = {
    STS: SplitKind(sts.read_split, sts.write_split),
    CLASSIFICATION: SplitKind(classification.read_split, classification.write_split),
    PAIR_CLASSIFICATION: SplitKind(pair_classification.read_split, pair_classification.write_split),
    CLUSTERING_LEGACY: SplitKind(clustering.read_legacy_split, clustering.write_split),
    CLUSTERING: SplitKind(clustering.read_split, clustering.write_split),
}


def split_file(kind: str, subset_folder: Path, split: str) -> Path:
    """The file whose presence says that ``split`` is in a subset folder."""
    if kind == RETRIEVAL:
        return retrieval.split_file(subset_folder, split)
    return subset_folder / f"{split}.jsonl"


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
