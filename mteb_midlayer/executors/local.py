"""Executors on this machine: in the calling process, or in a pool of worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import multiprocessing.connection
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ..devices import available_cores, passive_omp_wait

U = TypeVar("U")
R = TypeVar("R")


class SerialExecutor:
    """Each unit in this process, one after another, as it is asked for (today's behaviour)."""

    name = "serial"

    def map(
        self, fn: Callable[[U], R], units: Sequence[U], *, gpu: bool
    ) -> Iterator[tuple[U, R | BaseException]]:
        for unit in units:
            try:
                yield unit, fn(unit)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                yield unit, exc

    def shutdown(self, cancel: bool = False) -> None:
        pass


def _limit_threads(n: int = 1) -> None:
    """One torch/BLAS thread per worker: N workers on N cores, not N x N threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - sklearn brings threadpoolctl
        pass


def _exit_with_parent() -> None:
    """End this worker when the driver dies (a killed driver must not leave idle workers)."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        mp.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _init_worker(threads: int, devices: Any) -> None:
    _exit_with_parent()
    _limit_threads(threads)
    # the work functions' module: its imports (seconds: torch, mteb) are paid while the driver
    # still plans, and it keeps this worker's device
    from . import work

    if devices is not None:
        work.set_device(devices.get())


def _started() -> int:
    return os.getpid()


class ProcessExecutor:
    """`jobs` worker processes (`spawn`, one torch/BLAS thread each).

    With `devices` (e.g. ``["cuda:0", "cuda:1"]``) there is one worker per device and each
    worker's encode units run on its own device. Work is submitted when `map` is called.
    """

    name = "process"

    def __init__(
        self, jobs: int | None = None, *, devices: Sequence[str] | None = None, threads: int = 1
    ) -> None:
        if devices is not None and not devices:
            raise ValueError("devices must name at least one device, e.g. cuda:0,cuda:1.")
        self.devices = list(devices) if devices else None
        self.jobs = len(self.devices) if self.devices else (jobs or available_cores())
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}.")
        passive_omp_wait()  # inherited by the workers, before they load torch
        ctx = mp.get_context("spawn")
        queue = None
        if self.devices:
            queue = ctx.Queue()
            for device in self.devices:
                queue.put(device)
        self._pool = cf.ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(threads, queue),
        )
        # start every worker now, so their start-up overlaps the driver's planning/encoding
        self._warm = [self._pool.submit(_started) for _ in range(self.jobs)]

    def map(
        self, fn: Callable[[U], R], units: Sequence[U], *, gpu: bool
    ) -> Iterator[tuple[U, R | BaseException]]:
        futures = {self._pool.submit(fn, unit): unit for unit in units}
        return self._collect(futures)

    @staticmethod
    def _collect(futures: dict[cf.Future, Any]) -> Iterator[tuple[Any, Any]]:
        for future in cf.as_completed(futures):
            exc = future.exception()
            yield futures[future], (exc if exc is not None else future.result())

    def shutdown(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(cancel=exc[0] is not None)
