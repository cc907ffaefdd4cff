"""layer-by-layer-32, task resolution, and the TASKS.md aggregation."""

from __future__ import annotations

import logging
import warnings

import mteb
import pytest

from mteb_midlayer.tasks.benchmark import (
    LAYER_BY_LAYER_32_TASKS,
    get_benchmark,
    resolve_tasks,
    task_main_score,
)
from mteb_midlayer.tasks.local import LocalDataError, is_local_task

from .conftest import make_clustering_folder, make_reranking_folder, write_jsonl


def test_layer_by_layer_32():
    bench = get_benchmark("layer-by-layer-32")
    assert isinstance(bench, mteb.Benchmark)
    assert bench.name == "layer-by-layer-32"
    assert len(bench.tasks) == 32
    by_type: dict[str, list[str]] = {}
    for task in bench.tasks:
        by_type.setdefault(task.metadata.type, []).append(task.metadata.name)
        assert list(task.eval_splits) == ["test"]
        # mteb's own classes from its registry
        assert type(task) is type(mteb.get_task(task.metadata.name))
    assert by_type == LAYER_BY_LAYER_32_TASKS
    subsets = {t.metadata.name: t.hf_subsets for t in bench.tasks if t.metadata.is_multilingual}
    assert subsets == {
        "AmazonCounterfactualClassification": ["en-ext", "en"],
        "AmazonReviewsClassification": ["en"],
        "MTOPDomainClassification": ["en"],
        "MTOPIntentClassification": ["en"],
        "MassiveIntentClassification": ["en"],
        "MassiveScenarioClassification": ["en"],
        "STS17": ["en-en"],
    }
    assert {len(v) for v in LAYER_BY_LAYER_32_TASKS.values()} == {3, 4, 6, 9, 10}
    assert not any(n.endswith("P2P") for v in LAYER_BY_LAYER_32_TASKS.values() for n in v)
    # new objects each time
    assert get_benchmark("layer-by-layer-32").tasks[0] is not bench.tasks[0]


def test_mteb_benchmarks_pass_through():
    bench = get_benchmark("MTEB(eng, v2)")
    assert bench is mteb.get_benchmark("MTEB(eng, v2)")
    with pytest.raises(ValueError, match="unknown benchmark"):
        get_benchmark("MTEB(eng, v9)")


def test_resolve_tasks_arguments():
    with pytest.raises(ValueError, match="not both"):
        resolve_tasks(["BIOSSES"], "layer-by-layer-32")
    with pytest.raises(ValueError, match="give task names or a benchmark"):
        resolve_tasks()
    with pytest.raises(ValueError, match="did you mean 'BIOSSES'"):
        resolve_tasks(["BIOSES", "STS12"])
    tasks = resolve_tasks(["STS12", "BIOSSES", "STS12"])
    assert [t.metadata.name for t in tasks] == ["STS12", "BIOSSES"]
    tasks = resolve_tasks(benchmark="MTEB(eng, v2)")
    registry = mteb.get_benchmark("MTEB(eng, v2)").tasks
    assert [t.metadata.name for t in tasks] == [t.metadata.name for t in registry]
    assert all(a is not b for a, b in zip(tasks, registry, strict=True))
    assert [t.hf_subsets for t in tasks] == [t.hf_subsets for t in registry]
    with pytest.raises(ValueError, match="not a folder"):
        resolve_tasks(["BIOSSES"], data_dir="/nonexistent/dir")


def test_resolve_tasks_data_dir(shared_data, caplog):
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("ignore")
        tasks = resolve_tasks(benchmark="layer-by-layer-32", data_dir=shared_data)
    assert len(tasks) == 32
    local = {t.metadata.name: t for t in tasks if is_local_task(t)}
    assert set(local) == {
        "AmazonCounterfactualClassification",
        "Banking77Classification",
        "TweetSentimentExtractionClassification",
        "TwitterURLCorpus",
        "BIOSSES",
        "STS12",
        "STS13",
        "STS14",
        "STSBenchmark",
    }
    amazon = local["AmazonCounterfactualClassification"]
    assert sorted(amazon.hf_subsets) == ["en", "en-ext"]  # de, ja in the folder: not asked for
    assert list(amazon.eval_splits) == ["test"]
    assert "SciFact" in caplog.text  # a folder no selected task uses is reported
    others = [t for t in tasks if not is_local_task(t)]
    assert all(not t.data_loaded for t in others)


def test_resolve_tasks_validates_local_data(tmp_path):
    make_clustering_folder(tmp_path)
    make_reranking_folder(tmp_path)
    (tmp_path / "BIOSSES").mkdir()
    (tmp_path / "BIOSSES" / "test.jsonl").write_text('{"sentence1": "a"}\n', "utf-8")
    with pytest.raises(LocalDataError, match=r"BIOSSES[/\\]test.jsonl, line 1: missing field"):
        resolve_tasks(benchmark="layer-by-layer-32", data_dir=tmp_path)
    tasks = resolve_tasks(benchmark="layer-by-layer-32", data_dir=tmp_path, validate=False)
    assert sum(is_local_task(t) for t in tasks) == 3
    write_jsonl(
        tmp_path / "BIOSSES" / "test.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1}] * 3
    )
    tasks = resolve_tasks(
        ["ArxivClusteringS2S", "AskUbuntuDupQuestions", "BIOSSES"], data_dir=tmp_path
    )
    assert all(is_local_task(t) and not t.data_loaded for t in tasks)


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------


def _result(
    task_name: str, subset_scores: dict[str, float], split: str = "test"
) -> mteb.TaskResult:
    task = mteb.get_task(task_name)
    scores = {
        split: {s: {"main_score": v, task.metadata.main_score: v} for s, v in subset_scores.items()}
    }
    return mteb.TaskResult.from_task_results(task, scores, evaluation_time=1.0)


def test_task_main_score_sts17_en_en_only():
    res = _result("STS17", {"en-en": 0.8, "en-de": 0.2, "es-es": 0.1, "ko-ko": 0.3})
    assert task_main_score(res) == pytest.approx(0.8)
    assert task_main_score(res, languages=None) == pytest.approx(0.35)


def test_task_main_score_english_subsets_averaged():
    res = _result(
        "AmazonCounterfactualClassification", {"en": 0.6, "en-ext": 0.7, "de": 0.1, "ja": 0.2}
    )
    assert task_main_score(res) == pytest.approx(0.65)
    res = _result("AmazonCounterfactualClassification", {"en": 0.6})
    assert task_main_score(res) == pytest.approx(0.6)
    assert task_main_score(_result("BIOSSES", {"default": 0.81})) == pytest.approx(0.81)
    # no English subset at all: every subset counts, as in mteb
    assert task_main_score(
        _result("AmazonCounterfactualClassification", {"de": 0.1, "ja": 0.3})
    ) == pytest.approx(0.2)
    with pytest.raises(KeyError, match=r"'test'.*validation"):
        task_main_score(_result("BIOSSES", {"default": 0.81}, split="validation"))
