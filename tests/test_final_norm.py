"""`final_norm` as a slice option, end to end: encoder, sweep (one pass), tables, metrics, export."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from mteb_midlayer import LayerEncoder, frames
from mteb_midlayer.export import export
from mteb_midlayer.frames import layer_results
from mteb_midlayer.layers import find_final_norm
from mteb_midlayer.model import LayerModel
from mteb_midlayer.results import identity_path
from mteb_midlayer.sweep import sweep

from .conftest import fresh_process_max_diff, tiny_model, tiny_tokenizer

TEXTS = [
    "A man is playing a guitar.",
    "Two dogs run through a field of tall grass.",
    "short",
    "The committee postponed the vote until next week.",
]


def _tiny_lm(arch: str, **kwargs) -> LayerModel:
    return LayerModel.load(
        tiny_model(arch), tiny_tokenizer(), name=f"tiny/{arch}", device="cpu", **kwargs
    )


def _count_forwards(lm: LayerModel) -> list[int]:
    """Forward passes from now on (the once-per-model final-norm probe already made)."""
    find_final_norm(lm.model)
    calls: list[int] = []
    lm.model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def _sts_task():
    from mteb.mocks.mock_tasks import MockSTSTask

    return MockSTSTask()


def _scores(out) -> pd.DataFrame:
    df = layer_results(out)
    return df.set_index(["final_norm", "layer"])["score"].sort_index()


def test_encoder_every_differs_from_last_on_a_decoder_and_names_its_slice():
    lm = _tiny_lm("llama")
    last = LayerEncoder(lm, layer=2).embed(TEXTS)
    every = LayerEncoder(lm, layer=2, final_norm="every")
    assert every.mteb_model_meta.experiment_kwargs["final_norm"] == "every"
    assert "final_norm" not in LayerEncoder(lm, layer=2).mteb_model_meta.experiment_kwargs
    assert np.abs(every.embed(TEXTS) - last).max() > 1e-2
    # at the last layer the final norm is applied once under both settings
    np.testing.assert_allclose(
        LayerEncoder(lm, layer=4, final_norm="every").embed(TEXTS),
        LayerEncoder(lm, layer=4).embed(TEXTS),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="Unknown final_norm 'both'"):
        LayerEncoder(lm, layer=2, final_norm="both")
    with pytest.raises(ValueError, match="max_tokens_per_batch must be a positive int"):
        LayerEncoder(lm, layer=2, max_tokens_per_batch=0)


def test_encoder_token_budget_changes_nothing():
    lm = _tiny_lm("gpt2")
    a = LayerEncoder(lm, layer=3, final_norm="every").embed(TEXTS)
    b = LayerEncoder(lm, layer=3, final_norm="every", max_tokens_per_batch=20).embed(TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_sweep_last_and_every_in_one_pass_equal_two_single_runs(tmp_path):
    lm = _tiny_lm("llama")
    calls = _count_forwards(lm)
    both = sweep(
        lm,
        tasks=[_sts_task()],
        layers=[0, 2, 4],
        final_norm="last,every",
        output=tmp_path / "both",
        show_progress=False,
        batch_size=64,
    ).scores
    forwards_both = len(calls)
    calls.clear()
    sweep(
        lm,
        tasks=[_sts_task()],
        layers=[0, 2, 4],
        output=tmp_path / "last",
        show_progress=False,
        batch_size=64,
    )
    forwards_last = len(calls)
    sweep(
        lm,
        tasks=[_sts_task()],
        layers=[0, 2, 4],
        final_norm="every",
        output=tmp_path / "every",
        show_progress=False,
        batch_size=64,
        max_tokens_per_batch=64,  # batching is no part of any result
    )
    assert forwards_both == forwards_last > 0  # both settings from the same forward passes
    got = _scores(tmp_path / "both")
    want = pd.concat([_scores(tmp_path / "last"), _scores(tmp_path / "every")]).sort_index()
    pd.testing.assert_series_equal(got, want, atol=1e-6, rtol=0)
    # the table keeps both settings apart (inner-layer vectors differ: see the encoder test)
    assert both.index.names == ["final_norm", "layer"]
    task = "MockSTSTask"
    assert both.loc[("every", 4), task] == pytest.approx(both.loc[("last", 4), task], abs=1e-6)
    # relative depth: L is recorded with each result; so is the search backend
    df = layer_results(tmp_path / "both")
    assert set(df["n_layers"]) == {4.0} and set(df["final_norm"]) == {"last", "every"}
    folder = next((tmp_path / "both").glob("results/*/*/experiments/*final_norm_every*"))
    identity = json.loads(identity_path(folder / f"{task}.json").read_text())
    assert identity["n_layers"] == 4 and identity["final_norm"] == "every"
    assert identity["search_backend"] in ("faiss", "torch")
    # select and leaderboards treat the two settings as two configurations
    from mteb_midlayer.leaderboard import publish
    from mteb_midlayer.select import select

    best = select(tmp_path / "both").best
    assert sorted(best[best["budget"] == "none"]["final_norm"]) == ["every", "last"]
    scores = frames.scores_frame(tmp_path / "both")
    publish(scores, frames.metrics_frame(tmp_path / "both"), tmp_path / "lb", benchmark="b",
            with_plots=False)  # fmt: skip
    csv = pd.read_csv(tmp_path / "lb" / "b.csv")
    assert sorted(set(csv["final_norm"])) == ["every", "last"] and len(csv) == 6
    # a rerun reuses everything: nothing is encoded again
    again = sweep(
        lm,
        tasks=[_sts_task()],
        layers=[0, 2, 4],
        final_norm=["every", "last"],
        output=tmp_path / "both",
        show_progress=False,
    )
    assert again.n_encoded == 0


def test_every_on_bert_is_a_noted_no_op_filed_as_its_own_slice(tmp_path, caplog, monkeypatch):
    from mteb_midlayer import layers

    monkeypatch.setattr(layers, "_NO_NORM_NOTED", set())  # noted once per process: not yet
    lm = _tiny_lm("bert")
    with caplog.at_level(logging.WARNING, logger="mteb_midlayer.layers"):
        every = LayerEncoder(lm, layer=2, final_norm="every").embed(TEXTS)
    assert "has no final norm" in caplog.text and "equals 'last'" in caplog.text
    np.testing.assert_array_equal(every, LayerEncoder(lm, layer=2).embed(TEXTS))
    sweep(
        lm,
        tasks=[_sts_task()],
        layers=[1, 4],
        final_norm="last,every",
        output=tmp_path,
        show_progress=False,
    )
    scores = _scores(tmp_path)
    assert set(scores.index.get_level_values("final_norm")) == {"last", "every"}
    np.testing.assert_allclose(scores.loc["every"], scores.loc["last"], atol=1e-9)


def test_scores_frame_keeps_runs_that_differ_only_in_max_length(tmp_path):
    for max_length in (8, 64):
        lm = _tiny_lm("gpt2", max_length=max_length)
        sweep(lm, tasks=[_sts_task()], layers=[2], output=tmp_path, show_progress=False)
    scores = frames.scores_frame(tmp_path)
    assert sorted(scores["max_length"]) == [8, 64]
    # two configurations, not one deduplicated row
    assert len(frames.layer_scores(scores).query("task_type == 'all'")) == 2
    per_layer = frames.layer_scores(scores, by_type=False)
    assert len(per_layer) == 2 and (per_layer["n_tasks"] == 1).all()
    assert set(per_layer["n_layers"]) == {4.0}


def test_metrics_rows_carry_final_norm_and_see_the_normed_states(tmp_path):
    from mteb_midlayer.metrics.run import layer_metrics

    lm = _tiny_lm("gpt_neox")
    texts = [f"text number {i} says {'word ' * (i % 5)}" for i in range(24)]
    df = layer_metrics(
        lm,
        texts=texts,
        n=24,
        metrics="effective_rank,curvature",
        layers=[1, 4],
        final_norm="last,every",
        output=tmp_path,
        show_progress=False,
    ).metrics
    value = df.set_index(["final_norm", "layer", "metric", "variant"])["value"]
    for metric in ("effective_rank", "curvature"):
        last, every = value.xs(metric, level="metric"), None
        every = last.loc["every"]
        last = last.loc["last"]
        assert every.loc[4].to_numpy() == pytest.approx(last.loc[4].to_numpy(), abs=1e-5)
        assert every.loc[1].to_numpy() != pytest.approx(last.loc[1].to_numpy(), abs=1e-4)
    read = frames.metrics_frame(tmp_path)
    assert set(read["final_norm"]) == {"last", "every"}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_exports_a_plain_truncated_model_that_sentence_transformers_loads_alone(
    tmp_path, arch
):
    src = tmp_path / "src"
    model, tok = tiny_model(arch), tiny_tokenizer()
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "out"
    result = export(str(src), out, layer=2, pooling="mean", final_norm="every")
    assert not result.needs_mteb_midlayer and result.final_norm == "every"
    modules = json.loads((out / "modules.json").read_text())
    assert not any("mteb_midlayer" in m["type"] for m in modules)
    assert "| final norm | every |" in (out / "README.md").read_text()
    want = LayerEncoder(
        str(src), layer=2, pooling="mean", final_norm="every", device="cpu", dtype="float32"
    ).embed(TEXTS)
    assert fresh_process_max_diff(out, TEXTS, want, tmp_path) <= 1e-5


def test_cli_sweep_final_norm_then_select_exports_the_every_slice(shared_data, tmp_path, capsys):
    from mteb_midlayer.cli import main

    src = tmp_path / "src"
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "res"
    code = main(
        ["sweep", str(src), "--tasks", "BIOSSES", "--data-dir", str(shared_data),
         "--layers", "2,4", "--final-norm", "every", "--max-tokens-per-batch", "512",
         "--output", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    scores = frames.scores_frame(out)
    assert set(scores["final_norm"]) == {"every"} and sorted(scores["layer"]) == [2, 4]
    assert main(["sweep", str(src), "--final-norm", "none", "--output", str(out)]) == 2
    assert "Unknown final_norm 'none'" in capsys.readouterr().err
    exported = tmp_path / "exp"
    code = main(["select", str(out), "--export", str(exported), "--source", str(src)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "final_norm=every" in printed and "RawStreamTransformer" not in printed
    modules = json.loads((exported / "modules.json").read_text())
    assert not any("mteb_midlayer" in m["type"] for m in modules)
