"""Early exit returns exactly the full model's `hidden_states[l]`, for every family."""

import pytest
import torch

from mteb_midlayer.layers import find_blocks, resolve_layer, resolve_layers, run_layers
from mteb_midlayer.model import LayerModel
from mteb_midlayer.pooling import POOLINGS, pool

from .conftest import TINY_ARCHS, tiny_model, tiny_tokenizer


def reference_hidden_states(model, inputs):
    """`hidden_states` under our convention, from plain `transformers` outputs.

    transformers' Mamba omits the embedding output and lists the last block twice (raw, then
    normed); every other family already matches the convention.
    """
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    hs = list(out.hidden_states)
    if model.config.model_type == "mamba":
        with torch.no_grad():
            embedded = model.embeddings(inputs["input_ids"])
        hs = [embedded, *hs[:-2], hs[-1]]
    assert torch.equal(hs[-1], out.last_hidden_state)
    return hs


def _inputs(arch):
    torch.manual_seed(1)
    ids = torch.randint(3, 128, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if arch == "bert":
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_early_exit_equals_full_hidden_states(arch):
    model = tiny_model(arch, n_layers=4)
    inputs = _inputs(arch)
    ref = reference_hidden_states(model, inputs)
    assert len(ref) == 5
    for layer in range(5):
        got = run_layers(model, inputs, [layer])[layer]
        torch.testing.assert_close(got, ref[layer], rtol=0, atol=0)
        for kind in POOLINGS:
            torch.testing.assert_close(
                pool(got, inputs["attention_mask"], kind),
                pool(ref[layer], inputs["attention_mask"], kind),
                rtol=0,
                atol=0,
            )
    several = run_layers(model, inputs, [0, 2, 4])
    assert sorted(several) == [0, 2, 4]
    torch.testing.assert_close(several[2], ref[2], rtol=0, atol=0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_layer_model_pools_like_reference(arch):
    """The whole path (tokenize, sort, batch, pad, pool) equals a one-text-at-a-time reference."""
    lm = LayerModel.load(tiny_model(arch, n_layers=3), tiny_tokenizer(), device="cpu")
    texts = ["hello world", "a", "a much longer text than the others", "", "mid size"]
    for kind in POOLINGS:
        got = {}
        for batch in lm.iter_batches(texts, [0, 1, 2, 3], kind, batch_size=2):
            for row, index in enumerate(batch.indices):
                got[index] = {layer: batch.pooled[layer][row] for layer in batch.pooled}
        for index, text in enumerate(texts):
            ids = torch.tensor([lm.tokenize([text])[0]])
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if arch == "bert":
                inputs["token_type_ids"] = torch.zeros_like(ids)
            ref = reference_hidden_states(lm.model, inputs)
            for layer in range(4):
                expected = pool(ref[layer], inputs["attention_mask"], kind)[0]
                torch.testing.assert_close(got[index][layer], expected, rtol=1e-4, atol=1e-5)


def test_early_exit_runs_only_needed_blocks():
    model = tiny_model("llama", n_layers=6)
    calls = []
    for i, block in enumerate(find_blocks(model)):
        block.register_forward_hook(lambda *_a, i=i: calls.append(i))
    run_layers(model, _inputs("llama"), [2])
    assert calls == [0, 1]


def test_resolve_layer():
    assert resolve_layer(-1, 6) == 6
    assert resolve_layer(-7, 6) == 0
    assert resolve_layer(3, 6) == 3
    for bad in (7, -8):
        with pytest.raises(ValueError, match=r"0\.\.6"):
            resolve_layer(bad, 6)
    assert resolve_layers("all", 2) == [0, 1, 2]
    assert resolve_layers("0,2,-1", 6) == [0, 2, 6]
