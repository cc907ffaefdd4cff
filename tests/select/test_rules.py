"""Label-free rules: regret and gain on a known oracle; directions never fitted on the judged
model (leave-one-model-out), else the prior table."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mteb_midlayer import frames
from mteb_midlayer.select import Rule, RuleError, judge, prior_direction, rules_frame
from mteb_midlayer.select.links import link_frames
from mteb_midlayer.select.priors import UnknownPriorError

from .conftest import layer_series, metric_by_layer

SCORES = {0: 0.40, 1: 0.55, 2: 0.70, 3: 0.62, 4: 0.60}  # oracle: layer 2; last: layer 4


def test_judge_regret_and_gain_on_a_known_oracle():
    values = pd.Series({0: 5.0, 1: 4.0, 2: 3.0, 3: 1.0, 4: 2.0})
    s = pd.Series(SCORES)
    low = judge(Rule("lidar", "v", "A", "min", "prior:pythia-410m"), values, s)
    assert low["chosen_layer"] == 3 and low["oracle_layer"] == 2
    assert low["regret"] == pytest.approx(0.70 - 0.62)
    assert low["last_layer"] == 4 and low["gain"] == pytest.approx(0.62 - 0.60)
    high = judge(Rule("lidar", "v", "A", "max", "prior:pythia-410m"), values, s)
    assert high["chosen_layer"] == 0
    assert high["regret"] == pytest.approx(0.30) and high["gain"] == pytest.approx(-0.20)


def test_rule_validates_its_direction():
    with pytest.raises(RuleError, match="not one of"):
        Rule("lidar", "v", "A", "up", "prior:x")
    with pytest.raises(RuleError, match="must start with"):
        Rule("lidar", "v", "A", "max", "fitted")


def _three_models(c_values: dict[int, float]):
    """A and B: the metric rises with the score; C: whatever `c_values` says."""
    up = {lay: 10 * s for lay, s in SCORES.items()}
    score_rows = pd.concat([layer_series(m, SCORES) for m in ("m/a", "m/b", "m/c")])
    metric_rows = pd.concat(
        [metric_by_layer("m/a", up), metric_by_layer("m/b", up), metric_by_layer("m/c", c_values)]
    )
    ls = frames.layer_scores(score_rows)
    corr = link_frames(ls, metric_rows)
    return rules_frame(ls, metric_rows, corr).set_index("model")


def test_leave_one_model_out_never_uses_the_judged_model():
    # On C the metric runs *against* the score: C's own data would say "min".
    c_down = {lay: -10 * s for lay, s in SCORES.items()}
    rules = _three_models(c_down)
    c = rules.loc["m/c"]
    assert c["direction"] == "max" and c["direction_from"] == "models:m/a,m/b"
    assert c["chosen_layer"] == 0 and c["regret"] == pytest.approx(0.30)  # the honest cost
    assert rules.loc["m/b", "direction_from"] == "prior:pythia-410m"  # A (+1) and C (-1) tie
    # Changing C's own metric changes nothing about C's direction: it is never fitted on C.
    c_up = {lay: 10 * s for lay, s in SCORES.items()}
    again = _three_models(c_up).loc["m/c"]
    assert again["direction"] == c["direction"] == "max"
    assert again["direction_from"] == c["direction_from"]
    assert again["chosen_layer"] == 2 and again["regret"] == 0


def test_tied_other_models_fall_back_to_the_prior():
    # A is judged by B (+1) and C (-1): mean Spearman 0, so the prior decides.
    c_down = {lay: -10 * s for lay, s in SCORES.items()}
    rules = _three_models(c_down)
    assert rules.loc["m/a", "direction_from"] == "prior:pythia-410m"
    assert rules.loc["m/a", "direction"] == "min"  # Pythia-410m LiDAR: -0.61


def test_single_model_uses_the_prior_row_and_prior_can_be_chosen():
    ls = frames.layer_scores(layer_series("m/a", SCORES))
    ent = {0: 5.0, 1: 4.0, 2: 3.0, 3: 1.0, 4: 2.0}
    met = metric_by_layer("m/a", ent, metric="dataset_entropy", variant="normalized")
    corr = link_frames(ls, met)
    default = rules_frame(ls, met, corr).iloc[0]
    assert default["direction_from"] == "prior:pythia-410m" and default["direction"] == "min"
    llm2vec = rules_frame(ls, met, corr, prior="LLM2Vec").iloc[0]
    assert llm2vec["direction_from"] == "prior:llm2vec" and llm2vec["direction"] == "max"
    # a metric without a prior and without other models gets no rule
    rank = metric_by_layer("m/a", ent, metric="effective_rank", variant="value")
    assert rules_frame(ls, rank, link_frames(ls, rank)).empty
    with pytest.raises(UnknownPriorError, match="choose one of"):
        rules_frame(ls, met, corr, prior="gpt-5")


@pytest.mark.parametrize(
    ("metric", "variant", "row", "expected"),
    [
        ("curvature_abs", "radians", "pythia-410m", "max"),  # +0.73 as stated
        ("curvature", "radians", "pythia-410m", "min"),  # ours runs opposite
        ("infonce", "loss", "pythia-410m", "max"),
        ("infonce", "mi_bound", "pythia-410m", "min"),  # 1 - loss / log N
        ("infonce", "loss", "llm2vec", "min"),
        ("lidar", "n_views=16", "pythia-160m", "min"),  # exp of theirs: same sign
        ("prompt_entropy", "normalized", "llm2vec", None),  # "-" in the table
        ("effective_rank", "value", "pythia-410m", None),
    ],
)
def test_prior_directions_map_onto_our_variants(metric, variant, row, expected):
    assert prior_direction(metric, variant, row) == expected


def test_a_nonfinite_metric_value_is_no_value_and_named():
    """Issue 21: an inf LiDAR is never "the smallest/largest", a NaN DiME is named, not dropped
    silently from the datasets' mean."""
    from mteb_midlayer.select import select_frames

    scores = {0: 0.40, 1: 0.55, 2: 0.70, 3: 0.62, 4: 0.60, 5: 0.66, 6: 0.72}
    lidar_min = prior_direction("lidar", "n_views=16") == "min"
    lidar = {0: 5.0, 1: 4.0, 2: 3.0, 3: 2.5, 4: 2.0, 5: 1.5, 6: 1.0}
    lidar[3] = -math.inf if lidar_min else math.inf  # would win the rule as a number
    dime = {lay: 1.0 + lay for lay in scores}
    rows = pd.concat(
        [
            metric_by_layer("m/a", lidar),
            metric_by_layer("m/a", dime, metric="dime", variant="value"),
            metric_by_layer("m/a", {**dime, 6: math.nan}, metric="dime", variant="value",
                            dataset="B"),
        ]
    )  # fmt: skip
    sel = select_frames(layer_series("m/a", scores), rows)
    rules = sel.rules.set_index(["metric", "dataset"])
    assert rules.loc[("lidar", "A"), "chosen_layer"] != 3
    assert rules.loc[("lidar", "A"), "missing_layers"] == "3"
    assert rules.loc[("dime", "B"), "missing_layers"] == "6"
    assert rules.loc[("dime", "mean"), "missing_layers"] == "6"  # no mean over fewer datasets
    assert rules.loc[("dime", "A"), "missing_layers"] == ""
    notes = [n for n in sel.notes if n.startswith("non-finite metric values")]
    assert len(notes) == 2
    assert any("m/a dime/value on B: layer 6 (nan)" in n for n in notes)
    assert any("lidar/n_views=16 on A: layer 3 (" in n and "inf)" in n for n in notes)
    # correlations see the finite layers only
    corr = sel.correlations[sel.correlations["task_type"] == "all"]
    corr = corr.set_index(["metric", "dataset"])
    assert corr.loc[("lidar", "A"), "n_layers"] == 6
    assert corr.loc[("dime", "B"), "n_layers"] == 6


def test_rule_choose_skips_inf():
    values = pd.Series({0: 1.0, 1: math.inf, 2: 3.0, 3: -math.inf})
    assert Rule("lidar", "v", "A", "max", "prior:x").choose(values) == 2
    assert Rule("lidar", "v", "A", "min", "prior:x").choose(values) == 0
