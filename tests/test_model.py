"""`LayerModel.iter_batches`: token-budget batches, out-of-memory back-off, non-finite vectors,
both final norms from one pass; the batch planner and the dtype default; sentence-transformers
folders pooled as their authors configured them (a tiny BERT plus ST's own modules, saved to
tmp_path, against `SentenceTransformer.encode`)."""

import logging

import numpy as np
import pytest
import torch

from mteb_midlayer.batching import NonFiniteError, is_out_of_memory, length_order, plan_batches
from mteb_midlayer.encoder import LayerEncoder
from mteb_midlayer.layers import find_final_norm
from mteb_midlayer.model import LayerModel, resolve_dtype

from .conftest import ST_MODES, ST_TEXTS, build_st, failing_forward, tiny_model, tiny_tokenizer

TEXTS = [
    "a",
    "hello world",
    "a much longer text than all of the others, by a wide margin",
    "",
    "mid size text",
    "another medium one",
    "xy",
    "the longest of them all, longer still than the long one above it",
]


def _lm(arch="llama", n_layers=3):
    return LayerModel.load(tiny_model(arch, n_layers=n_layers), tiny_tokenizer(), device="cpu")


def _collect(batches, final_norm=None):
    out, sizes = {}, []
    for batch in batches:
        sizes.append(len(batch.indices))
        pooled = batch.pooled if final_norm is None else batch.by_final_norm[final_norm]
        for row, index in enumerate(batch.indices):
            out[index] = torch.stack([pooled[layer][row] for layer in sorted(pooled)])
    return torch.stack([out[i] for i in range(len(out))]), sizes


def test_plan_batches_by_count_and_by_token_budget():
    lengths = [5, 1, 9, 3, 3, 2]
    order = length_order(lengths)
    assert order == [2, 0, 3, 4, 5, 1]
    assert plan_batches(order, lengths, 4) == [[2, 0, 3, 4], [5, 1]]
    # budget of padded tokens = rows x longest: 9 | 5+3 -> 2x5=10 | 3+2+1 -> 3x3=9
    assert plan_batches(order, lengths, 1, max_tokens_per_batch=10) == [[2], [0, 3], [4, 5, 1]]
    # a text longer than the budget gets a batch of its own
    assert plan_batches(order, lengths, 1, max_tokens_per_batch=4) == [[2], [0], [3], [4], [5, 1]]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_tokens_per_batch must be a positive int"):
            plan_batches(order, lengths, 4, max_tokens_per_batch=bad)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        plan_batches(order, lengths, 0)


def test_plan_batches_by_count_caps_long_texts_at_512_tokens_a_row():
    """The default: texts up to 512 tokens batch by count; a decoder's long texts go fewer to
    a batch, within `batch_size x 512` padded tokens (a longer text alone)."""
    short = [512] * 10 + [7] * 5
    assert plan_batches(length_order(short), short, 4) == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14]
    ]  # fmt: skip
    lengths = [2048, 2048, 1500, 1024, 1024, 700, 30, 20]
    order = length_order(lengths)
    # 4 x 512 = 2048 tokens a batch: 1 x 2048 | 1 x 2048 | 1 x 1500 | 2 x 1024 | ... rows <= 4
    assert plan_batches(order, lengths, 4) == [[0], [1], [2], [3, 4], [5, 6], [7]]
    assert plan_batches(order, lengths, 32) == [[0, 1, 2, 3, 4, 5, 6, 7]]  # 8 x 2048 <= 16384


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "mamba"])
def test_token_budget_batches_equal_fixed_size_batches(arch):
    lm = _lm(arch)
    fixed, fixed_sizes = _collect(lm.iter_batches(TEXTS, [0, 1, 3], "mean", batch_size=2))
    longest = max(len(ids) for ids in lm.tokenize(TEXTS))
    budget, budget_sizes = _collect(
        lm.iter_batches(TEXTS, [0, 1, 3], "mean", batch_size=2, max_tokens_per_batch=longest + 1)
    )
    assert fixed_sizes == [2, 2, 2, 2]
    assert budget_sizes[0] == 1 and max(budget_sizes) > 2  # long texts alone, short ones packed
    torch.testing.assert_close(budget, fixed, rtol=0, atol=1e-5)


def test_out_of_memory_halves_the_batch_and_goes_on(caplog):
    lm = _lm("gpt2")
    expected, _ = _collect(lm.iter_batches(TEXTS, [1, 3], "last", batch_size=8))
    calls = []
    failing_forward(lm, max_rows=2, calls=calls)
    with caplog.at_level(logging.DEBUG, logger="mteb_midlayer.model"):
        got, sizes = _collect(lm.iter_batches(TEXTS, [1, 3], "last", batch_size=8))
        assert calls == [8, 4, 2, 2, 2, 2]
        assert sizes == [2, 2, 2, 2]
        # the halved size sticks for the next call: no failing batch again
        calls.clear()
        _collect(lm.iter_batches(TEXTS[:4], [1], "last", batch_size=8))
        assert calls == [2, 2]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "halving the batch" in warned[0].getMessage()
    assert lm.oom_halvings == 2


def test_out_of_memory_with_token_budget_and_on_a_single_text():
    lm = _lm("llama")
    calls = []
    failing_forward(lm, max_rows=1, calls=calls)
    got, sizes = _collect(lm.iter_batches(TEXTS, [2], "mean", max_tokens_per_batch=400))
    assert set(sizes) == {1} and len(got) == len(TEXTS)
    lm = _lm("llama")
    failing_forward(lm, max_rows=0, calls=[])
    with pytest.raises(torch.OutOfMemoryError):
        list(lm.iter_batches(["one text"], [2], "mean"))


def test_other_errors_are_not_taken_for_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_non_finite_vector_names_layer_and_text():
    lm = _lm("gpt2", n_layers=3)
    block = lm.model.h[1]

    def overflow(_module, args, output):  # fp16 overflow in block 1, for one text only
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[2] = float("inf")
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    block.register_forward_hook(overflow)
    texts = ["first text", "second", "the third text here"]
    with pytest.raises(NonFiniteError, match=r"Layer 2 \(final_norm=last\).*text 1 'second'"):
        list(lm.iter_batches(texts, [0, 1, 2], "mean", batch_size=4))
    # layers before the overflow are fine, and the check can be switched off
    assert len(list(lm.iter_batches(texts, [0, 1], "mean"))) == 1
    assert len(list(lm.iter_batches(texts, [2], "mean", check_finite=False))) == 1


def test_both_final_norms_from_one_pass_equal_single_setting_runs():
    lm = _lm("llama", n_layers=3)
    find_final_norm(lm.model)  # the once-per-model probe pass that finds the norm
    calls = []
    lm.model.register_forward_pre_hook(lambda *_a: calls.append(1))
    batches = list(
        lm.iter_batches(TEXTS, [0, 2, 3], "mean", batch_size=8, final_norms=("last", "every"))
    )
    assert len(batches) == 1 and len(calls) == 1
    assert sorted(batches[0].by_final_norm) == ["every", "last"]
    for setting in ("last", "every"):
        both, _ = _collect(batches, final_norm=setting)
        alone, _ = _collect(lm.iter_batches(TEXTS, [0, 2, 3], "mean", final_norms=(setting,)))
        torch.testing.assert_close(both, alone, rtol=0, atol=0)
    last, _ = _collect(batches, final_norm="last")
    every, _ = _collect(batches, final_norm="every")
    assert not torch.allclose(last[:, 0], every[:, 0])  # layer 0 differs
    torch.testing.assert_close(last[:, 2], every[:, 2], rtol=0, atol=0)  # layer L agrees
    default, _ = _collect(lm.iter_batches(TEXTS, [0, 2, 3], "mean"))
    torch.testing.assert_close(default, last, rtol=0, atol=0)


def test_token_states_with_pooling_inside_capture():
    lm = _lm("gpt2", n_layers=2)
    texts = ["abc", "hello there"]
    (batch,) = lm.iter_batches(texts, [2], "mean", token_layers=[1, 2])
    assert sorted(batch.tokens) == [1, 2] and sorted(batch.pooled) == [2]
    for row, index in enumerate(batch.indices):
        n_tokens = len(lm.tokenize([texts[index]])[0])
        assert batch.tokens[1][row].shape == (n_tokens, 32)
        torch.testing.assert_close(batch.tokens[2][row].mean(0), batch.pooled[2][row])


def test_score_tokens_scores_every_final_norm_inside_the_capture_and_keeps_no_states():
    lm = _lm("llama", n_layers=3)
    texts = ["abc", "hello there", "a longer text of several words"]
    seen: list[tuple[int, str]] = []

    def score(layer, setting, tokens):
        seen.append((layer, setting))
        return [t.sum(0) for t in tokens]

    (batch,) = lm.iter_batches(
        texts, [1, 3], "mean", token_layers=[1, 3], final_norms=("last", "every"),
        score_tokens=score,
    )  # fmt: skip
    assert batch.tokens == {} and sorted(seen) == sorted(batch.token_scores)
    assert sorted(batch.token_scores) == [(1, "every"), (1, "last"), (3, "every"), (3, "last")]
    for setting in ("last", "every"):
        (alone,) = lm.iter_batches(
            texts, [1, 3], "mean", token_layers=[1, 3], final_norms=(setting,)
        )
        assert alone.indices == batch.indices
        for layer in (1, 3):
            want = torch.stack([t.sum(0) for t in alone.tokens[layer]])
            got = torch.stack(batch.token_scores[(layer, setting)])
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the normed states differ inside the model and agree at L
    last, every = (torch.stack(batch.token_scores[(1, s)]) for s in ("last", "every"))
    assert not torch.allclose(last, every, atol=1e-3)
    torch.testing.assert_close(
        torch.stack(batch.token_scores[(3, "last")]), torch.stack(batch.token_scores[(3, "every")])
    )


def test_dtype_default(monkeypatch):
    assert resolve_dtype(None, "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype(None, "cuda:0") == torch.float16
    assert resolve_dtype("fp32", "cuda") == torch.float32
    with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")


def test_layer_encoder_refuses_non_finite_vectors():
    from mteb_midlayer import LayerEncoder

    lm = _lm("llama", n_layers=2)
    lm.model.layers[0].register_forward_hook(
        lambda _m, _a, out: (
            (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
        )
    )
    encoder = LayerEncoder(lm, layer=2, search_backend="torch")
    with pytest.raises(NonFiniteError, match=r"Layer 2 .*text 0 'hello'"):
        encoder.embed(["hello"])


# ------------------------------------------ sentence-transformers folders, pooled as configured
@pytest.mark.parametrize("mode", ST_MODES)
def test_last_layer_matches_sentence_transformers_encode(mode, tmp_path):
    st = build_st(tmp_path / mode, mode, normalize=mode == "mean")
    expected = st.encode(ST_TEXTS, convert_to_numpy=True, batch_size=2)
    enc = LayerEncoder(str(tmp_path / mode), layer=-1, device="cpu", batch_size=3)
    assert enc.lm.max_length == 32
    np.testing.assert_allclose(enc.embed(ST_TEXTS), expected, atol=1e-5)


def test_include_prompt_false_without_prompts_matches(tmp_path):
    st = build_st(tmp_path / "m", "mean", include_prompt=False)
    expected = st.encode(ST_TEXTS, convert_to_numpy=True)
    enc = LayerEncoder(str(tmp_path / "m"), device="cpu")
    np.testing.assert_allclose(enc.embed(ST_TEXTS), expected, atol=1e-5)


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
