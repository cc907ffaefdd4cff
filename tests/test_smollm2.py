"""The real decoder of issue 23: SmolLM2-135M-Instruct (Llama, 30 layers, width 576).

`../shared/models/smollm2-135m-instruct.sh` assembles it into
`${MM_MODELS:-~/.cache/mm-models}/smollm2-135m-instruct-q41`; without that folder these tests skip
and say how to make it. Layer 1 (the best layer on STS) and the last layer equal transformers'
`hidden_states`, and layer 1 exports under each LLM pooling and round-trips through
`SentenceTransformer(OUT, trust_remote_code=True)` (a decoder's inner layer is raw, so the
folder skips the final norm with `RawStreamTransformer`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mteb_midlayer import LayerEncoder
from mteb_midlayer.export import export
from mteb_midlayer.model import LayerModel

FOLDER = Path(os.environ.get("MM_MODELS", Path.home() / ".cache" / "mm-models")) / (
    "smollm2-135m-instruct-q41"
)
TEXTS = [
    "A man is playing a guitar.",
    "Two dogs run across a snowy field",
    "The stock market fell sharply today, analysts said.",
    "ok",
]

pytestmark = pytest.mark.skipif(
    not (FOLDER / "model.safetensors").is_file(),
    reason=f"SmolLM2 not assembled at {FOLDER}: run "
    "PY=.venv/bin/python bash ../shared/models/smollm2-135m-instruct.sh",
)


@pytest.fixture(scope="module")
def smol() -> LayerModel:
    return LayerModel.load(str(FOLDER), device="cpu", dtype="float32")


def test_layer_1_and_the_last_equal_transformers_hidden_states(smol):
    assert (smol.n_layers, smol.hidden_size) == (30, 576)
    batch = smol.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = smol.model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    for layer in (1, 30):
        want = (hidden[layer] * mask).sum(1) / mask.sum(1)
        got = LayerEncoder(smol, layer=layer, pooling="mean", normalize=False).embed(TEXTS)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4 * want.abs().max())


@pytest.mark.parametrize("pooling", ["mean", "weightedmean", "last"])
def test_layer_1_exports_and_round_trips_under_each_llm_pooling(smol, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / f"smol-{pooling}"
    result = export(str(FOLDER), out, layer=1, pooling=pooling, normalize=False)
    assert result.needs_mteb_midlayer  # an inner decoder layer: the final norm is skipped
    got = SentenceTransformer(str(out), device="cpu", trust_remote_code=True).encode(TEXTS)
    want = LayerEncoder(smol, layer=1, pooling=pooling, normalize=False).embed(TEXTS)
    assert got.shape == (len(TEXTS), 576)
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= 1e-5 * max(1.0, scale)
