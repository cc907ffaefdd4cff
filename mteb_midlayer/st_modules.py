"""sentence-transformers modules that an exported layer slice may need (see `export`).

Loading an export imports this module, so it needs only torch, sentence-transformers and
`layers`: the package's lazy `__init__` keeps mteb and the sweep out and sets no environment
variable (tests/test_init.py checks both).
"""

from __future__ import annotations

from typing import Any, ClassVar

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer.modules import Transformer
except ImportError:  # pragma: no cover - older releases
    from sentence_transformers.models import Transformer
from torch import nn

from .layers import base_model, find_final_norm


def _pass_input(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any):
    hidden = args[0] if args else kwargs.get("hidden_states")
    return output if hidden is None else hidden


def skip_final_norm(model: nn.Module, path: str | None = None) -> str | None:
    """Make the backbone's final norm return its input (weights stay, so the folder saves and
    reloads unchanged). `path`: the norm's dotted path inside the backbone, as recorded at export;
    without it the norm is found from the model itself (`layers.find_final_norm`). Returns the
    path of the skipped norm, None when the model has none."""
    backbone = base_model(model)
    if path is None:
        norm = find_final_norm(backbone)
        if norm is None:
            return None
        path = next(name for name, m in backbone.named_modules() if m is norm)
    backbone.get_submodule(path).register_forward_hook(_pass_input, with_kwargs=True)
    return path


class RawStreamTransformer(Transformer):
    """A `Transformer` whose backbone skips its final norm.

    mteb-midlayer's convention (METRICS.md): an inner layer `l < L` is the raw output of block
    `l`. A decoder cut to `l` blocks would apply its final norm (GPT-2 `ln_f`, Llama `norm`, Phi
    `final_layernorm`) to it; this module keeps the cut model's output raw, so the export equals
    `LayerEncoder`. `skip_module` (saved in `sentence_bert_config.json`) is that norm's path inside
    the backbone, found on the full model at export time, so a cut with no block left still
    knows it.
    """

    config_keys: ClassVar[list[str]] = [*getattr(Transformer, "config_keys", []), "skip_module"]

    def __init__(self, *args: Any, skip_module: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        net = getattr(self, "auto_model", None) or self.model  # the name changed in ST 6
        self.skip_module = skip_final_norm(net, skip_module)
        if self.skip_module is None:
            raise ValueError(f"{type(net).__name__} has no final norm to skip.")
