"""Claim files: at most one process encodes a unit's texts at a time, across drivers and hosts.

A claim is a file created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ filesystems)
holding the holder's pid, host, time and heartbeat interval. While the unit is held
(`holding`), a daemon thread touches the file's mtime every `heartbeat_s`: the mtime is the
holder's last heartbeat. A claim is stale, and taken over (renamed away first, so two takers
do not both win), when

- its holder is on this host: its pid is gone (or, the pid alive but reused by another
  process, its heartbeat stopped);
- its holder is on another host: its heartbeat is older than `heartbeat_stale_s` (default
  5 min; at least 3 of the holder's own intervals), so a dead host's unit is redone within
  minutes, not hours. The hosts' clocks must agree to well within that (NTP does);
- it carries no heartbeat (written by an older version): it is older than `stale_s` (6 h).

A holder whose claim was taken over (it was cut off longer than `heartbeat_stale_s`) stops its
heartbeat and leaves the new claim alone; what it still writes to the store is harmless
(shards are write-once, a text written twice is read once).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..tempfiles import pid_alive

#: A claim without heartbeat older than this is stale even if its holder cannot be checked.
DEFAULT_STALE_S = 6 * 3600.0
#: How often a holder refreshes its claim (seconds).
DEFAULT_HEARTBEAT_S = 30.0
#: A claim whose last heartbeat is older than this is stale (another host, or a reused pid).
DEFAULT_HEARTBEAT_STALE_S = 300.0
#: The stale limit is at least this many of the holder's own heartbeat intervals.
_MIN_MISSED_BEATS = 3


@dataclass(frozen=True)
class _Holder:
    """Who holds a claim; `heartbeat_s` is None for a holder that does not beat (older ones)."""

    pid: int
    host: str
    time: float
    heartbeat_s: float | None = None

    @classmethod
    def me(cls, heartbeat_s: float | None = None) -> _Holder:
        return cls(os.getpid(), socket.gethostname(), time.time(), heartbeat_s)

    def is_me(self) -> bool:
        return (self.pid, self.host) == (os.getpid(), socket.gethostname())

    def stale_reason(
        self,
        stale_s: float = DEFAULT_STALE_S,
        now: float | None = None,
        *,
        beat: float | None = None,
        heartbeat_stale_s: float = DEFAULT_HEARTBEAT_STALE_S,
    ) -> str | None:
        """Why this holder no longer holds its claim (`None`: it still may).

        `beat`: the time of its last heartbeat (the claim file's mtime).
        """
        now = time.time() if now is None else now
        local = self.host == socket.gethostname()
        if local and not pid_alive(self.pid):
            return f"pid {self.pid} on {self.host} is gone"
        if self.heartbeat_s is not None and beat is not None:
            limit = max(heartbeat_stale_s, _MIN_MISSED_BEATS * self.heartbeat_s)
            if now - beat > limit:
                return f"no heartbeat from pid {self.pid} on {self.host} for {now - beat:.0f} s"
            return None
        if now - self.time > stale_s:
            return f"claimed {now - self.time:.0f} s ago (> {stale_s:.0f} s)"
        return None


def read_holder(path: Path) -> _Holder | None:
    """The claim's holder; `None` when the file is gone or torn (a holder killed mid-write)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        beat = data.get("heartbeat_s")
        return _Holder(
            pid=int(data["pid"]),
            host=str(data["host"]),
            time=float(data["time"]),
            heartbeat_s=float(beat) if beat is not None else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def try_claim(path: Path, heartbeat_s: float | None = DEFAULT_HEARTBEAT_S) -> bool:
    """Create the claim file atomically; False when someone else holds it.

    `heartbeat_s` is recorded so others know how often to expect a heartbeat: the caller
    must then hold the claim through `holding` (or beat it itself); None for no heartbeat.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    me = _Holder.me(heartbeat_s)
    record: dict[str, Any] = {"pid": me.pid, "host": me.host, "time": me.time}
    if heartbeat_s is not None:
        record["heartbeat_s"] = heartbeat_s
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    return True


def release(path: Path) -> None:
    """Remove our own claim (a claim taken over from us meanwhile is left alone)."""
    holder = read_holder(path)
    if holder is not None and holder.is_me():
        path.unlink(missing_ok=True)


class Heartbeat(threading.Thread):
    """Touches our claim's mtime every `interval_s` until stopped, or until the claim is no
    longer ours (taken over, or released) at two beats in a row: then `lost` says so and the
    thread ends. (One miss is forgiven: a taker that finds the claim beaten while it moves it
    aside puts it back.)"""

    def __init__(self, path: Path, interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"heartbeat_s must be > 0 seconds, got {interval_s!r}")
        super().__init__(name=f"claim-heartbeat:{path.name}", daemon=True)
        self.path, self.interval_s = path, interval_s
        self.beats = 0
        self.lost = False
        self._stop_event = threading.Event()

    def beat(self) -> bool:
        """Refresh the claim once; False when it is not ours (now)."""
        holder = read_holder(self.path)
        if holder is None or not holder.is_me():
            return False
        try:
            os.utime(self.path)
        except FileNotFoundError:
            return False
        self.beats += 1
        return True

    def run(self) -> None:
        missed = 0
        while not self._stop_event.wait(self.interval_s):
            missed = 0 if self.beat() else missed + 1
            if missed >= 2:
                self.lost = True
                return

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()


@contextlib.contextmanager
def holding(path: Path, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> Iterator[Heartbeat]:
    """Hold a claim made by `try_claim(path, heartbeat_s)`: beat it while the block runs, then
    stop beating and release it (also when the block raises)."""
    heart = Heartbeat(path, heartbeat_s)
    heart.start()
    try:
        yield heart
    finally:
        heart.stop()
        release(path)


def take_over_if_stale(
    path: Path,
    stale_s: float = DEFAULT_STALE_S,
    grace_s: float = 5.0,
    *,
    heartbeat_stale_s: float = DEFAULT_HEARTBEAT_STALE_S,
) -> bool:
    """Remove a stale claim so it can be claimed again; True when the slot is free now.

    A torn claim (no readable holder) counts as stale once its file is `grace_s` old: its
    holder died between creating and writing it.
    """
    holder = read_holder(path)
    beat = _mtime(path)
    if beat is None:
        return True
    if holder is None:
        if time.time() - beat < grace_s:
            return False
    elif holder.stale_reason(stale_s, beat=beat, heartbeat_stale_s=heartbeat_stale_s) is None:
        return False
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)  # keeps the mtime: a heartbeat since our check shows below
    except FileNotFoundError:
        return True  # someone else took it over first
    if holder is not None and (read_holder(aside) != holder or _mtime(aside) != beat):
        # we moved a fresh claim (made, or beaten, after our check): put it back if its slot
        # is still free
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True
