"""What the start-of-run temp-file cleanup costs, against opening the store (which a run does anyway).

Builds an output folder with `--shards` store shards (each a data file and its marker) and as many
result-like JSON files, then times `tempfiles.clean_output` (walks results/, store/, plan/,
metrics/) against `EmbeddingStore(...).refresh()` (reads every marker). Prints the ratio.

    python benchmarks/cleanup_cost.py --shards 2000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mteb_midlayer.store import EmbeddingStore, StoreKey
from mteb_midlayer.tempfiles import clean_output

KEY = StoreKey(
    model="bench/model",
    revision="r",
    pooling="mean",
    prompt_type=None,
    max_length=32,
    dtype="float32",
)


def build(out: Path, n: int) -> None:
    store = EmbeddingStore(out / "store", KEY)
    for i in range(n):
        store.write(f"task{i % 10}", [f"text {i}"], np.zeros((1, 1, 8), np.float32), [0])
    results = out / "results" / "m" / "r" / "experiments" / "L0"
    results.mkdir(parents=True)
    for i in range(n):
        (results / f"Task{i}.json").write_text(json.dumps({"scores": {}}))


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        build(out, args.shards)
        n_files = sum(1 for p in out.rglob("*") if p.is_file())
        clean = best_of(lambda: clean_output(out))
        opened = best_of(lambda: EmbeddingStore(out / "store", KEY).refresh())
    print(f"{n_files} files: clean_output {clean * 1e3:.1f} ms, store open {opened * 1e3:.1f} ms")
    print(f"ratio clean_output / store open: {clean / opened:.2f}")


if __name__ == "__main__":
    main()
