"""`--pooling mean,weightedmean,last`: three single-pooling runs (before) against one run (now).

Before, a second pooling meant a second pass over every text; now every requested pooling is
pooled inside the same forward pass. For the packaged all-MiniLM-L6-v2 (and `--model FOLDER`,
e.g. SmolLM2-135M-Instruct), side by side, each run into a fresh folder:

  store:   filling the sweep's embedding store with every layer of N task texts
           (`EmbeddingSource.fill`, what a sweep's encode units do);
  sweep:   a whole `sweep` of one small task (encode + plan + score every slice; scoring is
           paid per slice either way, so this ratio is the smallest);
  metrics: `layer_metrics` of N texts with every metric (1 plain pass + `--n-views` views).

Prints forward passes counted on the network, wall time of the three runs / the one run, and
the largest difference between what both ways wrote (must be <= 1e-6).

    python benchmarks/poolings_one_pass.py [--n 500] [--task STSBenchmark] [--sweep-task BIOSSES]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see mteb_midlayer/devices.py

import numpy as np
import pandas as pd
import torch

from mteb_midlayer import sweep
from mteb_midlayer.metrics.run import layer_metrics
from mteb_midlayer.metrics.sampling import sample_texts, task_texts
from mteb_midlayer.model import LayerModel, embedded_default
from mteb_midlayer.replay import EmbeddingSource
from mteb_midlayer.tasks.selection import select_tasks

REPO = Path(__file__).resolve().parents[1]
POOLINGS = ("mean", "weightedmean", "last")


class Forwards:
    """Counts forward passes of the network."""

    def __init__(self, lm: LayerModel) -> None:
        self.n = 0
        self._hook = lm.model.register_forward_pre_hook(self._count)

    def _count(self, *_args) -> None:
        self.n += 1

    def reset(self) -> int:
        n, self.n = self.n, 0
        return n


def store_vectors(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """`{(store digest, text hash): (layers, D)}` of every shard under `root`."""
    out = {}
    for marker in root.glob("*/shards/**/*.json"):
        meta = json.loads(marker.read_text())
        data = np.load(marker.with_name(meta["data"]))
        digest = marker.relative_to(root).parts[0]
        for row, text_hash in enumerate(meta["text_hashes"]):
            out[digest, text_hash] = data[:, row]
    return out


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), "the two ways wrote different entries"
    return max(float(np.abs(a[k] - b[k]).max()) for k in a) if a else 0.0


def fill(lm: LayerModel, args, texts: list[str], modes: str | list[str], tmp: str) -> dict:
    """The store of every layer of `texts` (what a sweep's encode units write)."""
    root = Path(tmp) / "store"
    source = EmbeddingSource(
        lm, root, pooling=modes, layers=list(range(lm.n_layers + 1)),
        batch_size=args.batch_size, show_progress=False,
    )  # fmt: skip
    source.fill(texts, None, (args.task,))
    return store_vectors(root)


def swept(lm: LayerModel, args, _texts: list[str], modes: str | list[str], tmp: str) -> dict:
    """A whole sweep of `--sweep-task`; what it returns: every result file's main score."""
    out = Path(tmp) / "sweep"
    sweep(lm, pooling=modes, tasks=[args.sweep_task], data_dir=args.data_dir, output=out,
          jobs=1, show_progress=False, batch_size=args.batch_size)  # fmt: skip
    scores = {}
    for path in out.glob("results/**/experiments/**/*.json"):
        if path.name != "model_meta.json" and path.parent.name != "identity":
            score = json.loads(path.read_text())["scores"]["test"][0]["main_score"]
            scores[str(path.relative_to(out))] = np.array(score)
    return scores


def metrics(lm: LayerModel, args, texts: list[str], modes: str | list[str], tmp: str) -> dict:
    """Every metric of every layer of `texts`, keyed by (pooling, layer, metric, variant)."""
    df = layer_metrics(lm, pooling=modes, texts=texts, n=args.n, n_views=args.n_views,
                       output=Path(tmp) / "m", show_progress=False,
                       batch_size=args.batch_size).metrics  # fmt: skip
    keys = ["pooling", "layer", "metric", "variant"]
    return {k: np.array(v) for k, v in df.set_index(keys)["value"].items()}


PARTS = {"store": fill, "sweep": swept, "metrics": metrics}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=[], help="also a local model folder")
    parser.add_argument("--task", default="STSBenchmark")
    parser.add_argument("--sweep-task", default="BIOSSES")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mteb")
    parser.add_argument("--n", type=int, default=500, help="texts for store and metrics")
    parser.add_argument("--n-views", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--parts", default="store,sweep,metrics")
    args = parser.parse_args()
    parts = args.parts.split(",")

    task = select_tasks([args.task], None, args.data_dir)[0]
    texts = sample_texts(task_texts(task), args.n, 42)
    sources = [str(embedded_default()[0]), *args.model]
    print(
        f"poolings {','.join(POOLINGS)}: 3 single-pooling runs (before) vs 1 run (now); "
        f"{len(texts)} texts of {args.task}; torch threads {torch.get_num_threads()}"
    )
    print(f"{'model':<28}{'part':<9}{'before':>9}{'now':>9}{'ratio':>8}  forwards   max|diff|")
    for source in sources:
        lm = LayerModel.load(source, device="cpu")
        name = lm.name.split("/")[-1]
        with tempfile.TemporaryDirectory() as tmp:  # warm-up: first-call costs out of the timing
            fill(lm, args, texts[:8], ",".join(POOLINGS), tmp)
        count = Forwards(lm)
        for part in parts:
            fn = PARTS[part]
            with tempfile.TemporaryDirectory() as tmp:
                count.reset()
                t0 = time.perf_counter()
                before_out: dict = {}
                for mode in POOLINGS:  # before: one run per pooling
                    before_out |= fn(lm, args, texts, [mode], f"{tmp}/{mode}")
                before = time.perf_counter() - t0
                b_calls = count.reset()
                t0 = time.perf_counter()
                now_out = fn(lm, args, texts, ",".join(POOLINGS), f"{tmp}/all")  # now: one run
                now = time.perf_counter() - t0
                a_calls = count.reset()
            print(
                f"{name:<28}{part:<9}{before:8.1f}s{now:8.1f}s{before / now:7.2f}x"
                f"  {b_calls:>4} -> {a_calls:<4} {max_diff(now_out, before_out):.1e}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    sys.exit(main())
