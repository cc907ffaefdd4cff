"""Cost of the layer metrics relative to encoding, for MiniLM-L6 on 1000 real texts.

Runs the driver's own phases (`encode_texts`, `compute_rows`) with its timer, so the split is
exactly what `mteb-midlayer metrics` spends. Prints the time of all metrics over all layers as
a ratio of the encoding time of the same texts (target <= 0.10 on CPU), and the per-metric split.

    python benchmarks/metrics_cost.py [--task STSBenchmark] [--n 1000] [--n-views 16]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see mteb_midlayer/devices.py

import torch

from mteb_midlayer.devices import available_cores
from mteb_midlayer.metrics.augment import augment_views
from mteb_midlayer.metrics.compute import (
    METRICS,
    TOKEN_METRICS,
    Timer,
    compute_rows,
    encode_texts,
)
from mteb_midlayer.metrics.eigen import linalg_threads
from mteb_midlayer.metrics.sampling import sample_texts, task_texts
from mteb_midlayer.model import LayerModel
from mteb_midlayer.tasks.selection import select_tasks

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="STSBenchmark")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mteb")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n-views", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    lm = LayerModel.load("minilm", device=args.device)
    layers = list(range(lm.n_layers + 1))
    task = select_tasks([args.task], None, args.data_dir)[0]
    texts = sample_texts(task_texts(task), args.n, 42)
    # One timer: a metric phase opened inside "encode" (the token metrics, scored inside the
    # pass) pauses it, so "encode" is the network alone and every other phase is a metric.
    timer, views_timer = Timer(lm.device), Timer(lm.device)
    plain = encode_texts(
        lm, texts, layers, "mean", batch_size=args.batch_size,
        token_metrics=sorted(TOKEN_METRICS), timer=timer,
    )["last"]  # fmt: skip
    views = torch.empty((len(layers), len(texts), args.n_views, lm.hidden_size), device=lm.device)
    for v, view_texts in enumerate(augment_views(texts, args.n_views, seed=42)):
        views[:, :, v] = encode_texts(
            lm, view_texts, layers, "mean", batch_size=args.batch_size, timer=views_timer
        )["last"].pooled
    with linalg_threads(lm.device):
        compute_rows(plain.pooled, plain.per_text, views, layers, list(METRICS), timer=timer)

    enc_plain = timer.seconds.pop("encode")
    enc_all = enc_plain + views_timer.seconds["encode"]
    metric_seconds = dict(timer.seconds)
    metrics_total = sum(metric_seconds.values())
    print(
        f"MiniLM-L6, {len(texts)} texts of {args.task}, {len(layers)} layers, {args.n_views} views, device {lm.device}"
    )
    print(
        f"cores: {available_cores()} (encoding: {torch.get_num_threads()} torch threads; "
        f"metrics: independent eigensolves one per core)"
    )
    print(
        f"encoding: plain pass {enc_plain:.1f}s, plain + {args.n_views} view passes {enc_all:.1f}s"
    )
    print(f"all metrics, all layers: {metrics_total:.2f}s")
    print(
        f"ratio metrics / encoding (all {args.n_views + 1} passes the metrics need): {metrics_total / enc_all:.3f}"
    )
    print(f"ratio metrics / encoding (the plain pass alone): {metrics_total / enc_plain:.3f}")
    for name, seconds in sorted(metric_seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<22} {seconds:7.2f}s  {seconds / enc_all:.4f} of encoding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
