"""Clustering: ``<split>.jsonl`` with ``sentences`` and ``labels``.

mteb's legacy clustering tasks: one clustering set a line (``sentences`` a list, ``labels`` a
list of the same length). Its newer (v2) tasks: one document a line (``sentences`` a string,
``labels`` a label or a list of hierarchy levels); a line holding a whole set is spread out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset
from mteb.abstasks import AbsTask
from pydantic import model_validator

from .base import (
    Label,
    Labels,
    LocalDataError,
    Row,
    Texts,
    columns,
    plain,
    read_jsonl,
    write_jsonl,
)

KIND = "clustering"
LEGACY_KIND = "clustering_legacy"


def _same_length(sentences: Any, labels: Any) -> None:
    if isinstance(sentences, list):
        if not isinstance(labels, list):
            raise ValueError("'sentences' is a list (a clustering set) but 'labels' is not")
        if len(sentences) != len(labels):
            raise ValueError(
                f"'sentences' has {len(sentences)} items but 'labels' has {len(labels)}"
            )


class ClusteringSetRow(Row):
    """A legacy row: one clustering set."""

    sentences: Texts
    labels: Labels

    @model_validator(mode="after")
    def _lengths(self) -> ClusteringSetRow:
        _same_length(self.sentences, self.labels)
        return self


class ClusteringRow(Row):
    """A v2 row: one document (or a whole set, spread out when read)."""

    sentences: str | Texts
    labels: Label | Labels

    @model_validator(mode="after")
    def _lengths(self) -> ClusteringRow:
        _same_length(self.sentences, self.labels)
        return self


def read_legacy_split(task: AbsTask, path: Path) -> Dataset:
    rows = read_jsonl(path, ClusteringSetRow, consistent=["labels"])
    return Dataset.from_dict(
        {
            task.input_column_name: [r.sentences for r in rows],
            task.label_column_name: [r.labels for r in rows],
        }
    )


def read_split(task: AbsTask, path: Path) -> Dataset:
    sentences: list[str] = []
    labels: list[Any] = []
    for r in read_jsonl(path, ClusteringRow):
        if isinstance(r.sentences, list):
            sentences.extend(r.sentences)
            labels.extend(r.labels)  # type: ignore[arg-type]  # same length, checked
        else:
            sentences.append(r.sentences)
            labels.append(r.labels)
    kinds = {type(x) for x in labels}
    if len(kinds) > 1 or (kinds == {list} and len({type(y) for x in labels for y in x}) > 1):
        raise LocalDataError("labels mix types (strings, integers, lists); use one", path)
    return Dataset.from_dict({task.input_column_name: sentences, task.label_column_name: labels})


def write_split(task: AbsTask, ds: Dataset, path: Path) -> int:
    """Both kinds: a row is written as it is (a set, or a document)."""
    sent, label = columns(ds, [task.input_column_name, task.label_column_name], path)
    return write_jsonl(
        path,
        (
            {
                "sentences": s,
                "labels": [plain(x) for x in lab] if isinstance(lab, list) else plain(lab),
            }
            for s, lab in zip(sent, label, strict=True)
        ),
    )
