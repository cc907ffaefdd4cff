"""Wall time of a sweep scored on one core against one on N cores, side by side in one run.

Sweeps the packaged MiniLM (every layer) over a few tasks of the shared data, including a
classification task, once with `jobs=1` (every slice scored in the driver, one after another)
and once with `jobs=N` (slices scored in N worker processes while the driver encodes the next
task), each into a fresh output, and prints wall times, their ratio, the share of the time
spent planning / encoding / scoring, and whether the scores are bit-identical.

    python benchmarks/sweep_scoring.py [--jobs N] [--tasks BIOSSES,STSBenchmark,...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mteb_midlayer import sweep
from mteb_midlayer.devices import available_cores
from mteb_midlayer.model import resolve_source

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mteb"
TASKS = "BIOSSES,STSBenchmark,Banking77Classification"


def scores(out: Path) -> dict[str, dict]:
    return {
        f"{p.parent.name}/{p.stem}": json.loads(p.read_text())["scores"]
        for p in (out / "results").rglob("*.json")
        if p.parent.name.startswith("dim_") and p.name != "model_meta.json"
    }


def run(model: str, tasks: list[str], jobs: int, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    table = sweep(model, tasks=tasks, data_dir=DATA, layers="all", output=out, jobs=jobs,
                  device="cpu", show_progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    if table.failures:
        raise SystemExit(f"failures: {table.failures}")
    return {"wall_s": wall, "n_slices": len(table.plan.score), **table.timings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=available_cores())
    ap.add_argument("--tasks", default=TASKS)
    args = ap.parse_args()
    model = resolve_source("minilm")[0]
    tasks = args.tasks.split(",")
    print(f"MiniLM, all 7 layers, tasks {tasks}; {available_cores()} cores available")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in (1, args.jobs):
            rows[jobs] = run(model, tasks, jobs, Path(tmp) / f"jobs{jobs}")
        same = scores(Path(tmp) / "jobs1") == scores(Path(tmp) / f"jobs{args.jobs}")
    print(f"{'jobs':>4} {'wall s':>8} {'plan s':>7} {'encode s':>9} {'score s*':>9} "
          f"{'plan %':>7} {'encode %':>9} {'score %':>8}")  # fmt: skip
    for jobs, r in rows.items():
        wall = r["wall_s"]
        print(
            f"{jobs:>4} {wall:8.1f} {r['plan_s']:7.1f} {r['encode_s']:9.1f} {r['score_s']:9.1f} "
            f"{100 * r['plan_s'] / wall:6.0f}% {100 * r['encode_s'] / wall:8.0f}% "
            f"{100 * r['score_s'] / wall:7.0f}%"
        )
    ratio = rows[1]["wall_s"] / rows[args.jobs]["wall_s"]
    print(f"speed-up jobs={args.jobs} over jobs=1: {ratio:.2f}x; scores bit-identical: {same}")
    print("* score s: summed over slices (workers overlap, so with jobs>1 it can exceed wall)")


if __name__ == "__main__":
    main()
