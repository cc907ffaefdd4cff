"""Leaderboard tables, Markdown, CSV and plots against the result files they come from."""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pytest

from mteb_midlayer import cli
from mteb_midlayer.inert import md_text
from mteb_midlayer.leaderboard import publish, render, tables

from .conftest import (
    CLASSIFICATION,
    DATA,
    FAKE,
    MINILM,
    fake_classification_score,
    fake_model_score,
    result_files,
)


def _key(path):
    """(model, layer, dim, task, main_score) of one mteb result file."""
    meta = json.loads((path.parent / "model_meta.json").read_text())
    result = json.loads(path.read_text())
    kwargs = meta["experiment_kwargs"]
    score = result["scores"]["test"][0]["main_score"]
    return meta["name"], kwargs["layer"], kwargs["dim"], result["task_name"], score


def _config(scores, model):
    return next(c for c in tables.configs(scores) if c["model"] == model)


def test_csv_rows_equal_the_result_files_and_a_missing_task_is_an_empty_score(
    published, results_root
):
    csv = pd.read_csv(published / "tiny.csv")
    assert list(csv.columns) == tables.CSV_COLUMNS
    assert len(csv) == 2 * 3 * 2 * 3  # models x layers x dims x tasks, the missing one included
    rows = csv.set_index(["model", "layer", "dim", "task"])
    for model, layer, dim, task, score in map(_key, result_files(results_root)):
        assert rows.loc[(model, layer, dim, task), "main_score"] == pytest.approx(score, abs=0)
    missing = rows.loc[(MINILM, 3, 384, "STS12")]
    assert math.isnan(missing["main_score"]) and math.isnan(missing["mteb_version"])
    assert rows.loc[(MINILM, 3, 384, "BIOSSES"), "mteb_version"] == "2.26.24"
    assert set(csv["final_norm"]) == {"last"} and set(csv["pooling"]) == {"mean"}


def _md_rows(text: str, heading: str) -> dict[str, list[str]]:
    """Rows of the first Markdown table under `heading`, keyed by first cell."""
    section = text.split(f"## {heading}\n", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            break
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_markdown_shows_the_files_values_best_in_bold_and_missing_as_a_dash(
    published, results_root
):
    text = (published / "tiny.md").read_text()
    minilm = tables.config_label(
        dict(model=MINILM, pooling="mean", normalize=True, final_norm="last", revision="")
    )
    rows = _md_rows(text, md_text(minilm))  # headings escape Markdown (final\_norm)
    for model, layer, dim, task, score in map(_key, result_files(results_root)):
        if model != MINILM or dim != 384:
            continue
        label = render.layer_label(layer, 6)
        assert rows[label][task].strip("*") == f"{100 * score:.2f}"
    # the deleted result: a dash, the layer's averages too, and the missing column names it
    assert rows["3"]["STS12"] == render.MISSING
    assert rows["3"]["average"] == render.MISSING and rows["3"]["avg STS"] == render.MISSING
    assert rows["3"]["missing"] == "STS12" and rows["3"]["tasks"] == "2/3"
    assert rows["3"]["avg Classification"] == "67.00"  # complete for its own type
    # best layer in bold: classification peaks at the embeddings, STS at the last layer
    assert rows["0 (emb)"][CLASSIFICATION] == "**70.00**"
    assert rows["6 (last)"]["BIOSSES"].startswith("**")
    assert rows["best layer"][CLASSIFICATION] == "0" and rows["best layer"]["average"] == "6"
    assert rows["gain best − last"][CLASSIFICATION] == "+6.00"
    overall = (0.812539 + 0.72369 + fake_classification_score(6)) / 3
    assert rows["6 (last)"]["average"] == f"**{100 * overall:.2f}**"
    assert "- **Command**: `pytest`" in text and "- **Task data**: tests/data copy" in text


def test_summary_is_sorted_by_best_average_with_depth_and_gain(frames_of):
    scores, _ = frames_of
    summary = tables.summary_table(scores)
    assert summary["model"].tolist() == [FAKE, MINILM]
    fake = summary.iloc[0]
    assert fake["best_layer"] == 3 and fake["best_depth"] == 0.5
    assert fake["best_average"] == pytest.approx(fake_model_score(3))
    assert fake["gain"] == pytest.approx(fake_model_score(3) - fake_model_score(6))
    assert fake["last_average"] == pytest.approx(fake_model_score(6)) and fake["tasks"] == "3/3"
    minilm = summary.iloc[1]
    assert minilm["best_layer"] == 6 and minilm["gain"] == 0 and minilm["dim"] == 384


def test_layer_task_table_marks_best_and_leaves_incomplete_averages_missing(frames_of):
    scores, _ = frames_of
    lt = tables.layer_task_table(scores, _config(scores, MINILM), 384)
    assert lt.task_columns == [CLASSIFICATION, "BIOSSES", "STS12"]  # grouped by type
    assert lt.average_columns == ["avg Classification", "avg STS", "average"]
    assert math.isnan(lt.table.loc[3, "average"])
    assert lt.table.loc[0, "avg STS"] == pytest.approx((0.566377 + 0.477776) / 2)
    assert lt.best["STS12"] == 6 and lt.best[CLASSIFICATION] == 0
    assert lt.gain[CLASSIFICATION] == pytest.approx(0.06)
    assert lt.status.loc[3, "missing"] == "STS12"
    dims = tables.dim_table(scores, _config(scores, MINILM))
    assert list(dims.columns) == [384, 128] and math.isnan(dims.loc[3, 384])
    at = scores[(scores["model"] == MINILM) & (scores["layer"] == 3) & (scores["dim"] == 128)]
    assert len(at) == 3 and dims.loc[3, 128] == pytest.approx(at["score"].mean())


def test_a_task_one_model_lacks_entirely_leaves_its_averages_missing(frames_of):
    scores, _ = frames_of
    less = scores[~((scores["model"] == FAKE) & (scores["task"] == CLASSIFICATION))]
    lt = tables.layer_task_table(less, _config(less, FAKE), 384)
    assert lt.table[CLASSIFICATION].isna().all()
    assert lt.table["average"].isna().all() and lt.table["avg Classification"].isna().all()
    assert lt.table.loc[3, "avg STS"] == pytest.approx(0.9)
    assert pd.isna(lt.best["average"])
    summary = tables.summary_table(less)
    assert summary["model"].tolist() == [MINILM, FAKE]  # incomplete sorts last, not first
    assert summary.iloc[1]["tasks"] == "2/3"


def test_publish_writes_every_format_and_a_self_contained_page(published, frames_of):
    for name in ("tiny.md", "tiny.csv", "tiny-metrics.csv", "tiny.html", "index.html"):
        assert (published / name).stat().st_size > 0
    for stem in ("tiny-depth", "tiny-metrics-depth", "tiny-score-vs-metric"):
        assert (published / "plots" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (published / "plots" / f"{stem}.svg").read_text()[:2000]
    heatmaps = sorted((published / "plots").glob("tiny-*-dims.png"))
    assert len(heatmaps) == 2  # one per model (each has two widths)
    page = (published / "tiny.html").read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == 3 + 2
    index = (published / "index.html").read_text()
    slug = tables.config_slug(_config(frames_of[0], FAKE))
    assert slug.startswith("fake-deep-model-r1-mean-True-last-")  # then a hash of the config
    assert f'href="tiny.html#{slug}"' in index
    assert index.count('<li><a href="tiny.html#') == 2


def test_publish_refuses_empty_scores(frames_of, tmp_path):
    scores, metrics = frames_of
    with pytest.raises(ValueError, match="No scores to publish"):
        publish(scores.iloc[:0], metrics, tmp_path, benchmark="x")


def test_cli_leaderboard_writes_tables_with_its_command(results_root, tmp_path, capsys):
    out = tmp_path / "lb"
    argv = ["leaderboard", str(results_root), "--to", str(out), "--page", "my bench"]
    argv += ["--tasks", "BIOSSES,STS12", "--no-plots", "--data", "shared copy"]
    assert cli.main([*argv, "--command", "mteb-midlayer sweep minilm"]) == 0
    assert "wrote" in capsys.readouterr().out
    text = (out / "my-bench.md").read_text()
    said = f"`mteb-midlayer sweep minilm; then mteb-midlayer leaderboard {results_root} --to {out}"
    assert said in text and text.count("sweep minilm") == 1
    assert CLASSIFICATION not in text and not (out / "plots").exists()
    assert set(pd.read_csv(out / "my-bench.csv")["task"]) == {"BIOSSES", "STS12"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["leaderboard", str(empty), "--to", str(out)]) == 1
    assert cli.main(["leaderboard", str(tmp_path / "nope"), "--to", str(out)]) == 2
    assert "No results folder" in capsys.readouterr().err


GOLDEN = DATA / "golden"


def _without_date(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("- **Date**"))


def test_markdown_and_csv_of_the_committed_tree_match_the_golden_files(tmp_path):
    """Regression: the committed MiniLM tree renders exactly as reviewed (date line aside).

    After an intended change, rewrite the files with UPDATE_GOLDEN=1 and review the diff.
    """
    from mteb_midlayer import frames

    scores, metrics = frames.scores_frame(DATA), frames.metrics_frame(DATA)
    publish(scores, metrics, tmp_path, benchmark="golden", command="golden", with_plots=False)
    for name in ("golden.md", "golden.csv"):
        got = (tmp_path / name).read_text()
        if os.environ.get("UPDATE_GOLDEN"):
            GOLDEN.mkdir(exist_ok=True)
            (GOLDEN / name).write_text(got)
        assert _without_date(got) == _without_date((GOLDEN / name).read_text()), name


def test_depth_curves_put_layers_on_relative_depth_with_incomplete_layers_missing(frames_of):
    scores, _ = frames_of
    curves = tables.depth_curves(scores)
    minilm = curves[(curves["model"] == MINILM) & (curves["column"] == "average")]
    assert minilm["depth"].tolist() == [0.0, 0.5, 1.0]
    assert minilm["score"].isna().tolist() == [False, True, False]  # layer 3 lacks STS12
    fake = curves[(curves["model"] == FAKE) & (curves["column"] == "avg STS")]
    assert fake["score"].tolist() == pytest.approx([0.4, 0.9, 0.5])


def test_depth_curves_and_summary_use_the_recorded_layer_count(frames_of):
    scores, _ = frames_of
    minilm = scores[scores["model"] == MINILM].assign(n_layers=12.0)  # as if L were 12
    curves = tables.depth_curves(minilm)
    assert curves[curves["column"] == "average"]["depth"].tolist() == [0.0, 0.25, 0.5]
    summary = tables.summary_table(minilm)
    assert summary["best_depth"].iloc[0] == pytest.approx(summary["best_layer"].iloc[0] / 12)


def test_a_configuration_without_pooling_recorded_is_still_one_configuration(frames_of):
    scores, _ = frames_of
    old = scores.assign(pooling=None)
    (config, _other) = sorted(tables.configs(old), key=lambda c: c["model"])
    assert config["pooling"] is None
    assert len(tables.select_config(old, config)) == len(scores[scores["model"] == FAKE])
