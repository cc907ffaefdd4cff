"""Toy units for the executor tests: picklable by reference, resumable like the real ones.

A `ToyUnit` writes `root/<name>.txt` once (a rerun skips a written unit, like a store shard or
a result file) and returns its square; `crash_once` makes its worker die by SIGKILL the first
time it runs (a marker file remembers it), as a killed worker would.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToyUnit:
    name: str
    value: int
    root: str
    crash_once: bool = False
    fail: bool = False


class ToyUnitError(ValueError):
    pass


def run_toy_unit(unit: ToyUnit) -> int:
    """Write `value**2` to `root/name.txt` unless already there; return it with the pid."""
    out = Path(unit.root) / f"{unit.name}.txt"
    if out.exists():
        return int(out.read_text())
    if unit.fail:
        raise ToyUnitError(f"unit {unit.name} failed on purpose")
    if unit.crash_once:
        marker = Path(unit.root) / f"{unit.name}.crashed"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(str(unit.value**2))
    tmp.replace(out)  # write-once: a reader sees the whole file or none
    return unit.value**2


def crash_first(fn, marker_dir: str, unit):
    """Run `fn(unit)`, but the first call anywhere (a marker file decides) kills its own worker
    by SIGKILL first: a worker dying in the middle of a sweep."""
    marker = Path(marker_dir) / "crashed"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return fn(unit)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


class CrashFirstExecutor:
    """Wraps an executor so that the first unit of the first `map` kills its worker."""

    def __init__(self, inner, marker_dir: str) -> None:
        self.inner, self.marker_dir, self.name = inner, marker_dir, inner.name

    def map(self, fn, units, *, gpu: bool):
        import functools

        return self.inner.map(functools.partial(crash_first, fn, self.marker_dir), units, gpu=gpu)
