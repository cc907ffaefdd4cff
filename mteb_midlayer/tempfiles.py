"""Temp files of atomic writes: one naming scheme, and a safe cleanup of those a crash left.

Every atomic write here (result JSONs, run identities, plan texts, metric parquets, store
shards) goes through `atomic_write`: `temp_path(final)` in the same folder, fsynced, then
`os.replace`d into place; an error on the way removes the temp file. A
process killed between the two leaves its temp file behind. The name says who wrote it,
``.<name>.tmp-<host>-<pid>-<tag>``: hidden, and ending in neither ``.json`` nor ``.parquet``
so no reader (ours or mteb's globs) takes it for data. `clean_temp_files` removes such a file
only when no live writer can still need it: its pid is dead on this host, or it has not been
touched for `max_age_s` (a writer on another host cannot be checked; a live writer's file is
never that old, as it is renamed a moment after its last byte).
Exports build a whole folder the same way (`make_temp_folder`, ``.<name>.export-<host>-<pid>-
<tag>`` beside OUT) and `clean_temp_folders` removes those of dead writers by the same rule.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "OUTPUT_FOLDERS",
    "TempName",
    "atomic_write",
    "clean_output",
    "clean_temp_files",
    "clean_temp_folders",
    "folder_stale_reason",
    "host_tag",
    "make_temp_folder",
    "parse_temp_name",
    "pid_alive",
    "stale_reason",
    "temp_path",
]

logger = logging.getLogger(__name__)

#: A temp file untouched this long is debris even when its writer cannot be checked.
DEFAULT_MAX_AGE_S = 24 * 3600.0
#: The folders of an output root that our runs write (mteb results, the store with its
#: claims, the plan's texts, metric parquets); cleaning stays inside them, so an `--output`
#: that holds other things (a home folder) is never walked.
OUTPUT_FOLDERS = ("results", "store", "plan", "metrics")

_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
_CURRENT = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")
#: Names written by earlier versions: the store's (with host) and the results' and metrics'
#: (pid only, so their host is unknown and only their age can tell).
_LEGACY = (
    re.compile(r"^\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}-(?P<name>.+)$"),
    re.compile(r"^(?P<name>.+)\.tmp-(?P<pid>\d+)$"),
    re.compile(r"^\.tmp-(?P<pid>\d+)-(?P<name>.+)$"),
)


#: Work folders of exports (`make_temp_folder`), built beside the folder they become:
#: ``.<name>.<kind>-<host>-<pid>-<tag>``; earlier versions used `tempfile.mkdtemp`'s
#: ``.<name>.export-<8 random chars>`` (no writer recorded: only their age tells).
_FOLDER = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>export)-(?P<host>.+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$"
)
_FOLDER_LEGACY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>export)-(?P<tag>[a-z0-9_]{8})$")


def host_tag() -> str:
    """This host's name as it appears in temp file names (no path separators, at most 40)."""
    return _SAFE.sub("_", socket.gethostname())[:40] or "host"


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def temp_path(path: Path | str) -> Path:
    """Where to write `path`'s content before renaming it into place (same folder)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: Path | str, content: bytes | str | Callable[[BinaryIO], Any]) -> None:
    """Replace `path` whole or not at all: `content` (bytes, text as UTF-8, or a function that
    writes to the open binary file) goes to `temp_path(path)` in the same folder, is fsynced,
    then `os.replace`d into place. On any error (disk full, a failing writer, an interrupt)
    the temp file is removed, `path` is left as it was, and the error is raised."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode("utf-8") if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@dataclass(frozen=True)
class TempName:
    """Who wrote a temp file: `host` is None for names that do not say (older versions)."""

    name: str
    host: str | None
    pid: int


def parse_temp_name(name: str) -> TempName | None:
    """The writer of the temp file called `name`; `None` when it is not one of ours."""
    for pattern in (_CURRENT, *_LEGACY):
        m = pattern.match(name)
        if m:
            groups = m.groupdict()
            return TempName(groups["name"], groups.get("host"), int(groups["pid"]))
    return None


def stale_reason(path: Path, *, max_age_s: float, now: float | None = None) -> str | None:
    """Why the temp file at `path` is debris (`None`: a writer may still need it, or it is no
    temp file of ours)."""
    parsed = parse_temp_name(path.name)
    if parsed is None:
        return None
    if parsed.host == host_tag() and not pid_alive(parsed.pid):
        return f"its writer (pid {parsed.pid} on this host) is gone"
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return None
    return f"untouched for {age:.0f} s (> {max_age_s:.0f} s)" if age > max_age_s else None


def clean_temp_files(root: Path | str, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> list[Path]:
    """Remove the stale temp files (`stale_reason`) under `root`; returns what was removed.

    Run at the start of a run on an output folder. Safe beside live writers on this or other
    hosts sharing the folder: their files are never stale.
    """
    root = Path(root)
    removed = []
    if not root.is_dir():
        return removed
    now = time.time()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            reason = stale_reason(path, max_age_s=max_age_s, now=now)
            if reason is None:
                continue
            try:
                path.unlink()
            except OSError:
                continue  # gone already (another cleaner) or not ours to remove
            logger.info("Removed the stale temp file %s: %s.", path, reason)
            removed.append(path)
    return removed


def clean_output(output: Path | str, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> list[Path]:
    """`clean_temp_files` on each of `OUTPUT_FOLDERS` of the output root `output`."""
    removed = []
    for folder in OUTPUT_FOLDERS:
        removed += clean_temp_files(Path(output) / folder, max_age_s=max_age_s)
    return removed


def make_temp_folder(final: Path | str, kind: str = "export") -> Path:
    """A new hidden work folder beside `final` (same filesystem, so it can be renamed into
    place), named after its writer so that `clean_temp_folders` can tell when it is debris."""
    final = Path(final)
    folder = final.with_name(
        f".{final.name}.{kind}-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    folder.mkdir(mode=0o700)
    return folder


def _tree_mtime(folder: Path) -> float:
    """The latest modification time in a folder tree (a live writer touches some file)."""
    latest = folder.stat().st_mtime
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                latest = max(latest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue
    return latest


def folder_stale_reason(path: Path, *, max_age_s: float, now: float | None = None) -> str | None:
    """Why the work folder at `path` is debris (`None`: a writer may still need it, or it is
    no work folder of ours)."""
    m = _FOLDER.match(path.name)
    legacy = _FOLDER_LEGACY.match(path.name) if m is None else None
    if m is None and legacy is None:
        return None
    if m is not None and m["host"] == host_tag() and not pid_alive(int(m["pid"])):
        return f"its writer (pid {m['pid']} on this host) is gone"
    try:
        age = (time.time() if now is None else now) - _tree_mtime(path)
    except OSError:
        return None
    return f"untouched for {age:.0f} s (> {max_age_s:.0f} s)" if age > max_age_s else None


def clean_temp_folders(parent: Path | str, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> list[Path]:
    """Remove the stale work folders (`make_temp_folder`) directly in `parent`; returns what
    was removed. Safe beside live writers: their folders are never stale."""
    parent = Path(parent)
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for path in entries:
        if path.is_symlink() or not path.is_dir():
            continue
        reason = folder_stale_reason(path, max_age_s=max_age_s, now=now)
        if reason is None:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            logger.info("Removed the stale work folder %s: %s.", path, reason)
            removed.append(path)
    return removed
