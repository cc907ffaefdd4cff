"""Pooling of token states into one vector per text.

Pure functions over tensors. Every pooling is masked: padding never leaks into a vector,
whatever side the tokenizer pads on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

POOLINGS = ("mean", "cls", "last", "max", "weightedmean", "mean_sqrt_len")

#: sentence-transformers `Pooling.pooling_mode` -> our name (same maths, see `pool`).
ST_POOLING = {
    "mean": "mean",
    "cls": "cls",
    "max": "max",
    "lasttoken": "last",
    "weightedmean": "weightedmean",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
}


def check_pooling(pooling: str) -> str:
    """Return `pooling` if we know it, else raise a `ValueError` listing the choices."""
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
    return pooling


def check_poolings(poolings: Sequence[str] | str) -> tuple[str, ...]:
    """Unique poolings in the given order, from a list or a comma string ("mean,last"); an
    unknown one raises a `ValueError` listing the choices. Several come from one forward pass."""
    if isinstance(poolings, str):
        poolings = [x.strip() for x in poolings.split(",") if x.strip()]
    out = tuple(dict.fromkeys(check_pooling(p) for p in poolings))
    if not out:
        raise ValueError(f"No pooling requested; choose from {', '.join(POOLINGS)}.")
    return out


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for right *or* left padding.

    The position of the largest `mask * position` is the last 1 in the row either way.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def _first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first real token of each row (0 under right padding)."""
    return attention_mask.long().argmax(dim=1)


def exclude_prompt(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """`attention_mask` with the first `prompt_lengths[i]` real tokens of row `i` zeroed.

    sentence-transformers' `Pooling(include_prompt=False)` rule, per row instead of per batch
    (texts of one batch may carry prompts of different lengths): positions before the first
    real token plus the prompt length are dropped, so left and right padding agree.
    """
    mask = attention_mask.long()
    lengths = prompt_lengths.to(device=mask.device, dtype=torch.long).view(-1, 1)
    positions = torch.arange(mask.shape[1], device=mask.device).view(1, -1)
    start = _first_token_index(mask).view(-1, 1)
    return mask.masked_fill(positions < start + lengths, 0)


def pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    pooling: str,
    prompt_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool `hidden` (B, T, D) with `attention_mask` (B, T) into (B, D), in float32.

    `cls` is the first *real* token, so left-padded batches pool the same token as
    right-padded ones; padding never leaks in, even as NaN/inf. `weightedmean` weighs the i-th
    real token by i (SGPT's position-weighted mean, as sentence-transformers); `mean_sqrt_len`
    divides the sum by sqrt(length). Half-precision states are never copied whole to float32:
    sums accumulate in float32, `max`/`cls`/`last` select in the states' dtype (exact) and
    convert only the (B, D) result.

    `prompt_lengths` (B,): tokens of each row's prompt, left out of the vector as
    sentence-transformers' `include_prompt=False` does (`exclude_prompt`); `weightedmean` keeps
    the remaining tokens' original position weights, and a row left with no token pools to
    zeros (`cls`: its first token, as sentence-transformers).
    """
    check_pooling(pooling)
    real = attention_mask.to(hidden.device).bool()
    mask = real if prompt_lengths is None else exclude_prompt(real, prompt_lengths).bool()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling in ("mean", "mean_sqrt_len"):
        kept = hidden.masked_fill(~mask.unsqueeze(-1), 0)
        total = kept.sum(dim=1, dtype=torch.float32)
        count = mask.sum(dim=1, keepdim=True).to(torch.float32).clamp(min=1.0)
        return total / (count if pooling == "mean" else count.sqrt())
    if pooling == "weightedmean":
        kept = hidden.masked_fill(~mask.unsqueeze(-1), 0).float()
        positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=torch.float32)
        offset = _first_token_index(real).to(torch.float32).view(-1, 1, 1)
        weights = mask.unsqueeze(-1).to(torch.float32) * (positions.view(1, -1, 1) - offset)
        return (kept * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if pooling == "max":
        filled = hidden.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        out = filled.max(dim=1).values.float()
        return torch.where(torch.isinf(out) & (out < 0), torch.zeros_like(out), out)
    if pooling == "cls":
        return hidden[rows, _first_token_index(mask)].float()
    last = hidden[rows, last_token_index(mask)].float()
    return last * mask.any(dim=1, keepdim=True)
