"""mteb as the sweep uses it: score one slice quietly, and learn a task's texts by recording.

`score_slice` runs `mteb.evaluate` on one `(task, slice)` into a result cache; `_quiet_scoring`
silences what mteb, datasets and scikit-learn repeat on every slice. `record_requests` runs mteb
once with an encoder that records the texts (after prompts) a task asks for, so the encode units
later put exactly those texts into the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mteb
import numpy as np

from .encoder import loader_texts, resolve_prompt
from .search import with_search_backend

__all__ = [
    "TaskTexts",
    "record_requests",
    "score_slice",
    "scorer_warnings_to_log",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskTexts:
    """The distinct texts a task sends the encoder for one prompt type, in first-asked order,
    each starting with `prompt` (the one mteb's rules pick for this task and prompt type)."""

    task: str
    prompt_type: str | None
    texts: tuple[str, ...]
    prompt: str = ""

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(hashlib.sha256(t.encode("utf-8")).digest())
        return h.hexdigest()


def score_slice(
    encoder: Any,
    task: Any,
    cache: Any,
    batch_size: int,
    search_backend: str = "torch",
) -> float | None:
    """Score one slice (a `replay.StoreEncoder`) with mteb into `cache` (a
    `results.AtomicResultCache`); return the first split's main score."""
    with _quiet_scoring():
        res = mteb.evaluate(
            with_search_backend(encoder, search_backend),
            task,
            cache=cache,
            overwrite_strategy="only-missing",
            show_progress_bar=False,
            raise_error=True,
            encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
        )
    results = getattr(res, "task_results", None) or []
    return float(results[0].get_score()) if results else None


class _SupersededFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is superseded by" not in record.getMessage()


def _is_scorer_warning(w: warnings.WarningMessage) -> bool:
    """A warning of scikit-learn's scorers (e.g. `UndefinedMetricWarning` when an inner layer
    predicts one class): expected on some slices, noise between the progress bars."""
    return type(w.message).__module__.startswith("sklearn") or w.category.__module__.startswith(
        "sklearn"
    )


@contextlib.contextmanager
def scorer_warnings_to_log() -> Iterator[None]:
    """Route scikit-learn's scorer warnings to this module's log (one INFO line with their
    count and the first message; `-v` shows it) instead of the terminal; every other warning
    is shown as before (re-issued once the block ends)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("ignore", message=r".*is superseded by")
        try:
            yield
        finally:
            scorer = [w for w in caught if _is_scorer_warning(w)]
            others = [w for w in caught if not _is_scorer_warning(w)]
    if scorer:
        first = scorer[0]
        logger.info(
            "%d scikit-learn scorer warning(s) while scoring, first: %s: %s",
            len(scorer),
            first.category.__name__,
            " ".join(str(first.message).split()),
        )
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


@contextlib.contextmanager
def _quiet_scoring() -> Iterator[None]:
    """Silence what mteb and datasets repeat on every slice of a task.

    mteb's "task is superseded" notice (the sweep's `run_units` says it once per task instead),
    the progress bars of datasets' per-slice reformatting (the sweep's own bars stay) and
    scikit-learn's scorer warnings (to the log: `scorer_warnings_to_log`).
    """
    import datasets

    mteb_logger = logging.getLogger("mteb.abstasks.abstask")
    quiet = _SupersededFilter()
    mteb_logger.addFilter(quiet)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with scorer_warnings_to_log():
            yield
    finally:
        mteb_logger.removeFilter(quiet)
        if bars:
            datasets.enable_progress_bars()


def record_requests(task: Any, prompts: dict[str, str] | None, name: str) -> list[TaskTexts]:
    """Run mteb once on `task` with an encoder that records the texts (after prompts) per
    prompt type and answers with zero vectors: the scoring runs later ask for
    exactly these texts. The task's data must be loaded (mteb leaves preloaded data alone)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta

    seen: dict[str | None, dict[str, None]] = {}
    prompt_of: dict[str | None, str] = {}

    class Recorder(AbsEncoder):
        def __init__(self) -> None:
            self.model = None
            self.model_prompts = prompts
            self.mteb_model_meta = ModelMeta.create_empty(
                overwrites=dict(name=name, revision="plan", embed_dim=16)
            )

        def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
                   prompt_type: Any = None, **kwargs: Any) -> np.ndarray:  # fmt: skip
            prompt = resolve_prompt(prompts, task_metadata, prompt_type)
            texts = [prompt + text for text in loader_texts(inputs)]
            kind = prompt_type.value if prompt_type is not None else None
            if prompt_of.setdefault(kind, prompt) != prompt:
                raise ValueError(
                    f"{task_metadata.name} asks for prompt type {kind} with two prompts "
                    f"({prompt_of[kind]!r}, {prompt!r}); the store keeps one per prompt type."
                )
            bucket = seen.setdefault(kind, {})
            for t in texts:
                bucket.setdefault(t, None)
            return _zero_vectors(texts)

    with _quiet_scoring(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scorers complain about constant vectors
        mteb.evaluate(
            Recorder(),
            task,
            cache=None,
            overwrite_strategy="always",
            show_progress_bar=False,
            raise_error=True,
            encode_kwargs={"batch_size": 512, "show_progress_bar": False},
        )
    return [
        TaskTexts(
            task=task.metadata.name, prompt_type=kind, texts=tuple(bucket), prompt=prompt_of[kind]
        )
        for kind, bucket in seen.items()
    ]


def _zero_vectors(texts: Sequence[str], dim: int = 16) -> np.ndarray:
    """Zero vectors: every scorer (a logistic regression, a search) finishes at once on them."""
    return np.zeros((len(texts), dim), dtype=np.float32)
