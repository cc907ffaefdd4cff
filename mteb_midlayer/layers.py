"""Layer access: find a model's blocks and read `hidden_states[l]` with early exit.

Convention (see ../shared/design/METRICS.md, final-norm note): `hidden_states[0]` is the
embedding output, `hidden_states[l]` for `0 < l < L` is the raw output of block `l` (the
residual stream, no final norm), and `hidden_states[L]` is the model's own last hidden state
(final norm applied where the architecture has one). This is exactly what a
`transformers` model returns with `output_hidden_states=True`, except Mamba: transformers' Mamba
tuple omits the embedding output and lists the last block twice (raw, then normed); we number
Mamba like every other family (0 = embeddings, L = normed last block).

How: the input of block `l` *is* `hidden_states[l]`. A forward pre-hook on block `l` catches
it and stops the forward pass by raising, so only blocks `0..l-1` run. Layer `L` needs the
whole model, final norm included, and is read from `last_hidden_state`. This works for any
model whose blocks form one `nn.ModuleList` (BERT, GPT-2, GPT-NeoX, Llama, Qwen2, Mamba...),
including layer 0, which a model built with zero layers would not return.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def base_model(model: nn.Module) -> nn.Module:
    """The bare backbone of a model with a head (`...ForCausalLM` -> `...Model`)."""
    inner = getattr(model, "base_model", None)
    return inner if isinstance(inner, nn.Module) else model


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The `ModuleList` of transformer / SSM blocks of `model`.

    The list whose length is the config's layer count, all entries of one class; ties go to
    the shortest path (the outer stack, not a list nested inside a block).
    """
    config = getattr(model, "config", None)
    expected = None
    for key in _LAYER_COUNT_KEYS:
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, int):
            expected = value
            break
    candidates: list[tuple[int, str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if expected is not None and len(module) != expected:
            continue
        candidates.append((name.count("."), name, module))
    if not candidates:
        raise ValueError(
            f"Cannot find the block list of {type(model).__name__}: no nn.ModuleList of "
            f"{expected if expected is not None else 'uniform'} blocks."
        )
    candidates.sort(key=lambda c: (c[0], c[1]))
    return candidates[0][2]


def num_layers(model: nn.Module) -> int:
    """`L`, the number of blocks; `hidden_states` has `L + 1` entries."""
    return len(find_blocks(model))


def resolve_layer(layer: int, n_layers: int) -> int:
    """Map `layer` (negatives count from the end, -1 = L) to `0..L`, or raise `ValueError`."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    resolved = layer + n_layers + 1 if layer < 0 else layer
    if not 0 <= resolved <= n_layers:
        raise ValueError(
            f"layer {layer} is out of range for a model with {n_layers} layers: valid layers are "
            f"0..{n_layers} (0 = embedding output, {n_layers} = last block) or "
            f"-{n_layers + 1}..-1 counted from the end."
        )
    return resolved


def resolve_layers(layers: Iterable[int] | str | None, n_layers: int) -> list[int]:
    """Sorted unique layer indices; `None` or `"all"` means `0..L`."""
    if layers is None or layers == "all":
        return list(range(n_layers + 1))
    if isinstance(layers, str):
        layers = [int(x) for x in layers.split(",") if x.strip()]
    out = sorted({resolve_layer(int(layer), n_layers) for layer in layers})
    if not out:
        raise ValueError("No layers requested.")
    return out


class _StopForward(Exception):
    pass


def _block_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    value = kwargs.get("hidden_states")
    if isinstance(value, torch.Tensor):
        return value
    raise RuntimeError("Could not find the hidden states among a block's inputs.")


@torch.inference_mode()
def run_layers(
    model: nn.Module, inputs: dict[str, torch.Tensor], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """`{l: hidden_states[l]}` for every `l` in `layers` (already in `0..L`), in one pass.

    The pass stops right after the deepest requested layer: asking for layer 3 of a
    24-layer model runs 3 blocks.
    """
    model = base_model(model)
    blocks = find_blocks(model)
    n = len(blocks)
    wanted = sorted(set(layers))
    if not wanted:
        return {}
    if wanted[0] < 0 or wanted[-1] > n:
        raise ValueError(f"layers must lie in 0..{n}, got {wanted}")
    captured: dict[int, torch.Tensor] = {}
    stop_at = wanted[-1]
    handles = []

    def make_hook(index: int):
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
            hidden = _block_input(args, kwargs)
            if isinstance(hidden, tuple):  # pragma: no cover - defensive
                hidden = hidden[0]
            captured[index] = hidden
            if index == stop_at:
                raise _StopForward

        return hook

    for index in wanted:
        if index < n:
            handles.append(
                blocks[index].register_forward_pre_hook(make_hook(index), with_kwargs=True)
            )
    try:
        outputs = model(**inputs, use_cache=False, return_dict=True)
        captured[n] = outputs.last_hidden_state
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return {index: captured[index] for index in wanted}
