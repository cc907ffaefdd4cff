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

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
#: Names the model families give the norm applied after their last block.
FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "norm_f")
#: `last`: our convention (raw residual stream for l < L, the model's own output at L);
#: `every`: the final norm applied to every layer, as a model truncated to l blocks would.
FINAL_NORMS = ("last", "every")
#: Called inside the capture of each layer as `reduce(layer, final_norm, state)`; what it returns
#: is kept instead of the (batch, tokens, width) state, which is then free to go.
Reduce = Callable[[int, str, torch.Tensor], Any]
_NO_NORM_NOTED: set[str] = set()


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


def find_final_norm(model: nn.Module) -> nn.Module | None:
    """The norm a model applies after its last block, or `None` (BERT-family post-norm encoders).

    Looked up next to the block list: a child named one of `FINAL_NORM_NAMES` of the module that
    holds the blocks, then of each enclosing module up to the backbone (OPT's `decoder`, T5's
    stack, Llama's `model`). Embedding norms live elsewhere and are never found.
    """
    model = base_model(model)
    blocks = find_blocks(model)
    path = next(name for name, module in model.named_modules() if module is blocks)
    parts = path.split(".")[:-1]
    for depth in range(len(parts), -1, -1):
        owner = model.get_submodule(".".join(parts[:depth]))
        for attr in FINAL_NORM_NAMES:
            child = owner._modules.get(attr)
            if isinstance(child, nn.Module):
                return child
    return None


def check_final_norms(final_norms: Sequence[str] | str) -> tuple[str, ...]:
    """Unique final-norm settings in the given order; unknown ones raise a `ValueError`."""
    if isinstance(final_norms, str):
        final_norms = [x.strip() for x in final_norms.split(",") if x.strip()]
    out = tuple(dict.fromkeys(final_norms))
    for value in out:
        if value not in FINAL_NORMS:
            raise ValueError(
                f"Unknown final_norm {value!r}; choose one of {', '.join(FINAL_NORMS)}."
            )
    if not out:
        raise ValueError("No final_norm requested; choose from " + ", ".join(FINAL_NORMS) + ".")
    return out


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


def _note_no_final_norm(model: nn.Module) -> None:
    kind = type(model).__name__
    if kind not in _NO_NORM_NOTED:
        _NO_NORM_NOTED.add(kind)
        logger.warning(
            "%s has no final norm next to its blocks: final_norm='every' equals 'last' for it.",
            kind,
        )


@torch.inference_mode()
def capture_layers(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    layers: Sequence[int],
    *,
    final_norms: Sequence[str] = ("last",),
    reduce: Reduce | None = None,
) -> dict[tuple[int, str], Any]:
    """`{(l, final_norm): reduce(l, final_norm, state)}` for every requested pair, in one pass.

    `state` is `hidden_states[l]` under `final_norm="last"` and the model's final norm applied
    to block `l`'s output (layer 0: the embedding output) under `"every"`; both agree at `L`.
    `reduce` (default: keep the state) runs inside the capture, so a pooling reduce keeps only
    (batch, width) per layer instead of every layer's tokens until the end of the pass. The pass
    stops right after the deepest requested layer.
    """
    model = base_model(model)
    blocks = find_blocks(model)
    n = len(blocks)
    norms = check_final_norms(final_norms)
    wanted = sorted(set(layers))
    if not wanted:
        return {}
    if wanted[0] < 0 or wanted[-1] > n:
        raise ValueError(f"layers must lie in 0..{n}, got {wanted}")
    norm = find_final_norm(model) if "every" in norms else None
    if "every" in norms and norm is None:
        _note_no_final_norm(model)
    captured: dict[tuple[int, str], Any] = {}

    def emit(index: int, hidden: torch.Tensor) -> None:
        normed = None
        for setting in norms:
            state = hidden
            if setting == "every" and norm is not None and index < n:
                normed = norm(hidden) if normed is None else normed
                state = normed
            captured[(index, setting)] = state if reduce is None else reduce(index, setting, state)

    stop_at = wanted[-1]
    handles = []

    def make_hook(index: int):
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
            emit(index, _block_input(args, kwargs))
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
        emit(n, outputs.last_hidden_state)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return {(index, setting): captured[(index, setting)] for index in wanted for setting in norms}


def run_layers(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    layers: Sequence[int],
    *,
    final_norm: str = "last",
    reduce: Reduce | None = None,
) -> dict[int, Any]:
    """`{l: hidden_states[l]}` for every `l` in `layers` (already in `0..L`), in one pass.

    The pass stops right after the deepest requested layer: asking for layer 3 of a
    24-layer model runs 3 blocks. `final_norm` and `reduce` as in `capture_layers`.
    """
    out = capture_layers(model, inputs, layers, final_norms=(final_norm,), reduce=reduce)
    return {index: value for (index, _setting), value in out.items()}
