"""The offline reader: real data in ../shared/data/mteb, synthetic folders, malformed folders."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path

import datasets
import mteb
import pytest
from datasets import DatasetDict
from mteb.abstasks import AbsTaskClusteringLegacy, AbsTaskRetrieval

from mteb_midlayer.tasks.local import (
    LocalDataError,
    is_local_task,
    local_layout,
    local_task,
    read_task_data,
    task_kind,
)

from .conftest import make_clustering_folder, make_reranking_folder, write_jsonl

# Split sizes from ../shared/data/README.md.
SIZES = {
    "STSBenchmark": {"test": 1379},
    "STS12": {"test": 3108},
    "STS13": {"test": 1500},
    "STS14": {"test": 3750},
    "BIOSSES": {"test": 100},
    "Banking77Classification": {"train": 10003, "test": 3080},
    "TweetSentimentExtractionClassification": {"train": 27481, "test": 3534},
    "TwitterURLCorpus": {"test": 9334},
}
AMAZON_SIZES = {
    "en": {"train": 4018, "test": 670},
    "en-ext": {"train": 8000, "test": 1334},
    "de": {"train": 5600, "test": 934},
    "ja": {"train": 5600, "test": 934},
}


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """Local tasks must never call datasets.load_dataset (the Hub)."""

    def boom(*args, **kwargs):
        raise AssertionError(f"load_dataset called: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    monkeypatch.setattr("mteb.abstasks.abstask.load_dataset", boom)
    monkeypatch.setattr("mteb.abstasks.retrieval_dataset_loaders.load_dataset", boom)


def _load(name: str, folder: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = local_task(mteb.get_task(name, **kw), folder)
    task.load_data()
    return task


@pytest.mark.parametrize("name", sorted(SIZES))
def test_reads_shared_single_subset_tasks(shared_data, name):
    task = _load(name, shared_data / name)
    real = type(mteb.get_task(name))
    assert isinstance(task, real) and type(task) is not real and is_local_task(task)
    assert task.metadata is real.metadata
    assert isinstance(task.dataset, DatasetDict)
    assert {s: len(d) for s, d in task.dataset.items()} == SIZES[name]
    assert list(task.eval_splits) == ["test"] and task.hf_subsets == ["default"]


def test_reads_shared_multilingual_classification(shared_data):
    name = "AmazonCounterfactualClassification"
    with pytest.warns(UserWarning, match="validation absent"):
        task = local_task(mteb.get_task(name), shared_data / name)
    assert list(task.eval_splits) == ["test"]  # mteb also has "validation": absent here
    assert sorted(task.hf_subsets) == sorted(AMAZON_SIZES)
    task.load_data()
    assert {k: {s: len(d) for s, d in v.items()} for k, v in task.dataset.items()} == AMAZON_SIZES
    assert task.dataset["en"]["test"].column_names == ["text", "label"]


def test_english_filter_reads_only_requested_subsets(shared_data):
    name = "AmazonCounterfactualClassification"
    task = _load(name, shared_data / name, languages=["eng"], exclusive_language_filter=True)
    assert sorted(task.dataset) == ["en", "en-ext"]


def test_reads_shared_pair_classification_columns(shared_data):
    task = _load("TwitterURLCorpus", shared_data / "TwitterURLCorpus")
    ds = task.dataset["test"]
    assert ds.column_names == ["sentence1", "sentence2", "labels"]  # mteb's label column
    assert set(ds["labels"]) == {0, 1}


def test_reads_shared_retrieval(shared_data):
    task = _load("SciFact", shared_data / "SciFact")
    split = task.dataset["default"]["test"]
    assert len(split["corpus"]) == 5183
    assert split["corpus"].column_names == ["id", "title", "text"]
    assert len(split["queries"]) == 300 and split["queries"].column_names == ["id", "text"]
    assert sum(len(v) for v in split["relevant_docs"].values()) == 339
    assert split["top_ranked"] is None


def test_synthetic_clustering_and_reranking(tmp_path):
    task = _load("ArxivClusteringS2S", make_clustering_folder(tmp_path))
    assert isinstance(task, AbsTaskClusteringLegacy)
    assert task.dataset["test"].column_names == ["sentences", "labels"]
    assert len(task.dataset["test"]) == 2

    task = _load("AskUbuntuDupQuestions", make_reranking_folder(tmp_path))
    assert isinstance(task, AbsTaskRetrieval)
    split = task.dataset["default"]["test"]
    assert split["top_ranked"]["q1"] == ["d1", "d2", "d4", "d6"]
    assert split["relevant_docs"]["q2"] == {"d2": 1, "d5": 1, "d3": 0}


def test_v2_clustering_one_document_a_line(tmp_path):
    folder = tmp_path / "BiorxivClusteringS2S.v2"
    write_jsonl(
        folder / "test.jsonl",
        [{"sentences": "a", "labels": "x"}, {"sentences": ["b", "c"], "labels": ["y", "x"]}],
    )
    task = _load("BiorxivClusteringS2S.v2", folder)
    assert task.dataset["test"]["sentences"] == ["a", "b", "c"]
    assert task.dataset["test"]["labels"] == ["x", "y", "x"]


def test_local_task_is_a_copy_with_filters(shared_data):
    orig = mteb.get_task("STS17", languages=["eng"], exclusive_language_filter=True)
    folder = shared_data.parent / "nonexistent"
    with pytest.raises(LocalDataError, match="no data folder"):
        local_task(orig, folder)
    assert orig.hf_subsets == ["en-en"] and not orig.data_loaded


def test_pickle_and_deepcopy(shared_data):
    task = local_task(mteb.get_task("BIOSSES"), shared_data / "BIOSSES")
    for clone in (pickle.loads(pickle.dumps(task)), copy.deepcopy(task)):
        assert type(clone) is type(task)
        assert clone.local_data_dir == task.local_data_dir
        clone.load_data()
        assert len(clone.dataset["test"]) == 100


def test_unsupported_type():
    with pytest.raises(LocalDataError, match="BitextMining"):
        task_kind(mteb.get_task("BUCC"))


# --------------------------------------------------------------------------------------------
# malformed folders: an error naming the file (and line), never a partial task
# --------------------------------------------------------------------------------------------

GOOD_STS = [
    {"sentence1": "a", "sentence2": "b", "score": 1.0},
    {"sentence1": "c", "sentence2": "d", "score": 2},
]


def _read(name: str, folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = local_task(mteb.get_task(name), folder)
    return read_task_data(task, folder)


def _assert_error(excinfo, path: Path, line: int | None):
    err = excinfo.value
    assert isinstance(err, ValueError)
    assert err.path == path, str(err)
    assert err.line == line, str(err)
    assert str(path) in str(err)
    if line is not None:
        assert f"line {line}" in str(err)


def test_good_sts_reads(tmp_path):
    write_jsonl(tmp_path / "BIOSSES" / "test.jsonl", GOOD_STS)
    assert _read("BIOSSES", tmp_path / "BIOSSES")["test"]["score"] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("content", "line", "match"),
    [
        ('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a", \n', 2, "bad JSON"),
        ('{"sentence1": "a", "sentence2": "b", "score": 1}\n[1, 2]\n', 2, "JSON object"),
        (
            '{"sentence1": "a", "sentence2": "b", "score": 1}\n\n{"text": "a", "score": 1}\n',
            3,
            "missing field",
        ),
        ('{"sentence1": "a", "sentence2": "b", "score": "high"}\n', 1, "'score'"),
        ('{"sentence1": "a", "sentence2": null, "score": 1}\n', 1, "'sentence2'"),
        ('{"sentence1": "a", "sentence2": "b", "score": NaN}\n', 1, "finite"),
    ],
)
def test_bad_lines(tmp_path, content, line, match):
    path = tmp_path / "BIOSSES" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(content, "utf-8")
    with pytest.raises(LocalDataError, match=match) as e:
        _read("BIOSSES", tmp_path / "BIOSSES")
    _assert_error(e, path, line)


def test_not_utf8(tmp_path):
    path = tmp_path / "BIOSSES" / "test.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "\xff"}\n')
    with pytest.raises(LocalDataError, match="UTF-8") as e:
        _read("BIOSSES", tmp_path / "BIOSSES")
    _assert_error(e, path, 2)


def test_empty_split(tmp_path):
    path = tmp_path / "BIOSSES" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("\n", "utf-8")
    with pytest.raises(LocalDataError, match="empty split") as e:
        _read("BIOSSES", tmp_path / "BIOSSES")
    _assert_error(e, path, None)


def test_no_split_file(tmp_path):
    folder = tmp_path / "BIOSSES"
    write_jsonl(folder / "dev.jsonl", GOOD_STS)
    with pytest.raises(LocalDataError, match="eval splits") as e:
        local_task(mteb.get_task("BIOSSES"), folder)
    _assert_error(e, folder, None)


def test_classification_needs_train(tmp_path):
    folder = tmp_path / "Banking77Classification"
    write_jsonl(folder / "test.jsonl", [{"text": "a", "label": 1}])
    with pytest.raises(LocalDataError, match="missing file") as e:
        local_task(mteb.get_task("Banking77Classification"), folder)
    _assert_error(e, folder / "train.jsonl", None)


def test_classification_mixed_label_types(tmp_path):
    folder = tmp_path / "Banking77Classification"
    write_jsonl(folder / "test.jsonl", [{"text": "a", "label": 1}])
    path = write_jsonl(
        folder / "train.jsonl",
        [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": "c", "label": 3}],
    )
    with pytest.raises(LocalDataError, match="one type") as e:
        _read("Banking77Classification", folder)
    _assert_error(e, path, 3)


def test_pair_label_not_binary(tmp_path):
    path = write_jsonl(
        tmp_path / "TwitterURLCorpus" / "test.jsonl",
        [
            {"sentence1": "a", "sentence2": "b", "label": 1},
            {"sentence1": "a", "sentence2": "b", "label": 2},
        ],
    )
    with pytest.raises(LocalDataError, match="0 or 1") as e:
        _read("TwitterURLCorpus", tmp_path / "TwitterURLCorpus")
    _assert_error(e, path, 2)


def test_clustering_lengths_differ(tmp_path):
    path = write_jsonl(
        tmp_path / "ArxivClusteringS2S" / "test.jsonl",
        [{"sentences": ["a", "b"], "labels": [0, 1]}, {"sentences": ["a", "b"], "labels": [0]}],
    )
    with pytest.raises(LocalDataError, match="2 items but 'labels' has 1") as e:
        _read("ArxivClusteringS2S", tmp_path / "ArxivClusteringS2S")
    _assert_error(e, path, 2)


def test_unknown_subset_folder(tmp_path):
    folder = tmp_path / "AmazonCounterfactualClassification"
    write_jsonl(folder / "en_ext" / "test.jsonl", [{"text": "a", "label": 1}])
    with pytest.raises(LocalDataError, match="en_ext") as e:
        local_task(mteb.get_task("AmazonCounterfactualClassification"), folder)
    _assert_error(e, folder, None)


def test_split_missing_in_one_subset(tmp_path):
    folder = tmp_path / "AmazonCounterfactualClassification"
    for sub in ("en", "de"):
        write_jsonl(folder / sub / "train.jsonl", [{"text": "a", "label": 1}])
    write_jsonl(folder / "en" / "test.jsonl", [{"text": "a", "label": 1}])
    with pytest.raises(LocalDataError, match="present in some subsets") as e:
        local_task(mteb.get_task("AmazonCounterfactualClassification"), folder)
    _assert_error(e, folder / "de" / "test.jsonl", None)


def test_missing_subset_is_warned(tmp_path):
    folder = tmp_path / "AmazonCounterfactualClassification"
    write_jsonl(folder / "en" / "train.jsonl", [{"text": "a", "label": 1}])
    write_jsonl(folder / "en" / "test.jsonl", [{"text": "a", "label": 1}])
    task = mteb.get_task(
        "AmazonCounterfactualClassification", languages=["eng"], exclusive_language_filter=True
    )
    with pytest.warns(UserWarning, match="en-ext absent"):
        task = local_task(task, folder)
    assert task.hf_subsets == ["en"]


def test_retrieval_errors(tmp_path):
    folder = make_reranking_folder(tmp_path)
    qrels = folder / "qrels" / "test.tsv"
    lines = qrels.read_text("utf-8").splitlines(keepends=True)

    qrels.write_text("query\tdoc\tscore\n" + "".join(lines[1:]), "utf-8")
    with pytest.raises(LocalDataError, match="bad header") as e:
        _read("AskUbuntuDupQuestions", folder)
    _assert_error(e, qrels, 1)

    qrels.write_text("".join(lines[:3]) + "q2\td2\tyes\n", "utf-8")
    with pytest.raises(LocalDataError, match="not an integer") as e:
        _read("AskUbuntuDupQuestions", folder)
    _assert_error(e, qrels, 4)

    qrels.write_text("".join(lines[:3]) + "q2 d2 1\n", "utf-8")
    with pytest.raises(LocalDataError, match="3 tab-separated") as e:
        _read("AskUbuntuDupQuestions", folder)
    _assert_error(e, qrels, 4)

    qrels.write_text("".join(lines), "utf-8")
    top = write_jsonl(folder / "top_ranked.jsonl", [{"query-id": "q1", "corpus-ids": "d1"}])
    with pytest.raises(LocalDataError, match="'corpus-ids'") as e:
        _read("AskUbuntuDupQuestions", folder)
    _assert_error(e, top, 1)

    write_jsonl(folder / "top_ranked.jsonl", [{"query-id": "q1", "corpus-ids": ["d1"]}])
    with pytest.raises(LocalDataError, match="no candidates") as e:
        _read("AskUbuntuDupQuestions", folder)

    (folder / "top_ranked.jsonl").unlink()
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(LocalDataError, match="missing file") as e:
        _read("AskUbuntuDupQuestions", folder)
    _assert_error(e, folder / "corpus.jsonl", None)


def test_layout_scan_does_not_parse(tmp_path):
    path = tmp_path / "BIOSSES" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("not json\n", "utf-8")
    layout = local_layout(mteb.get_task("BIOSSES"), path.parent)
    assert layout.splits == ["test"] and layout.subsets == ["default"]
    task = local_task(mteb.get_task("BIOSSES"), path.parent)  # lazy: fails at load
    with pytest.raises(LocalDataError, match="bad JSON"):
        task.load_data()
    assert not task.data_loaded
    with pytest.raises(LocalDataError, match="bad JSON"):
        local_task(mteb.get_task("BIOSSES"), path.parent, validate=True)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (
            {"sentence1": "a", "sentence2": "b", "score": True},
            "'score': expected a valid integer or a valid number, got bool True",
        ),
        ({"sentence1": "a", "sentence2": "b", "score": "1"}, "got str '1'"),
        (
            {"sentence1": ["a"], "sentence2": "b", "score": 1},
            "'sentence1': expected a valid string, got list",
        ),
    ],
)
def test_rows_are_strict_json_types(tmp_path, row, match):
    path = write_jsonl(tmp_path / "BIOSSES" / "test.jsonl", [GOOD_STS[0], row])
    with pytest.raises(LocalDataError, match=match) as e:
        _read("BIOSSES", tmp_path / "BIOSSES")
    _assert_error(e, path, 2)


def test_list_items_are_named(tmp_path):
    path = write_jsonl(
        tmp_path / "ArxivClusteringS2S" / "test.jsonl",
        [{"sentences": ["a", "b"], "labels": [0, 1]}, {"sentences": ["a", 7], "labels": [0, 1]}],
    )
    with pytest.raises(
        LocalDataError, match="'sentences' item 1: expected a valid string, got int 7"
    ) as e:
        _read("ArxivClusteringS2S", tmp_path / "ArxivClusteringS2S")
    _assert_error(e, path, 2)


# --------------------------------------------------------------------------------------------
# one bad folder fails its task alone
# --------------------------------------------------------------------------------------------


def _data_dir_with_a_broken_task(shared_data: Path, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "BIOSSES").symlink_to(shared_data / "BIOSSES", target_is_directory=True)
    write_jsonl(root / "STS13" / "dev.jsonl", GOOD_STS)  # no test.jsonl
    return root


def test_a_folder_without_its_split_file_fails_at_load_not_at_selection(shared_data, tmp_path):
    import pickle

    from mteb_midlayer.tasks.benchmark import resolve_tasks

    data = _data_dir_with_a_broken_task(shared_data, tmp_path)
    with pytest.raises(LocalDataError, match="none of STS13's eval splits"):
        resolve_tasks(["BIOSSES", "STS13"], data_dir=data)  # validate=True: at once
    good, bad = resolve_tasks(["BIOSSES", "STS13"], data_dir=data, validate=False)
    assert is_local_task(bad) and list(bad.eval_splits) == ["test"]
    for task in (bad, pickle.loads(pickle.dumps(bad))):
        with pytest.raises(LocalDataError, match=r"none of STS13's eval splits .*test\.jsonl") as e:
            task.load_data()
        _assert_error(e, data / "STS13", None)
        assert not task.data_loaded
    good.load_data()
    assert len(good.dataset["test"]) == 100


def test_selection_keeps_the_other_tasks_and_names_the_bad_one(shared_data, tmp_path):
    """(The sweep that then runs the others: tests/test_sweep.py::test_a_broken_task_fails_alone.)"""
    from mteb_midlayer.sweep import select_tasks

    data = _data_dir_with_a_broken_task(shared_data, tmp_path / "data")
    failures: dict[str, str] = {}
    assert [t.metadata.name for t in select_tasks(None, None, data, failures)] == ["BIOSSES"]
    assert list(failures) == ["STS13"]
