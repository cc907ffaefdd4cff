"""`select` on the committed results folder: the JSON contract, notes, and the CLI."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

from mteb_midlayer import frames
from mteb_midlayer.cli import main
from mteb_midlayer.select import Budget, render, select, select_frames, to_json

from .conftest import RESULTS, layer_series

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
    assert main(["select", str(empty)]) == 1  # nothing to choose from: exit 1, as `table`
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


MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """The committed root plus a second model swept on BIOSSES only, 0.003 below MiniLM on it
    at every layer: under layer <= 3 better on its one task than MiniLM on the mean of two."""
    root = tmp_path_factory.mktemp("two") / "root"
    shutil.copytree(RESULTS, root)
    source = next((root / "results").glob("*/*/experiments")).parent
    for folder in sorted((source / "experiments").glob("dim_384__*")):
        target = root / "results" / "other__model" / "rev" / "experiments" / folder.name
        target.mkdir(parents=True)
        meta = json.loads((folder / "model_meta.json").read_text())
        meta.update(name="other/model", revision="rev")
        (target / "model_meta.json").write_text(json.dumps(meta))
        result = json.loads((folder / "BIOSSES.json").read_text())
        for entry in result["scores"]["test"]:
            for key, value in entry.items():
                if isinstance(value, float):
                    entry[key] = value - 0.003
        (target / "BIOSSES.json").write_text(json.dumps(result))
    return root


def test_configurations_with_other_tasks_are_ranked_on_the_shared_ones(two_models, tmp_path):
    """Issue 21: under layer <= 3 MiniLM's layer 3 is 0.5644 on 2 tasks, the other model's
    0.5672 on BIOSSES alone; the other model won before. On BIOSSES MiniLM is better."""
    sel = select(two_models, budgets=[Budget(max_layer=3)])
    chosen = sel.chosen("layer<=3")
    assert chosen["model"] == MINILM and chosen["layer"] == 3
    assert sel.ranked_on == ["BIOSSES"]
    own = sel.best[sel.best["budget"] == "layer<=3"].set_index("model")["score"]
    assert own[MINILM] == pytest.approx((0.57022 + 0.55861) / 2, abs=1e-4)
    assert own["other/model"] == pytest.approx(0.57022 - 0.003, abs=1e-4)
    assert chosen["score"] == pytest.approx(0.57022, abs=1e-4)  # on BIOSSES, as the other
    [note] = [n for n in sel.notes if n.startswith("ranked on the tasks they all have:")]
    assert note.startswith("ranked on the tasks they all have: BIOSSES (")
    assert f"{MINILM} (mean) also has STSBenchmark" in note
    data = json.loads(to_json(sel, tmp_path / "s.json").read_text())
    assert note in data["notes"] and data["ranked_on"] == ["BIOSSES"]
    assert {r["model"] for r in data["best_across"]} == {MINILM, "other/model"}
    assert "Best across configurations, on the tasks they all have: BIOSSES" in render(sel)
    # one model, or the shared tasks asked for: nothing to reconcile
    assert select(two_models, model="other/model").ranked_on is None
    assert select(two_models, tasks=["BIOSSES"]).ranked_on is None


def test_configurations_sharing_no_task_are_not_ranked_together(tmp_path):
    a = layer_series("m/a", {0: 0.5, 1: 0.6}, task="A")
    b = layer_series("m/b", {0: 0.7, 1: 0.8}, task="B")
    sel = select_frames(pd.concat([a, b], ignore_index=True), pd.DataFrame())
    assert sel.ranked_on == [] and sel.chosen() is None
    assert len(sel.best) == 2  # each configuration keeps its own best
    assert any("share no task" in n and "m/b (mean) also has B" in n for n in sel.notes)


def test_select_reads_only_the_newest_metric_run(tmp_path):
    """Issue 21: a second `metrics` run with other settings beside the first; before, the two
    were averaged (every correlation changed)."""
    root = tmp_path / "root"
    shutil.copytree(RESULTS, root)
    only_new = tmp_path / "only_new"
    (only_new / "metrics").mkdir(parents=True)
    for path in sorted((root / "metrics").glob("*.parquet")):
        os.utime(path, (1_000_000_000, 1_000_000_000))
        df = pd.read_parquet(path)
        df["value"] = df["value"] * df["layer"] - df["layer"] ** 2  # other numbers
        df = df.assign(run="new", run_at="2026-12-01T00:00:00.000000+00:00", sample_size=30)
        name = path.name.replace("64438c215f", "beef")
        df.to_parquet(root / "metrics" / name, index=False)
        df.to_parquet(only_new / "metrics" / name, index=False)
    both = select(root)
    alone = select(root, metrics_dir=only_new)
    pd.testing.assert_frame_equal(both.correlations, alone.correlations)
    pd.testing.assert_frame_equal(both.rules, alone.rules)
    older = [n for n in both.notes if n.startswith("older metric run left out")]
    assert len(older) == 2  # one per dataset
    assert all(
        "of run file:64438c215f" in n and "kept run new (sample_size=30, " in n for n in older
    )


def test_cli_select_names_the_filter_that_matched_nothing(tmp_path, capsys):
    """Issue 21: a misspelt model or task is not "no sweep results", and an asked-for JSON or
    export that could not be written is a failure."""
    out_json = tmp_path / "s.json"
    argv = ["select", str(RESULTS), "--model", "sentence-transformers/all-MiniLM"]
    assert main(argv) == 1  # nothing matched: exit 1
    text = capsys.readouterr().out
    assert "model 'sentence-transformers/all-MiniLM' matched no result" in text
    assert f"(models there: {MINILM})" in text and "run `mteb-midlayer sweep`" not in text
    argv = ["select", str(RESULTS), "--tasks", "BIOSES", "--json", str(out_json)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "task BIOSES matched no result" in captured.out
    assert "tasks there: BIOSSES, STSBenchmark" in captured.out
    assert "nothing written" in captured.err and not out_json.exists()
    assert main(["select", str(RESULTS), "--tasks", "BIOSSES,Typo", "--json", str(out_json)]) == 0
    assert "task Typo matched no result" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["select", str(empty), "--export", str(tmp_path / "model")]) == 1
    assert "run `mteb-midlayer sweep` first" in capsys.readouterr().out
    assert not (tmp_path / "model").exists()


def test_cli_export_refuses_configurations_sharing_no_task(two_models, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(two_models, root)
    for path in root.glob(f"results/{MINILM.replace('/', '__')}/*/experiments/*/BIOSSES.json"):
        path.unlink()  # MiniLM: STSBenchmark only; the other model: BIOSSES only
    assert main(["select", str(root), "--export", str(tmp_path / "model")]) == 1
    assert "share no task" in capsys.readouterr().err and not (tmp_path / "model").exists()


def test_select_frames_with_tasks_ignores_other_tasks_in_the_frame():
    a = layer_series("m/a", {0: 0.5, 1: 0.6}, task="A")
    b = pd.concat([layer_series("m/b", {0: 0.7, 1: 0.8}, task=t) for t in ("A", "B")])
    sel = select_frames(pd.concat([a, b], ignore_index=True), pd.DataFrame(), tasks=["A"])
    assert sel.ranked_on is None and sel.chosen()["model"] == "m/b"
