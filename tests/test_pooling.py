import pytest
import torch

from mteb_midlayer.pooling import POOLINGS, check_pooling, last_token_index, pool


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
