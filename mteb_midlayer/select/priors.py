"""Prior directions of the label-free rules, from the layer-by-layer paper's own results.

Source: ../shared/design/METRICS.md, "Linking metrics to task scores": Spearman correlation
across layers between each metric and the 32-task average, recomputed from the published result
files of Skean et al. 2025 ("Layer by Layer", arXiv 2502.02013), with the authors' definitions
(`curvature_abs`, LiDAR as its entropy, InfoNCE as the loss). `None` marks a cell the table
leaves empty ("-").

`_PRIOR_MAP` says how each of *our* (metric, variant) pairs reads a prior column: +1 when our
variant runs the same way as theirs, -1 when it runs opposite (our signed `curvature` against
their `curvature_abs`; our InfoNCE `mi_bound = 1 - loss / log N` against the loss). Our LiDAR
is exp of theirs: same ranks, same sign.
"""

from __future__ import annotations

#: Spearman of each metric (the authors' variants) with the task average, per model.
PRIOR_TABLE: dict[str, dict[str, float | None]] = {
    "pythia-410m": {
        "prompt_entropy": -0.64,
        "dataset_entropy": -0.68,
        "curvature_abs": +0.73,
        "infonce_loss": +0.66,
        "lidar": -0.61,
        "dime": -0.62,
    },
    "pythia-160m": {
        "prompt_entropy": -0.66,
        "dataset_entropy": -0.62,
        "curvature_abs": +0.65,
        "infonce_loss": +0.55,
        "lidar": -0.42,
        "dime": -0.47,
    },
    "llm2vec": {
        "prompt_entropy": None,
        "dataset_entropy": +0.82,
        "curvature_abs": None,
        "infonce_loss": -0.76,
        "lidar": -0.10,
        "dime": -0.23,
    },
}
#: The row used when `RESULTS` holds no other model to learn a direction from.
DEFAULT_PRIOR = "pythia-410m"

#: Our metric name -> {our variant or "*": (prior column, sign of ours relative to theirs)}.
_PRIOR_MAP: dict[str, dict[str, tuple[str, int]]] = {
    "prompt_entropy": {"*": ("prompt_entropy", +1)},
    "dataset_entropy": {"*": ("dataset_entropy", +1)},
    "curvature_abs": {"*": ("curvature_abs", +1)},
    # consecutive steps are mostly anti-aligned: curvature ~ pi - curvature_abs
    "curvature": {"*": ("curvature_abs", -1)},
    "infonce": {"loss": ("infonce_loss", +1), "mi_bound": ("infonce_loss", -1)},
    "lidar": {"*": ("lidar", +1)},
    "dime": {"*": ("dime", +1)},
}


class UnknownPriorError(ValueError):
    """`--prior` names no row of the table."""

    def __init__(self, row: str) -> None:
        self.row = row
        super().__init__(
            f"Unknown prior row {row!r}; choose one of {', '.join(PRIOR_TABLE)} "
            "(METRICS.md, prior directions)."
        )


def check_prior(row: str) -> str:
    """The table key for `row` (case-insensitive), else `UnknownPriorError`."""
    key = row.strip().lower()
    if key not in PRIOR_TABLE:
        raise UnknownPriorError(row)
    return key


def prior_direction(metric: str, variant: str, row: str = DEFAULT_PRIOR) -> str | None:
    """ "max" or "min" for our `(metric, variant)` under prior `row`; None when it has none."""
    mapping = _PRIOR_MAP.get(metric, {})
    entry = mapping.get(variant) or mapping.get("*")
    if entry is None:
        return None
    column, sign = entry
    value = PRIOR_TABLE[check_prior(row)].get(column)
    if value is None or value == 0:
        return None
    return "max" if value * sign > 0 else "min"
