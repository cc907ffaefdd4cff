"""Pooling (`mteb_midlayer.pooling`): the maths of each mode, several poolings from one forward
pass, and sentence-transformers' `Pooling(include_prompt=False)` (prompt tokens left out).

Several poolings: a pass over `pooling="a,b,c"` writes, for each pooling, exactly what a run with
that pooling alone writes (store keys and entries, result folders and scores, metric files and
rows), from the forward passes of one run. Prompt tokens: tiny ST models (`build_st` of
tests/conftest.py) with prompts and a tokenizer that adds `<s> ... </s>`, so the prompt length
counts the leading special token and drops the trailing one, as sentence-transformers does;
every check is against `SentenceTransformer.encode`.
"""

from __future__ import annotations

import json
from pathlib import Path

import mteb
import numpy as np
import pandas as pd
import pytest
import torch

from mteb_midlayer.cli import build_parser, model_spec
from mteb_midlayer.encoder import LayerEncoder, experiment_kwargs
from mteb_midlayer.frames import layer_results
from mteb_midlayer.model import LayerModel
from mteb_midlayer.pooling import (
    POOLINGS,
    ST_POOLING,
    check_pooling,
    check_poolings,
    exclude_prompt,
    last_token_index,
    pool,
)
from mteb_midlayer.replay import EmbeddingSource, StoreEncoder, store_entries, store_key
from mteb_midlayer.spec import ModelSpec, SpecConflictError, merge_spec
from mteb_midlayer.store import EmbeddingStore
from mteb_midlayer.sweep import sweep

from .conftest import (
    ST_MODES,
    ST_TEXTS,
    build_st,
    count_forwards,
    failing_forward,
    mock_sts_task,
    tiny_layer_model,
    tiny_model,
    tiny_tokenizer,
)


def _batch():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return hidden, right


def test_mean_ignores_padding():
    hidden, mask = _batch()
    out = pool(hidden, mask, "mean")
    assert torch.allclose(out[0], hidden[0, :3].mean(0))
    assert torch.allclose(out[1], hidden[1, :2].mean(0))


def test_max_ignores_padding():
    hidden, mask = _batch()
    hidden[0, 3] = 1e6  # a padded position must never win
    out = pool(hidden, mask, "max")
    assert torch.equal(out[0], hidden[0, :3].max(0).values)


def test_cls_and_last_right_and_left_padding_agree():
    hidden, right = _batch()
    # the same texts left-padded: shift real tokens to the end
    left_hidden = torch.zeros_like(hidden)
    left_mask = torch.zeros_like(right)
    for i in range(2):
        n = int(right[i].sum())
        left_hidden[i, 4 - n :] = hidden[i, :n]
        left_mask[i, 4 - n :] = 1
    for kind in ("cls", "last", "mean", "max"):
        assert torch.equal(pool(hidden, right, kind), pool(left_hidden, left_mask, kind)), kind
    assert last_token_index(right).tolist() == [2, 1]
    assert last_token_index(left_mask).tolist() == [3, 3]
    assert torch.equal(pool(hidden, right, "last")[1], hidden[1, 1])
    assert torch.equal(pool(hidden, right, "cls")[1], hidden[1, 0])


def test_bf16_pools_in_float32():
    hidden, mask = _batch()
    assert pool(hidden.bfloat16(), mask, "mean").dtype == torch.float32


def test_unknown_pooling_lists_choices():
    with pytest.raises(ValueError, match="mean, cls, last, max"):
        check_pooling("avg")
    assert set(POOLINGS) == {"mean", "cls", "last", "max", "weightedmean", "mean_sqrt_len"}


def test_weightedmean_weighs_tokens_by_position_from_the_first_real_one():
    hidden, right = _batch()
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    out = pool(hidden, right, "weightedmean")
    w = torch.tensor([1.0, 2.0, 3.0]).unsqueeze(1)
    assert torch.allclose(out[0], (hidden[0, :3] * w).sum(0) / 6)
    shifted = pool(hidden.roll(1, dims=1), left[:1].repeat(2, 1), "weightedmean")
    assert torch.allclose(shifted[0], out[0])


def test_mean_sqrt_len_divides_the_sum_by_sqrt_length():
    hidden, mask = _batch()
    out = pool(hidden, mask, "mean_sqrt_len")
    assert torch.allclose(out[1], hidden[1, :2].sum(0) / 2**0.5)


@pytest.mark.parametrize("kind", POOLINGS)
def test_half_precision_pools_in_float32(kind):
    """bf16 states pool to what their exact float32 copy pools to (fp32 accumulation)."""
    torch.manual_seed(0)
    hidden = (torch.randn(3, 50, 16) * 100).to(torch.bfloat16)
    mask = torch.ones(3, 50, dtype=torch.long)
    mask[1, 20:] = 0
    got = pool(hidden, mask, kind)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, pool(hidden.float(), mask, kind), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", POOLINGS)
def test_non_finite_padding_never_leaks(kind):
    hidden, mask = _batch()
    clean = pool(hidden, mask, kind)
    hidden[1, 3] = float("nan")
    hidden[1, 2] = float("inf")
    torch.testing.assert_close(pool(hidden, mask, kind), clean, rtol=0, atol=0)


# ------------------------------------------------------- several poolings from one forward pass
SWEPT_POOLINGS = ("mean", "weightedmean", "last")
MIXED_TEXTS = [
    "A man is playing a guitar.",
    "Two dogs run through a field of tall grass.",
    "short",
    "The committee postponed the vote until next week.",
    "qry: what is the capital of France?",
]


def test_check_poolings_parses_lists_and_names_the_choices():
    assert check_poolings("mean, last,mean") == ("mean", "last")
    assert check_poolings(["weightedmean"]) == ("weightedmean",)
    with pytest.raises(ValueError, match="Unknown pooling 'sgpt'; choose one of mean"):
        check_poolings("mean,sgpt")
    with pytest.raises(ValueError, match="No pooling requested"):
        check_poolings(" , ")


@pytest.mark.parametrize("include_prompt", [True, False])
def test_iter_batches_several_poolings_equal_one_pass_each(include_prompt):
    lm = tiny_layer_model("gpt2", include_prompt=include_prompt)
    prompts = ["qry: " if t.startswith("qry: ") else "" for t in MIXED_TEXTS]
    calls = count_forwards(lm)
    kw = dict(batch_size=2, final_norms=("last", "every"), prompts=prompts, token_layers=[2])
    together = list(lm.iter_batches(MIXED_TEXTS, [0, 2, 4], ",".join(SWEPT_POOLINGS), **kw))
    n_together = len(calls)
    for mode in SWEPT_POOLINGS:
        calls.clear()
        alone = list(lm.iter_batches(MIXED_TEXTS, [0, 2, 4], mode, **kw))
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
    (batch,) = lm.iter_batches(MIXED_TEXTS[-1:], [2], "mean", token_layers=[2], prompts="qry: ")
    n_all = len(lm.tokenize(MIXED_TEXTS[-1:])[0])
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
    lm = tiny_layer_model("llama")
    calls = count_forwards(lm)
    common = dict(tasks=[mock_sts_task()], layers=[0, 2, 4], show_progress=False, batch_size=64)
    both_norms = dict(final_norm="last,every")
    table = sweep(
        lm, pooling=",".join(SWEPT_POOLINGS), output=tmp_path / "all", **common, **both_norms
    )
    table = table.scores
    forwards_all = len(calls)
    singles = {}
    for mode in SWEPT_POOLINGS:
        calls.clear()
        singles[mode] = sweep(
            lm, pooling=mode, output=tmp_path / mode, **common, **both_norms
        ).scores
        assert len(calls) == forwards_all > 0  # three poolings cost one pooling's passes
    # the store: the same configurations (keys), each with the same entries
    got = _store_entries(tmp_path / "all")
    want: dict[str, dict[str, np.ndarray]] = {}
    for mode in SWEPT_POOLINGS:
        want |= _store_entries(tmp_path / mode)
    assert sorted(got) == sorted(want) and len(got) == 3 * 2  # poolings x final norms
    for digest, entries in want.items():
        assert sorted(got[digest]) == sorted(entries)
        for text_hash, vectors in entries.items():
            np.testing.assert_allclose(got[digest][text_hash], vectors, atol=1e-6, rtol=0)
    # results: the same files (folders named by experiment_kwargs) with the same scores
    scores_all = _results(tmp_path / "all")
    scores_one: dict[str, float] = {}
    for mode in SWEPT_POOLINGS:
        scores_one |= _results(tmp_path / mode)
    assert sorted(scores_all) == sorted(scores_one) and len(scores_all) == 3 * 2 * 3
    for path, score in scores_one.items():
        assert scores_all[path] == pytest.approx(score, abs=1e-6)
    # the table gains a leading pooling level; each block is that pooling's own table
    assert table.index.names == ["pooling", "final_norm", "layer"]
    for mode in SWEPT_POOLINGS:
        pd.testing.assert_frame_equal(table.loc[mode], singles[mode], atol=1e-6)
    df = layer_results(tmp_path / "all")
    assert sorted(set(df["pooling"])) == sorted(SWEPT_POOLINGS)
    # a rerun with one of them reads everything back
    again = sweep(lm, pooling="last", output=tmp_path / "all", **common)
    assert again.n_encoded == 0 and len(calls) == forwards_all


def test_sweep_adding_a_pooling_encodes_once_and_writes_only_what_lacks(tmp_path):
    lm = tiny_layer_model("gpt_neox")
    common = dict(tasks=[mock_sts_task()], layers=[1, 3], show_progress=False, output=tmp_path)
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

    lm = tiny_layer_model("gpt_neox")
    texts = [f"text number {i} says {'word ' * (i % 5)}" for i in range(20)]
    calls = count_forwards(lm)
    common = dict(texts=texts, n=20, n_views=3, layers=[1, 4], show_progress=False)
    common |= dict(metrics="dataset_entropy,curvature,prompt_entropy,infonce,lidar")
    together = layer_metrics(lm, pooling=SWEPT_POOLINGS, output=tmp_path / "all", **common).metrics
    forwards_all = len(calls)
    keys = ["pooling", "layer", "metric", "variant"]
    for mode in SWEPT_POOLINGS:
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
    lm = tiny_layer_model("gpt2", prompts={"STS": "qry: "}, include_prompt=False)
    common = dict(tasks=[mock_sts_task()], layers=[1, 4], show_progress=False)
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


# ------------------------------------------- prompt tokens left out (include_prompt=False)
PROMPTS = {"query": "qry: ", "document": "a document: "}


def special_tokenizer():
    """The tiny character tokenizer, adding `<s>` before and `</s>` after every text."""
    from tokenizers.processors import TemplateProcessing

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return tok


def build(tmp_path, mode: str = "mean", arch: str = "bert", include_prompt: bool = False):
    path = tmp_path / f"{arch}-{mode}-{include_prompt}"
    tok = special_tokenizer() if arch == "bert" else tiny_tokenizer()
    st = build_st(
        path, mode, arch=arch, tokenizer=tok, prompts=PROMPTS, include_prompt=include_prompt
    )
    return path, st


# ----------------------------------------------------------------------------- pooling maths
def st_pool(hidden, mask, mode: str, prompt_length: int) -> torch.Tensor:
    from sentence_transformers.sentence_transformer.modules import Pooling

    module = Pooling(hidden.shape[-1], pooling_mode=mode, include_prompt=False)
    features = {"token_embeddings": hidden, "attention_mask": mask, "prompt_length": prompt_length}
    return module(features)["sentence_embedding"]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", ST_MODES)
def test_pool_leaves_prompt_tokens_out_as_sentence_transformers(mode, side):
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 5)
    lengths = [7, 4, 5]
    mask = torch.zeros(3, 7, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, 7 - n :] = 1
    for prompt_length in (1, 3):
        want = st_pool(hidden, mask, mode, prompt_length)
        got = pool(hidden, mask, ST_POOLING[mode], torch.full((3,), prompt_length))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # one prompt length per row (texts of one batch may carry different prompts)
    per_row = pool(hidden, mask, ST_POOLING[mode], torch.tensor([1, 3, 2]))
    for row, prompt_length in enumerate((1, 3, 2)):
        want = st_pool(hidden[row : row + 1], mask[row : row + 1], mode, prompt_length)
        torch.testing.assert_close(per_row[row : row + 1], want, atol=1e-6, rtol=1e-6)


def test_exclude_prompt_drops_the_first_real_tokens_of_each_row():
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    got = exclude_prompt(mask, torch.tensor([2, 1]))
    assert got.tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("mode", ST_MODES)
def test_prompted_last_layer_matches_sentence_transformers_encode(mode, tmp_path):
    path, st = build(tmp_path, mode)
    enc = LayerEncoder(str(path), device="cpu", batch_size=3)
    assert enc.lm.include_prompt is False and enc.lm.prompts == PROMPTS
    for prompt in PROMPTS.values():
        # "<s>" + the prompt's characters; its trailing "</s>" is not the prompted text's
        assert enc.lm.prompt_length(prompt) == st[0]._get_prompt_length(prompt) == len(prompt) + 1
        want = st.encode(ST_TEXTS, prompt=prompt, batch_size=2)
        np.testing.assert_allclose(enc.embed(ST_TEXTS, prompt=prompt), want, atol=1e-5)
    pooled_too = LayerEncoder(enc.lm.model, tokenizer=enc.lm.tokenizer, pooling=enc.pooling)
    diff = np.abs(pooled_too.embed(ST_TEXTS, prompt="qry: ") - st.encode(ST_TEXTS, prompt="qry: "))
    # the last token is never a prompt token: only `last` is the same either way
    assert diff.max() == pytest.approx(0, abs=1e-5) if mode == "lasttoken" else diff.max() > 0.1


@pytest.mark.parametrize("mode", ["mean", "lasttoken", "weightedmean"])
def test_prompted_decoder_matches_sentence_transformers_encode(mode, tmp_path):
    """GPT-2 through sentence-transformers (right padding, its tokenizer's side)."""
    path, st = build(tmp_path, mode, arch="gpt2")
    enc = LayerEncoder(str(path), device="cpu", batch_size=3)
    assert enc.lm.prompt_length("qry: ") == st[0]._get_prompt_length("qry: ") == 5
    want = st.encode(ST_TEXTS, prompt="qry: ", batch_size=4)
    np.testing.assert_allclose(enc.embed(ST_TEXTS, prompt="qry: "), want, atol=1e-5)


def test_mteb_prompt_types_pick_the_prompt_whose_tokens_are_left_out(tmp_path):
    from mteb.mocks.mock_tasks import MockRetrievalTask
    from mteb.types import PromptType

    path, st = build(tmp_path, "mean")
    enc = LayerEncoder(str(path), device="cpu")
    meta = MockRetrievalTask().metadata
    for kind in (PromptType.query, PromptType.document):
        got = enc.encode(
            [{"text": ST_TEXTS[:2]}, {"text": ST_TEXTS[2:]}],
            task_metadata=meta,
            hf_split="test",
            hf_subset="default",
            prompt_type=kind,
        )
        np.testing.assert_allclose(got, st.encode(ST_TEXTS, prompt_name=kind.value), atol=1e-5)


def test_texts_of_several_prompts_in_token_budget_batches(tmp_path):
    """Length-sorted, token-budget batches mix texts of two prompts: each keeps its own."""
    path, st = build(tmp_path, "mean")
    lm = LayerModel.load(str(path), device="cpu")
    prompts = [PROMPTS["query"], PROMPTS["document"]] * 2
    texts = [p + t for p, t in zip(prompts, ST_TEXTS, strict=True)]
    out = torch.zeros(len(texts), lm.hidden_size)
    n_batches = 0
    for batch in lm.iter_batches(
        texts, [lm.n_layers], "mean", prompts=prompts, max_tokens_per_batch=80
    ):
        out[batch.indices] = batch.pooled[lm.n_layers]
        n_batches += 1
    assert n_batches > 1
    want = [st.encode([t], prompt=p)[0] for p, t in zip(prompts, ST_TEXTS, strict=True)]
    np.testing.assert_allclose(out.numpy(), np.stack(want), atol=1e-5)
    with pytest.raises(ValueError, match=r"texts\[0\] does not start with its prompt"):
        next(lm.iter_batches(ST_TEXTS, [1], "mean", prompts="qry: "))


def test_out_of_memory_back_off_keeps_each_texts_prompt(tmp_path):
    """Batches re-planned after an out-of-memory error still leave out each text's own prompt."""
    path, _ = build(tmp_path, "mean")
    lm = LayerModel.load(str(path), device="cpu")
    prompts = [PROMPTS["query"], PROMPTS["document"]] * 2
    texts = [p + t for p, t in zip(prompts, ST_TEXTS, strict=True)]

    def run() -> torch.Tensor:
        out = torch.zeros(len(texts), lm.hidden_size)
        for batch in lm.iter_batches(texts, [2, 4], "mean", prompts=prompts, batch_size=4):
            out[batch.indices] = batch.pooled[2] + 10 * batch.pooled[4]
        return out

    expected = run()
    calls: list[int] = []
    failing_forward(lm, max_rows=1, calls=calls)
    got = run()
    assert calls[:3] == [4, 2, 1] and lm.oom_halvings == 2
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    want = torch.stack([pool_one(lm, t, p) for p, t in zip(prompts, texts, strict=True)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def pool_one(lm: LayerModel, text: str, prompt: str) -> torch.Tensor:
    """One text alone (no padding, no batch), layers 2 + 10 x 4, its prompt left out."""
    (batch,) = lm.iter_batches([text], [2, 4], "mean", prompts=prompt)
    return (batch.pooled[2] + 10 * batch.pooled[4])[0]


# ----------------------------------------------------------------------------- the option
def test_include_prompt_is_a_validated_spec_option(tmp_path):
    with pytest.raises(ValueError, match="include_prompt must be True, False or None"):
        ModelSpec(include_prompt="no")
    assert merge_spec(None, include_prompt=False).include_prompt is False
    assert merge_spec(None, include_prompt=None, trust_remote_code=False) == ModelSpec()
    assert ModelSpec.from_dict(ModelSpec(include_prompt=False).to_dict()).include_prompt is False
    path, _ = build(tmp_path, "mean")
    lm = LayerModel.load(str(path), device="cpu")
    assert lm.include_prompt is False and lm.current_spec().include_prompt is False
    assert LayerModel.load(str(path), device="cpu", include_prompt=True).include_prompt is True
    with pytest.raises(SpecConflictError, match="include_prompt=True conflicts"):
        LayerEncoder(lm, include_prompt=True)
    args = build_parser().parse_args(["sweep", str(path), "--exclude-prompt-tokens"])
    assert model_spec(args).include_prompt is False
    args = build_parser().parse_args(["export", str(path), "o", "--layer", "1"])
    assert args.include_prompt is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--exclude-prompt-tokens", "--include-prompt-tokens"])


def test_include_prompt_names_the_slice_only_when_prompt_tokens_are_left_out(tmp_path):
    assert "include_prompt" not in experiment_kwargs(1, 8, "mean", True, 32, "float32", PROMPTS)
    kwargs = experiment_kwargs(1, 8, "mean", True, 32, "float32", PROMPTS, include_prompt=False)
    assert kwargs["include_prompt"] is False
    path, _ = build(tmp_path, "mean")
    lm = LayerModel.load(str(path), device="cpu")
    excluded = LayerEncoder(lm).mteb_model_meta
    pooled = LayerEncoder(LayerModel.load(str(path), device="cpu", include_prompt=True))
    no_prompts = LayerEncoder(lm.model, tokenizer=lm.tokenizer, include_prompt=False)
    assert excluded.experiment_kwargs["include_prompt"] is False
    assert "include_prompt" not in pooled.mteb_model_meta.experiment_kwargs
    assert "include_prompt" not in no_prompts.mteb_model_meta.experiment_kwargs  # no prompts
    assert excluded.experiment_kwargs == pooled.mteb_model_meta.experiment_kwargs | {
        "include_prompt": False
    }
    keys = [store_key(m, "mean", "query") for m in (lm, pooled.lm)]
    assert keys[0].to_dict()["include_prompt"] is False
    assert "include_prompt" not in keys[1].to_dict() and keys[0].digest() != keys[1].digest()


# ----------------------------------------------------------------------------- sweep, export
def test_sweep_stores_and_scores_prompted_vectors_apart(tmp_path):
    """Two sweeps differing only in include_prompt: two slices, two stores, each equal to its
    own reference (SentenceTransformer.encode for the store, LayerEncoder for the score)."""
    from mteb.mocks.mock_tasks import MockRetrievalTask

    from mteb_midlayer.results import identity_path
    from mteb_midlayer.sweep import sweep

    path, st = build(tmp_path, "mean")
    out = tmp_path / "out"
    tables = {}
    for include in (False, True):
        lm = LayerModel.load(str(path), device="cpu", include_prompt=include)
        tables[include] = sweep(
            lm, tasks=[MockRetrievalTask()], layers=[4], output=out, show_progress=False
        )
        task = MockRetrievalTask()
        score = mteb.evaluate(LayerEncoder(lm, layer=4), task, cache=None).task_results[0]
        assert tables[include].scores.loc[4, task.metadata.name] == pytest.approx(
            score.get_score(), abs=1e-6
        )
        assert tables[include].n_encoded > 0  # nothing shared with the other setting
    plan = tables[False].plan
    (requests,) = plan.texts.values()
    by_kind = {r.prompt_type: r for r in requests}
    assert by_kind["query"].prompt == "qry: " and by_kind["document"].prompt == "a document: "
    lm = LayerModel.load(str(path), device="cpu")
    pooled_lm = LayerModel.load(str(path), device="cpu", include_prompt=True)
    for kind, texts in by_kind.items():
        store = EmbeddingStore(out / "store", store_key(lm, "mean", kind))
        raw = [t.removeprefix(texts.prompt) for t in texts.texts]
        want = st.encode(raw, prompt_name=kind)
        entries = store_entries(texts.texts, texts.prompt, include_prompt=False)
        np.testing.assert_allclose(store.read(entries, 4, 32), want, atol=1e-5)
        other = EmbeddingStore(out / "store", store_key(pooled_lm, "mean", kind))
        assert np.abs(other.read(list(texts.texts), 4, 32) - want).max() > 0.1
    rows = layer_results(out)
    assert sorted(rows["include_prompt"]) == [False, True]
    identities = [json.loads(identity_path(p).read_text()) for p in out.rglob("experiments/*/*.json")
                  if p.name != "model_meta.json"]  # fmt: skip
    assert sorted(i["include_prompt"] for i in identities) == [False, True]


def test_one_input_under_two_prompts_is_two_store_entries(tmp_path):
    """ "qry: " + "x" and "qry:" + " x" are one model input; with the prompt left out they are
    two vectors, so the store keeps them apart (and never mixes them up on replay)."""
    from mteb.mocks.mock_tasks import MockRetrievalTask
    from mteb.types import PromptType

    path, st = build(tmp_path, "mean")
    lm = LayerModel.load(str(path), device="cpu")
    source = EmbeddingSource(
        lm, tmp_path / "store", pooling="mean", layers=[4], show_progress=False
    )
    meta = MockRetrievalTask().metadata
    got = {}
    for prompt, text in (("qry: ", "x y"), ("qry:", " x y")):
        enc = StoreEncoder(source, layer=4, dim=32, model_prompts={"query": prompt})
        got[prompt] = enc.encode(
            [{"text": [text]}], task_metadata=meta, hf_split="t", hf_subset="d",
            prompt_type=PromptType.query,
        )  # fmt: skip
        np.testing.assert_allclose(got[prompt], st.encode([text], prompt=prompt), atol=1e-5)
    assert source.n_encoded == 2 and np.abs(got["qry: "] - got["qry:"]).max() > 0.01
    assert store_entries(["ab"], "a", include_prompt=False) == ["1\0ab"]
    assert store_entries(["ab"], "a", include_prompt=True) == ["ab"]


@pytest.mark.parametrize(("mode", "layer"), [("mean", 4), ("cls", 2), ("lasttoken", 3)])
def test_export_round_trip_with_prompts(mode, layer, tmp_path):
    from sentence_transformers import SentenceTransformer

    from mteb_midlayer.export import export

    path, _ = build(tmp_path, mode)
    result = export(str(path), tmp_path / "exported", layer=layer)
    assert result.include_prompt is False
    config = json.loads(next((tmp_path / "exported").glob("1_Pooling/config.json")).read_text())
    assert config["include_prompt"] is False
    assert "| prompt tokens pooled | False |" in (tmp_path / "exported" / "README.md").read_text()
    loaded = SentenceTransformer(str(tmp_path / "exported"), device="cpu")
    enc = LayerEncoder(str(path), layer=layer, device="cpu")
    for name, prompt in PROMPTS.items():
        want = enc.embed(ST_TEXTS, prompt=prompt)
        np.testing.assert_allclose(loaded.encode(ST_TEXTS, prompt_name=name), want, atol=1e-5)
    np.testing.assert_allclose(loaded.encode(ST_TEXTS), enc.embed(ST_TEXTS), atol=1e-5)
