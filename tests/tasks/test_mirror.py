"""The writer: read local -> write -> read again gives identical datasets."""

from __future__ import annotations

import warnings
from pathlib import Path

import mteb
import pytest
from datasets import Dataset, DatasetDict

from mteb_midlayer.tasks.local import local_task
from mteb_midlayer.tasks.mirror import mirror_task, write_task_data

from .conftest import make_clustering_folder, make_reranking_folder, write_jsonl

SHARED_TASKS = [
    "AmazonCounterfactualClassification",
    "BIOSSES",
    "Banking77Classification",
    "STS12",
    "SciFact",
    "TweetSentimentExtractionClassification",
    "TwitterURLCorpus",
]


def _local(name: str, folder: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = local_task(mteb.get_task(name, **kw), folder)
    task.load_data()
    return task


def _plain(data):
    """Datasets, dicts of them and retrieval splits as plain Python values."""
    if isinstance(data, Dataset):
        return {"features": str(data.features), "rows": data.to_dict()}
    if isinstance(data, dict | DatasetDict):
        return {k: _plain(v) for k, v in data.items()}
    return data


def _round_trip(name: str, folder: Path, tmp_path: Path, **kw):
    first = _local(name, folder, **kw)
    out = mirror_task(first, tmp_path / "mirror")
    assert out == tmp_path / "mirror" / name
    assert first.data_loaded  # mirror_task leaves a task it did not load alone
    second = _local(name, out, **kw)
    assert second.hf_subsets == first.hf_subsets
    assert list(second.eval_splits) == list(first.eval_splits)
    assert _plain(second.dataset) == _plain(first.dataset)
    return first, out


@pytest.mark.parametrize("name", SHARED_TASKS)
def test_round_trip_shared(shared_data, tmp_path, name):
    _round_trip(name, shared_data / name, tmp_path)


def test_round_trip_subset_filter(shared_data, tmp_path):
    name = "AmazonCounterfactualClassification"
    _, out = _round_trip(
        name, shared_data / name, tmp_path, languages=["eng"], exclusive_language_filter=True
    )
    assert sorted(p.name for p in out.iterdir()) == ["en", "en-ext"]
    assert sorted(p.name for p in (out / "en").iterdir()) == ["test.jsonl", "train.jsonl"]


def test_round_trip_synthetic(tmp_path):
    _round_trip("ArxivClusteringS2S", make_clustering_folder(tmp_path / "in"), tmp_path)
    _, out = _round_trip("AskUbuntuDupQuestions", make_reranking_folder(tmp_path / "in"), tmp_path)
    assert (out / "top_ranked.jsonl").is_file()
    folder = tmp_path / "in" / "BiorxivClusteringS2S.v2"
    write_jsonl(
        folder / "test.jsonl",
        [{"sentences": "a", "labels": ["x", "y"]}, {"sentences": "b", "labels": ["x", "z"]}],
    )
    _round_trip("BiorxivClusteringS2S.v2", folder, tmp_path)


def test_writes_mteb_hub_formats(tmp_path):
    """The writer accepts the structures mteb's Hub loaders produce (not only ours)."""
    task = mteb.get_task("TwitterURLCorpus")
    # mteb's older pair-classification data: the whole split in one row of lists
    task.dataset = DatasetDict(
        {
            "test": Dataset.from_dict(
                {"sentence1": [["a", "b"]], "sentence2": [["c", "d"]], "labels": [[1, 0]]}
            )
        }
    )
    task.data_loaded = True
    write_task_data(task, tmp_path / "TwitterURLCorpus")
    back = _local("TwitterURLCorpus", tmp_path / "TwitterURLCorpus")
    assert back.dataset["test"].to_dict() == {
        "sentence1": ["a", "b"],
        "sentence2": ["c", "d"],
        "labels": [1, 0],
    }

    task = mteb.get_task("Banking77Classification")  # ClassLabel labels are written as ints
    ds = Dataset.from_dict({"text": ["a", "b", "c"], "label": ["x", "y", "x"], "extra": [1, 2, 3]})
    ds = ds.class_encode_column("label")
    task.dataset = DatasetDict({"train": ds, "test": ds})
    task.data_loaded = True
    write_task_data(task, tmp_path / "Banking77Classification")
    text = (tmp_path / "Banking77Classification" / "test.jsonl").read_text("utf-8")
    assert text.splitlines()[0] == '{"text": "a", "label": 0}'


def test_mirror_refuses_to_overwrite(shared_data, tmp_path):
    task = _local("BIOSSES", shared_data / "BIOSSES")
    mirror_task(task, tmp_path)
    with pytest.raises(FileExistsError):
        mirror_task(task, tmp_path)
    mirror_task(task, tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BIOSSES"]  # no temporary left


def test_mirror_failure_leaves_nothing(tmp_path):
    task = mteb.get_task("BIOSSES")
    task.dataset = DatasetDict(
        {"test": Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"]})}
    )
    task.data_loaded = True
    with pytest.raises(ValueError, match="score"):
        mirror_task(task, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_mirror_loads_and_unloads(shared_data, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = local_task(mteb.get_task("STS13"), shared_data / "STS13")
    mirror_task(task, tmp_path)
    assert not task.data_loaded
    assert len((tmp_path / "STS13" / "test.jsonl").read_text("utf-8").splitlines()) == 1500


def test_mirror_tasks_from_hub_loader(tmp_path, monkeypatch):
    """`mirror TASK... --to DIR`: mteb's own load_data (Hub stubbed) then the writer."""
    from mteb_midlayer.tasks.mirror import mirror_tasks

    calls = []

    def fake_load_dataset(**kwargs):
        calls.append(kwargs)
        rows = {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [1.5, 3.0]}
        return DatasetDict({"test": Dataset.from_dict(rows)})

    monkeypatch.setattr("mteb.abstasks.abstask.load_dataset", fake_load_dataset)
    (path,) = mirror_tasks(["BIOSSES"], tmp_path)
    assert path == tmp_path / "BIOSSES"
    assert calls and calls[0]["path"] == "mteb/biosses-sts"
    back = _local("BIOSSES", path)
    assert back.dataset["test"]["score"] == [1.5, 3.0]

    with pytest.raises(FileExistsError, match="BIOSSES"):
        mirror_tasks(["STS12", "BIOSSES"], tmp_path)
    assert not (tmp_path / "STS12").exists()
    with pytest.raises(ValueError, match="unknown mteb task"):
        mirror_tasks(["NoSuchTask"], tmp_path)
    with pytest.raises(ValueError, match="not both"):
        mirror_tasks(["BIOSSES"], tmp_path, benchmark="layer-by-layer-32")


# ---------------------------------------------------------------- the CLI verb


def _load_from(data_dir: Path):
    """A stand-in for mteb's Hub loader: the task's data from a local copy, via our reader.

    Splits that mteb evaluates but the copy lacks are filled with the test split (tagged), so
    that ``--all-splits`` has something to write.
    """
    from mteb_midlayer.tasks.local import local_layout, read_task_data

    def load_data(self, **kwargs):
        if self.data_loaded:
            return
        folder = data_dir / self.metadata.name
        # mteb's Hub loader reads every split; our reader reads those the folder has
        data = read_task_data(self, folder, local_layout(self, folder))
        per_subset = data if self.metadata.is_multilingual else {"default": data}
        for dd in per_subset.values():
            for split in self.metadata.eval_splits:
                if split not in dd:
                    dd[split] = dd["test"].map(lambda r: {"text": "[copy] " + r["text"]})
        self.dataset = data
        self.data_loaded = True

    return load_data


def _patch_loader(monkeypatch, data_dir: Path, *names: str) -> None:
    for name in names:
        monkeypatch.setattr(type(mteb.get_task(name)), "load_data", _load_from(data_dir))


def _rows(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_cli_mirror_writes_the_tasks_and_says_so(shared_data, tmp_path, monkeypatch, capsys):
    from mteb_midlayer.cli import main

    _patch_loader(monkeypatch, shared_data, "BIOSSES", "AmazonCounterfactualClassification")
    out = tmp_path / "data"
    assert main(["mirror", "BIOSSES", "AmazonCounterfactualClassification", "--to", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"wrote {out / 'BIOSSES'}: test.jsonl",
        f"wrote {out / 'AmazonCounterfactualClassification'}: "
        + ", ".join(
            sorted(
                f"{s}/{f}.jsonl" for s in ("de", "en", "en-ext", "ja") for f in ("test", "train")
            )
        ),
        f"Use it offline: mteb-midlayer sweep MODEL --data-dir {out}",
    ]
    # The files hold the copy's rows (scores as floats), read back as the same task data.
    assert _rows(out / "BIOSSES" / "test.jsonl") == [
        {**r, "score": float(r["score"])} for r in _rows(shared_data / "BIOSSES" / "test.jsonl")
    ]
    en = out / "AmazonCounterfactualClassification" / "en"
    assert _rows(en / "train.jsonl") == _rows(
        shared_data / "AmazonCounterfactualClassification" / "en" / "train.jsonl"
    )
    assert not (en / "validation.jsonl").exists()  # test only by default

    # --all-splits adds mteb's other eval splits; --overwrite is needed to replace a folder.
    assert main(["mirror", "BIOSSES", "--to", str(out), "--all-splits"]) == 2
    err = capsys.readouterr().err
    assert "error: FileExistsError: task folder(s) exist in" in err and "--overwrite" in err
    argv = ["mirror", "AmazonCounterfactualClassification", "--to", str(out)]
    assert main([*argv, "--all-splits", "--overwrite"]) == 0
    validation = _rows(en / "validation.jsonl")
    assert len(validation) == len(_rows(en / "test.jsonl"))
    assert validation[0]["text"].startswith("[copy] ")
    assert sorted(p.name for p in out.iterdir()) == [
        "AmazonCounterfactualClassification",
        "BIOSSES",
    ]


def test_cli_mirror_errors_are_one_line(tmp_path, capsys):
    from mteb_midlayer.cli import main

    # Offline (the tests' HF_*_OFFLINE=1): the Hub is said to be unreachable, in one line.
    assert main(["mirror", "BIOSSES", "--to", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error: HubUnreachableError: cannot load BIOSSES (mteb/biosses-sts): ")
    assert "Hugging Face Hub is unreachable" in err and "OfflineModeIsEnabled" in err
    assert list(tmp_path.iterdir()) == []  # no partial folder

    assert main(["mirror", "NoSuchTask", "--to", str(tmp_path)]) == 2
    assert "unknown mteb task name(s): 'NoSuchTask'" in capsys.readouterr().err
    assert main(["mirror", "--to", str(tmp_path)]) == 2
    assert "give task names or a benchmark" in capsys.readouterr().err
    assert (
        main(["mirror", "BIOSSES", "--benchmark", "layer-by-layer-32", "--to", str(tmp_path)]) == 2
    )
    assert "not both" in capsys.readouterr().err


def test_hub_failures_are_recognised_through_the_chain():
    from mteb_midlayer.tasks.mirror import _hub_failure

    class OfflineModeIsEnabled(ConnectionError):
        pass

    try:
        try:
            raise OfflineModeIsEnabled("offline mode is on")
        except ConnectionError as inner:
            raise FileNotFoundError("Dataset x is not cached") from inner
    except FileNotFoundError as outer:
        assert _hub_failure(outer) == "offline mode is on"
    assert _hub_failure(ValueError("bad data")) is None
