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

OUT is built in a work folder beside it (never inside it) and renamed into place.
`overwrite` replaces only a previous export (`modules.json` and our README card), never
another folder, the current directory or one holding it, a results folder, or the model
being exported (`_check_out`). Work folders of killed exports are removed by the next export
into the same parent once their writer is gone (`tempfiles.clean_temp_folders`).

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

import os
import shutil
import string
import unicodedata
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
from .layers import (
    FinalNormError,
    base_model,
    final_norm_path,
    find_blocks,
    find_final_norm,
    num_layers,
)
from .model import LayerModel
from .spec import EMBEDDED_ALIAS, ModelSpec, local_revision_label
from .st_modules import RawStreamTransformer
from .tempfiles import OUTPUT_FOLDERS, clean_temp_folders, make_temp_folder

#: our pooling name -> sentence-transformers `Pooling.pooling_mode` (every mode we pool has one)
ST_POOLING = {ours: st for st, ours in pooling_modes.ST_POOLING.items()}
#: Texts every export is checked on (short, long, punctuation, repeated words).
_PROBE_TEXTS = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog, twice; then it sleeps.",
    "Layer slices are cheaper to run than the whole model.",
    "ok",
)
#: Largest absolute difference from `LayerEncoder` an export may show on the probes.
_CHECK_ATOL = 1e-4
#: The sentence every export's README.md card opens with: with `modules.json`, what marks a
#: folder as a previous export that `overwrite` may replace.
_CARD_MARK = "A layer slice exported by mteb-midlayer"
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

    def summary(self) -> str:
        """What was written, in a line (and how to load a decoder slice that needs us)."""
        what = f"layers {self.fuse}" if self.fuse else f"layer {self.layer}"
        line = (
            f"wrote {self.path}: {self.model} {what}/{self.n_layers}, "
            f"dim {self.dim}/{self.hidden_size}, pooling={self.pooling}, "
            f"normalize={self.normalize}, final_norm={self.final_norm} "
            f"(max |diff| vs LayerEncoder {self.max_abs_diff:.1e})"
        )
        if self.needs_mteb_midlayer:
            line += (
                "\nnote: this decoder slice skips the final norm through "
                "mteb_midlayer.st_modules.RawStreamTransformer: load it with mteb_midlayer "
                "installed and SentenceTransformer(path, trust_remote_code=True)"
            )
        return line


def _is_export(folder: Path) -> bool:
    """Whether `folder` holds a previous export: `modules.json` and our README.md card."""
    try:
        card = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return (folder / "modules.json").is_file() and _CARD_MARK in card


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_out(
    out: Path,
    overwrite: bool,
    *,
    results: str | Path | None = None,
    source: str | Path | None = None,
) -> Path:
    """Where OUT really is (symlinks resolved), once it is safe to write: absent, an empty
    folder, or (with `overwrite`) a previous export. Never the current directory or one holding
    it, nor a folder holding `results` or the `source` model. Else a one-line `ExportError`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder.")
    target = out.resolve()
    if _inside(Path.cwd().resolve(), target):
        here = target == Path.cwd().resolve()
        what = "is the current directory" if here else "holds the current directory"
        raise ExportError(f"{out} {what}: export into a new folder instead, e.g. {out / 'slice'}.")
    held = (("results folder", results), ("model", source))
    for what, path in held:
        if path is None or str(path) == EMBEDDED_ALIAS or not Path(path).exists():
            continue
        if _inside(Path(path).resolve(), target):
            raise ExportError(f"{out} is or holds the {what} {path}: export to another folder.")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} exists and is not empty; pass --overwrite to replace it.")
        if not _is_export(target):
            kind = (
                "a results folder (sweep --output)"
                if any((target / f).is_dir() for f in OUTPUT_FOLDERS)
                else "not a previous export (no modules.json and mteb-midlayer README.md)"
            )
            raise ExportError(
                f"{out} is {kind}: --overwrite replaces only a previous export; "
                "name a new or empty folder."
            )
    return target


def _move_into_place(built: Path, target: Path, work: Path) -> None:
    """Rename `built` to `target`; a previous export there is moved into `work` first (and
    back if the rename fails), so a kill leaves the old or the new one, never neither."""
    if not target.exists():
        os.rename(built, target)
        return
    previous = work / "previous"
    os.rename(target, previous)
    try:
        os.rename(built, target)
    except BaseException:
        os.rename(previous, target)
        raise


_INERT_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: ASCII punctuation escaped in card text; '-' and '/' only act at a line's start (lists,
#: rules) or after a scheme's ':' (autolinks), and card text never starts a line.
_MARKDOWN_ACTIVE = frozenset(string.punctuation) - {"-", "/"}


def markdown_inert(value: object) -> str:
    """`value` as Markdown text (inside a line) that renders as written and does nothing else:
    ASCII punctuation backslash-escaped (no code span, emphasis, link, autolink, HTML tag or
    table cell can start), control, format and line-separator characters shown as `\\uXXXX`."""
    visible = "".join(
        ascii(c)[1:-1] if unicodedata.category(c) in _INERT_CATEGORIES else c for c in str(value)
    )
    return "".join("\\" + c if c in _MARKDOWN_ACTIVE else c for c in visible)


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
    # No chat template: sentence-transformers >= 6 renders text through one when the tokenizer
    # has it (SmolLM2's adds a system prompt), while `LayerEncoder` embeds the text as written.
    template, tok.chat_template = getattr(tok, "chat_template", None), None
    try:
        tok.save_pretrained(folder)
    finally:
        tok.chat_template = template
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)


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
    fuse: Sequence[int] = (),
) -> Any:
    """The `SentenceTransformer` of a saved cut backbone, from sentence-transformers' modules.

    `raw`: the first module is `RawStreamTransformer`, skipping the norm at `skip_module` (the
    path `layers.final_norm_path` gave on the full model; None: found on the cut model).
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

    first = (
        RawStreamTransformer(str(backbone), max_seq_length=max_length, skip_module=skip_module)
        if raw
        else Transformer(str(backbone), max_seq_length=max_length)
    )
    modules: list[nn.Module] = [first]
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


def _needs_raw_stream(model: nn.Module, layer: int, n_layers: int, setting: str) -> bool:
    """Whether the cut model must skip its final norm to give the slice: an inner layer under
    "last" of a model that has one (`layers.find_final_norm`, which refuses a model whose norm it
    cannot find). Under "every" the cut model's own output is the slice."""
    return setting == "last" and layer < n_layers and find_final_norm(model) is not None


def _slice_scores(
    results: str | Path | None, result: ExportResult, revision: str | None = None
) -> pd.DataFrame | None:
    """The task rows of exactly this slice (model, layer, fuse, dim, pooling, normalize,
    final_norm, include_prompt) in `results`, under `revision` (default: the export's)."""
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
    revision = revision or result.revision
    if revision is not None:
        keep &= df["revision"] == revision
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
        f"# {markdown_inert(result.model)}, {what} of {result.n_layers}, dim {result.dim}",
        "",
        f"{_CARD_MARK} (`mteb-midlayer export`): the source model cut "
        f"to its first {result.layer} blocks.{fused}",
        "",
        "| | |",
        "|---|---|",
        f"| source model | {markdown_inert(result.model)} |",
        f"| revision | {markdown_inert(result.revision)} |",
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
            task, kind = markdown_inert(row.task), markdown_inert(row.task_type)
            lines.append(f"| {task} | {kind} | {row.score:.4f} |")
        lines += ["", f"Mean over {len(scores)} tasks: {scores['score'].mean():.4f}", ""]
    return "\n".join(lines)


#: The keyword form of the model options (`ModelSpec` fields) that `export` takes besides `spec`.
MODEL_KEYWORDS = ("name", "revision", "max_length", "trust_remote_code", "include_prompt")


def export(
    model: str | Path | None,
    out: str | Path,
    *,
    spec: ModelSpec | None = None,
    layer: int | None = None,
    fuse: str | Sequence[int] | None = None,
    dim: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    final_norm: str = "last",
    overwrite: bool = False,
    results: str | Path | None = None,
    **options: Any,
) -> ExportResult:
    """Write layer `layer` (first `dim` coordinates) of `model` to `out` as a sentence-transformers
    folder, checked against `LayerEncoder` on `_PROBE_TEXTS` (fp32, CPU).

    Model options come as a `ModelSpec` (`spec=`; its device and dtype are not used: an export
    is built and checked in fp32 on the CPU) or as the keywords `name`, `revision`,
    `max_length`, `trust_remote_code`, `include_prompt` (`MODEL_KEYWORDS`), never both
    contradicting (`SpecConflictError`). `include_prompt`: False writes
    `Pooling(include_prompt=False)` (default: the model's own); with prompts, the check also
    runs on the probe texts under each of the model's prompts.

    `final_norm`: the slice's setting. "every" exports the plain truncated model (its final
    norm kept), which loads with sentence-transformers alone for every architecture.
    `results`: a results folder (`sweep --output`); the slice's task scores there go into the
    model card. `expected_revision` (keyword): the revision the results name; a model that
    loads with another (a local folder whose files changed) is refused before anything is
    written. `probe_texts` (keyword): other texts to check on.
    `overwrite` replaces a previous export only (`_check_out`).
    `fuse`: a fusion of layers instead of `layer` (a label such as "0+6" or "4-6", or the
    layers): equal to `LayerEncoder(model, layers=[...])` (see the module's docstring).
    """
    expected_revision = options.pop("expected_revision", None)
    probe_texts = list(options.pop("probe_texts", _PROBE_TEXTS))
    unknown = sorted(set(options) - set(MODEL_KEYWORDS))
    if unknown:
        raise TypeError(f"export() got unexpected keyword arguments: {', '.join(unknown)}")
    out = Path(out)
    if (layer is None) == (fuse is None or fuse == ""):
        raise ExportError("Give either a layer or a fusion (fuse='0+6'), not both or neither.")
    source = model if isinstance(model, (str, Path)) else None
    if source is None and spec is not None:
        source = spec.source
    target = _check_out(out, overwrite, results=results, source=source)
    lm = _load_on_cpu(model, spec, options, expected_revision)
    encoder = _slice_encoder(lm, layer, fuse, dim, pooling, normalize, final_norm)
    shape = (lm.n_layers, lm.hidden_size)  # of the full model (the export cuts it in place)
    try:
        expected = {p: encoder.embed(probe_texts, prompt=p) for p in _probe_prompts(lm)}
        raw = _needs_raw_stream(lm.model, encoder.layer, shape[0], encoder.final_norm)
    except FinalNormError as e:
        raise ExportError(str(e)) from None
    if encoder.layers and encoder.final_norm == "every" and find_final_norm(lm.model) is not None:
        raise ExportError(
            f"cannot export fusion {encoder.fuse} under final_norm='every': each fused layer "
            "would need the model's final norm, which WeightedLayerPooling cannot apply."
        )
    skip_module = final_norm_path(lm.model) if raw else None  # found on the full model
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_temp_folders(target.parent)  # what killed exports left (never a live one's)
    work = make_temp_folder(target)  # beside OUT, never inside it
    try:
        st, diff = _build_checked(
            lm, encoder, work, probe_texts, expected, raw=raw, skip_module=skip_module
        )
        result = _result(out, lm, encoder, shape, raw=raw, diff=diff)
        final = work / "model"
        st.save(str(final), create_model_card=False)
        card = model_card(result, _slice_scores(results, result, expected_revision))
        (final / "README.md").write_text(card, encoding="utf-8")
        _check_out(out, overwrite, results=results, source=source)  # nothing changed meanwhile
        _move_into_place(final, target, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _load_on_cpu(
    model: Any, spec: ModelSpec | None, options: dict[str, Any], expected_revision: str | None
) -> LayerModel:
    """The model in fp32 on the CPU; refused when it does not load as `expected_revision`."""
    if spec is not None:
        spec = spec.replace(device=None, dtype=None)
    lm = LayerModel.load(model, spec=spec, device="cpu", dtype="float32", **options)
    if expected_revision is not None and expected_revision not in (
        lm.revision,
        local_revision_label(lm.revision),  # a local copy labelled with the Hub commit
    ):
        raise ExportError(
            f"{model} loads as revision {lm.revision!r}, not the results' {expected_revision!r} "
            "(a local folder's files changed?): pass --source the folder that was swept."
        )
    return lm


def _slice_encoder(
    lm: LayerModel,
    layer: int | None,
    fuse: str | Sequence[int] | None,
    dim: int | None,
    pooling: str | None,
    normalize: bool | None,
    final_norm: str,
) -> LayerEncoder:
    """The `LayerEncoder` of the slice: what the export must equal."""
    try:
        fused: Sequence[int] | None = None
        if fuse is not None and fuse != "":
            fused = parse_label(fuse if isinstance(fuse, str) else fusion_label(fuse), lm.n_layers)
        return LayerEncoder(
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


def _probe_prompts(lm: LayerModel) -> list[str]:
    """No prompt, then each of the model's prompts: the export is checked under each."""
    return ["", *sorted(set((lm.prompts or {}).values()))]


def _build_checked(
    lm: LayerModel,
    encoder: LayerEncoder,
    work: Path,
    probe_texts: Sequence[str],
    expected: dict[str, np.ndarray],
    *,
    raw: bool,
    skip_module: str | None,
) -> tuple[Any, float]:
    """The slice's `SentenceTransformer`, built in `work` from the cut backbone, and its largest
    difference from `expected` (the encoder's vectors of `probe_texts`, per prompt); refused
    when that is more than `_CHECK_ATOL`."""
    _save_backbone(lm, encoder.layer, work / "backbone", all_layers=bool(encoder.layers))
    st = build(
        work / "backbone",
        raw=raw,
        skip_module=skip_module,
        hidden=lm.hidden_size,
        dim=encoder.dim,
        pooling=encoder.pooling,
        normalize=encoder.normalize,
        max_length=lm.max_length,
        prompts=lm.prompts,
        include_prompt=lm.include_prompt,
        fuse=encoder.layers,
    )
    diff = max(_max_diff(st, probe_texts, p, want) for p, want in expected.items())
    if not diff <= _CHECK_ATOL:
        raise ExportError(
            f"unsupported architecture {type(lm.model).__name__}: the exported slice differs "
            f"from LayerEncoder by {diff:.2e} (> {_CHECK_ATOL:g}) on probe texts."
        )
    return st, diff


def _result(
    out: Path,
    lm: LayerModel,
    encoder: LayerEncoder,
    shape: tuple[int, int],
    *,
    raw: bool,
    diff: float,
) -> ExportResult:
    """What `export` returns; `shape`: the full model's (L, hidden size)."""
    return ExportResult(
        path=out,
        model=lm.name,
        revision=lm.revision,
        layer=encoder.layer,
        n_layers=shape[0],
        dim=encoder.dim,
        hidden_size=shape[1],
        pooling=encoder.pooling,
        normalize=encoder.normalize,
        max_length=lm.max_length,
        needs_mteb_midlayer=raw,
        max_abs_diff=diff,
        final_norm=encoder.final_norm,
        include_prompt=not lm.excludes_prompt(),
        fuse=encoder.fuse,
    )


def _max_diff(st: Any, texts: Sequence[str], prompt: str, want: np.ndarray) -> float:
    """Largest |SentenceTransformer.encode(texts, prompt=prompt) - want|."""
    got = st.encode(
        list(texts), prompt=prompt or None, convert_to_numpy=True, batch_size=len(texts)
    )
    return float(np.max(np.abs(got - want)))
