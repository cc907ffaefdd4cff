"""sentence-transformers modules that an exported layer slice may need (see `export`).

Kept free of the rest of the package so that loading an exported folder stays cheap.
"""

from __future__ import annotations

from typing import Any

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer.modules import Transformer
except ImportError:  # pragma: no cover - older releases
    from sentence_transformers.models import Transformer
from torch import nn

#: Attribute names, on a backbone, of a norm applied after the last block.
FINAL_NORM_NAMES = ("ln_f", "norm", "final_layer_norm", "norm_f", "final_norm", "final_layernorm")


def final_norm(model: nn.Module) -> tuple[nn.Module, str] | None:
    """`(owner, name)` of the backbone's final norm, or None (post-norm encoders like BERT)."""
    backbone = getattr(model, "base_model", model)
    for name in FINAL_NORM_NAMES:
        module = getattr(backbone, name, None)
        if isinstance(module, nn.Module) and "norm" in type(module).__name__.lower():
            return backbone, name
    return None


def _pass_input(_module: nn.Module, args: tuple[Any, ...], _output: Any) -> Any:
    return args[0]


def skip_final_norm(model: nn.Module) -> bool:
    """Make the backbone's final norm return its input (weights stay, so the folder saves and
    reloads unchanged). True when there was one."""
    found = final_norm(model)
    if found is None:
        return False
    owner, name = found
    getattr(owner, name).register_forward_hook(_pass_input)
    return True


class RawStreamTransformer(Transformer):
    """A `Transformer` whose backbone skips its final norm.

    mteb-midlayer's convention (METRICS.md): an inner layer `l < L` is the raw output of block
    `l`. A decoder cut to `l` blocks would apply its final norm (GPT-2 `ln_f`, Llama `norm`) to
    it; this module keeps the cut model's output raw, so the export equals `LayerEncoder`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        net = getattr(self, "auto_model", None) or self.model  # the name changed in ST 6
        if not skip_final_norm(net):
            raise ValueError(f"{type(net).__name__} has no final norm to skip.")
