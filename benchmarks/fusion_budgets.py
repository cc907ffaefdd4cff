"""Best single layer against best slice (fusions included) under every layer budget.

Reads a results folder of `sweep --fuse ...` and prints, per `--max-layer` budget, what `select`
picks with and without the fused slices, and the gain (docs/fusion.md):

    python benchmarks/fusion_budgets.py RESULTS
"""

from __future__ import annotations

import sys

import pandas as pd

from mteb_midlayer import frames
from mteb_midlayer.select import Budget, select_frames


def main(root: str) -> None:
    scores = frames.scores_frame(root)
    n_layers = int(scores["n_layers"].max())
    budgets = [Budget(max_layer=b) for b in range(1, n_layers + 1)]
    with_fusions = select_frames(scores, pd.DataFrame(), budgets=budgets)
    layers_only = select_frames(frames.single_layers(scores), pd.DataFrame(), budgets=budgets)
    rows = []
    for label in ["none", *(b.label for b in budgets)]:
        best, plain = with_fusions.chosen(label), layers_only.chosen(label)
        if best is None or plain is None:
            continue
        rows.append(
            {
                "budget": label,
                "best layer": plain["layer"],
                "score": round(100 * plain["score"], 2),
                "best slice": best["fuse"] or best["layer"],
                "blocks": best["layer"],
                "slice score": round(100 * best["score"], 2),
                "gain": round(100 * (best["score"] - plain["score"]), 2),
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main(sys.argv[1])
