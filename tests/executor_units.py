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
