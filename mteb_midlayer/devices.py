"""The machine this process runs on: its cores and the OpenMP setting that shares them well.

A bottom module (standard library only at import; torch only inside `parse_devices`), so the
executors and the metrics count cores the same way, the CLI and the worker pools set OpenMP's
waiting policy in one place, and `sweep` and `layer_metrics` read `--devices` alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, not the
    machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def passive_omp_wait() -> None:
    """Ask OpenMP threads to sleep, not spin, while they wait; a user's own setting wins.

    Spinning threads make LAPACK's eigensolvers collapse when the cores are shared (a
    1000 x 1000 eigvalsh: 0.17 s passive vs 15.9 s spinning on a busy 2-core machine). OpenMP
    reads the variable once, when torch loads it, so this is called by what starts work (the
    CLI before it imports torch, the worker pools before they spawn, the package's lazy API
    before it loads the pipeline), never when a module is merely imported.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_devices(devices: Sequence[str] | str | None) -> list[str] | None:
    """``"cuda:0,cuda:1"`` -> one encode worker per entry (`None`: encode in this process)."""
    if devices is None:
        return None
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    out = [d.strip() for d in items if d.strip()]
    if not out:
        raise ValueError("--devices names no device; give e.g. cuda:0,cuda:1.")
    import torch  # here: importing this module stays light (st_modules, the CLI's first line)

    for device in out:
        try:
            parsed = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"--devices: {device!r} is not a device ({exc}).") from None
        _check_device_present(parsed, device)
    return out


def _check_device_present(device: Any, given: str) -> None:
    """A CUDA (or MPS) device (a `torch.device`) this machine lacks is a one-line `ValueError`
    before any work, not a traceback per task from a worker that cannot start on it."""
    import torch

    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (device.index is None or device.index < count):
            return
        have = f"cuda:0..cuda:{count - 1}" if count > 1 else "cuda:0" if count else "no CUDA device"
        raise ValueError(
            f"--devices: {given} is not on this machine (it has {have}); name devices it has, "
            "or leave --devices out to encode in this process."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"--devices: {given} is not on this machine (no MPS); leave --devices out."
        )
