"""`LayerEncoder`: one layer (or a 2D-Matryoshka `(layer, dim)` slice) of a model as an mteb model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder, get_prompt
from mteb.models.model_meta import ScoringFunction

from .batching import check_batch_limits
from .fusion import NO_FUSION, check_fusable, fuse_vectors, fusion_label
from .layers import check_final_norms, resolve_layer
from .model import LayerModel, check_texts, warn_constant_pooling
from .pooling import check_pooling
from .search import attach_search_backend
from .spec import ModelSpec, excludes_prompt, prompts_hash

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import PromptType
    from torch.utils.data import DataLoader


def resolve_dim(dim: int | None, hidden_size: int) -> int:
    """`None` means the full width; anything outside `1..hidden_size` is a `ValueError`."""
    if dim is None:
        return hidden_size
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int or None, got {type(dim).__name__}")
    if not 1 <= dim <= hidden_size:
        raise ValueError(f"dim {dim} is out of range: this model's hidden size is {hidden_size}.")
    return dim


def slice_and_normalize(x: torch.Tensor | np.ndarray, dim: int, normalize: bool) -> np.ndarray:
    """First `dim` coordinates, then (optionally) L2 normalisation, as float32 numpy."""
    arr = np.asarray(x[:, :dim] if not isinstance(x, torch.Tensor) else x[:, :dim].cpu().numpy())
    arr = arr.astype(np.float32, copy=False)
    if normalize:
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        arr = arr / np.maximum(norms, 1e-12)
    return arr


def experiment_kwargs(
    layer: int,
    dim: int,
    pooling: str,
    normalize: bool,
    max_length: int | None = None,
    dtype: str | None = None,
    prompts: dict[str, str] | None = None,
    final_norm: str = "last",
    include_prompt: bool = True,
    fuse: str = NO_FUSION,
) -> dict[str, Any]:
    """What tells one slice of a model from another in mteb's result folders.

    Short values only (mteb hashes folder names over 200 characters): the prompts go in as an
    8-hex hash; the model's weights are in the revision folder above; the task data's
    fingerprint is in the run identity beside each result (`results.py`). `final_norm` is
    named only when it is not the default "last", so folders written before it keep their names;
    so is `include_prompt` (only `False`, given when prompts are used and their tokens are left
    out of the vectors: `spec.excludes_prompt`). `fuse`: a fusion's label (`fusion.py`, e.g.
    "0+6", its `layer` being the deepest), named only for fusions.
    """
    out: dict[str, Any] = {"layer": layer}
    if fuse:
        out["fuse"] = fuse
    out |= {"dim": dim, "pooling": pooling, "normalize": normalize}
    if final_norm != "last":
        out["final_norm"] = final_norm
    if max_length is not None:
        out |= {"max_length": max_length, "dtype": dtype, "prompts": prompts_hash(prompts)}
    if not include_prompt:
        out["include_prompt"] = False
    return out


def check_final_norm(final_norm: str) -> str:
    """One final-norm setting ("last" or "every"), else a `ValueError` naming the choices."""
    norms = check_final_norms(final_norm)
    if len(norms) != 1:
        raise ValueError(f"final_norm must be one setting, got {final_norm!r}.")
    return norms[0]


def slice_meta(
    lm: LayerModel,
    layer: int,
    dim: int,
    pooling: str,
    normalize: bool,
    loader: Any = None,
    prompts: dict[str, str] | None = None,
    final_norm: str = "last",
    fuse: str = NO_FUSION,
) -> ModelMeta:
    """`ModelMeta` of the model's resolved spec, with the slice in `experiment_kwargs`."""
    spec = lm.current_spec()
    kwargs = experiment_kwargs(
        layer,
        dim,
        pooling,
        normalize,
        spec.max_length,
        spec.dtype,
        prompts,
        final_norm,
        include_prompt=not excludes_prompt(spec.include_prompt, prompts),
        fuse=fuse,
    )
    return ModelMeta.create_empty(
        overwrites=dict(
            name=spec.name,
            revision=spec.revision or "no_revision_available",
            loader=loader,
            n_parameters=lm.n_parameters,
            max_tokens=spec.max_length,
            embed_dim=dim,
            similarity_fn_name=ScoringFunction.COSINE,
            framework=["PyTorch"],
            use_instructions=bool(lm.prompts),
            open_weights=True,
            experiment_kwargs=kwargs,
        )
    )


def resolve_prompt(
    prompts: dict[str, str] | None, task_metadata: TaskMetadata, prompt_type: PromptType | None
) -> str:
    """The prompt text mteb's rules pick for this task / prompt type ('' when none)."""
    return get_prompt(prompts, task_metadata, prompt_type) or ""


def loader_texts(inputs: DataLoader) -> list[str]:
    """The texts of an mteb batch loader, in order."""
    return [text for batch in inputs for text in batch["text"]]


class LayerEncoder(AbsEncoder):
    """Embed texts with the hidden state of one layer of `model`.

    Model options come as a `ModelSpec` (`spec=`) or as the keywords below, never both
    contradicting (`SpecConflictError`); an already loaded `LayerModel` is shared as is.

    `layer`: 0 = embedding output, L = last block, negatives count from the end.
    `dim`: keep the first `dim` coordinates (2D Matryoshka).
    `pooling`: mean | cls | last | max | weightedmean | mean_sqrt_len (`pooling.POOLINGS`);
    `None` takes the model's own (sentence-transformers pooling) or mean.
    `normalize`: L2 after slicing; `None` takes the model's own (True for a sentence-transformers
    model with a `Normalize` module, so its last layer *is* the published model), else False.
    `final_norm`: "last" (inner layers raw, our convention) or "every" (the model's final norm
    applied at every layer, as the model truncated to `layer` blocks gives it); a slice option.
    `max_tokens_per_batch`: batch by a budget of padded tokens (not part of any identity).
    `include_prompt`: False leaves prompt tokens out of the vectors (sentence-transformers'
    `Pooling(include_prompt=False)`); `None` takes the model's own Pooling setting, else True.
    `search_backend`: how mteb searches retrieval/reranking tasks (`auto`: faiss when installed).
    `layers`: two or more layers to fuse (`fusion.py`): the equal-weight mean of their pooled
    vectors, then the dim cut, then normalisation; `layer` is then their deepest (not `max`
    pooling). Only the blocks up to `layer` run.
    """

    def __init__(
        self,
        model: str | Path | Any = None,
        *,
        spec: ModelSpec | None = None,
        layer: int = -1,
        dim: int | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
        tokenizer: Any = None,
        name: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        model_prompts: dict[str, str] | None = None,
        show_progress: bool = False,
        trust_remote_code: bool = False,
        search_backend: str = "auto",  # issue 14: retrieval search, auto | faiss | torch
        final_norm: str = "last",
        max_tokens_per_batch: int | None = None,
        include_prompt: bool | None = None,
        layers: Sequence[int] | None = None,
    ) -> None:
        if pooling is not None:
            check_pooling(pooling)
        final_norm = check_final_norm(final_norm)
        check_batch_limits(batch_size, max_tokens_per_batch)
        lm = LayerModel.coerce(
            model,
            tokenizer,
            spec=spec,
            name=name,
            revision=revision,
            device=device,
            dtype=dtype,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            include_prompt=include_prompt,
        )
        self.lm = lm
        self.model = lm.model
        fused = sorted({resolve_layer(int(x), lm.n_layers) for x in layers or ()})
        if fused and layer != -1:
            raise ValueError("Give either layer= or layers= (a fusion), not both.")
        #: the fused layers (empty for one layer); `layer` is the deepest of them
        self.layers: tuple[int, ...] = tuple(fused) if len(fused) > 1 else ()
        self.fuse = fusion_label(self.layers) if self.layers else NO_FUSION
        self.layer = fused[-1] if fused else resolve_layer(layer, lm.n_layers)
        self.dim = resolve_dim(dim, lm.hidden_size)
        self.pooling = pooling or (spec and spec.pooling) or lm.default_pooling
        self.normalize = lm.default_normalize if normalize is None else bool(normalize)
        warn_constant_pooling(lm, self.pooling)
        if self.layers:
            check_fusable(self.pooling)
        self.final_norm = final_norm
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.show_progress = show_progress
        self.model_prompts = self.validate_task_to_prompt_name(model_prompts or lm.prompts)
        self.mteb_model_meta = slice_meta(
            lm,
            self.layer,
            self.dim,
            self.pooling,
            self.normalize,
            prompts=self.model_prompts,
            final_norm=final_norm,
            fuse=self.fuse,
        )
        # issue 14: retrieval/reranking search through faiss (auto: when installed)
        self.search_backend = attach_search_backend(self, search_backend)

    def embed(
        self, texts: Sequence[str], *, batch_size: int | None = None, prompt: str = ""
    ) -> np.ndarray:
        """`(len(texts), dim)` float32 embeddings, outside mteb.

        `prompt` is prepended to every text, as `SentenceTransformer.encode(prompt=...)`; with
        `include_prompt` False its tokens are then left out of the vectors.
        """
        texts = [prompt + text for text in check_texts(texts)]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Each distinct text runs once (pair and retrieval tasks repeat many).
        unique = list(dict.fromkeys(texts))
        out = np.zeros((len(unique), self.dim), dtype=np.float32)
        for batch in self.lm.iter_batches(
            unique,
            list(self.layers) or [self.layer],
            self.pooling,
            batch_size=batch_size or self.batch_size,
            show_progress=self.show_progress,
            max_tokens_per_batch=self.max_tokens_per_batch,
            final_norms=(self.final_norm,),
            prompts=prompt,
        ):
            if self.layers:  # fused mean, then the dim cut, then normalisation
                pooled = fuse_vectors([batch.pooled[x].cpu().numpy() for x in self.layers])
            else:
                pooled = batch.pooled[self.layer]
            out[batch.indices] = slice_and_normalize(pooled, self.dim, self.normalize)
        if len(unique) == len(texts):
            return out
        position = {text: i for i, text in enumerate(unique)}
        return out[[position[text] for text in texts]]

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        prompt = resolve_prompt(self.model_prompts, task_metadata, prompt_type)
        return self.embed(
            loader_texts(inputs),
            batch_size=kwargs.get("batch_size") or self.batch_size,
            prompt=prompt,
        )

    def __repr__(self) -> str:
        where = f"layers={list(self.layers)}" if self.layers else f"layer={self.layer}"
        return (
            f"LayerEncoder({self.lm.name!r}, {where}/{self.lm.n_layers}, dim={self.dim}, "
            f"pooling={self.pooling!r}, normalize={self.normalize}, final_norm={self.final_norm!r})"
        )
