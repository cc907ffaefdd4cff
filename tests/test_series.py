"""A checkpoint series end to end: three real local checkpoints of a tiny trained BERT."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mteb_midlayer.frames import metrics_frame, scores_frame
from tests.series_training import train_series

TASK = "BIOSSES"


@pytest.fixture(scope="session")
def series_run(tmp_path_factory, shared_data):
    """Three checkpoints (steps 0, 2, 4) swept and measured on BIOSSES into one output."""
    from mteb_midlayer.series import metrics_series, sweep_series

    root = tmp_path_factory.mktemp("series")
    train_series(
        root / "run", shared_data, steps=4, save_every=2, hidden=32, max_length=48, batch_size=8
    )
    out = root / "out"
    pattern = str(root / "run" / "checkpoint-*")
    table = sweep_series(
        pattern, tasks=[TASK], data_dir=shared_data, output=out, show_progress=False
    )
    metrics = metrics_series(
        pattern,
        tasks=[TASK],
        data_dir=shared_data,
        output=out,
        n=40,
        metrics="dataset_entropy,curvature",
        show_progress=False,
    )
    return {"root": root, "out": out, "pattern": pattern, "table": table, "metrics": metrics}


def test_sweep_series_files_each_checkpoint_under_one_name(series_run):
    result, out = series_run["table"], series_run["out"]
    table = result.scores
    assert list(dict.fromkeys(table["checkpoint"])) == [
        "checkpoint-0",
        "checkpoint-2",
        "checkpoint-4",
    ]
    revisions = list(dict.fromkeys(table["revision"]))
    assert len(revisions) == 3 and all(r.startswith("local-") for r in revisions)
    scores = scores_frame(out)
    assert set(scores["model"]) == {result.model}
    assert set(scores["revision"]) == set(revisions)
    assert scores.groupby("revision")["layer"].nunique().tolist() == [3, 3, 3]  # 0, 1, 2
    # the frames' checkpoint/step come from the manifest, per revision
    got = scores.drop_duplicates("revision").set_index("revision")[["checkpoint", "step"]]
    want = table.drop_duplicates("revision").set_index("revision")[["checkpoint", "step"]]
    assert got.loc[revisions].astype(str).equals(want.loc[revisions].astype(str))
    manifest = json.loads(next((out / "series").glob("*.json")).read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [0, 2, 4]
    # the weights differ, so the scores do too: three real checkpoints, not one thrice
    last = scores[scores["layer"] == 2].set_index("step")["score"]
    assert last.nunique() == 3


def test_series_plans_the_task_once(series_run):
    table, out = series_run["table"], series_run["out"]
    recorded = table.recorded
    assert recorded.n_recorded == 1  # one task, three checkpoints: recorded once
    texts_files = sorted((out / "plan").rglob("*.json"))
    assert len(texts_files) == len(recorded.files) == 1  # one prompt type of BIOSSES
    n_texts = len(json.loads(texts_files[0].read_text())["texts"])
    assert table.n_encoded == 3 * n_texts  # each checkpoint encodes each text once


def test_single_model_frames_have_no_checkpoint(series_run, tmp_path):
    import shutil

    lone = tmp_path / "lone"  # the same result files without the series manifest
    shutil.copytree(series_run["out"] / "results", lone / "results")
    assert "checkpoint" not in scores_frame(lone).columns
    assert "checkpoint" in scores_frame(series_run["out"]).columns


def test_metrics_series_rows_carry_checkpoints(series_run):
    metrics = metrics_frame(series_run["out"])
    assert set(metrics["step"].dropna().astype(int)) == {0, 2, 4}
    per = metrics.groupby("checkpoint")["revision"].nunique()
    assert per.to_dict() == {"checkpoint-0": 1, "checkpoint-2": 1, "checkpoint-4": 1}
    assert set(series_run["metrics"].metrics["checkpoint"]) == set(per.index)


def test_select_best_layer_per_checkpoint(series_run):
    from mteb_midlayer.select import render, select

    selection = select(series_run["out"])
    per = selection.checkpoints
    assert list(per["checkpoint"]) == ["checkpoint-0", "checkpoint-2", "checkpoint-4"]
    scores = scores_frame(series_run["out"])
    for row in per.itertuples():
        rows = scores[scores["checkpoint"] == row.checkpoint]
        top = rows.loc[rows["score"].idxmax()]
        assert row.layer == top["layer"] and row.score == pytest.approx(top["score"])
    assert "Best layer per checkpoint" in render(selection)
    assert len(selection.to_dict()["checkpoints"]) == 3


def test_leaderboard_draws_checkpoint_heatmaps(series_run, tmp_path):
    from mteb_midlayer.leaderboard import publish

    out = series_run["out"]
    scores, metrics = scores_frame(out), metrics_frame(out)
    paths = publish(scores, metrics, tmp_path / "board", benchmark="series")
    names = {p.name for p in paths}
    assert any(n.endswith("-checkpoint-heatmap.png") for n in names)
    assert any(n.endswith("-score-vs-step.svg") for n in names)
    csv = next(p for p in paths if p.name.endswith("-checkpoints.csv"))
    table = pd.read_csv(csv, index_col=0)
    assert list(table.index) == ["checkpoint-0", "checkpoint-2", "checkpoint-4"]
    assert list(table["step"]) == [0, 2, 4]
    one = scores[(scores["checkpoint"] == "checkpoint-2") & (scores["layer"] == 1)]
    assert table.loc["checkpoint-2", "layer 1"] == pytest.approx(one["score"].mean())
    page = next(p for p in paths if p.name == "series.md").read_text()
    assert "checkpoint-heatmap" in page and "score-vs-step" in page


def test_cli_series_resumes_without_encoding(series_run, capsys):
    from mteb_midlayer.cli import main
    from tests.conftest import SHARED_DATA

    code = main(
        [
            "sweep",
            series_run["pattern"],
            "--tasks",
            TASK,
            "--data-dir",
            str(SHARED_DATA),
            "--output",
            str(series_run["out"]),
            "--jobs",
            "1",
        ]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    assert "Encoded 0 new texts" in printed
    assert "checkpoint-4" in printed


def test_hub_revisions_reach_the_loader_and_cli(monkeypatch, capsys):
    """`--revisions` (no Hub here): each checkpoint is loaded with its revision under one name."""
    import mteb_midlayer.series as S
    from mteb_midlayer.checkpoints import revision_checkpoints
    from mteb_midlayer.cli import main
    from mteb_midlayer.spec import ModelSpec

    seen = []
    monkeypatch.setattr(S.LayerModel, "coerce", lambda model, spec: seen.append(spec))
    for checkpoint in revision_checkpoints("org/model", "step1000,main"):
        S.load_checkpoint(checkpoint, "org/model", ModelSpec(pooling="mean"))
    assert [(s.source, s.name, s.revision, s.pooling) for s in seen] == [
        ("org/model", "org/model", "step1000", "mean"),
        ("org/model", "org/model", "main", "mean"),
    ]
    with pytest.raises(ValueError, match="drop --revision"):
        S.load_checkpoint(
            revision_checkpoints("org/m", "main")[0], "org/m", ModelSpec(revision="x")
        )

    calls = {}

    def fake_sweep_series(**kwargs):
        calls.update(kwargs)
        table = pd.DataFrame(
            {"checkpoint": ["step1000", "main"], "step": [1000, None], "layer": [0, 0]}
        ).assign(mean=[0.1, 0.2])
        return S.SeriesResult(table, {}, S.RecordedTexts(n_recorded=1), 0, "org/model")

    monkeypatch.setattr(S, "sweep_series", fake_sweep_series)
    code = main(["sweep", "org/model", "--revisions", "step1000,main", "--tasks", TASK])
    assert code == 0
    assert calls["revisions"] == "step1000,main" and calls["spec"].source == "org/model"
    printed = capsys.readouterr().out
    assert printed.index("step1000") < printed.index("main")  # step order kept, main included
