"""LayerEncoder: real MiniLM against sentence-transformers, tiny models, mteb integration."""

from __future__ import annotations

import mteb
import numpy as np
import pytest
import torch

from mteb_midlayer.encoder import LayerEncoder
from mteb_midlayer.model import EMBEDDED_NAME, LayerModel

from .conftest import TINY_ARCHS, tiny_model, tiny_tokenizer
from .test_layers import reference_hidden_states

TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
    "Layers in the middle often embed better.",
    "short",
]


def test_last_layer_equals_sentence_transformers(minilm_path, minilm):
    from sentence_transformers import SentenceTransformer

    enc = LayerEncoder(minilm, layer=-1, pooling="mean", normalize=True)
    expected = SentenceTransformer(minilm_path, device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    np.testing.assert_allclose(enc.embed(TEXTS), expected, atol=1e-5, rtol=0)


def test_path_string_equals_sentence_transformers(minilm_path):
    from sentence_transformers import SentenceTransformer

    enc = LayerEncoder(minilm_path, layer=-1, pooling="mean", normalize=True, device="cpu")
    expected = SentenceTransformer(minilm_path, device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    np.testing.assert_allclose(enc.embed(TEXTS), expected, atol=1e-5, rtol=0)
    assert enc.mteb_model_meta.name == EMBEDDED_NAME
    assert enc.lm.max_length == 256  # the model's own max_seq_length
    assert enc.pooling == "mean"


def test_middle_layer_equals_plain_transformers(minilm_path, minilm):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    x = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**x, output_hidden_states=True).hidden_states[3]
    mask = x["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    got = LayerEncoder(minilm, layer=3, pooling="mean", normalize=False).embed(TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_sentence_transformer_object_gives_its_pooling(minilm_path):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path, device="cpu")
    enc = LayerEncoder(st, layer=2, device="cpu")
    assert enc.pooling == "mean" and enc.layer == 2 and enc.dim == 384
    # its Normalize module makes normalize the default, so the last layer is the published model
    assert enc.normalize is True
    np.testing.assert_allclose(
        LayerEncoder(st, device="cpu").embed(TEXTS), st.encode(TEXTS), atol=1e-5, rtol=0
    )
    assert LayerEncoder(st, layer=2, normalize=False, device="cpu").normalize is False
    # a plain transformers model has no such module: off by default
    plain = LayerEncoder(tiny_model("bert"), tokenizer=tiny_tokenizer(), device="cpu")
    assert plain.normalize is False and plain.pooling == "mean"


def test_dim_slice_and_normalize(minilm):
    full = LayerEncoder(minilm, layer=4, normalize=False).embed(TEXTS)
    sliced = LayerEncoder(minilm, layer=4, dim=64, normalize=True).embed(TEXTS)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(sliced, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(sliced, axis=1), 1.0, atol=1e-6)


def test_bad_arguments(minilm):
    with pytest.raises(ValueError, match=r"0\.\.6"):
        LayerEncoder(minilm, layer=7)
    with pytest.raises(ValueError, match=r"0\.\.6"):
        LayerEncoder(minilm, layer=-8)
    with pytest.raises(ValueError, match="hidden size is 384"):
        LayerEncoder(minilm, dim=385)
    with pytest.raises(ValueError, match="mean, cls, last, max"):
        LayerEncoder(minilm, pooling="avg")
    with pytest.raises(ValueError, match="tokenizer"):
        LayerEncoder(tiny_model("bert"))


def test_bad_input_texts(minilm):
    enc = LayerEncoder(minilm, layer=-1)
    odd = ["", "   ", "word " * 10_000, "naïve café — 日本語のテキスト 🙂"]
    out = enc.embed(odd)
    assert out.shape == (4, 384) and np.isfinite(out).all()
    # the 10,000-word text is truncated to max_length: same vector as its first 300 words
    np.testing.assert_allclose(out[2], enc.embed(["word " * 300])[0], atol=1e-5)
    assert enc.embed([]).shape == (0, 384)
    assert LayerEncoder(minilm, dim=32).embed([]).shape == (0, 32)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        enc.embed(["fine", None])
    with pytest.raises(TypeError, match="single str"):
        enc.embed("not a list")


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_models_every_layer_every_pooling(arch):
    model = tiny_model(arch, n_layers=3)
    tok = tiny_tokenizer()
    lm = LayerModel.load(model, tok, device="cpu")
    texts = ["hello there", "x", "a longer sentence for the tiny model"]
    for layer in range(4):
        for pooling in ("mean", "cls", "last", "max"):
            got = LayerEncoder(lm, layer=layer, pooling=pooling).embed(texts)
            for i, text in enumerate(texts):
                ids = torch.tensor([lm.tokenize([text])[0]])
                inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
                hidden = reference_hidden_states(model, inputs)[layer][0]
                expected = {
                    "mean": hidden.mean(0),
                    "cls": hidden[0],
                    "last": hidden[-1],
                    "max": hidden.max(0).values,
                }[pooling]
                np.testing.assert_allclose(got[i], expected.numpy(), atol=1e-5, rtol=1e-4)


def test_model_meta_separates_slices(minilm, tmp_path):
    from mteb.mocks.mock_tasks import MockSTSTask

    cache = mteb.ResultCache(tmp_path)
    task = MockSTSTask()
    scores = {}
    for layer, dim in ((2, None), (6, None), (6, 128)):
        enc = LayerEncoder(minilm, layer=layer, dim=dim)
        meta = enc.mteb_model_meta
        assert meta.name == EMBEDDED_NAME
        assert meta.experiment_kwargs["layer"] == layer
        res = mteb.evaluate(enc, task, cache=cache, show_progress_bar=False)
        scores[(layer, dim)] = res.task_results[0].get_score()
    folders = sorted(p.parent.name for p in tmp_path.rglob("MockSTSTask.json"))
    assert len(folders) == 3, folders
    assert any("layer_2" in f for f in folders) and any("dim_128" in f for f in folders)


def test_mock_run_passes_on_all_text_tasks(minilm):
    results = mteb.mock_run(LayerEncoder(minilm, layer=3))
    ran = {name: r for name, r in results.task_results.items() if r is not None}
    assert len(ran) >= 20
    failed = {name: r.exception for name, r in ran.items() if not isinstance(r, mteb.TaskResult)}
    assert not failed, failed


def test_prompts_are_prepended(minilm):
    from mteb.mocks.mock_tasks import MockRetrievalTask

    enc = LayerEncoder(minilm, layer=-1, model_prompts={"query": "query: "})
    meta = MockRetrievalTask().metadata
    from mteb.types import PromptType

    from mteb_midlayer.encoder import resolve_prompt

    assert resolve_prompt(enc.model_prompts, meta, PromptType.query) == "query: "
    assert resolve_prompt(enc.model_prompts, meta, PromptType.document) == ""


def test_dtype_choice_and_bf16_on_cpu(minilm_path, minilm):
    from mteb_midlayer.model import resolve_dtype

    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype"):
        resolve_dtype("int3", "cpu")
    bf16 = LayerEncoder(minilm_path, layer=4, device="cpu", dtype="bfloat16")
    assert bf16.lm.dtype == torch.bfloat16
    got, ref = bf16.embed(TEXTS), LayerEncoder(minilm, layer=4).embed(TEXTS)
    assert got.dtype == np.float32
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert (cos > 0.99).all()


def test_encode_prepends_the_prompt_mteb_picks(minilm):
    from mteb.mocks.mock_tasks import MockRetrievalTask
    from mteb.types import PromptType

    enc = LayerEncoder(
        minilm, layer=-1, model_prompts={"query": "query: ", "document": "passage: "}
    )
    meta = MockRetrievalTask().metadata
    batches = [{"text": ["what is a layer", "mid layers"]}]
    got = enc.encode(
        batches,
        task_metadata=meta,
        hf_split="test",
        hf_subset="default",
        prompt_type=PromptType.query,
    )
    np.testing.assert_allclose(
        got, enc.embed(["query: what is a layer", "query: mid layers"]), atol=1e-6
    )
    doc = enc.encode(
        batches,
        task_metadata=meta,
        hf_split="test",
        hf_subset="default",
        prompt_type=PromptType.document,
    )
    np.testing.assert_allclose(
        doc, enc.embed(["passage: what is a layer", "passage: mid layers"]), atol=1e-6
    )


def test_duplicates_are_encoded_once_and_returned_in_place(minilm):
    enc = LayerEncoder(minilm, layer=2)
    out = enc.embed(["b", "a", "b", "c", "a"])
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[1], out[4])
    np.testing.assert_allclose(out[3], enc.embed(["c"])[0], atol=1e-6)
