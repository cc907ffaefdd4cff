"""`metrics --final-norm last,every`: two per-setting runs (before) against one run (now).

Before, the driver ran one whole encoding pass per final_norm setting, which is exactly two
single-setting `layer_metrics` runs; now both settings come from one pass per text and view.
For the packaged all-MiniLM-L6-v2 and a config-built Pythia (GPT-NeoX, pythia-70m's shape,
random weights), on N sampled texts of a task with every metric: wall time of both ways,
their ratio (before / after), forward passes counted on the network, and the largest
difference between the rows (must be <= 1e-6). Runs alternate, best of `--repeats`, since
the machine may be shared.

    python benchmarks/metrics_final_norms.py [--task STSBenchmark] [--n 200] [--n-views 16]
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see mteb_midlayer/devices.py

import pandas as pd
import torch
from transformers import AutoModel, AutoTokenizer, GPTNeoXConfig

from mteb_midlayer.layers import find_final_norm
from mteb_midlayer.metrics.run import layer_metrics
from mteb_midlayer.metrics.sampling import sample_texts, task_texts
from mteb_midlayer.model import LayerModel, embedded_default
from mteb_midlayer.tasks.selection import select_tasks

REPO = Path(__file__).resolve().parents[1]


def models(device: str | None) -> list[tuple[str, LayerModel]]:
    path, _ = embedded_default()
    minilm = LayerModel.load(path, device=device)
    tok = AutoTokenizer.from_pretrained(path)
    config = GPTNeoXConfig(
        vocab_size=tok.vocab_size,
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    pythia = AutoModel.from_config(config).eval()
    shaped = LayerModel.load(pythia, tok, name="config/pythia-70m-shape", device=device)
    return [("all-MiniLM-L6-v2", minilm), ("Pythia-70m-shaped (6 x 512)", shaped)]


def timed_run(lm: LayerModel, texts: list[str], settings: list[str], **options) -> tuple:
    """Seconds, forward passes and rows of one `layer_metrics` call per entry of `settings`
    (each into a fresh folder, so nothing is read back)."""
    find_final_norm(lm.model)  # its probe pass is once per model, not per setting: not counted
    calls: list[int] = []
    hook = lm.model.register_forward_pre_hook(lambda *_a: calls.append(1))
    frames = []
    try:
        start = time.perf_counter()
        for setting in settings:
            with tempfile.TemporaryDirectory() as out:
                frames.append(
                    layer_metrics(
                        lm, texts=texts, output=out, final_norm=setting, **options
                    ).metrics
                )
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
    return seconds, len(calls), pd.concat(frames, ignore_index=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="STSBenchmark")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mteb")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--n-views", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    task = select_tasks([args.task], None, args.data_dir)[0]
    texts = sample_texts(task_texts(task), args.n, 42)
    options = dict(n=args.n, n_views=args.n_views, batch_size=args.batch_size, show_progress=False)
    print(
        f"{len(texts)} texts of {args.task}, every metric, {args.n_views} views, "
        f"best of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print(
        "model                         before (2 runs)   after (1 run)   ratio   forwards   max|diff|"
    )
    for name, lm in models(args.device):
        before, after = [], []
        for _ in range(args.repeats):
            b_s, b_calls, b_rows = timed_run(lm, texts, ["last", "every"], **options)
            a_s, a_calls, a_rows = timed_run(lm, texts, ["last,every"], **options)
            before.append(b_s)
            after.append(a_s)
        diff = (a_rows["value"] - b_rows["value"]).abs().max()
        assert (a_rows.drop(columns="value") == b_rows.drop(columns="value")).all().all()
        print(
            f"{name:<30}{min(before):12.1f}s {min(after):14.1f}s {min(before) / min(after):7.2f}x"
            f"   {b_calls:>3} -> {a_calls:<3}  {diff:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
