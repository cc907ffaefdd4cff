"""Claim files: at most one process encodes a unit's texts at a time, across drivers and hosts.

A claim is a file created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ filesystems)
holding the holder's pid, host and time. A claim whose holder is a dead pid on this host, or
older than `stale_s`, is taken over (renamed away first, so two takers do not both win).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A claim older than this is stale even if its holder cannot be checked (another host).
DEFAULT_STALE_S = 6 * 3600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    time: float

    @classmethod
    def me(cls) -> Holder:
        return cls(pid=os.getpid(), host=socket.gethostname(), time=time.time())

    def stale_reason(self, stale_s: float, now: float | None = None) -> str | None:
        """Why this holder no longer holds its claim (`None`: it still may)."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"pid {self.pid} on {self.host} is gone"
        if now - self.time > stale_s:
            return f"claimed {now - self.time:.0f} s ago (> {stale_s:.0f} s)"
        return None


def read_holder(path: Path) -> Holder | None:
    """The claim's holder; `None` when the file is gone or torn (a holder killed mid-write)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return Holder(pid=int(data["pid"]), host=str(data["host"]), time=float(data["time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def try_claim(path: Path) -> bool:
    """Create the claim file atomically; False when someone else holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    me = Holder.me()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": me.pid, "host": me.host, "time": me.time}, f)
    return True


def release(path: Path) -> None:
    """Remove our own claim (a claim taken over from us meanwhile is left alone)."""
    holder = read_holder(path)
    if holder is not None and (holder.pid, holder.host) == (os.getpid(), socket.gethostname()):
        path.unlink(missing_ok=True)


def take_over_if_stale(path: Path, stale_s: float = DEFAULT_STALE_S, grace_s: float = 5.0) -> bool:
    """Remove a stale claim so it can be claimed again; True when the slot is free now.

    A torn claim (no readable holder) counts as stale once its file is `grace_s` old: its
    holder died between creating and writing it.
    """
    holder = read_holder(path)
    if holder is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age < grace_s:
            return False
    elif holder.stale_reason(stale_s) is None:
        return False
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # someone else took it over first
    moved = read_holder(aside)
    if holder is not None and moved != holder:
        # we moved a fresh claim made after our check: put it back if its slot is still free
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True
