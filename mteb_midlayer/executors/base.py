"""The executor interface: where units run, whatever they are.

An `Executor` maps a work function over units and yields each unit with its result or the
exception it raised, in completion order. The engines (`local`, `ray`, `slurm`) know nothing of
what a unit does; the work functions they run are in `work`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

U = TypeVar("U")
R = TypeVar("R")


class Executor(Protocol):
    """Runs units somewhere: this process, local workers, a Ray cluster, a Slurm array."""

    name: str

    def map(
        self, fn: Callable[[U], R], units: Sequence[U], *, gpu: bool
    ) -> Iterator[tuple[U, R | BaseException]]:
        """Yield `(unit, fn(unit) or the exception it raised)` in completion order.

        `gpu=True` for encode units (they need an accelerator when there is one). Work is
        submitted when `map` is called, so several maps can be in flight at once.
        """
        ...

    def shutdown(self, cancel: bool = False) -> None:
        """Release the workers once the run is over (`cancel`: drop units not started)."""
        ...
