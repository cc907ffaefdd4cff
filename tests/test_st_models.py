"""sentence-transformers models are pooled as their authors configured them.

Each test builds an ST model locally (a tiny BERT plus ST's own modules, saved to tmp_path)
and checks our last layer against `SentenceTransformer.encode`.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mteb_midlayer.encoder import LayerEncoder
from mteb_midlayer.model import LayerModel

from .conftest import tiny_model, tiny_tokenizer

TEXTS = ["a short one", "a somewhat longer sentence, with punctuation!", "x", "mid length text"]
ST_MODES = ["cls", "mean", "max", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"]


def build_st(
    path,
    mode: str,
    *,
    normalize: bool = False,
    dense: bool = False,
    arch: str = "bert",
    tokenizer=None,
    prompts: dict[str, str] | None = None,
    **pooling_kw,
):
    """A SentenceTransformer of a tiny `arch` model (BERT by default) with `mode` pooling (and
    `prompts`), saved to `path`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    base = path.parent / f"{path.name}-{arch}"
    tiny_model(arch).save_pretrained(base)
    (tokenizer or tiny_tokenizer()).save_pretrained(base)
    first = Transformer(str(base), max_seq_length=32)
    modules = [first, Pooling(first.get_embedding_dimension(), pooling_mode=mode, **pooling_kw)]
    if dense:
        modules.append(Dense(32, 8))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu", prompts=prompts).save(str(path))
    return SentenceTransformer(str(path), device="cpu")


@pytest.mark.parametrize("mode", ST_MODES)
def test_last_layer_matches_sentence_transformers_encode(mode, tmp_path):
    st = build_st(tmp_path / mode, mode, normalize=mode == "mean")
    expected = st.encode(TEXTS, convert_to_numpy=True, batch_size=2)
    enc = LayerEncoder(str(tmp_path / mode), layer=-1, device="cpu", batch_size=3)
    assert enc.lm.max_length == 32
    np.testing.assert_allclose(enc.embed(TEXTS), expected, atol=1e-5)


def test_include_prompt_false_without_prompts_matches(tmp_path):
    st = build_st(tmp_path / "m", "mean", include_prompt=False)
    expected = st.encode(TEXTS, convert_to_numpy=True)
    enc = LayerEncoder(str(tmp_path / "m"), device="cpu")
    np.testing.assert_allclose(enc.embed(TEXTS), expected, atol=1e-5)


def test_modules_we_do_not_apply_are_named(tmp_path, caplog):
    build_st(tmp_path / "d", "mean", dense=True)
    with caplog.at_level(logging.WARNING, logger="mteb_midlayer.model"):
        lm = LayerModel.load(str(tmp_path / "d"), device="cpu")
    assert "2_Dense" in caplog.text and "differs from SentenceTransformer.encode" in caplog.text
    assert lm.default_pooling == "mean"


def test_a_broken_sentence_transformers_folder_is_not_loaded_as_plain(tmp_path):
    build_st(tmp_path / "b", "mean")
    (tmp_path / "b" / "modules.json").write_text("{not json")
    with pytest.raises(Exception, match=r"Expecting property name|JSON"):
        LayerModel.load(str(tmp_path / "b"), device="cpu")
