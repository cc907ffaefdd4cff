"""Sweep vs. plain run vs. one run per truncated model, measured side by side in one process.

(a) our sweep of every layer (one forward pass per text, every layer scored by mteb);
(b) one plain last-layer `mteb.evaluate` run;
(c) the research harness's way: one run per layer, each loading a model truncated to that layer.
Prints a/b (target <= 1.3) and c/a (target >= 3 for the 6-layer MiniLM), for the packaged
MiniLM-L6 and for a 24-layer model built from a config with random weights.

    python benchmarks/sweep_vs_per_layer.py [--tasks STSBenchmark] [--data-dir ../shared/data/mteb]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import mteb
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig

from mteb_midlayer import LayerEncoder, sweep
from mteb_midlayer.model import embedded_default
from mteb_midlayer.tasks.selection import select_tasks

REPO = Path(__file__).resolve().parents[1]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def plain_run(model_dir: str, tasks: list[str], data_dir: Path, batch_size: int) -> float:
    def run():
        enc = LayerEncoder(model_dir, layer=-1, device="cpu", batch_size=batch_size)
        mteb.evaluate(enc, select_tasks(tasks, None, data_dir), cache=None, show_progress_bar=False)

    return timed(run)[0]


def our_sweep(model_dir: str, tasks: list[str], data_dir: Path, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        return timed(
            lambda: sweep(
                model_dir, tasks=tasks, data_dir=data_dir, output=out, device="cpu",
                batch_size=batch_size, show_progress=False,
            )
        )[0]  # fmt: skip


def per_layer_runs(model_dir: str, tasks: list[str], data_dir: Path, batch_size: int) -> float:
    """One load + evaluate per layer; layer l loads a model with l blocks (l = 0: embeddings)."""

    def run():
        n_layers = AutoModel.from_pretrained(model_dir).config.num_hidden_layers
        tok = AutoTokenizer.from_pretrained(model_dir)
        for layer in range(n_layers + 1):
            if layer == 0:  # transformers 5 returns no hidden states for a 0-block BERT
                enc = LayerEncoder(model_dir, layer=0, device="cpu", batch_size=batch_size)
            else:
                truncated = AutoModel.from_pretrained(model_dir, num_hidden_layers=layer)
                enc = LayerEncoder(
                    truncated, tokenizer=tok, layer=-1, device="cpu", batch_size=batch_size
                )
            mteb.evaluate(
                enc, select_tasks(tasks, None, data_dir), cache=None, show_progress_bar=False
            )

    return timed(run)[0]


def deep_random_model(folder: Path, source: str) -> str:
    """A 24-layer BERT with random weights (width 128) and MiniLM's tokenizer, saved to disk."""
    torch.manual_seed(0)
    config = BertConfig(
        num_hidden_layers=24, hidden_size=128, num_attention_heads=4, intermediate_size=512,
        max_position_embeddings=512,
    )  # fmt: skip
    AutoModel.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return str(folder)


def measure(label: str, model_dir: str, tasks: list[str], data_dir: Path, batch_size: int) -> None:
    b = plain_run(model_dir, tasks, data_dir, batch_size)  # also warms caches for the others
    b = plain_run(model_dir, tasks, data_dir, batch_size)
    a = our_sweep(model_dir, tasks, data_dir, batch_size)
    c = per_layer_runs(model_dir, tasks, data_dir, batch_size)
    print(
        f"{label:<28} (a) sweep {a:7.1f}s  (b) last layer {b:7.1f}s  (c) per layer {c:7.1f}s  "
        f"a/b = {a / b:.2f}  c/a = {c / a:.2f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="STSBenchmark")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mteb")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    minilm = str(embedded_default()[0])
    print(f"tasks: {tasks}; torch threads: {torch.get_num_threads()}; device: cpu", flush=True)
    measure("MiniLM-L6 (6 layers)", minilm, tasks, args.data_dir, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        deep = deep_random_model(Path(tmp) / "deep", minilm)
        measure("random BERT (24 layers, w128)", deep, tasks, args.data_dir, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
