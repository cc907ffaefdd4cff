"""Export one layer slice of a model as a smaller sentence-transformers model folder.

The folder is assembled from sentence-transformers' own modules and written by
`SentenceTransformer.save` (no hand-written configuration): the backbone cut to its first
`layer` blocks, `Pooling`, an identity-slice `Dense` when `dim` is below the hidden size, and
`Normalize` when set. `SentenceTransformer(OUT).encode(texts)` then equals
`LayerEncoder(MODEL, layer=..., dim=..., pooling=..., normalize=...).embed(texts)`.

Convention (`layers.py`): an inner layer is the raw block output. A cut backbone with a final
norm (GPT-2, Llama, ...) would apply it, so such exports use `st_modules.RawStreamTransformer`,
and loading them needs `mteb_midlayer` installed; post-norm encoders (BERT family), the last
layer, and every `final_norm="every"` slice (which *is* the cut model's output) load with
sentence-transformers alone. Every export is checked against `LayerEncoder` on
probe texts before it is moved into place; nothing half-written is left behind.

A fusion of layers (`fusion.py`, `export(..., fuse="0+6")`) cuts the backbone to its deepest
layer's blocks, saves its config with `output_hidden_states` on, and puts sentence-transformers'
own `WeightedLayerPooling` before `Pooling`: weight 1 on each fused layer and 0 on the others
from the shallowest fused layer on, so its token states are the layers' mean and, for every
linear pooling, the pooled vector is the mean of the layers' pooled vectors (`LayerEncoder(...,
layers=[...])`). Under our "last" convention the cut model's hidden states are the raw block
outputs (its final norm skipped by `RawStreamTransformer` for an inner deepest layer), so no
custom module is needed; a fusion under `final_norm="every"` of a model with a final norm is
refused (each fused layer would need the norm, which `WeightedLayerPooling` cannot apply).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import pooling as pooling_modes
from .encoder import LayerEncoder
from .frames import scores_frame
from .fusion import NO_FUSION, fusion_label, parse_label
from .layers import base_model, find_blocks
from .model import LayerModel
from .st_modules import RawStreamTransformer, final_norm
from .st_modules import final_norm as model_final_norm  # `final_norm` is also an option

#: our pooling name -> sentence-transformers `Pooling.pooling_mode` (every mode we pool has one)
ST_POOLING = {ours: st for st, ours in pooling_modes.ST_POOLING.items()}
#: Texts every export is checked on (short, long, punctuation, repeated words).
PROBE_TEXTS = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog, twice; then it sleeps.",
    "Layer slices are cheaper to run than the whole model.",
    "ok",
)
#: Largest absolute difference from `LayerEncoder` an export may show on the probes.
CHECK_ATOL = 1e-4
_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


class ExportError(ValueError):
    """An export that cannot be made as asked (bad layer/dim, existing folder, architecture)."""


@dataclass(frozen=True)
class ExportResult:
    """Where the slice went and what it is."""

    path: Path
    model: str
    revision: str | None
    layer: int
    n_layers: int
    dim: int
    hidden_size: int
    pooling: str
    normalize: bool
    max_length: int
    needs_mteb_midlayer: bool
    max_abs_diff: float
    final_norm: str = "last"
    #: False: the folder has prompts and its Pooling leaves their tokens out
    #: (`include_prompt=False`); as the results frame's `include_prompt` column.
    include_prompt: bool = True
    #: a fusion's label ("0+6"; `layer` is then its deepest layer), "" for one layer
    fuse: str = NO_FUSION


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty folder (or a file) unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite to replace it.")


def _block_path(model: nn.Module) -> tuple[nn.Module, str]:
    """`(parent, attribute)` that holds the block list."""
    blocks = find_blocks(model)
    for name, module in model.named_modules():
        if module is blocks:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr
    raise ExportError(
        f"Cannot locate the block list of {type(model).__name__}."
    )  # pragma: no cover


def truncate(model: nn.Module, layer: int) -> nn.Module:
    """Keep the first `layer` blocks, in place, with the config saying so (so it reloads cut)."""
    model = base_model(model)
    parent, attr = _block_path(model)
    n = len(getattr(parent, attr))
    setattr(parent, attr, nn.ModuleList(list(getattr(parent, attr))[:layer]))
    config = model.config
    for key in _COUNT_KEYS:
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, layer)
    for key, value in list(vars(config).items()):  # per-layer lists, e.g. Qwen2 layer_types
        if isinstance(value, list) and len(value) == n and key != "architectures":
            setattr(config, key, value[:layer])
    return model


def _save_backbone(lm: LayerModel, layer: int, folder: Path, all_layers: bool = False) -> None:
    net = truncate(lm.model, layer)
    if all_layers:  # sentence-transformers then passes every layer on (`all_layer_embeddings`)
        net.config.output_hidden_states = True
    net.save_pretrained(folder, safe_serialization=True)
    tok = lm.tokenizer
    # Our forward pass: right padding, no token_type_ids (GPT-2 would add wte[0] for them).
    tok.padding_side = "right"
    tok.model_input_names = ["input_ids", "attention_mask"]
    tok.model_max_length = lm.max_length
    tok.save_pretrained(folder)


def build(
    backbone: Path,
    *,
    raw: bool,
    hidden: int,
    dim: int,
    pooling: str,
    normalize: bool,
    max_length: int,
    prompts: dict[str, str] | None,
    include_prompt: bool = True,
    fuse: Sequence[int] = (),
) -> Any:
    """The `SentenceTransformer` of a saved cut backbone, from sentence-transformers' modules.

    `fuse`: the fused layers (the backbone is cut to the deepest and returns every layer):
    a `WeightedLayerPooling` with equal weights on them goes before `Pooling`."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import (
            Dense,
            Normalize,
            Pooling,
            Transformer,
            WeightedLayerPooling,
        )
    except ImportError:  # pragma: no cover - older releases
        from sentence_transformers.models import (
            Dense,
            Normalize,
            Pooling,
            Transformer,
            WeightedLayerPooling,
        )

    cls = RawStreamTransformer if raw else Transformer
    modules: list[nn.Module] = [cls(str(backbone), max_seq_length=max_length)]
    if fuse:
        start, deepest = min(fuse), max(fuse)
        weights = [1.0 if layer in fuse else 0.0 for layer in range(start, deepest + 1)]
        modules.append(
            WeightedLayerPooling(
                hidden,
                num_hidden_layers=deepest,
                layer_start=start,
                layer_weights=nn.Parameter(torch.tensor(weights), requires_grad=False),
            )
        )
    modules.append(Pooling(hidden, pooling_mode=ST_POOLING[pooling], include_prompt=include_prompt))
    if dim < hidden:
        modules.append(
            Dense(
                hidden,
                dim,
                bias=False,
                activation_function=nn.Identity(),
                init_weight=torch.eye(dim, hidden),
            )
        )
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu", prompts=prompts or None)


def needs_raw_stream(model: nn.Module, layer: int, n_layers: int, setting: str) -> bool:
    """Whether the cut model must skip its final norm to give the slice: an inner layer under
    "last" of a model that has one. Under "every" the cut model's own output is the slice."""
    return setting == "last" and layer < n_layers and final_norm(model) is not None


def slice_scores(results: str | Path | None, result: ExportResult) -> pd.DataFrame | None:
    """The task rows of exactly this slice (model, layer, fuse, dim, pooling, normalize,
    final_norm, include_prompt) in `results`."""
    if results is None:
        return None
    df = scores_frame(results, model=result.model)
    keep = (
        (df["layer"] == result.layer)
        & (df["fuse"] == result.fuse)
        & (df["dim"] == result.dim)
        & (df["pooling"] == result.pooling)
        & (df["normalize"] == result.normalize)
        & (df["final_norm"] == result.final_norm)
        & (df["include_prompt"] == result.include_prompt)
    )
    if result.revision is not None:
        keep &= df["revision"] == result.revision
    return df[keep]


def model_card(result: ExportResult, scores: pd.DataFrame | None = None) -> str:
    """README.md of the folder: where the slice comes from, how it is configured, its scores."""
    what = f"layers {result.fuse} (fused)" if result.fuse else f"layer {result.layer}"
    fused = (
        f" Layers {result.fuse} are averaged with equal weights (sentence-transformers' "
        "`WeightedLayerPooling`) before pooling."
        if result.fuse
        else ""
    )
    lines = [
        f"# {result.model}, {what} of {result.n_layers}, dim {result.dim}",
        "",
        "A layer slice exported by mteb-midlayer (`mteb-midlayer export`): the source model cut "
        f"to its first {result.layer} blocks.{fused}",
        "",
        "| | |",
        "|---|---|",
        f"| source model | `{result.model}` |",
        f"| revision | `{result.revision}` |",
        f"| layer | {result.fuse + ' (fused)' if result.fuse else result.layer} of "
        f"{result.n_layers} (blocks run: {result.layer}) |",
        f"| dim | {result.dim} of {result.hidden_size} |",
        f"| pooling | {result.pooling} |",
        f"| normalize | {result.normalize} |",
        f"| final norm | {result.final_norm} |",
        f"| prompt tokens pooled | {result.include_prompt} |",
        f"| max length | {result.max_length} tokens |",
        f"| max abs difference from LayerEncoder (probe texts) | {result.max_abs_diff:.1e} |",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer('PATH'"
        + (", trust_remote_code=True)" if result.needs_mteb_midlayer else ")"),
        "embeddings = model.encode(['A sentence.'])",
        "```",
        "",
    ]
    if result.needs_mteb_midlayer:
        lines += [
            "Loading needs `pip install mteb-midlayer`: the first module is "
            "`mteb_midlayer.st_modules.RawStreamTransformer`, which skips the backbone's final "
            "norm so that an inner layer is the raw block output (mteb-midlayer's convention).",
            "",
        ]
    if scores is not None and not scores.empty:
        lines += [
            "## Scores of this slice (from the sweep's results)",
            "",
            "| task | type | main score |",
            "|---|---|---|",
        ]
        for row in scores.itertuples():
            lines.append(f"| {row.task} | {row.task_type} | {row.score:.4f} |")
        lines += ["", f"Mean over {len(scores)} tasks: {scores['score'].mean():.4f}", ""]
    return "\n".join(lines)


def export(
    model: str | Path,
    out: str | Path,
    *,
    layer: int | None = None,
    dim: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
    overwrite: bool = False,
    name: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    results: str | Path | None = None,
    probe_texts: Sequence[str] = PROBE_TEXTS,
    final_norm: str = "last",
    include_prompt: bool | None = None,
    fuse: str | Sequence[int] | None = None,
) -> ExportResult:
    """Write layer `layer` (first `dim` coordinates) of `model` to `out` as a sentence-transformers
    folder, checked against `LayerEncoder` on `probe_texts` (fp32, CPU).

    `final_norm`: the slice's setting. "every" exports the plain truncated model (its final
    norm kept), which loads with sentence-transformers alone for every architecture.
    `include_prompt`: False writes `Pooling(include_prompt=False)` (default: the model's own);
    with prompts, the check also runs on the probe texts under each of the model's prompts.

    `results`: a results folder (`sweep --output`); the slice's task scores there go into the
    model card.
    `fuse`: a fusion of layers instead of `layer` (a label such as "0+6" or "4-6", or the
    layers): equal to `LayerEncoder(model, layers=[...])` (see the module's docstring).
    """
    out = Path(out)
    if (layer is None) == (fuse is None or fuse == ""):
        raise ExportError("Give either a layer or a fusion (fuse='0+6'), not both or neither.")
    check_out(out, overwrite)
    lm = LayerModel.load(
        model,
        name=name,
        revision=revision,
        device="cpu",
        dtype="float32",
        max_length=max_length,
        trust_remote_code=trust_remote_code,
        include_prompt=include_prompt,
    )
    try:
        fused: Sequence[int] | None = None
        if fuse is not None and fuse != "":
            fused = parse_label(fuse if isinstance(fuse, str) else fusion_label(fuse), lm.n_layers)
        encoder = LayerEncoder(
            lm,
            layer=-1 if layer is None else layer,
            layers=fused,
            dim=dim,
            pooling=pooling,
            normalize=normalize,
            final_norm=final_norm,
        )
    except (ValueError, TypeError) as e:
        raise ExportError(str(e)) from None
    prompts = ["", *sorted(set((lm.prompts or {}).values()))]
    expected = {p: encoder.embed(list(probe_texts), prompt=p) for p in prompts}
    n_layers, hidden = lm.n_layers, lm.hidden_size
    raw = needs_raw_stream(lm.model, encoder.layer, n_layers, encoder.final_norm)
    if encoder.layers and encoder.final_norm == "every" and model_final_norm(lm.model) is not None:
        raise ExportError(
            f"cannot export fusion {encoder.fuse} under final_norm='every': each fused layer "
            "would need the model's final norm, which WeightedLayerPooling cannot apply."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        _save_backbone(lm, encoder.layer, work / "backbone", all_layers=bool(encoder.layers))
        st = build(
            work / "backbone",
            raw=raw,
            hidden=hidden,
            dim=encoder.dim,
            pooling=encoder.pooling,
            normalize=encoder.normalize,
            max_length=lm.max_length,
            prompts=lm.prompts,
            include_prompt=lm.include_prompt,
            fuse=encoder.layers,
        )
        diff = max(_max_diff(st, probe_texts, p, want) for p, want in expected.items())
        if not diff <= CHECK_ATOL:
            raise ExportError(
                f"unsupported architecture {type(lm.model).__name__}: the exported slice differs "
                f"from LayerEncoder by {diff:.2e} (> {CHECK_ATOL:g}) on probe texts."
            )
        result = ExportResult(
            path=out,
            model=lm.name,
            revision=lm.revision,
            layer=encoder.layer,
            n_layers=n_layers,
            dim=encoder.dim,
            hidden_size=hidden,
            pooling=encoder.pooling,
            normalize=encoder.normalize,
            max_length=lm.max_length,
            needs_mteb_midlayer=raw,
            max_abs_diff=diff,
            final_norm=encoder.final_norm,
            include_prompt=not lm.excludes_prompt(),
            fuse=encoder.fuse,
        )
        final = work / "model"
        st.save(str(final), create_model_card=False)
        (final / "README.md").write_text(model_card(result, slice_scores(results, result)))
        if out.exists():
            shutil.rmtree(out)
        final.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _max_diff(st: Any, texts: Sequence[str], prompt: str, want: np.ndarray) -> float:
    """Largest |SentenceTransformer.encode(texts, prompt=prompt) - want|."""
    got = st.encode(
        list(texts), prompt=prompt or None, convert_to_numpy=True, batch_size=len(texts)
    )
    return float(np.max(np.abs(got - want)))
