"""Early exit returns exactly the full model's `hidden_states[l]`, for every family."""

import pytest
import torch

from mteb_midlayer.layers import (
    capture_layers,
    check_final_norms,
    find_blocks,
    find_final_norm,
    resolve_layer,
    resolve_layers,
    run_layers,
)
from mteb_midlayer.model import LayerModel
from mteb_midlayer.pooling import POOLINGS, pool

from .conftest import TINY_ARCHS, tiny_config, tiny_model, tiny_tokenizer


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


def _truncated(model, arch: str, n_blocks: int):
    """The same model with only its first `n_blocks` blocks: built from a config, weights copied."""
    from transformers import AutoModel

    short = AutoModel.from_config(tiny_config(arch, n_layers=n_blocks)).eval()
    missing, _unexpected = short.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    return short


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "qwen2", "gpt2", "mamba"])
def test_final_norm_every_equals_truncated_model(arch):
    model = tiny_model(arch, n_layers=4)
    inputs = _inputs(arch)
    assert find_final_norm(model) is not None
    both = capture_layers(model, inputs, range(5), final_norms=("last", "every"))
    ref = reference_hidden_states(model, inputs)
    for layer in range(5):
        torch.testing.assert_close(both[(layer, "last")], ref[layer], rtol=0, atol=0)
        with torch.no_grad():
            expected = _truncated(model, arch, layer)(**inputs).last_hidden_state
        torch.testing.assert_close(both[(layer, "every")], expected, rtol=1e-5, atol=1e-6)
    # the two settings differ below the last layer and agree at it
    assert not torch.allclose(both[(2, "every")], both[(2, "last")])
    torch.testing.assert_close(both[(4, "every")], both[(4, "last")], rtol=0, atol=0)


def test_final_norm_every_is_a_noop_without_final_norm(caplog):
    model = tiny_model("bert", n_layers=3)
    inputs = _inputs("bert")
    assert find_final_norm(model) is None
    with caplog.at_level("WARNING"):
        both = capture_layers(model, inputs, [1, 3], final_norms=("last", "every"))
        capture_layers(model, inputs, [1], final_norms=("every",))
    for layer in (1, 3):
        torch.testing.assert_close(both[(layer, "every")], both[(layer, "last")], rtol=0, atol=0)
    notes = [r for r in caplog.records if "no final norm" in r.getMessage()]
    assert len(notes) <= 1  # said once per model class (0 if an earlier test said it)


def test_one_forward_pass_serves_both_final_norms():
    model = tiny_model("llama", n_layers=4)
    calls = []
    model.register_forward_pre_hook(lambda *_a: calls.append(1))
    find_final_norm(model)  # one probe pass per model finds the norm (then cached)
    assert len(calls) == 1
    calls.clear()
    both = capture_layers(model, _inputs("llama"), [0, 2, 4], final_norms=("last", "every"))
    capture_layers(model, _inputs("llama"), [1], final_norms=("every",))
    assert len(calls) == 2
    assert sorted(both) == [(layer, s) for layer in (0, 2, 4) for s in ("every", "last")]


def test_reduce_runs_inside_the_capture():
    """A pooling reduce keeps only (batch, width) per layer; each state is handed over once."""
    model = tiny_model("gpt2", n_layers=4)
    inputs = _inputs("gpt2")
    mask = inputs["attention_mask"]
    seen = []

    def reduce(layer, setting, state):
        seen.append((layer, setting, tuple(state.shape)))
        return pool(state, mask, "mean")

    pooled = run_layers(model, inputs, [1, 3], reduce=reduce)
    full = run_layers(model, inputs, [1, 3])
    assert seen == [(1, "last", (3, 9, 32)), (3, "last", (3, 9, 32))]
    for layer in (1, 3):
        torch.testing.assert_close(pooled[layer], pool(full[layer], mask, "mean"))


def test_bad_final_norm_is_named():
    with pytest.raises(ValueError, match=r"Unknown final_norm 'first'.*last, every"):
        check_final_norms(["last", "first"])
    assert check_final_norms("every,last,every") == ("every", "last")
