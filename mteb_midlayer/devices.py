"""The machine this process runs on: its cores and the OpenMP setting that shares them well.

A bottom module (standard library only), so the executors and the metrics count cores the
same way, and the CLI and the worker pools set OpenMP's waiting policy in one place.
"""

from __future__ import annotations

import os


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
