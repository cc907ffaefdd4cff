"""Where a sweep's work units run: in this process, in local worker processes, or on an engine.

`base.Executor` is the interface (`map` units to results in completion order); `local` holds
`SerialExecutor` (the default) and `ProcessExecutor`. The work functions `run_encode_unit` and
`run_score_unit` (and `run_metrics_unit`) are module-level in `base` so any engine can pickle them.
"""

from .base import (
    EncodeReport,
    Executor,
    ScoreReport,
    run_encode_unit,
    run_metrics_unit,
    run_score_unit,
)

__all__ = [
    "EncodeReport",
    "Executor",
    "ScoreReport",
    "run_encode_unit",
    "run_metrics_unit",
    "run_score_unit",
]
