"""Size on disk and encode speed of an exported layer-3 MiniLM against the full model.

Both folders are written by `mteb_midlayer.export` (the full one at layer 6 = the published
model), loaded with plain `SentenceTransformer`, and timed side by side in one run on the same
texts (BIOSSES + STSBenchmark sentences from the shared data when present), alternating runs.

    python benchmarks/export_size.py [--n 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from mteb_midlayer.export import export
from mteb_midlayer.model import resolve_source

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mteb"


def texts(n: int) -> list[str]:
    out: list[str] = []
    for task in ("STSBenchmark", "BIOSSES"):
        path = DATA / task / "test.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                out += [row["sentence1"], row["sentence2"]]
    if not out:
        out = [f"Sentence number {i} about layers, slices and embeddings." for i in range(n)]
    return list(dict.fromkeys(out))[:n]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    source, _ = resolve_source("minilm")
    sample = texts(args.n)
    print(
        f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, texts: {len(sample)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"layer 3": Path(tmp) / "l3", "full (layer 6)": Path(tmp) / "l6"}
        export(source, paths["layer 3"], layer=3)
        export(source, paths["full (layer 6)"], layer=6)
        models = {k: SentenceTransformer(str(p), device="cpu") for k, p in paths.items()}
        for model in models.values():  # warm-up
            model.encode(sample[:64], batch_size=args.batch_size)
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model.encode(sample, batch_size=args.batch_size)
                times[name].append(time.perf_counter() - start)
        sizes = {k: folder_bytes(p) for k, p in paths.items()}
    full, cut = "full (layer 6)", "layer 3"
    for name in models:
        best = min(times[name])
        print(
            f"{name:15s} size {sizes[name] / 2**20:7.1f} MiB   encode {best:6.2f} s "
            f"({len(sample) / best:7.1f} texts/s, best of {args.repeats})"
        )
    print(
        f"layer 3 / full: size {sizes[cut] / sizes[full]:.2f}x, "
        f"encode time {min(times[cut]) / min(times[full]):.2f}x "
        f"(speed-up {min(times[full]) / min(times[cut]):.2f}x)"
    )


if __name__ == "__main__":
    main()
