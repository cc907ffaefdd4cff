"""The mteb adapter for the sweep: an encoder that answers from the embedding store.

`StoreEncoder` is an mteb `AbsEncoder` for one `(layer, dim)` slice. On `encode` it looks the
texts up in the store; texts it lacks are run through the network once, with *every* layer of
the sweep pooled in that same pass and written to the store shard by shard. So the first slice
scored on a task pays the forward pass and every later slice is a pure replay. Its `ModelMeta`
is the one `LayerEncoder` gives the same slice, so both file results in the same mteb folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder

from .encoder import (
    check_final_norm,
    loader_texts,
    resolve_prompt,
    slice_and_normalize,
    slice_meta,
)
from .fusion import NO_FUSION, check_fusable, fuse_vectors, fusion_label
from .layers import check_final_norms
from .model import LayerModel
from .pooling import check_poolings
from .spec import ModelSpec, excludes_prompt
from .store import EmbeddingStore, StoreKey

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

#: Most texts per shard file: bounds what a crash can lose.
DEFAULT_SHARD_SIZE = 2048
#: Most bytes of float32 embeddings a shard holds in RAM before its write. Without it a
#: 2048-text shard of a 48-layer, 4096-wide model would be 1.6 GB.
DEFAULT_SHARD_BYTES = 256 * 2**20


def shard_texts(
    n_layers: int,
    hidden_size: int,
    shard_size: int | None = None,
    shard_bytes: int | None = None,
) -> int:
    """Texts per shard: ``shard_size`` if given, else up to 2048 within ``shard_bytes`` of RAM
    (default `DEFAULT_SHARD_BYTES`)."""
    shard_bytes = DEFAULT_SHARD_BYTES if shard_bytes is None else shard_bytes
    if shard_size is not None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1 text, got {shard_size}")
        return int(shard_size)
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    per_text = 4 * max(1, n_layers) * max(1, hidden_size)
    return max(1, min(DEFAULT_SHARD_SIZE, shard_bytes // per_text))


@dataclass
class ModelInfo:
    """What replaying a store needs of a model (spec, sizes, prompts) without loading its network:
    a scoring worker's stand-in for a `LayerModel` (`EmbeddingSource(..., replay_only=True)`)."""

    resolved: dict[str, Any]
    n_parameters: int | None
    hidden_size: int
    n_layers: int

    def current_spec(self) -> Any:
        return ModelSpec.from_dict(self.resolved)

    @property
    def prompts(self) -> dict[str, str] | None:
        return dict(self.resolved["prompts"]) if self.resolved.get("prompts") else None

    @property
    def name(self) -> str:
        return self.resolved["name"]


def store_key(
    lm: LayerModel | ModelInfo, pooling: str, prompt_type: str | None, final_norm: str = "last"
) -> StoreKey:
    """The store configuration of a loaded model (`StoreKey.for_spec` of its resolved spec)."""
    return StoreKey.for_spec(lm.current_spec(), pooling, prompt_type, final_norm)


def store_entries(texts: Sequence[str], prompt: str, include_prompt: bool) -> list[str]:
    """What the store hashes for each prompted text. With prompt tokens pooled, the text alone
    (the exact model input). Left out, a vector also depends on where the prompt ends ("ab" +
    "c" and "a" + "bc" are one input, two vectors), so the prompt's length in characters leads
    the text: `"<n>\0<text>"`, one entry per (prompt, text) pair."""
    if include_prompt:
        return list(texts)
    return [f"{len(prompt)}\0{text}" for text in texts]


class EmbeddingSource:
    """Store plus (optionally) the network that fills it: shared by all slices of a sweep.

    One store per (prompt type, final norm, pooling); `fill` writes every setting of
    `final_norms` under every pooling of `pooling` (one mode, or several: "mean,last" or a
    list) from the same forward pass, each store exactly what a single-pooling source writes.
    `pooling` (the attribute) is the first; `poolings` all. `max_tokens_per_batch` batches by
    padded tokens (the store's vectors do not depend on it).
    """

    def __init__(
        self,
        lm: LayerModel | ModelInfo,
        root: Path | str,
        *,
        pooling: str | Sequence[str],
        layers: Sequence[int],
        batch_size: int = 32,
        shard_size: int | None = None,
        show_progress: bool = True,
        replay_only: bool = False,
        final_norms: Sequence[str] | str = ("last",),
        max_tokens_per_batch: int | None = None,
    ) -> None:
        self.lm = lm
        self.root = Path(root)
        self.poolings = check_poolings(pooling)
        self.pooling = self.poolings[0]
        self.layers = sorted(set(layers))
        self.final_norms = check_final_norms(final_norms)
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.shard_size = shard_texts(
            len(self.layers) * len(self.final_norms) * len(self.poolings),
            lm.hidden_size,
            shard_size,
        )
        self.show_progress = show_progress
        self.replay_only = replay_only
        self._stores: dict[tuple[str | None, str, str], EmbeddingStore] = {}
        #: texts run through the network by this source (for tests and benchmarks)
        self.n_encoded = 0

    def store(
        self, prompt_type: str | None, final_norm: str = "last", pooling: str | None = None
    ) -> EmbeddingStore:
        """The store of one (prompt type, final norm, pooling); `pooling` defaults to the first."""
        pooling = pooling or self.pooling
        if pooling not in self.poolings:
            raise ValueError(f"pooling {pooling!r} is not among the source's {self.poolings}.")
        if (prompt_type, final_norm, pooling) not in self._stores:
            key = store_key(self.lm, pooling, prompt_type, final_norm)
            self._stores[prompt_type, final_norm, pooling] = EmbeddingStore(self.root, key)
        return self._stores[prompt_type, final_norm, pooling]

    def entries(self, texts: Sequence[str], prompt: str = "") -> list[str]:
        """The store's entries for `texts` (each starting with `prompt`): `store_entries`."""
        spec = self.lm.current_spec()  # a LayerModel, or a worker's ModelInfo
        return store_entries(texts, prompt, not excludes_prompt(spec.include_prompt, spec.prompts))

    def fill(
        self,
        texts: Sequence[str],
        prompt_type: str | None,
        namespace: tuple[str, ...],
        prompt: str = "",
    ) -> None:
        """Make sure every text has every sweep layer under every final norm and pooling in the
        store (one pass for the texts any setting lacks). `prompt`: what every text starts with (mteb
        picks one per task and prompt type); pooling leaves its tokens out when the model's
        `include_prompt` is False."""
        stores = {
            (pooling, norm): self.store(prompt_type, norm, pooling)
            for pooling in self.poolings
            for norm in self.final_norms
        }
        entries = self.entries(texts, prompt)
        lacking = {key: set(st.missing(entries, self.layers)) for key, st in stores.items()}
        missing = sorted(set().union(*lacking.values()))
        if not missing:
            return
        if self.replay_only:
            raise KeyError(f"{len(missing)} texts of {namespace} are not in the store {stores}.")
        todo = list(dict.fromkeys(texts[i] for i in missing))
        entry_of = dict(zip(texts, entries, strict=True))
        # Each store gets only the texts it lacks (a setting already stored is not written twice).
        lacks = {key: {entries[i] for i in rows} for key, rows in lacking.items()}
        for start in range(0, len(todo), self.shard_size):
            chunk = todo[start : start + self.shard_size]
            pooled = {
                key: torch.empty((len(self.layers), len(chunk), self.lm.hidden_size))
                for key in stores
            }
            for batch in self.lm.iter_batches(
                chunk,
                self.layers,
                self.poolings,
                batch_size=self.batch_size,
                max_tokens_per_batch=self.max_tokens_per_batch,
                final_norms=self.final_norms,
                prompts=prompt,
                show_progress=self.show_progress,
                desc=f"Encoding {'/'.join(namespace)} [{start // self.shard_size + 1}]",
            ):
                for pooling, by_norm in batch.by_pooling.items():
                    for norm, by_layer in by_norm.items():
                        stacked = torch.stack([by_layer[layer] for layer in self.layers])
                        pooled[pooling, norm][:, batch.indices] = stacked.cpu()
            for key, store in stores.items():
                rows = [j for j, t in enumerate(chunk) if entry_of[t] in lacks[key]]
                if not rows:
                    continue
                vectors = pooled[key].numpy()
                if len(rows) < len(chunk):
                    vectors = vectors[:, rows]
                store.write(namespace, [entry_of[chunk[j]] for j in rows], vectors, self.layers)
            self.n_encoded += len(chunk)


class StoreEncoder(AbsEncoder):
    """One `(layer, dim)` slice, answered from an `EmbeddingSource`; `pooling`: one of the
    source's poolings (default: its first).

    `fuse`: two or more layers to fuse (`fusion.py`): the mean of their stored vectors, then
    the dim cut, then normalisation, with no new forward pass; `layer` is then ignored and set
    to their deepest (what the fusion costs).
    """

    def __init__(
        self,
        source: EmbeddingSource,
        *,
        layer: int,
        dim: int,
        normalize: bool = False,
        model_prompts: dict[str, str] | None = None,
        final_norm: str = "last",
        fuse: tuple[int, ...] | list[int] = (),
        pooling: str | None = None,
    ) -> None:
        pooling = pooling or source.pooling
        if pooling not in source.poolings:
            raise ValueError(f"pooling {pooling!r} is not among the sweep's {source.poolings}.")
        fused = tuple(sorted(set(fuse)))
        if fused:
            fusion_label(fused)  # two layers or more
            check_fusable(pooling)
            layer = fused[-1]
        for needed in fused or (layer,):
            if needed not in source.layers:
                raise ValueError(f"layer {needed} is not among the sweep's layers {source.layers}.")
        final_norm = check_final_norm(final_norm)
        if final_norm not in source.final_norms:
            raise ValueError(
                f"final_norm {final_norm!r} is not among the sweep's {list(source.final_norms)}."
            )
        self.source = source
        self.model = None
        self.layer = layer
        #: the fused layers (empty for one layer) and their label ("" for one layer)
        self.fuse = fused
        self.fuse_label = fusion_label(fused) if fused else NO_FUSION
        self.dim = dim
        self.normalize = normalize
        self.final_norm = final_norm
        self.pooling = pooling
        self.model_prompts = model_prompts if model_prompts is not None else source.lm.prompts
        self.mteb_model_meta = slice_meta(
            source.lm,
            layer,
            dim,
            pooling,
            normalize,
            prompts=self.model_prompts,
            final_norm=final_norm,
            fuse=self.fuse_label,
        )

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
        texts = [prompt + text for text in loader_texts(inputs)]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        kind = prompt_type.value if prompt_type is not None else None
        namespace = (task_metadata.name, hf_split, hf_subset)
        self.source.fill(texts, kind, namespace, prompt)
        entries = self.source.entries(texts, prompt)
        store = self.source.store(kind, self.final_norm, self.pooling)
        if self.fuse:  # the fused mean (cut to dim: the mean is per coordinate), then normalise
            raw = fuse_vectors([store.read(entries, layer, self.dim) for layer in self.fuse])
        else:
            raw = store.read(entries, self.layer, self.dim)
        return slice_and_normalize(raw, self.dim, self.normalize)

    def __repr__(self) -> str:
        where = f"fuse={self.fuse_label!r}" if self.fuse else f"layer={self.layer}"
        return (
            f"StoreEncoder({where}, dim={self.dim}, pooling={self.pooling!r}, "
            f"final_norm={self.final_norm!r})"
        )
