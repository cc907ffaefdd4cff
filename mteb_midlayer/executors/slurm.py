"""Slurm via submitit: the units go out as a job array (`map_array`), one array per kind of
unit (encode units ask for GPUs, score units for none).

Where no Slurm is found (no `srun` on PATH), submitit's own local executor runs the same
units as subprocesses of this machine, as its `AutoExecutor` does; `note` says which one runs
and the CLI prints it. Every job reads back the driver's probe file before it runs, so a node
that does not see the store and result root stops the run with its name and the path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .extras import require
from .probe import Outcome, run_checked, shared_probes

U = TypeVar("U")
R = TypeVar("R")


class SlurmTimeError(ValueError):
    """A `--slurm-time` that is none of Slurm's time formats."""


def parse_slurm_time(value: str | int) -> int:
    """Minutes (rounded up) from Slurm's formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    text = str(value).strip()
    try:
        days = 0
        if "-" in text:
            head, text = text.split("-", 1)
            days = int(head)
            parts = [int(p) for p in text.split(":")]
            if not 1 <= len(parts) <= 3:
                raise ValueError
            h, m, s = [*parts, 0, 0][:3]
        else:
            parts = [int(p) for p in text.split(":")]
            if len(parts) == 1:
                h, m, s = 0, parts[0], 0
            elif len(parts) == 2:
                h, m, s = 0, parts[0], parts[1]
            elif len(parts) == 3:
                h, m, s = parts
            else:
                raise ValueError
    except ValueError:
        raise SlurmTimeError(
            f"--slurm-time {value!r} is not a Slurm time: use minutes, H:MM:SS or D-HH:MM:SS"
        ) from None
    if min(days, h, m, s) < 0:
        raise SlurmTimeError(f"--slurm-time {value!r} is negative")
    minutes = math.ceil(days * 1440 + h * 60 + m + s / 60)
    if minutes < 1:
        raise SlurmTimeError(f"--slurm-time {value!r} is under a minute")
    return minutes


class SubmititExecutor:
    """Runs units as submitit jobs; yields `(unit, result or exception)` in completion order.

    `folder`: submitit's logs and pickles (on the shared filesystem for Slurm).
    `partition`, `gpus_per_task` (encode units; score units take none), `time`: the few flags
    a cluster user sets. `cluster`: None = what submitit detects ("slurm" or "local"); "debug"
    runs in this process. `parallelism`: jobs at once (Slurm: the array's throttle; local: how
    many subprocesses). `roots`: folders every job must see, probed before each unit.
    `slurm_options`: further `slurm_*` parameters of submitit (e.g. `{"slurm_account": "lab"}`).
    """

    name = "submitit"

    def __init__(
        self,
        folder: Path | str = "submitit",
        *,
        partition: str | None = None,
        gpus_per_task: int = 1,
        time: str | int = "60",
        cluster: str | None = None,
        parallelism: int | None = None,
        roots: Sequence[Path | str] = (),
        poll_s: float = 1.0,
        slurm_options: dict[str, Any] | None = None,
    ) -> None:
        if gpus_per_task < 0:
            raise ValueError(f"--slurm-gpus-per-task must be >= 0, got {gpus_per_task}.")
        if parallelism is not None and parallelism < 1:
            raise ValueError(f"parallelism must be >= 1, got {parallelism}.")
        self.submitit = require("submitit", executor="submitit", extra="slurm")
        self.timeout_min = parse_slurm_time(time)
        self.cluster = cluster or self.submitit.AutoExecutor.which()
        self.folder = Path(folder)
        self.partition = partition
        self.gpus_per_task = gpus_per_task
        self.parallelism = parallelism
        self.roots = [Path(r) for r in roots]
        self.poll_s = poll_s
        self.slurm_options = dict(slurm_options or {})

    @property
    def on_slurm(self) -> bool:
        return self.cluster == "slurm"

    @property
    def note(self) -> str:
        """One line saying where the units run."""
        if self.on_slurm:
            where = f"partition {self.partition}" if self.partition else "the default partition"
            return f"submitit: Slurm job arrays on {where}; logs in {self.folder}"
        return (
            f"submitit: no Slurm found (no srun on PATH); submitit's {self.cluster} executor runs "
            f"the units on this machine; logs in {self.folder}"
        )

    def shutdown(self, cancel: bool = False) -> None:
        """Nothing to release: every job ends with its unit (`map` cancels what it left)."""

    def _executor(self, gpu: bool) -> Any:
        """A submitit executor with the parameters for one kind of unit."""
        ex = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        gpus = self.gpus_per_task if gpu else 0
        params: dict[str, Any] = {
            "name": "midlayer-encode" if gpu else "midlayer-score",
            "timeout_min": self.timeout_min,
        }
        if self.on_slurm:
            params |= {
                "slurm_partition": self.partition,
                "slurm_gpus_per_task": gpus or None,
                "slurm_array_parallelism": self.parallelism,
            } | self.slurm_options
        elif self.cluster == "local":
            import torch

            params["gpus_per_node"] = min(gpus, torch.cuda.device_count())
        ex.update_parameters(**params)
        return ex

    def map(
        self, fn: Callable[[U], R], units: Sequence[U], *, gpu: bool
    ) -> Iterator[tuple[U, R | BaseException]]:
        """Submit the units now, then yield each as its job ends. On Slurm, one job array;
        locally, at most `parallelism` (default 2) subprocesses at a time (the rest are
        submitted as those end). Closing the iterator early cancels the jobs still running;
        the probe files are removed once the iterator ends."""
        units = list(units)
        if not units:
            return iter(())
        executor = self._executor(gpu)
        probes = shared_probes(self.roots)
        written = probes.__enter__()
        try:
            if self.on_slurm:
                n = len(units)
                jobs = executor.map_array(run_checked, [fn] * n, units, [written] * n)
                running = list(zip(units, jobs, strict=True))
                queue: list[Any] = []
            else:
                running, queue = [], list(units)
                self._top_up(executor, fn, written, running, queue)
        except BaseException:
            probes.__exit__(None, None, None)
            raise
        return self._collect(executor, fn, written, running, queue, probes)

    def _top_up(self, executor: Any, fn: Any, probes: Any, running: list, queue: list) -> None:
        """Locally: start queued units until `parallelism` jobs run."""
        while queue and len(running) < (self.parallelism or 2):
            unit = queue.pop(0)
            running.append((unit, executor.submit(run_checked, fn, unit, probes)))

    def _collect(
        self, executor: Any, fn: Any, written: Any, running: list, queue: list, probes: Any
    ) -> Iterator[tuple[Any, Any]]:
        try:
            while running:
                done = [(u, j) for u, j in running if j.done()]
                if not done:
                    time.sleep(self.poll_s)
                    continue
                running[:] = [(u, j) for u, j in running if not any(j is d for _, d in done)]
                for unit, job in done:
                    yield unit, _result(job)
                self._top_up(executor, fn, written, running, queue)
        finally:
            for _, job in running:
                job.cancel(check=False)
            probes.__exit__(None, None, None)


def _result(job: Any) -> Any:
    """The unit's result, the exception it raised, or submitit's error for a dead job."""
    try:
        outcome = job.result()
    except Exception as exc:  # killed, timed out, failed to unpickle: the job's own error
        return exc
    if isinstance(outcome, Outcome):
        return outcome.error if outcome.error is not None else outcome.value
    return outcome
