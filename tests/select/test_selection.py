"""`select` on the committed results folder: the JSON contract, notes, and the CLI."""

from __future__ import annotations

import json

import pytest

from mteb_midlayer import frames
from mteb_midlayer.cli import main
from mteb_midlayer.select import Budget, select, to_json

from .conftest import RESULTS

CONFIG = {"model", "revision", "pooling", "normalize", "final_norm", "dim"}


@pytest.fixture(scope="module")
def selection():
    return select(RESULTS, budgets=[Budget(max_depth=0.5), Budget(max_dim=128)])


def test_best_budgets_and_real_scores(selection):
    best = selection.best.set_index("budget")
    # real MiniLM: the last layer at full width wins; per task values are mteb's main scores
    assert best.loc["none", ["layer", "dim"]].tolist() == [6, 384]
    assert best.loc["none", "score"] == pytest.approx((0.81254 + 0.82032) / 2, abs=1e-4)
    assert best.loc["depth<=0.5", "layer"] <= 3
    assert best.loc["dim<=128", "dim"] == 128
    assert selection.chosen()["layer"] == 6


def test_json_contract_keys(selection, tmp_path):
    data = json.loads(to_json(selection, tmp_path / "sel.json").read_text())
    for key in ("scores", "correlations", "rules", "best", "stability"):
        assert key in data
    score = data["scores"][0]
    assert CONFIG | {"layer", "task_type", "score", "n_tasks"} <= set(score)
    assert {r["task_type"] for r in data["scores"]} == {"all", "STS"}
    corr = data["correlations"][0]
    assert CONFIG | {
        "metric",
        "dataset",
        "task_type",
        "n_layers",
        "spearman",
        "pearson",
        "kendall",
        "dcor",
    } <= set(corr)
    rule = data["rules"][0]
    assert CONFIG | {
        "rule",
        "metric",
        "dataset",
        "direction",
        "direction_from",
        "chosen_layer",
        "chosen_score",
        "oracle_layer",
        "oracle_score",
        "regret",
        "last_layer_score",
        "gain",
    } <= set(rule)
    assert all(r["direction"] in ("max", "min") for r in data["rules"])
    assert all(r["direction_from"] == "prior:pythia-410m" for r in data["rules"])  # one model
    assert {"budget", "layer", "dim", "score"} <= set(data["best"][0])
    assert data["stability"][0]["n_tasks"] == 2
    # honest output: on MiniLM no label-free rule beats the last layer
    assert any("no label-free rule beats the last layer" in n for n in data["notes"])


def test_no_metrics_gives_only_the_score_part(tmp_path):
    empty = tmp_path / "nometrics"
    empty.mkdir()
    sel = select(RESULTS, metrics_dir=empty)
    assert sel.has_scores and sel.rules.empty and sel.correlations.empty
    assert any("no metric rows found" in n for n in sel.notes)


def test_cli_select_messages(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["select", str(empty)]) == 0
    assert "No sweep results under" in capsys.readouterr().out
    out_json = tmp_path / "s.json"
    assert main(["select", str(RESULTS), "--max-dim", "128", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "Best (layer, dim)" in text and "dim<=128" in text and "Pareto front" in text
    assert json.loads(out_json.read_text())["best"]
    nometrics = tmp_path / "nm"
    nometrics.mkdir()
    assert main(["select", str(RESULTS), "--metrics-dir", str(nometrics)]) == 0
    assert "only the score-based choice" in capsys.readouterr().out
    assert main(["select", str(RESULTS), "--prior", "nope"]) == 2
    assert "Unknown prior row 'nope'" in capsys.readouterr().err
    assert main(["select", str(RESULTS), "--max-depth", "2"]) == 2
    assert "max_depth is a fraction" in capsys.readouterr().err


def test_tasks_filter_and_incomplete_layers_are_named():
    sel = select(RESULTS, tasks=["BIOSSES", "NotSwept"])
    overall = frames.complete(sel.scores[sel.scores["task_type"] == "all"])
    assert overall.empty  # every layer lacks NotSwept: nothing is chosen on fewer tasks
    assert sel.best.empty
    assert any("missing NotSwept" in n for n in sel.notes)
