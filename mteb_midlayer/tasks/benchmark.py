"""Benchmarks and task lists: the paper's ``layer-by-layer-32``, any mteb benchmark, task names.

Aggregation follows ``design/TASKS.md``: each task is scored on the ``test`` split with its
``main_score``; a multilingual task counts its English subsets only (STS17: ``en-en``),
averaged when there are several; a layer's average is over the tasks that have a result at
that layer, and the table names the tasks missing there.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mteb
from mteb.abstasks import AbsTask

from mteb_midlayer.tasks.local import local_task

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

__all__ = [
    "LAYER_BY_LAYER_32",
    "LAYER_BY_LAYER_32_TASKS",
    "english_only",
    "english_task_subsets",
    "get_benchmark",
    "resolve_tasks",
    "task_main_score",
]

LAYER_BY_LAYER_32 = "layer-by-layer-32"

#: The 32 tasks of "Layer by Layer" (MTEB English minus retrieval and p2p tasks), by type.
LAYER_BY_LAYER_32_TASKS: dict[str, list[str]] = {
    "Classification": [
        "AmazonCounterfactualClassification",
        "AmazonReviewsClassification",
        "Banking77Classification",
        "EmotionClassification",
        "MTOPDomainClassification",
        "MTOPIntentClassification",
        "MassiveIntentClassification",
        "MassiveScenarioClassification",
        "ToxicConversationsClassification",
        "TweetSentimentExtractionClassification",
    ],
    "Clustering": [
        "ArxivClusteringS2S",
        "BiorxivClusteringS2S",
        "MedrxivClusteringS2S",
        "RedditClustering",
        "StackExchangeClustering",
        "TwentyNewsgroupsClustering",
    ],
    "PairClassification": ["SprintDuplicateQuestions", "TwitterSemEval2015", "TwitterURLCorpus"],
    "Reranking": [
        "AskUbuntuDupQuestions",
        "MindSmallReranking",
        "SciDocsRR",
        "StackOverflowDupQuestions",
    ],
    "STS": [
        "BIOSSES",
        "SICK-R",
        "STS12",
        "STS13",
        "STS14",
        "STS15",
        "STS16",
        "STS17",
        "STSBenchmark",
    ],
}

_DESCRIPTION = (
    "The 32 tasks of 'Layer by Layer: Uncovering Hidden Representations in Language Models' "
    "(Skean et al., 2025): MTEB's English benchmark without retrieval and paragraph-to-paragraph "
    "(p2p) tasks, scored on the test split; multilingual tasks restricted to their English "
    "subsets (STS17 en-en)."
)


def _layer_by_layer_names() -> list[str]:
    return [name for names in LAYER_BY_LAYER_32_TASKS.values() for name in names]


def get_benchmark(name: str) -> mteb.Benchmark:
    """An mteb ``Benchmark`` by name: ``"layer-by-layer-32"`` or any of mteb's benchmarks.

    ``layer-by-layer-32`` is built from mteb's task registry (task classes, splits and scorers
    are mteb's) with ``eval_splits=["test"]`` and mteb's own exclusive English language filter,
    which keeps STS17 ``en-en``, AmazonCounterfactual ``en`` and ``en-ext``, and the ``en``
    subset of AmazonReviews, MTOP and Massive. A new ``Benchmark`` (with new task objects) is
    built on every call.

    Raises:
        ValueError: an unknown benchmark name (with mteb's closest match).
    """
    if name.strip().lower() == LAYER_BY_LAYER_32:
        names = _layer_by_layer_names()
        tasks = mteb.get_tasks(
            tasks=names, languages=["eng"], eval_splits=["test"], exclusive_language_filter=True
        )
        got = [t.metadata.name for t in tasks]
        if got != names:  # mteb.get_tasks skips a task whose subsets all fail the filter
            raise RuntimeError(
                f"mteb {mteb.__version__} no longer provides the layer-by-layer-32 tasks as "
                f"expected; missing: {sorted(set(names) - set(got))}"
            )
        return mteb.Benchmark(
            name=LAYER_BY_LAYER_32,
            tasks=tasks,
            description=_DESCRIPTION,
            reference="https://arxiv.org/abs/2502.02013",
        )
    try:
        return mteb.get_benchmark(name)
    except KeyError as e:
        raise ValueError(
            f"unknown benchmark {name!r} ({e.args[0] if e.args else e}); besides mteb's "
            f"benchmarks (mteb.get_benchmarks()) there is {LAYER_BY_LAYER_32!r}"
        ) from None


def _fresh(task: AbsTask) -> AbsTask:
    """A new, unloaded instance of the same task with the same subset/split filters."""
    new = type(task)(seed=task.seed)
    if "metadata" in task.__dict__:
        new.metadata = task.__dict__["metadata"]
    new.hf_subsets = list(task.hf_subsets)
    new.filter_eval_splits(list(task.eval_splits))  # the task's own or its benchmark's
    return new


def _get_tasks_by_name(names: Sequence[str]) -> list[AbsTask]:
    found, unknown = [], []
    for n in names:
        try:
            found.append(mteb.get_task(n))
        except KeyError:
            unknown.append(n)
    if unknown:
        every = [t.metadata.name for t in mteb.get_tasks()]  # only on this error path (0.2 s)
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, every, n=1)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown mteb task name(s): {', '.join(hints)}")
    return found


def resolve_tasks(
    tasks: Sequence[str] | None = None,
    benchmark: str | None = None,
    data_dir: Path | str | None = None,
    *,
    validate: bool = True,
) -> list[AbsTask]:
    """The tasks to run: a benchmark's, or mteb tasks by name; local data swapped in.

    Args:
        tasks: mteb task names (each with mteb's default subsets and splits); duplicates are
            dropped.
        benchmark: a benchmark name for :func:`get_benchmark` (``"layer-by-layer-32"``,
            ``"MTEB(eng, v2)"``, ...). Give exactly one of ``tasks`` and ``benchmark``.
        data_dir: a folder of task folders (``data_dir/<TaskName>/``, see
            :mod:`mteb_midlayer.tasks.local`); a task with a folder reads it instead of the
            Hub (narrowed to the subsets and splits present), the others load from the Hub.
        validate: read and check every local folder now, so that malformed data fail before
            any model runs. Without it a folder that does not fit its task (e.g. its split
            file is missing) fails that task alone, when it loads.

    Returns:
        New task objects (never the objects of mteb's benchmark registry).

    Raises:
        ValueError: neither or both of ``tasks`` / ``benchmark``, unknown names, ``data_dir``
            not a folder.
        LocalDataError: (a ``ValueError``) a task folder that does not fit its task.
    """
    if tasks is not None and isinstance(tasks, str):
        tasks = [tasks]
    if tasks and benchmark:
        raise ValueError("give either task names or a benchmark, not both")
    if not tasks and not benchmark:
        raise ValueError("give task names or a benchmark (e.g. 'layer-by-layer-32')")

    if benchmark:
        selected = [_fresh(t) for t in get_benchmark(benchmark).tasks]
    else:
        selected = _get_tasks_by_name(list(dict.fromkeys(tasks or [])))

    if data_dir is None:
        return selected
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"--data-dir {data_dir} is not a folder")

    out = []
    used = set()
    for task in selected:
        folder = data_dir / task.metadata.name
        if folder.is_dir():
            out.append(local_task(task, folder, validate=validate, defer_errors=not validate))
            used.add(folder.name)
            logger.info("%s: data from %s", task.metadata.name, folder)
        else:
            out.append(task)
    unused = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unused = [n for n in unused if n not in used]
    if unused:
        names = [t.metadata.name for t in selected]
        hints = []
        typo = False
        for n in unused:
            close = difflib.get_close_matches(n, names, n=1)
            typo = typo or bool(close)
            hints.append(n + (f" (did you mean {close[0]}?)" if close else ""))
        # A near-miss is likely a typo worth a warning; other tasks' folders are normal.
        logger.log(
            logging.WARNING if typo else logging.INFO,
            "folders in %s that match no selected task (not used): %s",
            data_dir,
            ", ".join(hints),
        )
    return out


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------


def _is_english(languages: Iterable[str], english: Sequence[str]) -> bool:
    langs = list(languages)
    return bool(langs) and all(lang.split("-")[0] in english for lang in langs)


def english_task_subsets(task: AbsTask, languages: Sequence[str] = ("eng",)) -> list[str]:
    """A task's ``hf_subsets`` whose languages are all English; all of them when none is."""
    subsets = list(task.hf_subsets or ["default"])
    langs = task.metadata.eval_langs
    if not isinstance(langs, dict):
        return subsets
    english = [s for s in subsets if _is_english(langs.get(s, []), languages)]
    return english or subsets


def english_only(task: AbsTask, languages: Sequence[str] = ("eng",)) -> AbsTask:
    """The task restricted to its English subsets, as TASKS.md aggregates it.

    A new task object when that drops subsets; the task itself when it is monolingual or has
    no English subset at all (then every subset counts, as in :func:`task_main_score`).
    """
    keep = english_task_subsets(task, languages)
    if keep == list(task.hf_subsets):
        return task
    return mteb.get_task(task.metadata.name, hf_subsets=keep)


def _english_subsets(
    scores: Sequence[dict[str, Any]], languages: Sequence[str] = ("eng",)
) -> list[str]:
    """The subsets of a split's score list whose languages are all in ``languages``."""
    return [s["hf_subset"] for s in scores if _is_english(s.get("languages", []), languages)]


def task_main_score(
    task_result: mteb.TaskResult,
    split: str = "test",
    languages: Sequence[str] | None = ("eng",),
) -> float:
    """A task's score per TASKS.md: ``main_score`` on ``split``, English subsets averaged.

    A subset counts when all its languages are English (so STS17 counts ``en-en`` only, not
    ``en-de``; STS22 ``en``, not ``de-en``). A task with no English subset at all (e.g. a
    German task in another benchmark) averages all its subsets, as mteb does. With
    ``languages=None`` every subset is averaged.

    Raises:
        KeyError: the result has no ``split`` (it names the splits it has).
    """
    if split not in task_result.scores:
        raise KeyError(
            f"{task_result.task_name} has no {split!r} split in its result; it has "
            f"{', '.join(task_result.scores) or 'none'}"
        )
    scores = task_result.scores[split]
    if not scores:
        raise KeyError(f"{task_result.task_name}: no scores for split {split!r}")
    chosen = scores
    if languages is not None:
        keep = set(_english_subsets(scores, languages))
        if keep:
            chosen = [s for s in scores if s["hf_subset"] in keep]
    return float(sum(float(s["main_score"]) for s in chosen) / len(chosen))
