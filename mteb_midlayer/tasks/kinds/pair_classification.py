"""Pair classification: ``<split>.jsonl`` with ``sentence1``, ``sentence2``, ``label`` 0/1."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from mteb.abstasks import AbsTask

from .base import Binary, LocalDataError, Row, columns, plain, read_jsonl, write_jsonl

KIND = "pair_classification"


class PairRow(Row):
    sentence1: str
    sentence2: str
    label: Binary


def read_split(task: AbsTask, path: Path) -> Dataset:
    rows = read_jsonl(path, PairRow)
    if len(rows) < 2:
        # mteb reads a one-row split as the old one-row-of-lists format
        raise LocalDataError("a pair-classification split needs at least 2 pairs", path)
    return Dataset.from_dict(
        {
            task.input1_column_name: [r.sentence1 for r in rows],
            task.input2_column_name: [r.sentence2 for r in rows],
            task.label_column_name: [r.label for r in rows],
        }
    )


def _pairs_dataset(ds: Dataset) -> Dataset:
    # mteb's older pair-classification data hold the whole split in one row of lists
    if len(ds) == 1 and all(isinstance(v, list) for v in ds[0].values()):
        return Dataset.from_dict(ds[0])
    return ds


def write_split(task: AbsTask, ds: Dataset, path: Path) -> int:
    ds = _pairs_dataset(ds)
    s1, s2, label = columns(
        ds, [task.input1_column_name, task.input2_column_name, task.label_column_name], path
    )
    return write_jsonl(
        path,
        (
            {"sentence1": a, "sentence2": b, "label": int(plain(lab))}
            for a, b, lab in zip(s1, s2, label, strict=True)
        ),
    )
