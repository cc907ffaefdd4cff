"""Fused layers: a slice that averages several layers' vectors with equal weights.

A fusion is a sorted tuple of two or more distinct layers. For a pooling that is linear in the
token states (every one but `max`), the pooled vector of the mean of the layers' states is the
mean of the layers' pooled vectors: each pooling is a per-text weighted sum of token states
whose weights depend only on the attention mask (mean: 1/n, cls/last: one-hot, weightedmean:
i / sum(i), mean_sqrt_len: 1/sqrt(n)). So a fusion comes from the store's per-layer vectors
with no new forward pass. Order: fused mean, then the dim cut, then normalisation.

A fusion's label names it in result folders (`experiment_kwargs["fuse"]`) and frames: a
contiguous set is `"a-b"` (layers a..b), any other `"0+6"`; a single layer has no label (`""`).
A fusion costs its deepest layer's blocks, which is its `layer` everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .layers import resolve_layer

#: Poolings under which a fusion is the mean of pooled vectors (all linear in token states).
FUSABLE_POOLINGS = ("mean", "cls", "last", "weightedmean", "mean_sqrt_len")
#: The label of a plain single-layer slice (the `fuse` column of the frames).
NO_FUSION = ""

Fusion = tuple[int, ...]


def check_fusable(pooling: str) -> str:
    """`pooling` if a fusion of layers under it is the mean of pooled vectors, else one line."""
    if pooling not in FUSABLE_POOLINGS:
        raise ValueError(
            f"Cannot fuse layers under {pooling!r} pooling: it is not linear in the token states, "
            f"so a fusion is not the mean of pooled vectors; use one of {', '.join(FUSABLE_POOLINGS)}."
        )
    return pooling


def fusion_label(layers: Iterable[int]) -> str:
    """Canonical name of a fusion: `"a-b"` when contiguous (a..b), else `"0+6"`."""
    out = sorted(set(int(x) for x in layers))
    if len(out) < 2:
        raise ValueError(f"A fusion needs two layers or more, got {out}.")
    if out == list(range(out[0], out[-1] + 1)):
        return f"{out[0]}-{out[-1]}"
    return "+".join(map(str, out))


def _layer(text: str, n_layers: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a layer number.") from None
    return resolve_layer(value, n_layers) if n_layers is not None else value


def parse_label(label: str, n_layers: int | None = None) -> Fusion:
    """The layers of one fusion, e.g. `"0+6"`, `"4-6"` (4, 5, 6), `"0+4-6"`; negatives count
    from the end when `n_layers` is given. Fewer than two distinct layers is a `ValueError`."""
    layers: set[int] = set()
    for part in str(label).strip().split("+"):
        part = part.strip()
        head, sep, tail = part[1:].partition("-")  # a leading '-' is a negative layer
        if sep:
            start, stop = _layer(part[0] + head, n_layers), _layer(tail, n_layers)
            if stop < start:
                raise ValueError(f"Window {part!r} ends before it starts.")
            layers.update(range(start, stop + 1))
        else:
            layers.add(_layer(part, n_layers))
    out = tuple(sorted(layers))
    if len(out) < 2:
        raise ValueError(f"A fusion needs two layers or more, got {label!r}.")
    return out


def parse_fusions(spec: str | Sequence[str | Sequence[int]] | None, n_layers: int) -> list[Fusion]:
    """Fusions asked for by `sweep --fuse`: comma-separated labels (`0+6,4-6`),
    `windows:W` (every window of W consecutive layers in 0..L), `first-last` (0 and L), or a
    list of labels / layer lists. Sorted by deepest layer, then first layer; no duplicates."""
    if spec is None or spec == "" or spec == []:
        return []
    items: list[str | Sequence[int]] = (
        [s for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    )
    pool = list(range(n_layers + 1))
    out: set[Fusion] = set()
    for item in items:
        if not isinstance(item, str):
            out.add(parse_label("+".join(str(int(x)) for x in item), n_layers))
            continue
        text = item.strip()
        if text == "first-last":
            out.add(parse_label(f"{pool[0]}+{pool[-1]}", n_layers))
        elif text.startswith("windows:"):
            try:
                width = int(text.removeprefix("windows:"))
            except ValueError:
                raise ValueError(f"{text!r}: give a width, e.g. windows:2.") from None
            if not 2 <= width <= len(pool):
                raise ValueError(
                    f"{text!r}: the width must be 2..{len(pool)} (layers 0..{n_layers})."
                )
            out.update(tuple(pool[i : i + width]) for i in range(len(pool) - width + 1))
        else:
            out.add(parse_label(text, n_layers))
    return sorted(out, key=lambda f: (f[-1], f[0], f))


def fuse_vectors(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Equal-weight mean of per-layer vectors (each `(n, d)`), as float32; accumulated in
    float64 so the order of the layers does not matter."""
    stacked = np.stack([np.asarray(v, dtype=np.float32) for v in vectors])
    return stacked.mean(axis=0, dtype=np.float64).astype(np.float32)


def fuse_stacked(stacked: torch.Tensor, layers: Sequence[int], fusion: Fusion) -> torch.Tensor:
    """The fusion's equal-weight mean of `stacked[i]` over its layers, `stacked` holding one
    entry per layer of `layers` (`(n_layers, ...)`, e.g. pooled `(n_layers, N, D)` or views
    `(n_layers, N, V, D)`); accumulated in float64, like `fuse_vectors`."""
    index = [list(layers).index(layer) for layer in fusion]
    picked = stacked[index].to(torch.float64)
    return picked.mean(dim=0).to(stacked.dtype)
