"""The recommended label-free pick: the rule chosen on the other models (numbers by hand), no
leak from the judged model, the baselines, the one-model message, the export row."""

from __future__ import annotations

import pandas as pd
import pytest

from mteb_midlayer import frames
from mteb_midlayer.select import select_frames
from mteb_midlayer.select.links import link_frames
from mteb_midlayer.select.recommend import (
    LAST_RULE,
    MIDDLE_RULE,
    RecommendationError,
    export_row,
    judge_baseline,
    middle_layer,
    recommend_frames,
    verdict,
)

from .conftest import layer_series, metric_by_layer

# Three models, layers 0..4 (middle: 2, last: 4).
SCORES = {
    "m/a": {0: 0.40, 1: 0.70, 2: 0.60, 3: 0.55, 4: 0.50},  # oracle 1
    "m/b": {0: 0.30, 1: 0.65, 2: 0.50, 3: 0.45, 4: 0.60},  # oracle 1
    "m/c": {0: 0.20, 1: 0.50, 2: 0.55, 3: 0.80, 4: 0.60},  # oracle 3
}
# lidar: on A and B it is 10 x the score (argmax = oracle); on C its argmax is layer 1.
# Spearman with the score: A +1, B +1, C +0.4 (d^2 = 0+9+1+1+1 = 12; 1 - 72/120).
LIDAR = {
    "m/a": {lay: 10 * s for lay, s in SCORES["m/a"].items()},
    "m/b": {lay: 10 * s for lay, s in SCORES["m/b"].items()},
    "m/c": {0: 1.0, 1: 5.0, 2: 2.0, 3: 4.0, 4: 3.0},
}
# dime = the layer index: argmax dime *is* the last layer (ties with it), argmin the first.
DIME = {lay: float(lay) for lay in range(5)}


def _frames(scores=SCORES, lidar=LIDAR, models=("m/a", "m/b", "m/c")):
    s = pd.concat([layer_series(m, scores[m]) for m in models])
    met = pd.concat(
        [metric_by_layer(m, lidar[m]) for m in models]
        + [metric_by_layer(m, DIME, metric="dime", variant="value") for m in models]
    )
    ls = frames.layer_scores(s)
    return ls, met, link_frames(ls, met)


def _recommend(**kwargs):
    return recommend_frames(*_frames(**kwargs))


def test_rule_chosen_on_the_other_models_by_hand():
    rec = _recommend()
    rows = rec.rows.set_index("model")
    # C: lidar (max, from A and B) has regret 0 on A and on B; last layer .20 and .05.
    c = rows.loc["m/c"]
    assert c["rule"] == "argmax lidar/n_views=16 @ A"
    assert c["direction_from"] == "models:m/a,m/b" and c["rule_from"] == "models:m/a,m/b"
    assert c["others_regret"] == pytest.approx(0.0)
    assert c["others_last_regret"] == pytest.approx((0.20 + 0.05) / 2)
    assert c["chosen_layer"] == 1 and c["chosen_score"] == pytest.approx(0.50)
    assert c["oracle_layer"] == 3 and c["regret"] == pytest.approx(0.30)
    assert c["last_layer_score"] == pytest.approx(0.60) and c["gain"] == pytest.approx(-0.10)
    # B: lidar on A 0, on C .30 (argmax 1 vs oracle 3) -> .15; last (.20+.20)/2 = .20;
    # middle (.10+.25)/2 = .175; argmax dime = the last layer (.20). Lidar wins.
    b = rows.loc["m/b"]
    assert b["rule"] == "argmax lidar/n_views=16 @ A" and b["rule_from"] == "models:m/a,m/c"
    assert b["others_regret"] == pytest.approx(0.15)
    assert b["chosen_layer"] == 1 and b["regret"] == pytest.approx(0.0)
    assert b["gain"] == pytest.approx(0.65 - 0.60)
    # A: lidar on B 0, on C .30 -> .15; last (.05+.20)/2 = .125; argmax dime ties with the
    # last layer at .125, and the tie goes to the last layer.
    a = rows.loc["m/a"]
    assert a["rule"] == LAST_RULE and pd.isna(a["metric"]) and pd.isna(a["direction"])
    assert a["others_regret"] == pytest.approx(0.125)
    assert a["chosen_layer"] == 4 and a["regret"] == pytest.approx(0.20) and a["gain"] == 0
    assert not rec.rows["exported"].any()
    cands = rec.candidates[rec.candidates["model"] == "m/a"].set_index("rule")
    assert cands.loc["argmax dime/value @ A", "mean_regret"] == pytest.approx(0.125)
    assert cands.loc[MIDDLE_RULE, "mean_regret"] == pytest.approx((0.15 + 0.25) / 2)
    assert cands.loc["argmax lidar/n_views=16 @ A", "mean_regret"] == pytest.approx(0.15)
    assert set(cands["n_models"]) == {2}


def test_summary_says_whether_label_free_selection_pays():
    summary = _recommend().summary
    # recommended regret: A .20, B 0, C .30; always the last layer: A .20, B .05, C .20
    assert summary["n_models"] == 3
    assert summary["mean_regret"] == pytest.approx(0.50 / 3)
    assert summary["last_layer_mean_regret"] == pytest.approx(0.45 / 3)
    assert summary["mean_gain"] == pytest.approx((0 + 0.05 - 0.10) / 3)
    assert summary["pays"] is False
    assert "does not pay" in verdict(summary) and "0.1667" in verdict(summary)


def test_the_judged_models_scores_never_choose_its_rule():
    base = _recommend().rows.set_index("model").loc["m/c"]
    for c_scores in (
        {0: 0.90, 1: 0.10, 2: 0.20, 3: 0.30, 4: 0.40},  # C's oracle moves to layer 0
        {lay: 1 - s for lay, s in SCORES["m/c"].items()},  # reversed
        {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5},  # the last layer is best on C
    ):
        rows = _recommend(scores={**SCORES, "m/c": c_scores}).rows.set_index("model")
        c = rows.loc["m/c"]
        assert (c["rule"], c["direction"], c["rule_from"]) == (
            base["rule"],
            base["direction"],
            base["rule_from"],
        )
        assert c["others_regret"] == base["others_regret"]
        assert c["chosen_layer"] == base["chosen_layer"] == 1  # from C's lidar alone
        assert c["chosen_score"] == pytest.approx(c_scores[1])  # only the report changes
        assert c["regret"] == pytest.approx(max(c_scores.values()) - c_scores[1])


def test_a_rule_missing_on_an_other_model_is_no_candidate():
    ls, met, _ = _frames()
    met = met[~((met["model"] == "m/b") & (met["metric"] == "lidar"))]
    rec = recommend_frames(ls, met, link_frames(ls, met))
    c_cands = rec.candidates[rec.candidates["model"] == "m/c"]
    assert "argmax lidar/n_views=16 @ A" not in set(c_cands["rule"])
    # dime (argmax = last, from A's 0 and B's +0.3) ties with the last layer: the last wins
    assert rec.rows.set_index("model").loc["m/c", "rule"] == LAST_RULE


def test_a_judged_model_without_metrics_still_gets_a_baseline():
    ls, met, _ = _frames()
    met = met[met["model"] != "m/c"]
    rec = recommend_frames(ls, met, link_frames(ls, met))
    rows = rec.rows.set_index("model")
    # C: lidar is the best candidate on A and B (0) but C has no lidar to apply it to; last
    # (.20 + .05) / 2 and middle (.10 + .15) / 2 tie at .125, and the tie goes to the last.
    assert rows.loc["m/c", "rule"] == LAST_RULE and rows.loc["m/c", "chosen_layer"] == 4
    c_cands = rec.candidates[rec.candidates["model"] == "m/c"].set_index("rule")
    assert c_cands.loc["argmax lidar/n_views=16 @ A", "mean_regret"] == pytest.approx(0.0)
    assert c_cands.loc[MIDDLE_RULE, "mean_regret"] == pytest.approx(0.125)
    # A and B: no metric rule is judged on C, so only the baselines compete
    assert set(rec.candidates[rec.candidates["model"] == "m/a"]["rule"]) == {LAST_RULE, MIDDLE_RULE}


def test_tied_metric_rules_prefer_the_datasets_mean():
    # lidar on datasets A and B (and so their mean): on A and B it is 10 x the score, so every
    # lidar rule has regret 0 on the others of C; on C only the mean's argmax is layer 3.
    on_c = {
        "A": {0: 1.0, 1: 9.0, 2: 2.0, 3: 8.0, 4: 3.0},  # argmax: layer 1 (by name, A wins)
        "B": {0: 1.0, 1: 1.0, 2: 2.0, 3: 8.0, 4: 3.0},
    }
    met = pd.concat(
        metric_by_layer(m, on_c[d] if m == "m/c" else LIDAR[m], dataset=d)
        for m in SCORES
        for d in ("A", "B")
    )
    ls = frames.layer_scores(pd.concat([layer_series(m, SCORES[m]) for m in SCORES]))
    rec = recommend_frames(ls, met, link_frames(ls, met))
    c_cands = rec.candidates[rec.candidates["model"] == "m/c"].set_index("rule")
    tied = [f"argmax lidar/n_views=16 @ {d}" for d in ("A", "B", "mean")]
    assert c_cands.loc[tied, "mean_regret"].tolist() == [0, 0, 0]
    c = rec.rows.set_index("model").loc["m/c"]
    # mean on C: layer 1 (9 + 1) / 2 = 5, layer 3 (8 + 8) / 2 = 8: layer 3, C's oracle
    assert c["rule"] == "argmax lidar/n_views=16 @ mean" and c["dataset"] == "mean"
    assert c["chosen_layer"] == 3 and c["regret"] == 0


def test_one_model_gives_no_recommendation_and_says_so():
    ls, met, corr = _frames(models=("m/a",))
    rec = recommend_frames(ls, met, corr)
    assert rec.rows.empty and rec.summary == {}
    assert (
        "one model in the results (m/a): no label-free recommendation can be learned"
        in (rec.notes[0])
    )
    sel = select_frames(layer_series("m/a", SCORES["m/a"]), met)
    assert sel.to_dict()["recommended"] == []
    assert sel.to_dict()["recommendation"]["notes"] == rec.notes
    assert not sel.rules.empty and set(sel.rules["direction_from"]) == {"prior:pythia-410m"}


def test_select_frames_carries_the_recommendation_into_the_json():
    s = pd.concat([layer_series(m, SCORES[m]) for m in SCORES])
    met = pd.concat(
        [metric_by_layer(m, LIDAR[m]) for m in SCORES]
        + [metric_by_layer(m, DIME, metric="dime", variant="value") for m in SCORES]
    )
    data = select_frames(s, met).to_dict()
    rows = {r["model"]: r for r in data["recommended"]}
    assert set(rows) == {"m/a", "m/b", "m/c"}
    keys = {
        "model",
        "revision",
        "pooling",
        "normalize",
        "final_norm",
        "dim",
        "rule",
        "metric",
        "dataset",
        "direction",
        "rule_from",
        "chosen_layer",
        "chosen_score",
        "oracle_layer",
        "regret",
        "last_layer_score",
        "gain",
        "exported",
    }
    assert keys <= set(rows["m/c"])
    assert rows["m/c"]["chosen_layer"] == 1 and rows["m/a"]["metric"] is None
    assert data["recommendation"]["mean_regret"] == pytest.approx(0.50 / 3)


@pytest.mark.parametrize(
    ("layers", "n_layers", "expected"),
    [
        (list(range(7)), float("nan"), 3),  # MiniLM: L = 6
        (list(range(6)), float("nan"), 2),  # L = 5: 2 and 3 equally near 2.5, the shallower
        ([0, 2, 5, 8], 8.0, 5),  # L recorded: nearest swept layer to 4 (5 and 2: 1 vs 2 off)
        ([1, 2], 12.0, 2),  # a sweep that stopped short: L = 12 as recorded
    ],
)
def test_middle_layer(layers, n_layers, expected):
    assert middle_layer(layers, n_layers) == expected


def test_baselines_judged_like_rules():
    s = pd.Series(SCORES["m/b"])
    last = judge_baseline(LAST_RULE, s)
    assert last["chosen_layer"] == 4 and last["gain"] == 0 and last["regret"] == pytest.approx(0.05)
    mid = judge_baseline(MIDDLE_RULE, s)
    assert mid["chosen_layer"] == 2 and mid["regret"] == pytest.approx(0.15)
    assert mid["gain"] == pytest.approx(-0.10)
    with pytest.raises(RecommendationError, match="not a baseline rule"):
        judge_baseline("first layer", s)


def test_export_row_picks_the_default_configuration():
    rows = pd.DataFrame(
        [
            dict(model="m/a", pooling="mean", normalize=True, final_norm="last", dim=384),
            dict(model="m/a", pooling="mean", normalize=True, final_norm="last", dim=128),
            dict(model="m/a", pooling="cls", normalize=True, final_norm="last", dim=384),
            dict(model="m/a", pooling="mean", normalize=True, final_norm="every", dim=384),
            dict(model="m/b", pooling="mean", normalize=True, final_norm="last", dim=384),
        ]
    ).assign(revision="r", max_length=0, dtype="", prompts="", include_prompt=True)
    assert export_row(rows, "m/a", pooling="mean", normalize=True) == (0, [])
    assert export_row(rows, "m/a", pooling="mean", normalize=True, dim=128)[0] == 1
    assert export_row(rows, "m/a", pooling="cls", normalize=True)[0] == 2
    with pytest.raises(RecommendationError, match="pooling=mean normalize=True final_norm=last"):
        export_row(rows, "m/a", pooling="mean", normalize=True, dim=64)
    with pytest.raises(RecommendationError, match="No recommended row for m/z"):
        export_row(rows, "m/z", pooling="mean", normalize=True)
    twice = pd.concat([rows.iloc[[0]], rows.iloc[[0]].assign(max_length=128)])
    index, notes = export_row(twice.reset_index(drop=True), "m/a", pooling="mean", normalize=True)
    assert index == 0 and "differ only in run settings" in notes[0]


# ------------------------------------------------- end to end: select --label-free --export
OTHER = "test/other"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _other_score(layer: int) -> float:
    """The second model's score on every task and dim: a peak at layer 2."""
    return round(0.8 - 0.05 * abs(layer - 2), 4)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """The committed MiniLM results plus a second model, OTHER, whose only metric (dime, on
    BIOSSES) is its score: argmax dime has regret 0 on it, the last layer 0.20."""
    import json
    import shutil

    from .conftest import RESULTS

    root = tmp_path_factory.mktemp("two") / "res"
    shutil.copytree(RESULTS, root)
    minilm = next((root / "results").iterdir())
    other = root / "results" / "test__other"
    shutil.copytree(minilm, other)
    for meta_path in other.glob("*/experiments/*/model_meta.json"):
        meta = json.loads(meta_path.read_text())
        meta["name"] = OTHER
        meta_path.write_text(json.dumps(meta))
        layer = meta["experiment_kwargs"]["layer"]
        for path in meta_path.parent.glob("*.json"):
            if path.name != "model_meta.json":
                result = json.loads(path.read_text())
                result["scores"]["test"][0]["main_score"] = _other_score(layer)
                path.write_text(json.dumps(result))
    for path in sorted((root / "metrics").glob("*.parquet")):
        df = pd.read_parquet(path)
        if "BIOSSES" not in path.name:
            continue  # one dataset: dime @ BIOSSES is the only metric rule judged on OTHER
        df = df[df["metric"] == "dime"].assign(model=OTHER)
        df["value"] = df["layer"].map(_other_score)
        df.to_parquet(path.with_name(f"other-{path.name}"))
    return root


def test_cli_label_free_export_of_the_judged_model(two_models, tmp_path, capsys):
    import json

    from sentence_transformers import SentenceTransformer

    from mteb_midlayer.cli import main

    out, sel_json = tmp_path / "pick", tmp_path / "sel.json"
    argv = ["select", str(two_models), "--model", MINILM, "--label-free"]
    assert main([*argv, "--export", str(out), "--json", str(sel_json)]) == 0
    text = capsys.readouterr().out
    assert text.index("Recommended label-free pick") < text.index("Best (layer, dim)")
    assert "label-free pick of sentence-transformers/all-MiniLM-L6-v2: argmax dime" in text
    data = json.loads(sel_json.read_text())
    rows = {r["dim"]: r for r in data["recommended"]}
    assert set(rows) == {128, 384}  # only the judged model's rows
    assert {r["model"] for r in data["scores"]} == {MINILM}
    row = rows[384]
    # candidates on OTHER: dime on BIOSSES has regret 0, the last layer (6) 0.20, the middle
    # layer (3) 0.05.
    assert row["rule"] == "argmax dime/value @ BIOSSES" and row["rule_from"] == f"models:{OTHER}"
    assert row["direction_from"] == f"models:{OTHER}" and row["others_regret"] == 0
    assert row["others_last_regret"] == pytest.approx(0.20)
    # MiniLM's dime on BIOSSES is largest at layer 1 (0.152); its scores (BIOSSES, STSB):
    # layer 1 (0.5243 + 0.5670) / 2, oracle = last = layer 6 (0.8125 + 0.8203) / 2
    assert row["chosen_layer"] == 1 and row["oracle_layer"] == 6
    assert row["chosen_score"] == pytest.approx((0.5243 + 0.5670) / 2, abs=1e-4)
    assert row["last_layer_score"] == pytest.approx((0.8125 + 0.8203) / 2, abs=1e-4)
    assert row["regret"] == pytest.approx(0.8164 - 0.54565, abs=2e-4)
    assert row["gain"] == pytest.approx(-row["regret"])
    assert row["exported"] is True and rows[128]["exported"] is False
    # the default configuration of MiniLM: mean pooling, normalised, full width, layer 1
    model = SentenceTransformer(str(out), device="cpu")
    assert model.get_sentence_embedding_dimension() == 384
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    # the verdict over both models (OTHER judged on MiniLM's directions)
    summary = data["recommendation"]
    assert summary["n_models"] == 2 and summary["models"] == [MINILM, OTHER]
    assert summary["last_layer_mean_regret"] == pytest.approx((0 + 0.20) / 2)
    # MiniLM: (0.3310 + 0.2708) / 2 over its two dims; OTHER keeps its last layer (0.20)
    assert summary["mean_regret"] == pytest.approx((0.3009 + 0.20) / 2, abs=2e-4)
    assert summary["pays"] is False and "does not pay" in text
    assert "label-free selection" in text


def test_cli_label_free_without_a_judged_model_or_with_one_model(two_models, tmp_path, capsys):
    from mteb_midlayer.cli import main

    from .conftest import RESULTS

    out = tmp_path / "x"
    assert main(["select", str(two_models), "--label-free", "--export", str(out)]) == 1
    assert "Name the judged model with --model" in capsys.readouterr().err
    assert main(["select", str(RESULTS), "--label-free", "--export", str(out)]) == 1
    captured = capsys.readouterr()
    assert "no label-free recommendation can be learned" in captured.out
    assert "nothing exported" in captured.err and not out.exists()
    assert main(["select", str(two_models), "--model", "m/none", "--label-free"]) == 2
    assert "No scores of m/none" in capsys.readouterr().err
