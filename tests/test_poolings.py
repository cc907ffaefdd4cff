"""Several poolings from one forward pass: model, sweep (store + results), metrics, CLI.

The contract: a pass over `pooling="a,b,c"` writes, for each pooling, exactly what a run with
that pooling alone writes (store keys and entries, result folders and scores, metric files and
rows), from the forward passes of one run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mteb_midlayer.frames import layer_results
from mteb_midlayer.model import LayerModel
from mteb_midlayer.pooling import check_poolings
from mteb_midlayer.sweep import sweep

from .conftest import tiny_model, tiny_tokenizer

POOLINGS = ("mean", "weightedmean", "last")
TEXTS = [
    "A man is playing a guitar.",
    "Two dogs run through a field of tall grass.",
    "short",
    "The committee postponed the vote until next week.",
    "qry: what is the capital of France?",
]


def _tiny_lm(arch: str = "llama", **kwargs) -> LayerModel:
    return LayerModel.load(
        tiny_model(arch), tiny_tokenizer(), name=f"tiny/{arch}", device="cpu", **kwargs
    )


def _count_forwards(lm: LayerModel) -> list[int]:
    """Forward passes from now on; the final-norm probe (one small pass per model, the first
    time `every` needs it) runs first so that it is not counted."""
    from mteb_midlayer.layers import find_final_norm

    find_final_norm(lm.model)
    calls: list[int] = []
    lm.model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def _sts_task():
    from mteb.mocks.mock_tasks import MockSTSTask

    return MockSTSTask()


def test_check_poolings_parses_lists_and_names_the_choices():
    assert check_poolings("mean, last,mean") == ("mean", "last")
    assert check_poolings(["weightedmean"]) == ("weightedmean",)
    with pytest.raises(ValueError, match="Unknown pooling 'sgpt'; choose one of mean"):
        check_poolings("mean,sgpt")
    with pytest.raises(ValueError, match="No pooling requested"):
        check_poolings(" , ")


@pytest.mark.parametrize("include_prompt", [True, False])
def test_iter_batches_several_poolings_equal_one_pass_each(include_prompt):
    lm = _tiny_lm("gpt2", include_prompt=include_prompt)
    prompts = ["qry: " if t.startswith("qry: ") else "" for t in TEXTS]
    calls = _count_forwards(lm)
    kw = dict(batch_size=2, final_norms=("last", "every"), prompts=prompts, token_layers=[2])
    together = list(lm.iter_batches(TEXTS, [0, 2, 4], ",".join(POOLINGS), **kw))
    n_together = len(calls)
    for mode in POOLINGS:
        calls.clear()
        alone = list(lm.iter_batches(TEXTS, [0, 2, 4], mode, **kw))
        assert len(calls) == n_together  # the same passes serve every pooling
        for a, b in zip(together, alone, strict=True):
            assert a.indices == b.indices
            for norm in ("last", "every"):
                for layer in (0, 2, 4):
                    torch.testing.assert_close(
                        a.by_pooling[mode][norm][layer], b.by_final_norm[norm][layer],
                        atol=1e-6, rtol=0,
                    )  # fmt: skip
            for row in range(len(a.indices)):  # token states do not depend on the pooling
                torch.testing.assert_close(a.tokens[2][row], b.tokens[2][row], atol=0, rtol=0)
    first = together[0]
    assert first.pooled is first.by_final_norm["last"]
    assert first.by_final_norm is first.by_pooling["mean"]
    # token states see the tokens pooling sees: the prompt's are left out when it is excluded
    (batch,) = lm.iter_batches(TEXTS[-1:], [2], "mean", token_layers=[2], prompts="qry: ")
    n_all = len(lm.tokenize(TEXTS[-1:])[0])
    skip = 0 if include_prompt else lm.prompt_length("qry: ")
    assert batch.tokens[2][0].shape[0] == n_all - skip
    torch.testing.assert_close(batch.tokens[2][0].mean(0), batch.pooled[2][0])


def _store_entries(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """`{store config digest: {text hash: (layers, D) vectors}}` of every shard under `out`."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for config in sorted((out / "store").glob("*/config.json")):
        entries = found.setdefault(config.parent.name, {})
        for marker in config.parent.glob("shards/**/*.json"):
            meta = json.loads(marker.read_text())
            data = np.load(marker.with_name(meta["data"]))
            for row, text_hash in enumerate(meta["text_hashes"]):
                entries[text_hash] = data[:, row]
    return found


def _results(out: Path) -> dict[str, float]:
    """`{result file relative to the results root: main score}`."""
    return {
        str(path.relative_to(out)): json.loads(path.read_text())["scores"]["test"][0]["main_score"]
        for path in sorted(out.glob("results/**/experiments/**/*.json"))
        if path.name != "model_meta.json" and path.parent.name != "identity"
    }


def test_sweep_several_poolings_in_one_pass_equal_one_run_per_pooling(tmp_path):
    """Store keys and entries, result files and scores, to 1e-6; one run's forward passes."""
    lm = _tiny_lm("llama")
    calls = _count_forwards(lm)
    common = dict(tasks=[_sts_task()], layers=[0, 2, 4], show_progress=False, batch_size=64)
    both_norms = dict(final_norm="last,every")
    table = sweep(lm, pooling=",".join(POOLINGS), output=tmp_path / "all", **common, **both_norms)
    table = table.scores
    forwards_all = len(calls)
    singles = {}
    for mode in POOLINGS:
        calls.clear()
        singles[mode] = sweep(
            lm, pooling=mode, output=tmp_path / mode, **common, **both_norms
        ).scores
        assert len(calls) == forwards_all > 0  # three poolings cost one pooling's passes
    # the store: the same configurations (keys), each with the same entries
    got = _store_entries(tmp_path / "all")
    want: dict[str, dict[str, np.ndarray]] = {}
    for mode in POOLINGS:
        want |= _store_entries(tmp_path / mode)
    assert sorted(got) == sorted(want) and len(got) == 3 * 2  # poolings x final norms
    for digest, entries in want.items():
        assert sorted(got[digest]) == sorted(entries)
        for text_hash, vectors in entries.items():
            np.testing.assert_allclose(got[digest][text_hash], vectors, atol=1e-6, rtol=0)
    # results: the same files (folders named by experiment_kwargs) with the same scores
    scores_all = _results(tmp_path / "all")
    scores_one: dict[str, float] = {}
    for mode in POOLINGS:
        scores_one |= _results(tmp_path / mode)
    assert sorted(scores_all) == sorted(scores_one) and len(scores_all) == 3 * 2 * 3
    for path, score in scores_one.items():
        assert scores_all[path] == pytest.approx(score, abs=1e-6)
    # the table gains a leading pooling level; each block is that pooling's own table
    assert table.index.names == ["pooling", "final_norm", "layer"]
    for mode in POOLINGS:
        pd.testing.assert_frame_equal(table.loc[mode], singles[mode], atol=1e-6)
    df = layer_results(tmp_path / "all")
    assert sorted(set(df["pooling"])) == sorted(POOLINGS)
    # a rerun with one of them reads everything back
    again = sweep(lm, pooling="last", output=tmp_path / "all", **common)
    assert again.n_encoded == 0 and len(calls) == forwards_all


def test_sweep_adding_a_pooling_encodes_once_and_writes_only_what_lacks(tmp_path):
    lm = _tiny_lm("gpt_neox")
    common = dict(tasks=[_sts_task()], layers=[1, 3], show_progress=False, output=tmp_path)
    sweep(lm, pooling="mean", **common)
    before = _store_entries(tmp_path)
    (mean_digest,) = before
    shards = sorted((tmp_path / "store" / mean_digest).glob("shards/**/*.json"))
    table = sweep(lm, pooling="mean,max", **common)
    assert table.n_encoded > 0  # max was missing: one pass, for max only
    after = _store_entries(tmp_path)
    assert len(after) == 2 and after[mean_digest].keys() == before[mean_digest].keys()
    # the mean store was complete: nothing written to it again
    assert sorted((tmp_path / "store" / mean_digest).glob("shards/**/*.json")) == shards
    assert table.scores.index.names == ["pooling", "layer"]


def test_metrics_several_poolings_in_one_pass_equal_one_run_per_pooling(tmp_path):
    from mteb_midlayer.metrics.run import layer_metrics

    lm = _tiny_lm("gpt_neox")
    texts = [f"text number {i} says {'word ' * (i % 5)}" for i in range(20)]
    calls = _count_forwards(lm)
    common = dict(texts=texts, n=20, n_views=3, layers=[1, 4], show_progress=False)
    common |= dict(metrics="dataset_entropy,curvature,prompt_entropy,infonce,lidar")
    together = layer_metrics(lm, pooling=POOLINGS, output=tmp_path / "all", **common).metrics
    forwards_all = len(calls)
    keys = ["pooling", "layer", "metric", "variant"]
    for mode in POOLINGS:
        calls.clear()
        alone = layer_metrics(lm, pooling=mode, output=tmp_path / mode, **common).metrics
        assert len(calls) == forwards_all > 0  # 1 plain + 3 view passes for all poolings
        got = together[together["pooling"] == mode].set_index(keys)["value"].sort_index()
        want = alone.set_index(keys)["value"].sort_index()
        pd.testing.assert_series_equal(got, want, atol=1e-6, rtol=0)
        files = sorted(p.name for p in (tmp_path / mode / "metrics").glob("*.parquet"))
        assert set(files) <= {p.name for p in (tmp_path / "all" / "metrics").glob("*.parquet")}
    # the pooled metrics see each pooling's vectors; the token metrics the same tokens
    value = together.set_index(keys)["value"]
    de = value.xs(("dataset_entropy", "normalized"), level=("metric", "variant"))
    assert de.loc[("mean", 4)] != pytest.approx(de.loc[("last", 4)], abs=1e-4)
    cv = value.xs(("curvature", "radians"), level=("metric", "variant"))
    assert cv.loc[("mean", 4)] == cv.loc[("last", 4)]
    # a rerun reads every file back: no pass
    calls.clear()
    layer_metrics(lm, pooling="last,mean", output=tmp_path / "all", **common)
    assert calls == []


def test_cli_takes_several_poolings_and_refuses_unknown_ones(capsys):
    from mteb_midlayer.cli import _common, build_parser, model_spec

    args = build_parser().parse_args(["sweep", "minilm", "--pooling", "mean,weightedmean,last"])
    assert args.pooling == "mean,weightedmean,last"
    assert model_spec(args).pooling == "mean"  # the model loads with the first
    assert _common(args)["pooling"] == "mean,weightedmean,last"
    args = build_parser().parse_args(["metrics", "minilm", "--pooling", "last"])
    assert model_spec(args).pooling == "last" and _common(args)["pooling"] == "last"
    assert model_spec(build_parser().parse_args(["sweep"])).pooling is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--pooling", "mean,sgpt"])
    assert "Unknown pooling 'sgpt'" in capsys.readouterr().err


def test_sweep_several_poolings_leave_prompt_tokens_out_as_each_single_run(tmp_path):
    """With prompts and `include_prompt=False`: the same stores (prompt-aware entries) and results."""
    lm = _tiny_lm("gpt2", prompts={"STS": "qry: "}, include_prompt=False)
    common = dict(tasks=[_sts_task()], layers=[1, 4], show_progress=False)
    sweep(lm, pooling="weightedmean,max", output=tmp_path / "both", **common)
    want: dict[str, dict[str, np.ndarray]] = {}
    scores: dict[str, float] = {}
    for mode in ("weightedmean", "max"):
        sweep(lm, pooling=mode, output=tmp_path / mode, **common)
        want |= _store_entries(tmp_path / mode)
        scores |= _results(tmp_path / mode)
    got = _store_entries(tmp_path / "both")
    assert sorted(got) == sorted(want) and len(got) == 2
    for digest, entries in want.items():
        assert sorted(got[digest]) == sorted(entries)
        for text_hash, vectors in entries.items():
            np.testing.assert_allclose(got[digest][text_hash], vectors, atol=1e-6, rtol=0)
    assert all("include_prompt_False" in path for path in scores)  # the slice folders say so
    assert _results(tmp_path / "both") == pytest.approx(scores, abs=1e-6)


def test_cli_metrics_with_several_poolings_keys_rows_and_table_by_pooling(tmp_path, capsys):
    from mteb_midlayer.cli import main

    folder = tmp_path / "tiny-llama"
    tiny_model("llama", n_layers=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "domain.txt"
    corpus.write_text("\n".join(f"sentence {i} of a corpus" for i in range(12)) + "\n")
    out = tmp_path / "out"
    code = main(
        ["metrics", str(folder), "--texts", str(corpus), "--n", "12", "--metrics",
         "effective_rank,curvature", "--pooling", "mean,last", "--device", "cpu",
         "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "pooling" in printed and "last" in printed  # the printed table keeps them apart
    rows = pd.read_parquet(out / "metrics")
    assert sorted(set(rows["pooling"])) == ["last", "mean"]
    assert len(list((out / "metrics").glob("*.parquet"))) == 2  # one file per pooling
    er = rows[rows["metric"] == "effective_rank"].set_index(["pooling", "layer"])["value"]
    assert er.loc[("mean", 1)] != pytest.approx(er.loc[("last", 1)], abs=1e-6)
