"""sentence-transformers' `Pooling(include_prompt=False)`: prompt tokens left out, exactly.

Tiny ST models (tests/test_st_models.py `build_st`) with prompts and a tokenizer that adds
`<s> ... </s>`, so the prompt length counts the leading special token and drops the trailing
one, as sentence-transformers does. Every check is against `SentenceTransformer.encode`.
"""

from __future__ import annotations

import json

import mteb
import numpy as np
import pytest
import torch

from mteb_midlayer.cli import build_parser, model_spec
from mteb_midlayer.encoder import LayerEncoder, experiment_kwargs
from mteb_midlayer.frames import layer_results
from mteb_midlayer.model import LayerModel
from mteb_midlayer.pooling import ST_POOLING, exclude_prompt, pool
from mteb_midlayer.replay import EmbeddingSource, StoreEncoder, store_entries, store_key
from mteb_midlayer.spec import ModelSpec, SpecConflictError, merge_spec
from mteb_midlayer.store import EmbeddingStore

from .conftest import tiny_tokenizer
from .test_st_models import ST_MODES, TEXTS, build_st

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
        want = st.encode(TEXTS, prompt=prompt, batch_size=2)
        np.testing.assert_allclose(enc.embed(TEXTS, prompt=prompt), want, atol=1e-5)
    pooled_too = LayerEncoder(enc.lm.model, tokenizer=enc.lm.tokenizer, pooling=enc.pooling)
    diff = np.abs(pooled_too.embed(TEXTS, prompt="qry: ") - st.encode(TEXTS, prompt="qry: "))
    # the last token is never a prompt token: only `last` is the same either way
    assert diff.max() == pytest.approx(0, abs=1e-5) if mode == "lasttoken" else diff.max() > 0.1


@pytest.mark.parametrize("mode", ["mean", "lasttoken", "weightedmean"])
def test_prompted_decoder_matches_sentence_transformers_encode(mode, tmp_path):
    """GPT-2 through sentence-transformers (right padding, its tokenizer's side)."""
    path, st = build(tmp_path, mode, arch="gpt2")
    enc = LayerEncoder(str(path), device="cpu", batch_size=3)
    assert enc.lm.prompt_length("qry: ") == st[0]._get_prompt_length("qry: ") == 5
    want = st.encode(TEXTS, prompt="qry: ", batch_size=4)
    np.testing.assert_allclose(enc.embed(TEXTS, prompt="qry: "), want, atol=1e-5)


def test_mteb_prompt_types_pick_the_prompt_whose_tokens_are_left_out(tmp_path):
    from mteb.mocks.mock_tasks import MockRetrievalTask
    from mteb.types import PromptType

    path, st = build(tmp_path, "mean")
    enc = LayerEncoder(str(path), device="cpu")
    meta = MockRetrievalTask().metadata
    for kind in (PromptType.query, PromptType.document):
        got = enc.encode(
            [{"text": TEXTS[:2]}, {"text": TEXTS[2:]}],
            task_metadata=meta,
            hf_split="test",
            hf_subset="default",
            prompt_type=kind,
        )
        np.testing.assert_allclose(got, st.encode(TEXTS, prompt_name=kind.value), atol=1e-5)


def test_texts_of_several_prompts_in_token_budget_batches(tmp_path):
    """Length-sorted, token-budget batches mix texts of two prompts: each keeps its own."""
    path, st = build(tmp_path, "mean")
    lm = LayerModel.load(str(path), device="cpu")
    prompts = [PROMPTS["query"], PROMPTS["document"]] * 2
    texts = [p + t for p, t in zip(prompts, TEXTS, strict=True)]
    out = torch.zeros(len(texts), lm.hidden_size)
    n_batches = 0
    for batch in lm.iter_batches(
        texts, [lm.n_layers], "mean", prompts=prompts, max_tokens_per_batch=80
    ):
        out[batch.indices] = batch.pooled[lm.n_layers]
        n_batches += 1
    assert n_batches > 1
    want = [st.encode([t], prompt=p)[0] for p, t in zip(prompts, TEXTS, strict=True)]
    np.testing.assert_allclose(out.numpy(), np.stack(want), atol=1e-5)
    with pytest.raises(ValueError, match=r"texts\[0\] does not start with its prompt"):
        next(lm.iter_batches(TEXTS, [1], "mean", prompts="qry: "))


def test_out_of_memory_back_off_keeps_each_texts_prompt(tmp_path):
    """Batches re-planned after an out-of-memory error still leave out each text's own prompt."""
    from .test_model import _failing_forward

    path, _ = build(tmp_path, "mean")
    lm = LayerModel.load(str(path), device="cpu")
    prompts = [PROMPTS["query"], PROMPTS["document"]] * 2
    texts = [p + t for p, t in zip(prompts, TEXTS, strict=True)]

    def run() -> torch.Tensor:
        out = torch.zeros(len(texts), lm.hidden_size)
        for batch in lm.iter_batches(texts, [2, 4], "mean", prompts=prompts, batch_size=4):
            out[batch.indices] = batch.pooled[2] + 10 * batch.pooled[4]
        return out

    expected = run()
    calls: list[int] = []
    _failing_forward(lm, max_rows=1, calls=calls)
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
        want = enc.embed(TEXTS, prompt=prompt)
        np.testing.assert_allclose(loaded.encode(TEXTS, prompt_name=name), want, atol=1e-5)
    np.testing.assert_allclose(loaded.encode(TEXTS), enc.embed(TEXTS), atol=1e-5)
