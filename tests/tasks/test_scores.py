"""Score checks: the packaged MiniLM's last layer on local data, scored by mteb, against the
"here" column of ../shared/data/README.md (mteb 2.26's own scorer on the same files).

A score that differs is a bug in our pipeline until proven otherwise.

By default one task of every type in the shared data runs (BIOSSES: STS; TwitterURLCorpus:
PairClassification; SciFact: Retrieval, in test_scores_retrieval.py; Classification,
AmazonCounterfactualClassification en, is checked through the sweep in tests/test_sweep.py,
against the same README figure). The other tasks run with ``MTEB_MIDLAYER_FULL_SCORES=1``.
"""

from __future__ import annotations

import re

import mteb
import pytest
from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

from mteb_midlayer.tasks.local import local_task

from .conftest import (
    CLUSTER_SETS,
    FULL_SCORES,
    README_HERE,
    RERANK_CORPUS,
    RERANK_QRELS,
    RERANK_QUERIES,
    RERANK_TOP,
    SHARED_README,
    check_readme_score,
    evaluate_one,
    make_clustering_folder,
    make_reranking_folder,
)

full = pytest.mark.skipif(
    not FULL_SCORES, reason="long score check: set MTEB_MIDLAYER_FULL_SCORES=1"
)


def test_readme_still_says_so():
    """The expected figures above are the README's (guards against a silent README change)."""
    if not SHARED_README.is_file():
        pytest.skip(f"no {SHARED_README}")
    rows = {
        line.split("|")[1].strip().split(" ")[0]: line
        for line in SHARED_README.read_text("utf-8").splitlines()
        if line.startswith("| ")
    }
    for (name, _), score in README_HERE.items():
        assert re.search(rf"\b{score:.5f}\b", rows[name]), (name, score)


@pytest.mark.slow
def test_sts_biosses(encoder, shared_data):
    check_readme_score(encoder, shared_data, "BIOSSES")


@pytest.mark.slow
def test_pair_classification_twitter_url(encoder, shared_data):
    # ~40 s: 18,668 sentences of which 8,382 distinct, each encoded once by LayerEncoder
    check_readme_score(encoder, shared_data, "TwitterURLCorpus")


@pytest.mark.slow
@full
@pytest.mark.parametrize(
    ("name", "subsets"),
    [
        ("STSBenchmark", None),
        ("STS12", None),
        ("STS13", None),
        ("STS14", None),
        ("Banking77Classification", None),
        ("AmazonCounterfactualClassification", ["en", "en-ext"]),
        ("TweetSentimentExtractionClassification", None),
    ],
)
def test_full(encoder, shared_data, name, subsets):
    check_readme_score(encoder, shared_data, name, subsets)


# --------------------------------------------------------------------------------------------
# types absent from ../shared/data: the reader's data score exactly like the same data handed
# to mteb's task class in mteb's own in-memory format
# --------------------------------------------------------------------------------------------


def _reference(name: str, dataset):
    task = mteb.get_task(name)
    task.dataset = dataset
    task.data_loaded = True
    return task


def _scores(result: mteb.TaskResult) -> dict:
    (entry,) = result.scores["test"]
    return {k: v for k, v in entry.items() if isinstance(v, float)}


@pytest.mark.slow
def test_clustering_synthetic(encoder, tmp_path):
    name = "ArxivClusteringS2S"
    local = local_task(mteb.get_task(name), make_clustering_folder(tmp_path))
    ref = _reference(
        name,
        DatasetDict(
            {
                "test": Dataset.from_dict(
                    {
                        "sentences": [s["sentences"] for s in CLUSTER_SETS],
                        "labels": [s["labels"] for s in CLUSTER_SETS],
                    }
                )
            }
        ),
    )
    got, want = evaluate_one(encoder, local), evaluate_one(encoder, ref)
    assert _scores(got) == _scores(want)
    assert 0.5 < got.scores["test"][0]["main_score"] <= 1.0  # three clear topics per set


@pytest.mark.slow
def test_reranking_synthetic(encoder, tmp_path):
    name = "AskUbuntuDupQuestions"
    local = local_task(mteb.get_task(name), make_reranking_folder(tmp_path))
    qrels: dict[str, dict[str, int]] = {}
    for q, d, s in RERANK_QRELS:
        qrels.setdefault(q, {})[d] = s
    ref = _reference(
        name,
        {
            "default": {
                "test": RetrievalSplitData(
                    corpus=Dataset.from_list(
                        [
                            {"id": d["_id"], "title": d["title"], "text": d["text"]}
                            for d in RERANK_CORPUS
                        ]
                    ),
                    queries=Dataset.from_list(
                        [{"id": q["_id"], "text": q["text"]} for q in RERANK_QUERIES]
                    ),
                    relevant_docs=qrels,
                    top_ranked={t["query-id"]: t["corpus-ids"] for t in RERANK_TOP},
                )
            }
        },
    )
    got, want = evaluate_one(encoder, local), evaluate_one(encoder, ref)
    assert _scores(got) == _scores(want)
    assert got.scores["test"][0]["main_score"] > 0.8  # near-duplicate questions rank first
