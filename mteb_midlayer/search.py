"""Retrieval and reranking search through faiss, or mteb's exact torch search.

mteb wraps a plain encoder in its `SearchEncoderWrapper` with no index (exact torch search,
chunked over the corpus). A model that also implements mteb's `SearchProtocol` (`index` +
`search`) is used as it is; `with_search_backend` gives mteb such a model, whose search is a
`SearchEncoderWrapper` over mteb's own `FaissSearchIndex` (flat, exact inner product on L2-
normalised vectors for cosine models). Every other task type sees the encoder unchanged.
The backend moves scores only at rounding level, so it is a run setting, not part of a slice.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from mteb.models import ModelMeta

SEARCH_BACKENDS = ("auto", "faiss", "torch")


class FaissMissingError(ValueError, ImportError):
    """`faiss` was asked for and is not installed."""


def faiss_available() -> bool:
    """Whether `import faiss` would work (checked without importing it)."""
    return importlib.util.find_spec("faiss") is not None


def resolve_search_backend(backend: str = "auto") -> str:
    """`"faiss"` or `"torch"`: `auto` is faiss when importable; a missing faiss names the extra."""
    if backend not in SEARCH_BACKENDS:
        raise ValueError(
            f"Unknown search backend {backend!r}; choose one of {', '.join(SEARCH_BACKENDS)}."
        )
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise FaissMissingError(
            "search backend 'faiss' needs faiss: pip install 'mteb-midlayer[cpu]' "
            "(faiss-cpu), or 'mteb-midlayer[gpu]' (faiss-gpu) on a GPU host."
        )
    return backend


def faiss_gpus() -> int:
    """GPUs faiss can use: 0 with faiss-cpu (no `get_num_gpus`) or on a host without one."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _to_gpus(index: Any) -> Any:
    """`index` on every GPU faiss sees (faiss-gpu: `index_cpu_to_all_gpus`), else unchanged.

    A flat index is exact on either device, so scores do not depend on where it lives.
    """
    import faiss

    if faiss_gpus() < 1 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return index
    return faiss.index_cpu_to_all_gpus(index)


def gpu_faiss_index(encoder: Any) -> Any:
    """mteb's `FaissSearchIndex` for `encoder`, its flat index placed on the GPUs when faiss-gpu
    has any (mteb builds it on the CPU)."""
    from mteb.models.search_encoder_index import FaissSearchIndex

    class _Index(FaissSearchIndex):
        def add_documents(self, embeddings: Any, idxs: list[str]) -> None:
            fresh = self.index is None
            super().add_documents(embeddings, idxs)
            if fresh and self.index is not None:
                # Moved after the first batch is added; later batches add on the GPU copy.
                self.index = _to_gpus(self.index)

    return _Index(encoder)


class FaissSearch:
    """mteb's `SearchProtocol` for one encoder: a fresh flat faiss index per indexed corpus."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._wrapper: Any = None

    def index(self, corpus: Any, **kwargs: Any) -> None:
        from mteb.models import SearchEncoderWrapper

        # A new index each time: a search that failed midway never leaves stale documents.
        self._wrapper = SearchEncoderWrapper(
            self.encoder, index_backend=gpu_faiss_index(self.encoder)
        )
        self._wrapper.index(corpus, **kwargs)

    def search(self, queries: Any, **kwargs: Any) -> dict[str, dict[str, float]]:
        if self._wrapper is None:
            raise ValueError("Corpus must be indexed before searching.")
        wrapper, self._wrapper = self._wrapper, None
        return wrapper.search(queries, **kwargs)


class FaissSearchEncoder:
    """An encoder that mteb searches with faiss: encodes and scores as `encoder`, searches
    through `FaissSearch`. Everything else is the encoder's own (attribute access falls through)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._search = FaissSearch(encoder)

    @property
    def mteb_model_meta(self) -> ModelMeta:
        return self.encoder.mteb_model_meta

    def encode(self, inputs: Any, **kwargs: Any) -> np.ndarray:
        return self.encoder.encode(inputs, **kwargs)

    def similarity(self, a: Any, b: Any) -> Any:
        return self.encoder.similarity(a, b)

    def similarity_pairwise(self, a: Any, b: Any) -> Any:
        return self.encoder.similarity_pairwise(a, b)

    def index(self, corpus: Any, **kwargs: Any) -> None:
        self._search.index(corpus, **kwargs)

    def search(self, queries: Any, **kwargs: Any) -> dict[str, dict[str, float]]:
        return self._search.search(queries, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "encoder":  # not yet set (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.encoder, name)

    def __repr__(self) -> str:
        return f"FaissSearchEncoder({self.encoder!r})"


def with_search_backend(encoder: Any, backend: str = "auto") -> Any:
    """What to hand `mteb.evaluate` so retrieval/reranking search with `backend`.

    `torch` (or `auto` without faiss): the encoder itself (mteb's default search). `faiss`:
    a `FaissSearchEncoder` around it. Raises `FaissMissingError` for `faiss` without faiss.
    """
    if resolve_search_backend(backend) == "torch":
        return encoder
    return FaissSearchEncoder(encoder)


def attach_search_backend(encoder: Any, backend: str = "auto") -> str:
    """Give `encoder` itself mteb's `index`/`search` through faiss when `backend` resolves to
    faiss (so `mteb.evaluate(encoder, ...)` searches with it); return the resolved backend.

    For encoders users hand to mteb directly (`LayerEncoder`); the sweep wraps instead.
    """
    resolved = resolve_search_backend(backend)
    if resolved == "faiss":
        faiss_search = FaissSearch(encoder)
        encoder.index = faiss_search.index
        encoder.search = faiss_search.search
    return resolved
