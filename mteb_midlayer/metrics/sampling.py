"""Which texts the layer metrics see: N texts of a task's evaluation split, seeded.

METRICS.md: N = 1000 texts (or all, if fewer), drawn with seed 42 from the evaluation split;
texts stored as lists (clustering sets) are flattened first. Multilingual tasks contribute
their English subsets (all subsets if none is English).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..tasks.benchmark import english_task_subsets
from .corpus import Corpus

#: Columns that hold model inputs in mteb 2 datasets (ids, labels and scores are skipped).
_TEXT_COLUMNS = ("text", "sentence1", "sentence2", "sentences")


def _split_parts(task: Any, split: str) -> Iterator[Any]:
    data = task.dataset
    if split in data and not isinstance(data[split], dict):
        yield data[split]
        return
    for subset in english_task_subsets(task):
        if subset in data and split in data[subset]:
            yield data[subset][split]


def _texts_of(part: Any) -> Iterator[str]:
    if isinstance(part, dict):  # retrieval / reranking: {"queries": ..., "corpus": ...}
        for key in ("queries", "corpus"):
            if part.get(key) is not None:
                yield from _texts_of(part[key])
        return
    for column in _TEXT_COLUMNS:
        if column not in part.column_names:
            continue
        for value in part[column]:
            if isinstance(value, str):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from (v for v in value if isinstance(v, str))


def task_texts(task: Any, split: str | None = None) -> list[str]:
    """Every input text of the task's evaluation split, flattened, in dataset order.

    A :class:`~.corpus.Corpus` stands in for a task: its texts, in file order.
    """
    if isinstance(task, Corpus):
        return list(task.texts)
    if not getattr(task, "data_loaded", False):
        task.load_data()
    split = split or (
        "test" if "test" in task.metadata.eval_splits else task.metadata.eval_splits[0]
    )
    texts = [t for part in _split_parts(task, split) for t in _texts_of(part)]
    if not texts:
        raise ValueError(f"Task {task.metadata.name} has no texts in split {split!r}.")
    return texts


def sample_texts(texts: list[str], n: int = 1000, seed: int = 42) -> list[str]:
    """`n` texts drawn without replacement with `seed` (all of them, in order, if fewer)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}.")
    if len(texts) <= n:
        return list(texts)
    picks = np.random.default_rng(seed).choice(len(texts), size=n, replace=False)
    return [texts[i] for i in sorted(picks)]
