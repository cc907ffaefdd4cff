"""The all-layer sweep: equals per-slice LayerEncoder runs, isolates failures. (A sweep killed by
SIGKILL and resumed: tests/executors/test_local.py::test_killed_driver_loses_at_most_its_unit.)"""

from __future__ import annotations

import time

import mteb
import numpy as np
import pytest

from mteb_midlayer.encoder import LayerEncoder
from mteb_midlayer.model import EMBEDDED_NAME, LayerModel
from mteb_midlayer.sweep import select_tasks, sweep


def test_sweep_equals_layer_encoder_runs(minilm, shared_data, tmp_path):
    out = tmp_path / "sweep"
    result = sweep(
        minilm,
        tasks=["BIOSSES"],
        data_dir=shared_data,
        layers="all",
        dims=[384, 64],
        output=out,
        show_progress=False,
    )
    table = result.scores
    assert result.failures == {}
    # one forward pass per distinct text, not one per slice
    texts = select_tasks(["BIOSSES"], None, shared_data)[0]
    texts.load_data()
    unique = set(texts.dataset["test"]["sentence1"]) | set(texts.dataset["test"]["sentence2"])
    assert result.n_encoded == len(unique)
    assert list(table.index.get_level_values("layer").unique()) == list(range(7))
    assert table.loc[(384, 6), "BIOSSES"] == pytest.approx(0.81254, abs=1e-4)  # README "here"

    for layer, dim in ((6, 384), (3, 64), (0, 384)):
        enc = LayerEncoder(minilm, layer=layer, dim=None if dim == 384 else dim)
        task = select_tasks(["BIOSSES"], None, shared_data)[0]
        res = mteb.evaluate(enc, task, cache=None, show_progress_bar=False)
        direct = res.task_results[0].get_score()
        assert table.loc[(dim, layer), "BIOSSES"] == pytest.approx(direct, abs=1e-6), (layer, dim)

    # mteb's own cache reads the results: one experiment per slice, real name and revision
    results = mteb.ResultCache(out).load_results(
        include_remote=False, load_experiments="match_name"
    )
    metas = [m.model_meta for m in results.model_results]
    assert len(metas) == 14
    assert {m.name for m in metas} == {EMBEDDED_NAME}
    assert {m.revision for m in metas} == {minilm.revision}
    assert {(m.experiment_kwargs["layer"], m.experiment_kwargs["dim"]) for m in metas} == {
        (layer, dim) for layer in range(7) for dim in (384, 64)
    }

    # a rerun encodes nothing and rescores nothing
    files = sorted(out.rglob("BIOSSES.json"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = sweep(
        minilm,
        tasks=["BIOSSES"],
        data_dir=shared_data,
        dims=[384, 64],
        output=out,
        show_progress=False,
    )
    assert again.n_encoded == 0
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    np.testing.assert_array_equal(again.scores["BIOSSES"].to_numpy(), table["BIOSSES"].to_numpy())


@pytest.mark.slow
def test_sweep_classification_last_layer_is_the_published_model(minilm, shared_data, tmp_path):
    """Classification is where normalisation shows (logistic regression is not scale-free): the
    sweep's default is the model's own Normalize module, so its last layer reproduces the README's
    "here" figure, and an explicit --no-normalize gives another slice in its own folder."""
    import warnings

    from mteb_midlayer.tasks.local import local_task

    name = "AmazonCounterfactualClassification"

    def task():
        with warnings.catch_warnings():  # the validation split is absent from the local copy
            warnings.simplefilter("ignore")
            return local_task(mteb.get_task(name, hf_subsets=["en"]), shared_data / name)

    table = sweep(minilm, tasks=[task()], layers=[6], output=tmp_path, show_progress=False).scores
    assert table.loc[6, name] == pytest.approx(0.63642, abs=1e-4)  # README "here", en
    raw = sweep(
        minilm, tasks=[task()], layers=[6], normalize=False, output=tmp_path, show_progress=False
    )
    assert raw.n_encoded == 0  # normalisation is applied on replay, not stored
    assert raw.scores.loc[6, name] != pytest.approx(table.loc[6, name], abs=1e-4)
    assert len(list(tmp_path.rglob(f"{name}.json"))) == 2


def test_default_tasks_are_the_data_dirs_tasks_in_english(shared_data):
    from mteb_midlayer.tasks.local import is_local_task

    tasks = {t.metadata.name: t for t in select_tasks(None, None, shared_data)}
    assert set(tasks) == {p.name for p in shared_data.iterdir() if p.is_dir()}
    assert all(is_local_task(t) for t in tasks.values())
    # de and ja are in the folder, but the tables average English subsets only (TASKS.md)
    assert sorted(tasks["AmazonCounterfactualClassification"].hf_subsets) == ["en", "en-ext"]
    assert tasks["STSBenchmark"].hf_subsets == ["default"]


def test_a_broken_task_fails_alone(minilm_biosses):
    """The shared MiniLM sweep's data folder holds BIOSSES and three broken tasks (conftest):
    each is named with why, and BIOSSES still gets the README's score."""
    table, data = minilm_biosses.table, minilm_biosses.data_dir
    failures = minilm_biosses.failures
    assert set(failures) == {"STS12", "STS13", "STS14"}
    assert "test.jsonl" in failures["STS12"] and "line 2" in failures["STS12"], failures
    assert "none of STS13's eval splits" in failures["STS13"]
    assert str(data / "STS13") in failures["STS13"]
    assert "test.jsonl" in failures["STS14"]  # a folder with no split file at all
    assert table.loc[6, "BIOSSES"] == pytest.approx(0.81254, abs=1e-4)


def test_cli_exit_code_and_bad_arguments(shared_data, tmp_path):
    from mteb_midlayer.cli import main

    assert main(["sweep", "minilm", "--tasks", "NoSuchTask", "--output", str(tmp_path)]) == 2
    assert (
        main(["sweep", "minilm", "--tasks", "BIOSSES", "--layers", "9", "--output", str(tmp_path)])
        == 2
    )
    assert (
        main(["sweep", "minilm", "--tasks", "BIOSSES", "--dims", "999", "--output", str(tmp_path)])
        == 2
    )


def test_sweep_matches_layer_encoder_on_mock_tasks_with_prompts(minilm, tmp_path):
    """Classification (train + test texts) and retrieval (query / document prompt types)."""
    from mteb.mocks.mock_tasks import MockClassificationTask, MockRetrievalTask

    prompts = {"query": "query: ", "document": "passage: "}
    tasks = [MockClassificationTask(), MockRetrievalTask()]
    lm = LayerModel.load(minilm.model, minilm.tokenizer, name="local/minilm", device="cpu")
    lm.prompts = prompts
    result = sweep(lm, tasks=tasks, layers=[2, 6], output=tmp_path, show_progress=False)
    assert result.failures == {}
    table = result.scores
    # query and document texts live in separate store configurations (prompt type is in the key)
    assert len(list((tmp_path / "store").glob("*/config.json"))) >= 2
    for layer in (2, 6):
        enc = LayerEncoder(lm, layer=layer)
        for task in (MockClassificationTask(), MockRetrievalTask()):
            res = mteb.evaluate(enc, task, cache=None, show_progress_bar=False)
            name = task.metadata.name
            assert table.loc[layer, name] == pytest.approx(
                res.task_results[0].get_score(), abs=1e-6
            )


def test_score_results_are_taken_as_they_finish_not_at_the_end():
    """With worker scorers the bar moves while the driver encodes the next task; a broken
    executor reaches the driver as (None, exception)."""
    import io
    import threading

    from tqdm import tqdm

    from mteb_midlayer.sweep import _ScoreDrain

    gate = threading.Event()

    def results():
        yield "unit-1", "report-1"
        gate.wait(10)
        yield "unit-2", "report-2"

    def broken():
        yield "unit-3", "report-3"
        raise RuntimeError("worker pool broke")

    bar = tqdm(total=3, file=io.StringIO())
    drain = _ScoreDrain(bar)
    drain.add(results())
    deadline = time.monotonic() + 10
    while bar.n < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bar.n == 1
    assert drain.ready() == [("unit-1", "report-1")]  # without waiting for unit-2
    assert drain.ready() == []
    drain.add(broken())
    gate.set()
    rest = drain.wait()
    assert bar.n == 3
    assert ("unit-2", "report-2") in rest and ("unit-3", "report-3") in rest
    (error,) = [item for item in rest if item[0] is None]
    assert isinstance(error[1], RuntimeError) and "broke" in str(error[1])


def test_scorer_warnings_go_to_the_log_in_one_line_and_other_warnings_still_show(caplog):
    """scikit-learn's UndefinedMetricWarning (an inner layer predicting one class) printed ten
    blocks between the progress bars; scoring now logs their count, other warnings still show."""
    import logging
    import warnings

    from sklearn.metrics import precision_score

    from mteb_midlayer.scoring import scorer_warnings_to_log

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with (
            caplog.at_level(logging.INFO, logger="mteb_midlayer.scoring"),
            scorer_warnings_to_log(),
        ):
            for _ in range(3):
                assert precision_score([0, 1, 1], [0, 0, 0], average="macro") == 1 / 3 / 2
            warnings.warn("not a scorer's", UserWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["not a scorer's"]
    lines = [r.getMessage() for r in caplog.records if "scorer warning" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("3 scikit-learn scorer warning(s) while scoring, first: ")
    assert "UndefinedMetricWarning: Precision is ill-defined" in lines[0]


# ---- issue 21: nothing written outside --output; one-line refusals before any work


@pytest.mark.parametrize(
    "flags",
    [
        ["--revision", "../../../escaped"],
        ["--revision", "/abs/dir"],
        ["--name", "a/b/c"],
        ["--name", "../x"],
    ],
)
@pytest.mark.parametrize("verb", ["sweep", "metrics"])
def test_a_name_or_revision_that_would_leave_the_output_is_refused(
    tmp_path, monkeypatch, capsys, verb, flags
):
    from mteb_midlayer.cli import main

    monkeypatch.chdir(tmp_path)
    argv = [verb, "minilm", *flags, "--tasks", "BIOSSES", "--output", "a/b/out"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot name a results folder" in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even --output


def test_an_odd_but_safe_name_is_filed_inside_the_output_as_written(tmp_path):
    from mteb.mocks.mock_tasks import MockSTSTask

    from mteb_midlayer.frames import scores_frame

    from .conftest import tiny_model, tiny_tokenizer

    name, revision = "=HYPERLINK(x)/naïve|`<b>` ü", "@r+1 =x"
    out = tmp_path / "a" / "out"
    table = sweep(
        tiny_model("bert", n_layers=2), tokenizer=tiny_tokenizer(), name=name, revision=revision,
        tasks=[MockSTSTask()], layers=[1], output=out, device="cpu", show_progress=False,
    )  # fmt: skip
    assert table.failures == {}
    assert table.scores.loc[1, "mean"] == table.scores.loc[1, "MockSTSTask"]
    assert [p.name for p in tmp_path.rglob("*") if out not in (p, *p.parents)] == ["a"]
    folder = out / "results" / "=HYPERLINK(x)__naïve|`<b>`_ü" / revision / "experiments"
    assert len(list(folder.glob("*/MockSTSTask.json"))) == 1
    shown = scores_frame(out)
    assert set(shown["model"]) == {name} and set(shown["revision"]) == {revision}


@pytest.mark.parametrize(("have", "devices", "ok"), [(0, "cuda:0", False), (2, "cuda:1", True),
                                                     (2, "cpu,cuda:2", False), (0, "cpu", True)])  # fmt: skip
def test_devices_this_machine_lacks_are_refused_before_any_work(monkeypatch, have, devices, ok):
    import torch

    from mteb_midlayer.devices import parse_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: have > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: have)
    if ok:
        assert parse_devices(devices) == devices.split(",")
        return
    with pytest.raises(ValueError, match=r"--devices: cuda:\d is not on this machine") as info:
        parse_devices(devices)
    assert "\n" not in str(info.value)
    assert ("cuda:0..cuda:1" if have else "no CUDA device") in str(info.value)


def test_cli_devices_missing_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import torch

    from mteb_midlayer.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    for verb in ("sweep", "metrics"):  # an unknown model: the device is named first
        argv = [verb, "no-such/model", "--devices", "cuda:7", "--tasks", "BIOSSES"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cuda:7 is not on this machine" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("inside", ["BIOSSES/out", "BIOSSES", "BIOSSES/sub/out"])
def test_an_output_inside_a_task_folder_is_refused(tmp_path, monkeypatch, inside):
    from mteb_midlayer.metrics.run import layer_metrics

    data = tmp_path / "data"
    (data / "BIOSSES").mkdir(parents=True)
    (data / "notes").mkdir()
    monkeypatch.chdir(tmp_path)
    for run in (sweep, layer_metrics):
        with pytest.raises(
            ValueError, match=r"lies inside the task folder .*BIOSSES of --data-dir"
        ):
            run("no-such/model", data_dir="data", output=f"data/{inside}")
    # beside the tasks (or in a folder that is no task) is fine: the unknown model fails then
    for output in ("out", "data", "data/notes/out"):
        with pytest.raises(ValueError, match="no-such/model"):
            sweep("no-such/model", data_dir=data, output=output)
