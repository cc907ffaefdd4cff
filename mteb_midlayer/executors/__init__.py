"""Executors run a sweep's units (encode, score) somewhere: here, on Ray, or on Slurm.

Each has `name` and `map(fn, units, *, gpu)`, yielding every unit with its result or the
exception it raised, in completion order. `make_executor` builds one by name, so the CLI and
the Python API pick them the same way; Ray and submitit are imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .extras import MissingExtraError
from .probe import SharedFilesystemError

EXECUTORS = ("local", "ray", "submitit")


class UnknownExecutorError(ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def make_executor(name: str, *, roots: Sequence[Path | str] = (), **opts: Any) -> Any:
    """The executor called `name`, built from `opts`; `roots` (the result root and the store)
    are probed on every worker of a distributed executor.

    local: `opts` go to the local executor. ray: `address`, `num_gpus_per_encode`,
    `max_retries`, and `ray.init` keywords. submitit: `folder`, `partition`, `gpus_per_task`,
    `time`, `cluster`, `parallelism`, `slurm_options`.
    """
    if name == "local":
        from .local import LocalExecutor  # the u14 branch's

        return LocalExecutor(**opts)
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(roots=roots, **opts)
    if name == "submitit":
        from .slurm import SubmititExecutor

        return SubmititExecutor(roots=roots, **opts)
    raise UnknownExecutorError(name)


__all__ = [
    "EXECUTORS",
    "MissingExtraError",
    "SharedFilesystemError",
    "UnknownExecutorError",
    "make_executor",
]
