"""Is the store and result root on a filesystem every worker sees? Ask each worker.

The driver writes a probe file holding a random token under each root; a worker reads it back
before it runs anything. A worker that cannot (no such file, another file of that name, no
permission) stops the run with the node and the path named. Nothing is guessed from the path:
`/scratch` is shared on one cluster and node-local on the next.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROBE_PREFIX = ".midlayer-probe-"


class SharedFilesystemError(ValueError):
    """A worker cannot see what the driver wrote: the root is not on a shared filesystem."""

    def __init__(self, node: str, path: Path | str, reason: str) -> None:
        self.node, self.path, self.reason = node, str(path), reason
        super().__init__(
            f"worker on node {node} cannot read the probe file {path} that the driver wrote "
            f"({reason}); the store and result root must be on a filesystem every worker sees "
            "(NFS, Lustre, GPFS...): pass an --output there"
        )

    def __reduce__(self):  # keep the fields across pickling (Ray, submitit)
        return (type(self), (self.node, self.path, self.reason))


@dataclass(frozen=True)
class Probe:
    """One probe file: its absolute path and the token the driver wrote into it."""

    path: str
    token: str


def write_probe(root: Path | str) -> Probe:
    """Write a fresh probe file under `root` (created if missing); the driver's side."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    path = root / f"{_PROBE_PREFIX}{token}"
    path.write_text(token)
    return Probe(str(path), token)


def probe_problem(probe: Probe) -> str | None:
    """None if this process reads the driver's token back; else why it cannot."""
    try:
        text = Path(probe.path).read_text()
    except FileNotFoundError:
        return "no such file here"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if text.strip() != probe.token:
        return "it holds another token: a different file of the same name"
    return None


def node_name() -> str:
    return socket.gethostname()


def check_probes(probes: Sequence[Probe], node: str | None = None) -> None:
    """Raise `SharedFilesystemError` naming this node and the first probe it cannot read."""
    for probe in probes:
        reason = probe_problem(probe)
        if reason is not None:
            raise SharedFilesystemError(node or node_name(), probe.path, reason)


@contextlib.contextmanager
def shared_probes(roots: Sequence[Path | str]) -> Iterator[list[Probe]]:
    """Probe files under `roots` for the duration of a run; removed afterwards."""
    probes = [write_probe(root) for root in roots]
    try:
        yield probes
    finally:
        for probe in probes:
            Path(probe.path).unlink(missing_ok=True)


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back: the result, or the exception (kept as an object, not as the
    text a scheduler would turn it into)."""

    value: Any = None
    error: BaseException | None = None


def run_checked(fn: Callable[[Any], Any], unit: Any, probes: Sequence[Probe]) -> Outcome:
    """Worker side of every remote unit: check the shared filesystem, then run `fn(unit)`."""
    try:
        check_probes(probes)
        return Outcome(value=fn(unit))
    except Exception as exc:
        return Outcome(error=exc)
