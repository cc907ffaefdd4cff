"""Toy units for the executor tests: picklable by reference, resumable like the real ones.

A `ToyUnit` writes `root/<name>.txt` once (a rerun skips a written unit, like a store shard or
a result file) and returns its square; `crash_once` makes its worker die by SIGKILL the first
time it runs (a marker file remembers it), as a killed worker would.

Below them, the helpers that run the sweep's own units (plan.py) through an executor and compare
the result files with the session's local MiniLM BIOSSES sweep (tests/conftest.py
`minilm_biosses`).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest


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


# ---- helpers of the executor tests


def toy_units(root: Path, n: int = 4, **flags) -> list[ToyUnit]:
    root.mkdir(parents=True, exist_ok=True)
    crash = flags.pop("crash", None)
    fail = flags.pop("fail", None)
    return [
        ToyUnit(f"u{i}", i, str(root), crash_once=(i == crash), fail=(i == fail)) for i in range(n)
    ]


def run_all(executor, units, *, gpu: bool) -> dict[str, object]:
    return {unit.name: result for unit, result in executor.map(run_toy_unit, units, gpu=gpu)}


SWEEP = dict(tasks=["BIOSSES"], layers="0,6", show_progress=False)


def result_files(output: Path) -> list[str]:
    """The mteb result files (and their identities) under a results root, relative."""
    skip = {"store", "plan", "submitit"}
    return sorted(
        str(p.relative_to(output))
        for p in output.rglob("*.json")
        if p.relative_to(output).parts[0] not in skip
    )


def scores(output: Path):
    from mteb_midlayer.frames import layer_results

    long = layer_results(output)
    return long.set_index(["task", "layer", "dim"])["score"].sort_index()


def planned(model: str, data_dir: Path, output: Path, **opts):
    """The sweep's plan for `output` (dry run), with the task texts written as a real run does."""
    from mteb_midlayer.plan import write_texts
    from mteb_midlayer.sweep import sweep

    plan = sweep(model, data_dir=data_dir, output=output, dry_run=True, **SWEEP, **opts)
    plan = plan.plan
    for unit in plan.encode:
        (texts,) = [t for t in plan.texts[unit.task] if t.prompt_type == unit.prompt_type]
        write_texts(Path(unit.texts_file), texts)
    return plan


def run_plan_on(executor, model: str, data_dir: Path, output: Path, **opts) -> dict:
    """The sweep's units for `output` (its dry-run plan, with the task texts written as a real
    run writes them), run through `executor`: encode units, then score units."""
    from mteb_midlayer.executors import run_encode_unit, run_score_unit

    plan = planned(model, data_dir, output, **opts)
    done = [*executor.map(run_encode_unit, plan.encode, gpu=True)]
    done += executor.map(run_score_unit, plan.score, gpu=False)
    return {unit.key: result for unit, result in done}


def assert_same_results(output: Path, reference: Path) -> None:
    assert result_files(output) == result_files(reference)
    got, want = scores(output), scores(reference)
    assert len(want) == 2 and list(got.index) == list(want.index)
    assert got.to_numpy() == pytest.approx(want.to_numpy(), abs=2e-6)
