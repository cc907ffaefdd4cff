"""Layer access: find a model's blocks and read `hidden_states[l]` with early exit.

Convention (see ../shared/design/METRICS.md, final-norm note): `hidden_states[0]` is the
embedding output, `hidden_states[l]` for `0 < l < L` is the raw output of block `l` (the
residual stream, no final norm), and `hidden_states[L]` is the model's own last hidden state
(final norm applied where the architecture has one). This is exactly what a
`transformers` model returns with `output_hidden_states=True`, except Mamba: transformers' Mamba
tuple omits the embedding output and lists the last block twice (raw, then normed); we number
Mamba like every other family (0 = embeddings, L = normed last block).

How: the input of the `l`-th block run *is* `hidden_states[l]`. A forward pre-hook on the blocks
counts their runs, catches that input and stops the forward pass by raising, so only blocks
`0..l-1` run. Layer `L` needs the whole model, final norm included, and is read from
`last_hidden_state`. This works for any model whose blocks form one `nn.ModuleList`, including
shared-weight stacks that run one list's entries `L` times (ALBERT), and including layer 0,
which a model built with zero layers would not return. The final norm (`final_norm="every"`,
export) is found by a probe forward pass, not by name: `find_final_norm`. The families this is
tested on are listed in docs/architectures.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import nn

logger = logging.getLogger(__name__)

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
#: `last`: our convention (raw residual stream for l < L, the model's own output at L);
#: `every`: the final norm applied to every layer, as a model truncated to l blocks would.
FINAL_NORMS = ("last", "every")
#: Called inside the capture of each layer as `reduce(layer, final_norm, state)`; what it returns
#: is kept instead of the (batch, tokens, width) state, which is then free to go.
Reduce = Callable[[int, str, torch.Tensor], Any]
_NO_NORM_NOTED: set[str] = set()


class FinalNormError(ValueError):
    """A model changes its last block's output before returning it, but no single module of it
    maps the one to the other: its final norm cannot be applied to other layers, so we refuse."""


@dataclass(frozen=True)
class _Stack:
    """Where a model's blocks are and how many times they run per forward pass."""

    blocks: nn.ModuleList
    path: str
    n_layers: int  # L: block calls per forward (more than len(blocks) when weights are shared)
    expected: int | None  # the config's layer count when found (a change voids the cache)
    size: int  # len(blocks) when found (likewise)


@dataclass(frozen=True)
class _Probe:
    """What one small forward pass showed: the stack it ran, and the module that maps the last
    block's output to `last_hidden_state` (None: nothing runs after the last block)."""

    stack: _Stack
    final_norm: nn.Module | None


_STACKS: WeakKeyDictionary[nn.Module, _Stack] = WeakKeyDictionary()
_PROBES: WeakKeyDictionary[nn.Module, _Probe] = WeakKeyDictionary()


def base_model(model: nn.Module) -> nn.Module:
    """The bare backbone of a model with a head (`...ForCausalLM` -> `...Model`)."""
    inner = getattr(model, "base_model", None)
    return inner if isinstance(inner, nn.Module) else model


def _expected_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in _LAYER_COUNT_KEYS:
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _uniform_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Non-empty `ModuleList`s whose entries are all of one class, outer ones first."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(m) for m in module}) == 1
    ]
    return sorted(found, key=lambda c: (c[0].count("."), c[0]))


def _stack(model: nn.Module) -> _Stack:
    """The block list of the backbone `model` (cached while that list stays in place)."""
    expected = _expected_layers(model)
    cached = _STACKS.get(model)
    if (
        cached is not None
        and cached.expected == expected
        and len(cached.blocks) == cached.size
        and _still_there(model, cached.path, cached.blocks)
    ):
        return cached
    lists = _uniform_lists(model)
    stack = next(
        (
            _Stack(module, name, len(module), expected, len(module))
            for name, module in lists
            if expected is None or len(module) == expected
        ),
        None,
    )
    if stack is None and expected:
        # Shared weights (ALBERT: one layer group applied L times): a shorter list whose
        # entries, counted over a probe forward pass, are called exactly L times.
        for name, module in lists:
            if len(module) < expected and _count_calls(model, module) == expected:
                stack = _Stack(module, name, expected, expected, len(module))
                break
    if stack is None:
        raise ValueError(
            f"Cannot find the block list of {type(model).__name__}: no nn.ModuleList of "
            f"{expected if expected is not None else 'uniform'} blocks, nor a shorter one "
            "whose blocks run that many times."
        )
    _STACKS[model] = stack
    return stack


def _still_there(model: nn.Module, path: str, blocks: nn.ModuleList) -> bool:
    try:
        return model.get_submodule(path) is blocks
    except AttributeError:
        return False


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The `ModuleList` of transformer / SSM blocks of `model`.

    The list whose length is the config's layer count, all entries of one class; ties go to
    the shortest path (the outer stack, not a list nested inside a block). Failing that, a
    shorter such list whose entries run that many times in a forward pass (shared weights,
    ALBERT); `num_layers` counts the runs.
    """
    return _stack(base_model(model)).blocks


def num_layers(model: nn.Module) -> int:
    """`L`, the number of block runs per forward pass; `hidden_states` has `L + 1` entries."""
    return _stack(base_model(model)).n_layers


def _encloses(name: str, path: str) -> bool:
    """Whether module `name` is `path` or one of its ancestors."""
    return name == "" or path == name or path.startswith(name + ".")


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _block_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    value = kwargs.get("hidden_states")
    return value if isinstance(value, torch.Tensor) else None


def _probe_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Six tokens (no padding) on the model's device, ids inside its vocabulary."""
    try:
        vocab = int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError, TypeError):
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 8)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    ids = (torch.tensor([[1, 5, 6, 7, 8, 2]]) % vocab).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    return model(**inputs, use_cache=False, return_dict=True)


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for a probe (dropout would break the equalities it looks for), then restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@torch.inference_mode()
def _count_calls(model: nn.Module, blocks: nn.ModuleList) -> int:
    """How many times the entries of `blocks` run in one probe forward pass."""
    calls: list[int] = []
    handles = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in set(blocks)]
    try:
        with _eval_mode(model):
            _forward(model, _probe_inputs(model))
    finally:
        for handle in handles:
            handle.remove()
    return len(calls)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    return a is b or torch.equal(a, b)


def _close(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Equal up to the rounding of a rerun (fp16/bf16 kernels may differ in the last bit)."""
    if a is None or b is None or a.shape != b.shape:
        return False
    tol = 1e-5 if a.dtype in (torch.float32, torch.float64) else 1e-2
    return torch.equal(a, b) or torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


@torch.inference_mode()
def _probe_final_norm(model: nn.Module, stack: _Stack) -> nn.Module | None:
    """The module that maps the last block's output to `last_hidden_state`, from one forward
    pass with hooks: the last block's output `x`, and every call of each module outside the
    block list with its input and output. None when `last_hidden_state` is `x` itself."""
    block_ids = {id(m) for m in stack.blocks.modules()}
    outside = [
        (name, m)
        for name, m in model.named_modules()
        if id(m) not in block_ids and not _encloses(name, stack.path)
    ]
    last_out: list[torch.Tensor | None] = [None]
    calls: list[tuple[int, torch.Tensor | None, torch.Tensor | None]] = []

    def on_block(_m: nn.Module, _args: Any, output: Any) -> None:
        last_out[0] = _first_tensor(output)

    def recorder(index: int):
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any):
            calls.append((index, _block_input(args, kwargs), _first_tensor(output)))

        return hook

    handles = [m.register_forward_hook(on_block) for m in set(stack.blocks)]
    handles += [
        m.register_forward_hook(recorder(i), with_kwargs=True) for i, (_, m) in enumerate(outside)
    ]
    try:
        with _eval_mode(model):
            lhs = _first_tensor(_forward(model, _probe_inputs(model)).last_hidden_state)
    finally:
        for handle in handles:
            handle.remove()
    x = last_out[0]
    if x is None or lhs is None:
        raise FinalNormError(
            f"Cannot find the final norm of {type(model).__name__}: a probe forward pass showed "
            "no last block output or no last_hidden_state."
        )
    if _same(x, lhs):
        return None
    maps = sorted({i for i, inp, out in calls if _same(inp, x) and _same(out, lhs)})
    with _eval_mode(model):
        for i in maps:  # outermost first; checked by applying it alone, as `every` will
            module = outside[i][1]
            if _close(_first_tensor(module(x)), lhs):
                return module
    raise FinalNormError(
        f"Cannot find the final norm of {type(model).__name__}: its last_hidden_state is not "
        "its last block's output, and no single module maps one to the other; "
        "final_norm='every' (and an inner-layer export) cannot be made for it."
    )


def find_final_norm(model: nn.Module) -> nn.Module | None:
    """The norm a model applies after its last block, found from the model itself.

    One probe forward pass (six tokens, cached per model while its block list stays in place)
    with hooks on the block list and on every module outside it: the final norm is the module
    whose input is the last block's output and whose output is `last_hidden_state` (Llama
    `norm`, GPT-2 `ln_f`, Phi `final_layernorm`, ModernBERT `final_norm`, T5 `final_layer_norm`,
    ...). `None` when `last_hidden_state` *is* the last block's output (post-norm encoders such
    as BERT: a model truncated to `l` blocks returns block `l`'s raw output, so `every == last`).
    A model that changes its last block's output in some other way raises `FinalNormError`
    rather than guess. Capture (`final_norm="every"`) and export (`st_modules`) both use it.
    """
    model = base_model(model)
    stack = _stack(model)
    cached = _PROBES.get(model)
    if cached is None or cached.stack is not stack:
        cached = _Probe(stack, _probe_final_norm(model, stack))
        _PROBES[model] = cached
    return cached.final_norm


def final_norm_path(model: nn.Module) -> str | None:
    """The dotted path of `find_final_norm(model)` inside `base_model(model)` (None: no norm)."""
    norm = find_final_norm(model)
    if norm is None:
        return None
    return next(name for name, m in base_model(model).named_modules() if m is norm)


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


def _note_no_final_norm(model: nn.Module) -> None:
    kind = type(model).__name__
    if kind not in _NO_NORM_NOTED:
        _NO_NORM_NOTED.add(kind)
        logger.warning(
            "%s has no final norm (its last hidden state is its last block's output, as in "
            "post-norm encoders): final_norm='every' equals 'last' for it.",
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
    stack = _stack(model)
    n = stack.n_layers
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
    want = set(wanted)
    runs = [0]  # block runs so far: the input of run `l` is layer `l` (shared weights included)

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        index = runs[0]
        runs[0] += 1
        if index in want:
            hidden = _block_input(args, kwargs)
            if hidden is None:
                raise RuntimeError("Could not find the hidden states among a block's inputs.")
            emit(index, hidden)
        if index == stop_at:
            raise _StopForward

    handles = []
    if wanted[0] < n:
        handles = [
            block.register_forward_pre_hook(hook, with_kwargs=True)
            for block in dict.fromkeys(stack.blocks)
        ]
    try:
        outputs = _forward(model, inputs)
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
