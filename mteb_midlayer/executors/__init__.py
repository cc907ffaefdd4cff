"""Where a sweep's work units run: in this process, in local worker processes, or on an engine.

`base.Executor` is the interface (`map` units to results in completion order, `shutdown`);
`local` holds `SerialExecutor` (the default) and `ProcessExecutor`; `ray` the `RayExecutor`,
`slurm` the `SubmititExecutor` (Slurm job arrays). The engines know nothing of the units; the
work functions `run_encode_unit`, `run_score_unit` and `run_metrics_unit` are module-level in
`work` so any engine can pickle them. `make_executor`
builds one by name, so the CLI and the Python API pick them the same way; Ray and submitit are
imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import Executor
from .extras import MissingExtraError
from .probe import SharedFilesystemError
from .work import (
    EncodeReport,
    MetricsReport,
    ScoreReport,
    run_encode_unit,
    run_metrics_unit,
    run_score_unit,
)

EXECUTORS = ("local", "ray", "submitit")


class UnknownExecutorError(ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def make_executor(name: str, *, roots: Sequence[Path | str] = (), **opts: Any) -> Any:
    """The executor called `name`, built from `opts`; `roots` (the result root and the store)
    are probed on every worker of a distributed executor.

    local: `SerialExecutor` (this process), or with `jobs` or `devices` a `ProcessExecutor`. ray: `address`, `num_gpus_per_encode`,
    `max_retries`, and `ray.init` keywords. submitit: `folder`, `partition`, `gpus_per_task`,
    `time`, `cluster`, `parallelism`, `slurm_options`.
    """
    if name == "local":
        from .local import ProcessExecutor, SerialExecutor

        if opts.get("jobs") or opts.get("devices"):
            return ProcessExecutor(**opts)
        if opts:
            raise ValueError(f"the local executor takes jobs or devices, got {sorted(opts)}")
        return SerialExecutor()
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(roots=roots, **opts)
    if name == "submitit":
        from .slurm import SubmititExecutor

        return SubmititExecutor(roots=roots, **opts)
    raise UnknownExecutorError(name)


#: Each engine's options, under their command-line names (`--ray-address`, `--slurm-time`...).
ENGINE_FLAGS = {
    "ray": {"ray_address": "address"},
    "submitit": {f"slurm_{k}": k for k in ("partition", "gpus_per_task", "time", "folder")},
}


def executor_from_flags(
    name: str, output: Path, *, devices: str | None = None, **flags: Any
) -> Any | None:
    """The executor a command line chose (`--executor NAME` and its engine `flags`, None where
    not given), or None for the default local run. An engine's flag given with another engine,
    or `--devices` with an engine, is refused: it would be silently ignored."""
    mine = ENGINE_FLAGS.get(name, {})
    if stray := [f for f, v in flags.items() if v is not None and f not in mine]:
        given = ", ".join("--" + f.replace("_", "-") for f in stray)
        raise ValueError(f"{given} only apply with another --executor (got {name})")
    if name == "local":
        return None
    if devices:
        raise ValueError(
            f"--devices is for the local executor (one worker per GPU here); --executor "
            f"{name} places each encode unit on a GPU itself"
        )
    opts = {kw: flags[f] for f, kw in mine.items() if flags.get(f) is not None}
    if name == "submitit":
        opts.setdefault("folder", Path(output) / "submitit")
    return make_executor(name, roots=[output], **opts)


__all__ = [
    "ENGINE_FLAGS",
    "EXECUTORS",
    "EncodeReport",
    "Executor",
    "MetricsReport",
    "MissingExtraError",
    "ScoreReport",
    "SharedFilesystemError",
    "UnknownExecutorError",
    "executor_from_flags",
    "make_executor",
    "run_encode_unit",
    "run_metrics_unit",
    "run_score_unit",
]
