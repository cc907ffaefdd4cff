"""The tidy frames: schema checks and the per-layer aggregate (missing tasks stay visible)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from mteb_midlayer import frames
from mteb_midlayer.cli import main
from mteb_midlayer.frames import scan_results
from mteb_midlayer.sweep import sweep

from .conftest import tiny_model, tiny_tokenizer


def _scores(rows):
    base = dict(
        model="m/x",
        revision="r",
        pooling="mean",
        normalize=False,
        final_norm="last",
        max_length=128,
        dtype="float32",
        prompts="none",
        include_prompt=True,
        n_layers=float("nan"),
        dim=8,
        mteb_version="2",
    )
    return pd.DataFrame([{**base, **r} for r in rows])[frames.SCORE_COLUMNS]


def test_layer_scores_overall_and_per_type_with_a_missing_task():
    df = _scores(
        [
            dict(layer=0, task="A", task_type="STS", score=0.2),
            dict(layer=0, task="B", task_type="STS", score=0.4),
            dict(layer=0, task="C", task_type="Classification", score=0.9),
            dict(layer=1, task="A", task_type="STS", score=0.6),
            dict(layer=1, task="C", task_type="Classification", score=0.3),
        ]
    )
    out = frames.layer_scores(df).set_index(["layer", "task_type"])
    assert out.loc[(0, "all"), "score"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert out.loc[(0, "STS"), "score"] == pytest.approx(0.3)
    assert out.loc[(0, "all"), "missing"] == ""
    # layer 1 lacks B: no average over fewer tasks (NaN, overall and for STS), and says so
    assert out.loc[(1, "all"), "n_tasks"] == 2
    assert out.loc[(1, "all"), "n_expected"] == 3
    assert out.loc[(1, "all"), "missing"] == "B"
    assert math.isnan(out.loc[(1, "all"), "score"]) and math.isnan(out.loc[(1, "STS"), "score"])
    assert out.loc[(1, "Classification"), "score"] == pytest.approx(0.3)  # complete: kept
    overall = frames.layer_scores(df, by_type=False)
    assert frames.complete(overall)["layer"].tolist() == [0]


def test_layer_scores_with_given_tasks_marks_absent_ones():
    df = _scores([dict(layer=2, task="A", task_type="STS", score=0.5)])
    out = frames.layer_scores(df, tasks=["A", "Z"], by_type=False)
    assert len(out) == 1
    row = out.iloc[0]
    assert row["missing"] == "Z" and row["n_tasks"] == 1 and row["n_expected"] == 2
    none = frames.layer_scores(
        _scores([dict(layer=2, task="A", task_type="STS", score=float("nan"))]), by_type=False
    )
    assert math.isnan(none.iloc[0]["score"]) and none.iloc[0]["missing"] == "A"


def test_check_frame_names_missing_columns():
    with pytest.raises(frames.FrameError, match="lacks columns"):
        frames.check_scores(pd.DataFrame({"model": []}))


def test_scores_frame_refuses_a_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="No results folder"):
        frames.scores_frame(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_metrics_frame_reads_parquet_rows(tmp_path):
    (tmp_path / "metrics").mkdir()
    rows = pd.DataFrame(
        [
            dict(
                model="m/x",
                revision="r",
                dataset="A",
                layer=0,
                metric="lidar",
                variant="value",
                value=1.5,
                n=10,
                pooling="mean",
                alpha=1.0,
                seed=42,
            )
        ]
    )
    rows.to_parquet(tmp_path / "metrics" / "a.parquet", index=False)
    df = frames.metrics_frame(tmp_path)
    assert df["value"].tolist() == [1.5]
    assert frames.metrics_frame(tmp_path / "empty").empty


def _metric_rows(values, **extra):
    base = dict(model="m/x", revision="r", dataset="A", metric="lidar", variant="value", n=10,
                pooling="mean", alpha=1.0, seed=42, final_norm="last")  # fmt: skip
    return pd.DataFrame([{**base, "layer": lay, "value": v, **extra} for lay, v in values.items()])


def test_metrics_frame_never_mixes_two_runs_of_older_files(tmp_path):
    """Issue 21: `metrics --n 100` then `--n 30` (files without a run identity): the newer
    file's rows only, with a note; before, both were averaged."""
    import os

    (tmp_path / "metrics").mkdir()
    first = tmp_path / "metrics" / "m__x__A__aaaa.parquet"
    second = tmp_path / "metrics" / "m__x__A__bbbb.parquet"
    _metric_rows({0: 1.0, 1: 2.0}, n=100).to_parquet(first, index=False)
    _metric_rows({0: 5.0, 1: 6.0}, n=30).to_parquet(second, index=False)
    os.utime(first, (1_000_000_000, 1_000_000_000))  # the older run
    notes = []
    df = frames.metrics_frame(tmp_path, notes=notes)
    assert df["value"].tolist() == [5.0, 6.0] and set(df["run"]) == {"file:bbbb"}
    [note] = notes
    assert note.startswith("older metric run left out: m/x (pooling mean, final_norm last) on A")
    assert "lidar of run file:aaaa" in note and "kept run file:bbbb" in note


def test_metrics_frame_keeps_the_newest_run_per_metric(tmp_path):
    (tmp_path / "metrics").mkdir()
    old = dict(run="r1", run_at="2026-01-01T00:00:00.000000+00:00", sample_size=100)
    new = dict(run="r2", run_at="2026-02-01T00:00:00.000000+00:00", sample_size=30)
    parts = [
        _metric_rows({0: 1.0, 1: 2.0}, **old),  # lidar of run 1: superseded by run 2
        _metric_rows({0: 7.0, 1: 8.0}, metric="dime", **old),  # dime only ever ran in run 1
        _metric_rows({0: 5.0, 1: 6.0}, **new),
        _metric_rows({0: 9.0}, dataset="B", **old),  # another dataset: its own newest run
    ]
    for i, part in enumerate(parts):
        part.to_parquet(tmp_path / "metrics" / f"p{i}.parquet", index=False)
    notes = []
    df = frames.metrics_frame(tmp_path, notes=notes)
    got = df.set_index(["dataset", "metric", "layer"])["value"].sort_index().to_dict()
    assert got == {
        ("A", "dime", 0): 7.0,
        ("A", "dime", 1): 8.0,
        ("A", "lidar", 0): 5.0,
        ("A", "lidar", 1): 6.0,
        ("B", "lidar", 0): 9.0,
    }
    [note] = notes
    assert (
        "on A: lidar of run r1 (sample_size=100" in note and "kept run r2 (sample_size=30" in note
    )
    # same run, written in two files (e.g. --layers 0 then --layers 1): read together
    one = dict(run="r3", run_at="2026-03-01T00:00:00.000000+00:00")
    _metric_rows({2: 3.0}, dataset="C", **one).to_parquet(tmp_path / "metrics" / "c0.parquet")
    _metric_rows({3: 4.0}, dataset="C", **{**one, "run_at": "2026-03-02T00:00:00.000000+00:00"}
                 ).to_parquet(tmp_path / "metrics" / "c1.parquet")  # fmt: skip
    notes = []
    c = frames.metrics_frame(tmp_path, notes=notes).query("dataset == 'C'")
    assert c["value"].tolist() == [3.0, 4.0] and len(notes) == 1


# ---- one table path: a layer missing a task, in `table`, `select` and the leaderboard

#: The committed MiniLM tree (tests/leaderboard/conftest.py): STS12 deleted at layer 3, dim 384.
LEADERBOARD_TREE = Path(__file__).parent / "data" / "leaderboard"


def test_a_layer_missing_a_task_has_no_average_anywhere_and_is_named(tmp_path, capsys):
    """Issue 22: `table` (and `sweep()`, the same `layer_table`) averaged the tasks a layer
    had (0.79 here), `select` and the leaderboard left it out: now all three say "missing"."""
    from mteb_midlayer.cli import main
    from mteb_midlayer.leaderboard import tables as boards
    from mteb_midlayer.select import select

    scores = frames.scores_frame(LEADERBOARD_TREE)
    have = scores[(scores["layer"] == 3) & (scores["dim"] == 384)]
    assert list(have["task"]) == ["BIOSSES"]  # the tree as described
    # table (the path `sweep()` returns too): NaN mean, the layer named under the table
    assert main(["table", str(LEADERBOARD_TREE), "--csv", str(tmp_path / "t.csv")]) == 0
    printed = capsys.readouterr().out
    assert "incomplete: dim 384, layer 3: no mean (1 of 2 tasks); missing: STS12" in printed
    csv = pd.read_csv(tmp_path / "t.csv").set_index(["dim", "layer"])
    assert math.isnan(csv.loc[(384, 3), "mean"]) and csv.loc[(384, 3), "missing"] == "STS12"
    assert csv.loc[(384, 3), "BIOSSES"] == pytest.approx(have["score"].iloc[0])
    complete = csv.loc[(384, 6), ["BIOSSES", "STS12"]].mean()
    assert csv.loc[(384, 6), "mean"] == pytest.approx(complete)  # complete layers unchanged
    # select: the same NaN in its per-layer frame, the layer named in its notes
    selection = select(LEADERBOARD_TREE)
    rows = selection.scores.query("task_type == 'all' and dim == 384").set_index("layer")
    assert math.isnan(rows.loc[3, "score"]) and rows.loc[6, "score"] == pytest.approx(complete)
    assert any("layer 3 dim 384: missing STS12 (1/2 tasks)" in n for n in selection.notes)
    # the leaderboard: the same NaN average, the same layer named
    config = boards.configs(scores)[0]
    board = boards.layer_task_table(scores, config, 384)
    assert math.isnan(board.table.loc[3, boards.AVERAGE])
    assert board.table.loc[6, boards.AVERAGE] == pytest.approx(complete)
    assert board.status.loc[3, "missing"] == "STS12"


def test_layer_table_keeps_the_sweep_shape():
    """What `sweep()` returns: tasks (given order first), mean, n_tasks, missing; one block
    per width under (dim, layer); a fusion row after the layers, indexed by its label."""
    rows = [
        dict(layer=layer, dim=dim, task=task, task_type="STS", score=0.1 * layer + 0.01 * dim)
        for layer in (1, 2)
        for dim in (8, 4)
        for task in ("A", "B")
        if not (layer == 2 and dim == 4 and task == "A")
    ]
    long = _scores(rows).assign(fuse="")
    fused = long[long["layer"] == 2].assign(fuse="1+2", score=0.5)
    table = frames.layer_table(pd.concat([long, fused]), tasks=["B", "A"])
    assert list(table.columns) == ["B", "A", "mean", "n_tasks", "missing"]
    assert table.index.names == ["dim", "layer"]
    assert [str(i) for i in table.loc[8].index] == ["1", "2", "1+2"]
    assert table.loc[(8, 1), "mean"] == pytest.approx(0.18)
    assert math.isnan(table.loc[(4, 2), "mean"]) and table.loc[(4, 2), "missing"] == "A"
    assert frames.missing_notes(table) == [
        "dim 4, layer 2: no mean (1 of 2 tasks); missing: A",
        "dim 4, layer 1+2: no mean (1 of 2 tasks); missing: A",
    ]


# ---- damaged result folders: every problem is named, none is fatal (`table`, `scan_results`)


@pytest.fixture(scope="module")
def results(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    folder = root / "model"
    tiny_model("bert", n_layers=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    out = root / "out"
    sweep(
        str(folder), tasks=["BIOSSES"], data_dir=shared_data, layers=[1, 2], output=out,
        device="cpu", show_progress=False,
    )  # fmt: skip
    return out


def _copy(results, tmp_path):
    import shutil

    return shutil.copytree(results, tmp_path / "copy")


def test_missing_model_meta_is_reported_not_dropped(results, tmp_path, capsys):
    out = _copy(results, tmp_path)
    [meta] = [p for p in out.rglob("model_meta.json") if "layer_1" in str(p)]
    meta.unlink()
    scan = scan_results(out)
    assert list(scan.frame["layer"]) == [2]
    assert any(str(meta) in line and "is missing" in line for line in scan.problems)
    assert main(["table", str(out)]) == 0
    assert f"warning: {meta} is missing" in capsys.readouterr().err


def test_truncated_result_is_named(results, tmp_path, capsys):
    out = _copy(results, tmp_path)
    [path] = [p for p in out.glob("results/*/*/experiments/*/BIOSSES.json") if "layer_2" in str(p)]
    path.write_text(path.read_text()[:50])
    assert main(["table", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{path} is unreadable" in captured.err
    assert "BIOSSES" in captured.out  # layer 1 still shown


def test_nan_score_is_named(results, tmp_path):
    import json

    out = _copy(results, tmp_path)
    [path] = [p for p in out.glob("results/*/*/experiments/*/BIOSSES.json") if "layer_2" in str(p)]
    data = json.loads(path.read_text())
    data["scores"]["test"][0]["main_score"] = float("nan")
    path.write_text(json.dumps(data))
    scan = scan_results(out)
    assert any(f"{path} has a NaN score" in line for line in scan.problems)


def test_mteb_reader_sees_our_results_with_match_name(results):
    """What README says about mteb's own reader: it needs load_experiments="match_name"."""
    import mteb

    cache = mteb.ResultCache(results)
    assert not cache.load_results(include_remote=False).model_results
    found = cache.load_results(include_remote=False, load_experiments="match_name")
    assert len(found.model_results) == 2


def test_metrics_table_puts_fused_slices_after_the_layers():
    """What `metrics` prints: layers across, a fusion a column named by its label."""
    rows = pd.DataFrame(
        {
            "dataset": ["d"] * 3,
            "metric": ["dataset_entropy"] * 3,
            "variant": ["normalized"] * 3,
            "layer": [0, 6, 6],
            "fuse": [None, None, "0+6"],
            "pooling": ["mean"] * 3,
            "value": [0.25, 0.5, 0.75],
        }
    )
    table = frames.metrics_table(rows)
    assert list(table.columns) == [0, 6, "0+6"]
    assert table.index.names == ["dataset", "metric", "variant"]  # one pooling: no level
    assert table.iloc[0].tolist() == [0.25, 0.5, 0.75]
    series = pd.DataFrame(
        {"checkpoint": ["step-2", "step-1"], "layer": [1, 1], "dim": [8, 8], "mean": [0.5, 0.25]}
    )
    table = frames.checkpoint_table(series)
    assert list(table.index) == ["step-2", "step-1"]  # the series' order, not sorted
    assert table.loc["step-1", (8, 1)] == 0.25
