"""A real checkpoint series on CPU: does a layer's score move with training steps?

Trains a tiny character-level BERT (2 layers, width 32, seed 0) contrastively on the
STSBenchmark pairs scored >= 4 of the shared data, saving `checkpoint-<step>` every 50 steps
(step 0 = initial weights), then runs `sweep_series` over `run/checkpoint-*` on STSBenchmark
and BIOSSES, `metrics_series` on BIOSSES, and publishes the leaderboard with its checkpoint x
layer heatmaps. Prints the checkpoint x layer table of the average score and how many times
each task's texts were recorded (once per series). Output measured: docs/checkpoints.md.

    python benchmarks/checkpoint_trend.py [--out /tmp/checkpoint_trend] [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(key, "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mteb_midlayer.frames import layer_scores, metrics_frame, scores_frame  # noqa: E402
from mteb_midlayer.leaderboard import publish  # noqa: E402
from mteb_midlayer.series import metrics_series, sweep_series  # noqa: E402
from tests.series_training import train_series  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "mteb"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/checkpoint_trend"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--save-every", type=int, default=50)
    args = ap.parse_args()
    t0 = time.perf_counter()
    if not (args.out / "run" / f"checkpoint-{args.steps}").is_dir():  # rerun: reuse the series
        train_series(
            args.out / "run", DATA, steps=args.steps, save_every=args.save_every,
            hidden=32, max_length=64,
        )  # fmt: skip
    t_train = time.perf_counter() - t0
    results = args.out / "results"
    t0 = time.perf_counter()
    result = sweep_series(
        str(args.out / "run" / "checkpoint-*"),
        tasks=["STSBenchmark", "BIOSSES"],
        data_dir=DATA,
        output=results,
        show_progress=False,
    )
    t_sweep = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics_series(
        str(args.out / "run" / "checkpoint-*"),
        tasks=["BIOSSES"],
        data_dir=DATA,
        output=results,
        n=100,
        metrics="dataset_entropy,effective_rank,curvature",
        show_progress=False,
    )
    t_metrics = time.perf_counter() - t0
    scores = scores_frame(results)
    avg = layer_scores(scores, by_type=False)
    steps = scores.drop_duplicates("revision").set_index("revision")["step"]
    avg["step"] = avg["revision"].map(steps)
    print("Average main score (STSBenchmark, BIOSSES), rows: step, columns: layer")
    print(avg.pivot_table(index="step", columns="layer", values="score").round(4).to_string())
    print("\nPer task at the last layer:")
    table = result.scores
    last = table[table["layer"] == table["layer"].max()]
    print(last[["checkpoint", "step", "STSBenchmark", "BIOSSES", "mean"]].round(4).to_string())
    print(f"\ntexts recorded: {result.recorded.n_recorded} (tasks: 2, checkpoints: "
          f"{table['checkpoint'].nunique()})")  # fmt: skip
    paths = publish(scores, metrics_frame(results), args.out / "board", benchmark="trend")
    print("plots:", ", ".join(p.name for p in paths if p.suffix == ".png"))
    print(f"\ntrain {t_train:.0f} s, sweep {t_sweep:.0f} s, metrics {t_metrics:.0f} s")


if __name__ == "__main__":
    main()
