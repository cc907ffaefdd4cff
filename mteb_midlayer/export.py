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
from .layers import (
    FinalNormError,
    base_model,
    final_norm_path,
    find_blocks,
    find_final_norm,
    num_layers,
)
from .model import LayerModel
from .st_modules import RawStreamTransformer

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
    """Keep the first `layer` blocks, in place, with the config saying so (so it reloads cut).

    A shared-weight stack (ALBERT: one layer group run L times) keeps its list; the config's
    layer count alone says how many runs the cut model makes."""
    model = base_model(model)
    parent, attr = _block_path(model)
    n = num_layers(model)
    if len(getattr(parent, attr)) == n:
        setattr(parent, attr, nn.ModuleList(list(getattr(parent, attr))[:layer]))
    config = model.config
    for key in _COUNT_KEYS:
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, layer)
    for key, value in list(vars(config).items()):  # per-layer lists, e.g. Qwen2 layer_types
        if isinstance(value, list) and len(value) == n and key != "architectures":
            setattr(config, key, value[:layer])
    return model


def _save_backbone(lm: LayerModel, layer: int, folder: Path) -> None:
    net = truncate(lm.model, layer)
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
    skip_module: str | None = None,
) -> Any:
    """The `SentenceTransformer` of a saved cut backbone, from sentence-transformers' modules.

    `raw`: the first module is `RawStreamTransformer`, skipping the norm at `skip_module` (the
    path `layers.final_norm_path` gave on the full model; None: found on the cut model)."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import (
            Dense,
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:  # pragma: no cover - older releases
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    first = (
        RawStreamTransformer(str(backbone), max_seq_length=max_length, skip_module=skip_module)
        if raw
        else Transformer(str(backbone), max_seq_length=max_length)
    )
    modules: list[nn.Module] = [first]
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
    "last" of a model that has one (`layers.find_final_norm`, which refuses a model whose norm it
    cannot find). Under "every" the cut model's own output is the slice."""
    return setting == "last" and layer < n_layers and find_final_norm(model) is not None


def slice_scores(results: str | Path | None, result: ExportResult) -> pd.DataFrame | None:
    """The task rows of exactly this slice (model, layer, dim, pooling, normalize, final_norm,
    include_prompt) in `results`."""
    if results is None:
        return None
    df = scores_frame(results, model=result.model)
    keep = (
        (df["layer"] == result.layer)
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
    lines = [
        f"# {result.model}, layer {result.layer} of {result.n_layers}, dim {result.dim}",
        "",
        "A layer slice exported by mteb-midlayer (`mteb-midlayer export`): the source model cut "
        f"to its first {result.layer} blocks.",
        "",
        "| | |",
        "|---|---|",
        f"| source model | `{result.model}` |",
        f"| revision | `{result.revision}` |",
        f"| layer | {result.layer} of {result.n_layers} (blocks run: {result.layer}) |",
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
    layer: int,
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
) -> ExportResult:
    """Write layer `layer` (first `dim` coordinates) of `model` to `out` as a sentence-transformers
    folder, checked against `LayerEncoder` on `probe_texts` (fp32, CPU).

    `final_norm`: the slice's setting. "every" exports the plain truncated model (its final
    norm kept), which loads with sentence-transformers alone for every architecture.
    `include_prompt`: False writes `Pooling(include_prompt=False)` (default: the model's own);
    with prompts, the check also runs on the probe texts under each of the model's prompts.

    `results`: a results folder (`sweep --output`); the slice's task scores there go into the
    model card.
    """
    out = Path(out)
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
        encoder = LayerEncoder(
            lm,
            layer=layer,
            dim=dim,
            pooling=pooling,
            normalize=normalize,
            final_norm=final_norm,
        )
    except (ValueError, TypeError) as e:
        raise ExportError(str(e)) from None
    prompts = ["", *sorted(set((lm.prompts or {}).values()))]
    n_layers, hidden = lm.n_layers, lm.hidden_size
    try:
        expected = {p: encoder.embed(list(probe_texts), prompt=p) for p in prompts}
        raw = needs_raw_stream(lm.model, encoder.layer, n_layers, encoder.final_norm)
    except FinalNormError as e:
        raise ExportError(str(e)) from None
    skip_module = final_norm_path(lm.model) if raw else None  # found on the full model
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        _save_backbone(lm, encoder.layer, work / "backbone")
        st = build(
            work / "backbone",
            raw=raw,
            skip_module=skip_module,
            hidden=hidden,
            dim=encoder.dim,
            pooling=encoder.pooling,
            normalize=encoder.normalize,
            max_length=lm.max_length,
            prompts=lm.prompts,
            include_prompt=lm.include_prompt,
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
