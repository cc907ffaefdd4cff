"""Classification: ``train.jsonl`` and ``<split>.jsonl`` with ``text`` and ``label``.

A label is an integer or a string, one type per file (a dataset column holds one type). The
train split is always read and written: mteb trains its classifier on it.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from mteb.abstasks import AbsTask

from .base import Label, Row, columns, plain, read_jsonl, write_jsonl

KIND = "classification"


class ClassificationRow(Row):
    text: str
    label: Label


def read_split(task: AbsTask, path: Path) -> Dataset:
    rows = read_jsonl(path, ClassificationRow, consistent=["label"])
    return Dataset.from_dict(
        {
            task.input_column_name: [r.text for r in rows],
            task.label_column_name: [r.label for r in rows],
        }
    )


def write_split(task: AbsTask, ds: Dataset, path: Path) -> int:
    text, label = columns(ds, [task.input_column_name, task.label_column_name], path)
    return write_jsonl(
        path, ({"text": t, "label": plain(lab)} for t, lab in zip(text, label, strict=True))
    )
