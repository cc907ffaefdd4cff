"""What the store's integrity check costs: a shard's first use in a process vs writing it.

Writes one full-size shard (by default the 256 MiB a sweep writes at most: 2048 texts, 13 layers,
width 2560), then times, in a fresh store instance, the first ``missing()`` (which checks the
shard's sha256 once), a second ``missing()`` (no check), and reading one layer. Prints the check
as a ratio of the write and of a one-layer read, side by side in one run.

    python benchmarks/store_checksum.py [--layers 13] [--texts 2048] [--width 2560] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from mteb_midlayer.store import EmbeddingStore, StoreKey

KEY = StoreKey(
    model="bench", revision="0", pooling="mean", prompt_type=None, max_length=8, dtype="float32"
)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--width", type=int, default=2560)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    arr = rng.standard_normal((args.layers, args.texts, args.width), dtype=np.float32)
    texts = [f"text {i}" for i in range(args.texts)]
    layers = list(range(args.layers))
    rows: dict[str, list[float]] = {"write": [], "check": [], "missing": [], "read": []}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as root:
            rows["write"].append(
                _timed(lambda root=root: EmbeddingStore(root, KEY).write("t", texts, arr, layers))
            )
            fresh = EmbeddingStore(root, KEY)
            len(fresh)  # index the marker outside the timing
            rows["check"].append(_timed(lambda f=fresh: f.missing(texts, [0])))
            rows["missing"].append(_timed(lambda f=fresh: f.missing(texts, [0])))
            rows["read"].append(_timed(lambda f=fresh: f.read(texts, args.layers // 2)))
    med = {k: statistics.median(v) for k, v in rows.items()}
    mib = arr.nbytes / 2**20
    print(f"shard: {args.layers} layers x {args.texts} texts x {args.width} = {mib:.0f} MiB")
    for name, value in med.items():
        print(f"  {name:8s} {value * 1000:8.1f} ms (median of {args.repeat})")
    check = med["check"] - med["missing"]
    print(f"check (sha256, once per shard and process): {mib / check:.0f} MiB/s")
    print(f"check / write         = {check / med['write']:.2f}")
    print(f"check / one-layer read = {check / med['read']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
