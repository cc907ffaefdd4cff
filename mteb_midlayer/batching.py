"""Batch plans and the failures a batch can meet (out of memory, non-finite vectors).

Pure helpers for `LayerModel.iter_batches`: which texts go together (a fixed count, or a token
budget over length-sorted texts), how to recognise an out-of-memory error, and the check that
no NaN/inf vector leaves the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class NonFiniteError(ValueError):
    """A pooled vector holds NaN/inf (typically fp16 overflow)."""

    def __init__(self, layer: int, final_norm: str, index: int, text: str) -> None:
        self.layer, self.final_norm, self.index, self.text = layer, final_norm, index, text
        super().__init__(
            f"Layer {layer} (final_norm={final_norm}) gives a NaN/inf vector for text {index} "
            f"{text[:80]!r}: fp16 overflow? Use dtype='bfloat16' or 'float32'."
        )


def check_batch_limits(batch_size: int, max_tokens_per_batch: int | None) -> None:
    """Both limits must be positive (the token budget may be `None`: a fixed count then)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if max_tokens_per_batch is not None and (
        isinstance(max_tokens_per_batch, bool)
        or not isinstance(max_tokens_per_batch, int)
        or max_tokens_per_batch <= 0
    ):
        raise ValueError(
            f"max_tokens_per_batch must be a positive int or None, got {max_tokens_per_batch!r}."
        )


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices longest first (stable), so each batch pads little and the first batch is the
    biggest: an out-of-memory error shows at once, not hours in."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


#: Without a token budget, a batch of `batch_size` rows holds at most `batch_size` x this many
#: padded tokens: texts of up to 512 tokens batch exactly by count (as before), and a decoder's
#: long texts (up to 2048 tokens) go fewer to a batch, so a batch never costs more than
#: `batch_size` 512-token texts.
_ROW_TOKENS = 512


def plan_batches(
    order: Sequence[int],
    lengths: Sequence[int],
    batch_size: int,
    max_tokens_per_batch: int | None = None,
) -> list[list[int]]:
    """Cut `order` (indices, longest first) into batches.

    Without a budget: `batch_size` texts each, and at most `batch_size * _ROW_TOKENS` padded
    tokens (a batch of long texts gets fewer rows). With `max_tokens_per_batch`: as many texts
    as keep `rows x longest` (the padded tokens the network sees) within the budget, whatever
    `batch_size` says; a text longer than the budget gets a batch of its own.
    """
    check_batch_limits(batch_size, max_tokens_per_batch)
    if max_tokens_per_batch is None:
        return _cut(order, lengths, batch_size, batch_size * _ROW_TOKENS)
    return _cut(order, lengths, None, max_tokens_per_batch)


def _cut(
    order: Sequence[int], lengths: Sequence[int], max_rows: int | None, max_tokens: int
) -> list[list[int]]:
    """Consecutive batches of at most `max_rows` rows and `max_tokens` padded tokens (a text
    longer than that alone)."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        width = max(longest, lengths[index])
        full = max_rows is not None and len(current) >= max_rows
        if current and (full or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current, width = [], lengths[index]
        current.append(index)
        longest = width
    if current:
        batches.append(current)
    return batches


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's `OutOfMemoryError`, or a `RuntimeError` saying so (other backends, older torch)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def first_non_finite(pooled: dict[tuple[int, str], torch.Tensor]) -> tuple[int, str, int] | None:
    """`(layer, final_norm, row)` of the first NaN/inf vector, else `None`; one device sync."""
    if not pooled:
        return None
    keys = list(pooled)
    ok = torch.stack([torch.isfinite(pooled[k]).all() for k in keys])
    if bool(ok.all()):
        return None
    key = keys[int((~ok).nonzero()[0])]
    row = int((~torch.isfinite(pooled[key]).all(dim=1)).nonzero()[0])
    return key[0], key[1], row
