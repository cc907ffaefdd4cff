"""Compare two output trees file by file: what the redesign (issue 22) must leave unchanged.

`python tools/compare_runs.py BEFORE AFTER` walks both trees (result folders, store, plan,
metric files, selection JSON) and compares each file they hold:

- JSON: equal after dropping what says *when* or *how long* (`evaluation_time`, `date`,
  `evaluation_phases`, `run_at`, `kg_co2_emissions`, `timings`), every number compared exactly;
- mteb's `run_settings.jsonl`: the same set of (parsed) lines;
- store shards (`store/<key>/shards/...`): shard files are named by when they were written, so
  the store is compared by content: per store key and namespace, every text hash's vectors
  (all layers) bit for bit;
- `.parquet`: the frames equal without `run_at`; anything else: the bytes equal.

Claims and temp files are skipped. Prints one line per difference and a summary; exit 1 when
anything differs or a file is on one side only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

VOLATILE = {
    "evaluation_time",
    "evaluation_phases",
    "date",
    "run_at",
    "kg_co2_emissions",
    "timings",
    "written_at",
}
SKIPPED_DIRS = {"claims"}


def _files(root: Path) -> set[str]:
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not any(p.startswith(".") or p in SKIPPED_DIRS for p in rel.parts):
            out.add(str(rel))
    return out


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _lines(path: Path) -> set[str]:
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.add(json.dumps(json.loads(line), sort_keys=True))
        except json.JSONDecodeError:
            out.add("unparseable: " + line)
    return out


def store_vectors(root: Path) -> dict[tuple[str, ...], bytes]:
    """`(store key, namespace..., text hash) -> the text's vectors` of every shard under root."""
    out: dict[tuple[str, ...], bytes] = {}
    for meta_path in sorted(root.glob("store/*/shards/**/*.json")):
        meta = json.loads(meta_path.read_text())
        data = np.load(meta_path.with_name(meta["data"]), allow_pickle=False)
        key = meta_path.relative_to(root).parts[1]
        axis = list(data.shape).index(meta["n"])
        for i, text_hash in enumerate(meta["text_hashes"]):
            vec = np.take(data, i, axis=axis)
            out[(key, *meta["namespace"], text_hash)] = vec.dtype.str.encode() + vec.tobytes()
    return out


def _is_shard(rel: str) -> bool:
    parts = Path(rel).parts
    return len(parts) > 2 and parts[0] == "store" and parts[2] == "shards"


def same(a: Path, b: Path) -> bool:
    if a.name == "run_settings.jsonl":
        return _lines(a) == _lines(b)
    if a.suffix == ".json":
        return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
    if a.suffix == ".npy":
        x, y = np.load(a, allow_pickle=False), np.load(b, allow_pickle=False)
        return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
    if a.suffix == ".parquet":
        x, y = (pd.read_parquet(p).drop(columns="run_at", errors="ignore") for p in (a, b))
        return x.equals(y)
    return a.read_bytes() == b.read_bytes()


def compare(before: Path, after: Path) -> tuple[int, list[str]]:
    left = {p for p in _files(before) if not _is_shard(p)}
    right = {p for p in _files(after) if not _is_shard(p)}
    problems = [f"only in {before}: {p}" for p in sorted(left - right)]
    problems += [f"only in {after}: {p}" for p in sorted(right - left)]
    both = sorted(left & right)
    problems += [f"differs: {p}" for p in both if not same(before / p, after / p)]
    vectors_a, vectors_b = store_vectors(before), store_vectors(after)
    if vectors_a != vectors_b:
        changed = sum(vectors_a.get(k) != vectors_b.get(k) for k in {*vectors_a, *vectors_b})
        problems.append(f"store: {changed} of {len(vectors_a)} texts' vectors differ")
    print(f"store: {len(vectors_a)} texts' vectors compared (every layer)")
    return len(both), problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__)
        return 2
    n, problems = compare(Path(argv[0]), Path(argv[1]))
    for line in problems:
        print(line)
    print(f"{n} files compared, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
