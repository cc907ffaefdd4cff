"""STS: ``<split>.jsonl`` with ``sentence1``, ``sentence2``, ``score`` (a finite number)."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from mteb.abstasks import AbsTask

from .base import Number, Row, columns, plain, read_jsonl, write_jsonl

KIND = "sts"


class StsRow(Row):
    sentence1: str
    sentence2: str
    score: Number


def read_split(task: AbsTask, path: Path) -> Dataset:
    rows = read_jsonl(path, StsRow)
    c1, c2 = task.column_names
    return Dataset.from_dict(
        {
            c1: [r.sentence1 for r in rows],
            c2: [r.sentence2 for r in rows],
            "score": [r.score for r in rows],
        }
    )


def write_split(task: AbsTask, ds: Dataset, path: Path) -> int:
    c1, c2 = task.column_names
    s1, s2, score = columns(ds, [c1, c2, "score"], path)
    return write_jsonl(
        path,
        (
            {"sentence1": a, "sentence2": b, "score": float(plain(s))}
            for a, b, s in zip(s1, s2, score, strict=True)
        ),
    )
