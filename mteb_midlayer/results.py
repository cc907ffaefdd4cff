"""Result files we can trust: written atomically, counted as finished only when complete.

mteb writes each slice's `TaskResult` to `<model>/<revision>/experiments/<slice>/<Task>.json`.
Here: `AtomicResultCache` makes that write a temp file + rename (a kill never leaves a torn or
0-byte result), and writes beside it a *run identity* (`identity/<Task>.identity.json`): what the folder
path does not already say (the task data's fingerprint, the prompts, the model's full spec).
`unfinished_reason` says why an existing result must be recomputed (unreadable, wrong task,
missing split or subset, a NaN score, another identity), or `None` when it stands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mteb

from .spec import excludes_prompt
from .tempfiles import atomic_write, temp_path

if TYPE_CHECKING:
    from .replay import StoreEncoder

__all__ = [
    "AtomicResultCache",
    "identity_path",
    "pending_slices",
    "read_identity",
    "task_fingerprint",
    "unfinished_reason",
    "write_atomic",
]

logger = logging.getLogger(__name__)

_IDENTITY_FOLDER = "identity"
#: Identity keys recorded for readers but not compared on resume: they do not change a score
#: (the layer count follows from the model's revision; the search backend moves scores at
#: rounding level only).
_RECORDED_ONLY = frozenset({"n_layers", "search_backend"})
#: What a key absent from an older identity file meant then.
_IDENTITY_DEFAULTS = {"final_norm": "last", "include_prompt": True}


def read_identity(result_path: Path) -> dict[str, Any] | None:
    """The run identity recorded beside a result file, or `None` when there is none readable."""
    try:
        data = json.loads(identity_path(Path(result_path)).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a fsynced temp file and a rename: all or nothing."""
    atomic_write(path, text)


def identity_path(result_path: Path) -> Path:
    """Where the run identity of a result file lives (not `*.json` of the slice folder, so
    mteb's own reader never takes it for a result)."""
    return result_path.parent / _IDENTITY_FOLDER / f"{result_path.stem}.identity.json"


def task_fingerprint(task: Any) -> str:
    """What the task's data is: a content fingerprint of its local folder (tasks read from
    --data-dir), else the Hub dataset revision mteb pins in the task's metadata."""
    folder = getattr(task, "local_data_dir", None)
    if folder is not None:
        from .model import folder_fingerprint

        return f"local-{folder_fingerprint(folder)}"
    dataset = getattr(task.metadata, "dataset", None) or {}
    return f"hub-{dataset.get('revision') or 'unknown'}"


#: The lock file of a result folder (hidden; no reader takes it for a result).
_LOCK_NAME = ".mteb-midlayer.lock"


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (an advisory `flock` on its lock file) while mteb
    updates the files every task of a slice shares: two workers scoring two tasks of one slice
    at once would otherwise both read `run_settings.jsonl`, and the later write drops (or
    tears) the other's line. Where `fcntl` is missing (Windows) it locks nothing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / _LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class AtomicResultCache(mteb.ResultCache):
    """An mteb `ResultCache` whose result files appear whole or not at all.

    mteb's `save_to_cache` is reused as is; only the path it writes the result JSON to is a
    temp name (`tempfiles.temp_path`: hidden, not `*.json`, so no reader sees it), renamed
    into place once written and fsynced. The run identity registered for that path
    (`expect`) is written first.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        self._identities: dict[Path, dict[str, Any]] = {}
        self._writing: tuple[Path, Path] | None = None  # (final path, its temp path)

    def expect(self, result_path: Path, identity: Mapping[str, Any]) -> None:
        """Record the identity to write beside `result_path` when mteb saves it."""
        self._identities[Path(result_path)] = dict(identity)

    def get_task_result_path(self, *args: Any, **kwargs: Any) -> Path:
        path = super().get_task_result_path(*args, **kwargs)
        if self._writing is not None and path == self._writing[0]:
            return self._writing[1]
        return path

    def save_to_cache(self, task_result: Any, model_name: Any, *args: Any, **kwargs: Any) -> None:
        final = super().get_task_result_path(task_result.task_name, model_name, *args)
        final.parent.mkdir(parents=True, exist_ok=True)
        identity = self._identities.get(final)
        if identity is not None:
            target = identity_path(final)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, json.dumps(identity, indent=2, sort_keys=True))
        tmp = temp_path(final)
        self._writing = (final, tmp)
        try:
            with _folder_lock(final.parent):  # mteb read-merge-writes run_settings.jsonl there
                super().save_to_cache(task_result, model_name, *args, **kwargs)
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            self._writing = None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def unfinished_reason(
    path: Path,
    task: Any,
    identity: Mapping[str, Any] | None = None,
) -> str | None:
    """Why the result file at `path` does not count as `task` done (`None`: it does).

    Finished = the JSON parses, names the task, holds every expected split and subset with a
    finite main score, the folder's `model_meta.json` parses, and (given `identity`) the
    recorded run identity equals it.
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
        return "not an mteb result (no scores)"
    name = task.metadata.name
    if data.get("task_name") != name:
        return f"holds task {data.get('task_name')!r}, expected {name!r}"
    subsets = set(getattr(task, "hf_subsets", None) or ["default"])
    for split in task.eval_splits:
        entries = data["scores"].get(split)
        if not entries:
            return f"split {split!r} missing"
        found = {e.get("hf_subset", "default") for e in entries if isinstance(e, dict)}
        if not subsets <= found:
            return f"split {split!r} lacks subset(s) {', '.join(sorted(subsets - found))}"
        bad = [e.get("hf_subset") for e in entries if not _finite(e.get("main_score"))]
        if bad:
            return f"split {split!r} has a NaN or missing main score ({', '.join(map(str, bad))})"
    meta = path.parent / "model_meta.json"
    try:
        json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"its {meta.name} is unreadable ({type(exc).__name__})"
    if identity is None:
        return None
    recorded = read_identity(path)
    if recorded is None:
        return "no run identity recorded (written by another version, or interrupted)"
    diffs = [
        f"{key}: {recorded.get(key, _IDENTITY_DEFAULTS.get(key))!r} -> {value!r}"
        for key, value in identity.items()
        if key not in _RECORDED_ONLY and recorded.get(key, _IDENTITY_DEFAULTS.get(key)) != value
    ]
    return f"computed with other settings ({'; '.join(diffs)})" if diffs else None


def _slice_identity(
    encoder: StoreEncoder, data: str, search_backend: str | None = None
) -> dict[str, Any]:
    """Everything a slice's score depends on, recorded beside its result and compared on
    resume (`unfinished_reason`), plus what is only recorded: the model's layer count
    (relative depth) and the retrieval search backend."""
    spec = encoder.source.lm.current_spec()
    return {
        "model": spec.name,
        "revision": spec.revision,
        "max_length": spec.max_length,
        "dtype": spec.dtype,
        "prompts": dict(encoder.model_prompts) if encoder.model_prompts else None,
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        "layer": encoder.layer,
        "dim": encoder.dim,
        "final_norm": encoder.final_norm,
        "include_prompt": not excludes_prompt(spec.include_prompt, encoder.model_prompts),
        "data": data,
        "n_layers": encoder.source.lm.n_layers,
        "search_backend": search_backend,
    } | ({"fuse": encoder.fuse_label} if encoder.fuse else {})


def pending_slices(
    task: Any,
    encoders: Sequence[StoreEncoder],
    cache: AtomicResultCache,
    search_backend: str | None = None,
    *,
    remove_stale: bool = True,
) -> list[StoreEncoder]:
    """The slices of `task` to (re)compute; a stale or broken result is removed (unless
    `remove_stale` is off, as in a dry run), with a warning naming the file and why."""
    data = task_fingerprint(task)
    pending = []
    for encoder in encoders:
        path = cache.get_task_result_path(task.metadata.name, encoder.mteb_model_meta)
        identity = _slice_identity(encoder, data, search_backend)
        cache.expect(path, identity)
        reason = unfinished_reason(path, task, identity)
        if reason is None:
            continue
        if reason != "missing" and remove_stale:
            logger.warning("Recomputing %s: %s.", path, reason)
            path.unlink()
        pending.append(encoder)
    return pending
