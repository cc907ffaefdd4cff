"""The store-backed source: shard sizing by bytes, one pass per missing text, exact replay."""

from __future__ import annotations

import numpy as np
import pytest

import mteb_midlayer.replay as replay
from mteb_midlayer.model import LayerModel
from mteb_midlayer.replay import DEFAULT_SHARD_SIZE, EmbeddingSource, shard_texts

from .conftest import tiny_model, tiny_tokenizer


def test_shard_texts_fits_the_byte_budget():
    # MiniLM: 7 layers x 384 floats = 10,752 bytes a text, so the text cap binds
    assert shard_texts(7, 384) == DEFAULT_SHARD_SIZE
    # a 48-layer, 4096-wide model: 49 x 4096 x 4 = 802,816 bytes a text -> 334 texts in 256 MiB
    assert shard_texts(49, 4096) == 256 * 2**20 // (49 * 4096 * 4) == 334
    assert shard_texts(49, 4096, shard_bytes=1) == 1  # never zero
    assert shard_texts(49, 4096, shard_size=5000) == 5000  # an explicit size wins
    with pytest.raises(ValueError, match="shard_size"):
        shard_texts(7, 384, shard_size=0)
    with pytest.raises(ValueError, match="shard_bytes"):
        shard_texts(7, 384, shard_bytes=0)


def _pooled(lm: LayerModel, texts: list[str], layer: int) -> np.ndarray:
    out = np.zeros((len(texts), lm.hidden_size), dtype=np.float32)
    for batch in lm.iter_batches(texts, [layer], "mean", batch_size=4):
        out[batch.indices] = batch.pooled[layer].float().numpy()
    return out


def test_source_writes_byte_sized_shards_and_replays_them(tmp_path, monkeypatch):
    lm = LayerModel.load(tiny_model("bert", n_layers=3), tiny_tokenizer(), device="cpu")
    layers = [0, 1, 2, 3]
    # a budget of three texts' worth of float32 embeddings (all layers, full width)
    monkeypatch.setattr(replay, "DEFAULT_SHARD_BYTES", 3 * 4 * len(layers) * lm.hidden_size)
    source = EmbeddingSource(lm, tmp_path, pooling="mean", layers=layers, show_progress=False)
    assert source.shard_size == 3
    texts = [f"text number {i}" for i in range(8)] + ["text number 0"]  # one duplicate
    source.fill(texts, None, ("T", "test"))
    assert source.n_encoded == 8  # each distinct text once
    store = source.store(None)
    assert len(list(store.shards_dir.rglob("*.npy"))) == 3  # 3 + 3 + 2 texts
    for layer in layers:
        np.testing.assert_allclose(
            store.read(texts, layer), _pooled(lm, texts, layer), rtol=1e-5, atol=1e-6
        )
    source.fill(texts, None, ("T", "test"))
    assert source.n_encoded == 8  # a second fill encodes nothing
