"""faiss search gives mteb's default-search scores on the same embeddings (SciFact, shared data)."""

from __future__ import annotations

import re
import zlib

import mteb
import numpy as np
import pytest
from mteb.models import ModelMeta, SearchEncoderWrapper
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction
from mteb.models.models_protocols import EncoderProtocol, SearchProtocol

from mteb_midlayer import search
from mteb_midlayer.search import (
    FaissMissingError,
    FaissSearchEncoder,
    resolve_search_backend,
    with_search_backend,
)
from mteb_midlayer.tasks.local import local_task

pytest.importorskip("faiss")


class HashingEncoder(AbsEncoder):
    """Signed feature hashing of words into 256 dims: fast, deterministic, retrieves by overlap."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.model = None
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites=dict(
                name="test/hashing",
                revision="1",
                embed_dim=dim,
                similarity_fn_name=ScoringFunction.COSINE,
                framework=["NumPy"],
            )
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = zlib.crc32(word.encode())
                out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        return out

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kw):
        return self.embed([text for batch in inputs for text in batch["text"]])


@pytest.fixture(scope="module")
def scifact(shared_data):
    task = local_task(mteb.get_task("SciFact"), shared_data / "SciFact")
    task.load_data()
    return task


def _scores(model, task) -> dict[str, float]:
    result = mteb.evaluate(model, task, cache=None, show_progress_bar=False)
    (task_result,) = result.task_results
    (scores,) = task_result.scores["test"]
    return {k: v for k, v in scores.items() if isinstance(v, float)}


def test_faiss_search_equals_mteb_default_on_scifact(scifact):
    encoder = HashingEncoder()
    default = _scores(encoder, scifact)
    wrapped = with_search_backend(encoder, "faiss")
    assert isinstance(wrapped, FaissSearchEncoder)
    assert isinstance(wrapped, SearchProtocol) and isinstance(wrapped, EncoderProtocol)
    faiss_scores = _scores(wrapped, scifact)
    assert 0.05 < default["ndcg_at_10"] < 0.9  # a real, non-trivial retrieval
    assert default.keys() == faiss_scores.keys()
    for key, value in default.items():
        assert faiss_scores[key] == pytest.approx(value, abs=1e-4, nan_ok=True), key


def test_faiss_reranking_equals_mteb_default(scifact):
    """Reranking (top_ranked given) through faiss equals mteb's own reranking search."""
    data = scifact.dataset["default"]["test"]
    corpus, queries = data["corpus"], data["queries"].select(range(40))
    rng = np.random.default_rng(0)
    ids = corpus["id"]
    top_ranked = {
        q: [ids[i] for i in rng.choice(len(ids), 30, replace=False)] for q in queries["id"]
    }
    encoder = HashingEncoder()
    kwargs = dict(
        task_metadata=scifact.metadata,
        hf_split="test",
        hf_subset="default",
        encode_kwargs={"batch_size": 256},
    )
    got = {}
    for name, model in (
        ("torch", SearchEncoderWrapper(encoder)),
        ("faiss", with_search_backend(encoder, "faiss")),
    ):
        model.index(corpus, num_proc=None, **kwargs)
        got[name] = model.search(queries, top_k=10, top_ranked=top_ranked, num_proc=None, **kwargs)
    assert got["faiss"].keys() == got["torch"].keys()
    for qid, ranked in got["torch"].items():
        assert got["faiss"][qid].keys() == ranked.keys(), qid
        for doc, score in ranked.items():
            assert got["faiss"][qid][doc] == pytest.approx(score, abs=1e-5)


def test_other_tasks_see_the_encoder_unchanged(shared_data):
    encoder = HashingEncoder()
    task = local_task(mteb.get_task("BIOSSES"), shared_data / "BIOSSES")
    plain = _scores(encoder, task)
    through = _scores(with_search_backend(encoder, "faiss"), task)
    assert through == plain


def test_backend_choice_and_missing_faiss(monkeypatch):
    encoder = HashingEncoder()
    assert with_search_backend(encoder, "torch") is encoder
    assert resolve_search_backend("auto") == "faiss"
    with pytest.raises(ValueError, match=r"Unknown search backend 'annoy'.*auto, faiss, torch"):
        resolve_search_backend("annoy")
    monkeypatch.setattr(search, "faiss_available", lambda: False)
    assert resolve_search_backend("auto") == "torch"
    assert with_search_backend(encoder, "auto") is encoder
    with pytest.raises(FaissMissingError, match=r"mteb-midlayer\[cpu\].*mteb-midlayer\[gpu\]"):
        with_search_backend(encoder, "faiss")


def test_layer_encoder_searches_with_faiss(scifact):
    """LayerEncoder's `search_backend` keyword: the same scores through faiss as through torch,
    on a 400-document slice of SciFact (a tiny config-built model keeps it fast)."""
    from mteb_midlayer import LayerEncoder
    from mteb_midlayer.model import LayerModel

    from .conftest import tiny_model, tiny_tokenizer

    data = scifact.dataset["default"]["test"]
    queries = data["queries"].select(range(30))
    wanted = {d for q in queries["id"] for d in data["relevant_docs"][q]}
    keep = [i for i, d in enumerate(data["corpus"]["id"]) if d in wanted or i < 400]
    small = type(scifact)()
    small.metadata = scifact.metadata
    small.dataset = {
        "default": {
            "test": {
                **data,
                "corpus": data["corpus"].select(keep),
                "queries": queries,
                "relevant_docs": {q: data["relevant_docs"][q] for q in queries["id"]},
            }
        }
    }
    small.data_loaded = True
    lm = LayerModel.load(
        tiny_model("gpt2", n_layers=2), tiny_tokenizer(), device="cpu", max_length=48
    )
    plain = LayerEncoder(lm, layer=1, search_backend="torch")
    faiss_enc = LayerEncoder(lm, layer=1, search_backend="faiss")
    assert not isinstance(plain, SearchProtocol) and isinstance(faiss_enc, SearchProtocol)
    torch_scores, faiss_scores = _scores(plain, small), _scores(faiss_enc, small)
    for key, value in torch_scores.items():
        assert faiss_scores[key] == pytest.approx(value, abs=1e-4, nan_ok=True), key


def test_sweep_refuses_missing_faiss_before_any_work(monkeypatch, tmp_path):
    from mteb_midlayer.sweep import sweep

    monkeypatch.setattr(search, "faiss_available", lambda: False)
    with pytest.raises(FaissMissingError, match="pip install 'mteb-midlayer\\[cpu\\]'"):
        sweep("no/such-model", tasks=["SciFact"], output=tmp_path, search_backend="faiss")
    assert not any(tmp_path.iterdir())


def test_faiss_index_moves_to_the_gpus_faiss_gpu_sees(monkeypatch):
    """With faiss-gpu and a GPU, the flat index is copied onto the GPUs once, after the first
    batch; without one it stays on the CPU. (faiss-cpu here: the GPU calls are stand-ins that
    record the move and keep the CPU index, which gives the same exact results.)"""
    faiss = pytest.importorskip("faiss")
    import numpy as np
    from mteb.models.model_meta import ScoringFunction

    from mteb_midlayer import search

    class _Enc:
        class mteb_model_meta:
            similarity_fn_name = ScoringFunction.COSINE

    moved = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    cpu = search.gpu_faiss_index(_Enc())
    cpu.add_documents(np.eye(4, dtype=np.float32), list("abcd"))
    assert isinstance(cpu.index, faiss.IndexFlatIP) and search.faiss_gpus() == 0

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    monkeypatch.setattr(
        faiss, "index_cpu_to_all_gpus", lambda index: moved.append(index) or index, raising=False
    )
    gpu = search.gpu_faiss_index(_Enc())
    gpu.add_documents(np.eye(4, dtype=np.float32), list("abcd"))
    gpu.add_documents(np.eye(4, dtype=np.float32)[::-1].copy(), list("efgh"))
    assert len(moved) == 1 and gpu.index.ntotal == 8
