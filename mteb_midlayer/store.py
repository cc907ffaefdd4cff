"""Content-addressed store of pooled embeddings: one forward pass serves every layer and dim.

On-disk layout (one directory per configuration)::

    <root>/<key.digest()>/config.json                 # the StoreKey, human-readable
    <root>/<key.digest()>/shards/<namespace...>/<id>.npy   # float32 (n_layers, n, D)
    <root>/<key.digest()>/shards/<namespace...>/<id>.json  # commit marker: layers, text hashes, sha256
    <root>/<key.digest()>/quarantine/...                # shards that failed their check, moved aside

A shard is visible only once its ``.json`` marker exists; the marker is written last, and every
file is written to a hidden temp file (`tempfiles.temp_path`) in the same directory, fsynced
and ``os.replace``d into place. A SIGKILL at any moment therefore leaves either a complete
shard or debris that readers ignore (temp files, an ``.npy`` without its marker), which
:meth:`EmbeddingStore.cleanup` removes once it is safe to do so.

Damage no atomic write produces (bytes overwritten or zeroed later, a bad ``.npy`` header, a
marker that does not parse) is caught before any row of a shard is served: the marker carries
the sha256 of the data file, checked once per shard and process at its first use (by
:meth:`EmbeddingStore.missing` or :meth:`EmbeddingStore.read`). A shard that fails is moved to
``<store>/quarantine/`` with a warning naming it and why, and its texts count as missing, so a
sweep encodes them again. Shards of format 1 (before checksums) are still served after their
header is checked and every value is found finite; bytes overwritten with other finite values
cannot be detected in them (delete the store to re-encode them under format 2).

A full disk raises :class:`StoreFullError` (an ``OSError``) naming the file and the free space.

Lookups are by configuration + sha256 of the exact model input across *all* namespaces of that
configuration: a text shared by two tasks is encoded once, and a different configuration (other
revision, pooling, prompt, max length or dtype) lives in another directory and never sees it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import operator
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .spec import ModelSpec, excludes_prompt
from .tempfiles import atomic_write, parse_temp_name
from .tempfiles import stale_reason as temp_stale_reason

__all__ = ["EmbeddingStore", "StoreFullError", "StoreKey", "raise_if_disk_full", "text_hash"]

#: Version of ``config.json`` (unchanged since the first store).
_FORMAT_VERSION = 1
#: Version of the shard markers written now: 2 adds the data file's sha256.
_SHARD_FORMAT = 2
_READABLE_SHARD_FORMATS = (1, 2)
_QUARANTINE = "quarantine"
_HASH_CHUNK = 1 << 20
_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass(frozen=True)
class StoreKey:
    """Everything that changes the numbers a model produces for a text.

    ``revision`` should be a commit hash: a branch name such as ``main`` can move and would let
    the store serve embeddings of an older model. The text itself (with any prompt already
    prepended) is hashed per entry; ``prompt_type`` is kept here too so that configurations that
    differ only in how prompts were chosen never share a directory.
    """

    model: str
    revision: str
    pooling: str
    prompt_type: str | None
    max_length: int
    dtype: str
    #: "last" or "every" (see `layers.capture_layers`); left out of the dict when "last", so
    #: stores written before the option keep their digest.
    final_norm: str = "last"
    #: False: each text's prompt tokens are left out of its vectors (sentence-transformers'
    #: `include_prompt=False`); left out of the dict when True, so older stores keep their digest.
    include_prompt: bool = True

    def __post_init__(self) -> None:
        for name in ("model", "revision", "pooling", "dtype", "final_norm"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"StoreKey.{name} must be a non-empty string, got {value!r}")
        if self.prompt_type is not None and not isinstance(self.prompt_type, str):
            raise ValueError(f"StoreKey.prompt_type must be str or None, got {self.prompt_type!r}")
        if not isinstance(self.include_prompt, bool):
            raise ValueError(f"StoreKey.include_prompt must be a bool, got {self.include_prompt!r}")
        if (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or self.max_length <= 0
        ):
            raise ValueError(f"StoreKey.max_length must be a positive int, got {self.max_length!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, the content of ``config.json``."""
        out = dataclasses.asdict(self)
        if out["final_norm"] == "last":
            del out["final_norm"]
        if out["include_prompt"]:
            del out["include_prompt"]
        return out

    def digest(self) -> str:
        """Stable 16-hex-char id: sha256 of the canonical JSON of the fields."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def for_spec(
        cls, spec: ModelSpec, pooling: str, prompt_type: str | None, final_norm: str = "last"
    ) -> StoreKey:
        """The key of a model's resolved spec (`LayerModel.current_spec()`: its revision
        fingerprints a local folder's files). Prompts need no field: each text is hashed with
        its prompt; whether the prompt's tokens are pooled does (`include_prompt`, a field only
        when False)."""
        return cls(
            model=spec.name,
            revision=spec.revision or "no_revision_available",
            pooling=pooling,
            prompt_type=prompt_type,
            max_length=spec.max_length,
            dtype=spec.dtype,
            final_norm=final_norm,
            include_prompt=not excludes_prompt(spec.include_prompt, spec.prompts),
        )


def plan_digest(resolved: Mapping[str, Any], pooling: str) -> str:
    """A short name for the store configuration that a sweep plan's texts files belong to:
    the resolved spec's dict (`ModelSpec.to_dict`) and the pass's pooling(s), e.g. "mean,last"."""
    raw = json.dumps([resolved, pooling], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _text_digest(text: str) -> bytes:
    # surrogatepass: lone surrogates occur in scraped data; hash them rather than crash.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def text_hash(text: str) -> str:
    """sha256 hex of the exact model input (after any prompt was prepended)."""
    return _text_digest(text).hex()


def _check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    out = []
    for layer in layers:
        if isinstance(layer, bool):
            raise ValueError(f"layer must be an int, got {layer!r}")
        try:
            value = operator.index(layer)
        except TypeError:
            raise ValueError(f"layer must be an int, got {layer!r}") from None
        if value < 0:
            raise ValueError(f"layer must be >= 0 (0 = embedding output), got {value}")
        out.append(value)
    if not out:
        raise ValueError("at least one layer is required")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate layers in {out}")
    return tuple(out)


def _namespace_parts(namespace: tuple[str, ...] | str) -> tuple[str, ...]:
    parts = (namespace,) if isinstance(namespace, str) else tuple(namespace)
    if not parts:
        raise ValueError("namespace must have at least one part (e.g. the task name)")
    for part in parts:
        if not isinstance(part, str) or not part:
            raise ValueError(f"namespace parts must be non-empty strings, got {parts!r}")
    return parts


def _safe_component(part: str) -> str:
    # Only organises files; the exact namespace is recorded in the marker.
    safe = _SAFE.sub("_", part)
    return "_" + safe[1:] if safe.startswith(".") else safe


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not supported everywhere (e.g. Windows), hence best effort.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StoreFullError(OSError):
    """The disk (or quota) is full: nothing more can be written until space is freed.

    Raised instead of the bare ``ENOSPC`` ``OSError`` so that a sweep stops at once with one
    message, keeping everything already written, instead of failing every remaining task.
    """

    def __init__(self, path: Path | str, free_bytes: int | None = None):
        self.path = Path(path)
        self.free_bytes = free_bytes
        free = "unknown" if free_bytes is None else _human_bytes(free_bytes)
        super().__init__(
            errno.ENOSPC,
            f"disk full while writing {self.path} ({free} free there); everything written "
            "before is kept: free some space and run the same command again to resume",
        )

    def __str__(self) -> str:
        return str(self.strerror)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from/with is an ENOSPC / EDQUOT OSError."""
    return any(
        isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain(exc)
    )


def raise_if_disk_full(exc: BaseException, path: Path | str) -> None:
    """Re-raise a disk-full error (ours, or any ENOSPC in ``exc``'s chain) as `StoreFullError`.

    For callers that otherwise record a failure and go on (the sweep's per-task loop): a full
    disk fails every later task too, so it must stop the run instead.
    """
    if isinstance(exc, StoreFullError):
        raise exc
    if is_disk_full(exc):
        filename = next(
            (e.filename for e in chain(exc) if isinstance(e, OSError) and e.filename), None
        )
        where = Path(filename) if filename else Path(path)
        raise StoreFullError(where, _free_bytes(where)) from exc


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _atomic_write(path: Path, write: Any) -> None:
    """`tempfiles.atomic_write`, with a full disk told as such.

    Raises:
        StoreFullError: the disk is full (the temp file is removed; ``path`` is untouched).
    """
    try:
        atomic_write(path, write)
    except BaseException as exc:
        if not isinstance(exc, StoreFullError) and is_disk_full(exc):
            raise StoreFullError(path, _free_bytes(path.parent)) from exc
        raise


def _shard_input(
    texts: Sequence[str], embeddings: Any, layer_t: tuple[int, ...]
) -> tuple[list[str], np.ndarray]:
    """The texts as a list and the embeddings as C-contiguous float32 `(len(layers),
    len(texts), D)`, once checked: strings, that shape, numeric, finite (else a `ValueError`)."""
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a string")
    texts = list(texts)
    if not texts:
        raise ValueError("nothing to write: texts is empty")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must all be strings")
    arr = np.asarray(embeddings)
    if arr.ndim != 3 or arr.shape[:2] != (len(layer_t), len(texts)) or arr.shape[2] == 0:
        raise ValueError(
            f"embeddings must have shape (n_layers={len(layer_t)}, n_texts={len(texts)}, D), "
            f"got {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"embeddings must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        rows = np.flatnonzero(bad.any(axis=(0, 2)))
        layers_bad = [layer_t[j] for j in np.flatnonzero(bad.any(axis=(1, 2)))]
        raise ValueError(
            f"embeddings contain NaN/inf for {rows.size} text(s) (first indices "
            f"{rows[:5].tolist()}) at layers {layers_bad}; refusing to store them"
        )
    return texts, arr


class _HashingWriter:
    """A write-only file object that hashes what passes through (numpy then writes in chunks)."""

    def __init__(self, fh: Any):
        self._fh = fh
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Shard:
    data: Path
    marker: Path
    namespace: tuple[str, ...]
    layers: tuple[int, ...]
    layer_pos: dict[int, int]
    n: int
    hidden_size: int
    sha256: str | None = None  # of the data file; None for format-1 shards


def _shard_fault(shard: _Shard) -> str | None:
    """Why a shard's data file must not be served, or None when it is sound.

    Format 2: the file's sha256 must match the marker's (catches any changed byte). Format 1
    (no checksum): the header must say float32 of the marker's shape, and every value must be
    finite; overwritten finite values are not detectable there.
    """
    if shard.sha256 is not None:
        actual = _file_sha256(shard.data)
        if actual != shard.sha256:
            return f"sha256 {actual[:12]}... differs from the marker's {shard.sha256[:12]}..."
        return None
    try:
        mm = np.load(shard.data, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        return f"bad .npy header ({exc})"
    expected = (len(shard.layers), shard.n, shard.hidden_size)
    if mm.shape != expected or mm.dtype != np.float32:
        return f"holds {mm.dtype}{mm.shape}, marker says float32{expected}"
    for j in range(expected[0]):  # one layer at a time bounds the memory
        if not np.isfinite(mm[j]).all():
            return f"NaN/inf values at layer {shard.layers[j]}"
    return None


class EmbeddingStore:
    """Pooled embeddings of one configuration, every layer stored whole-width (float32).

    Not thread-safe: use one instance per thread/process. Several processes may write to the
    same configuration at once (shard names are unique); call :meth:`refresh` (done
    automatically by :meth:`missing`, and by :meth:`read` when a text is not found) to see
    their shards.
    """

    def __init__(self, root: Path | str, key: StoreKey, *, cleanup_grace_s: float = 3600.0):
        self.key = key
        self.path = Path(root) / key.digest()
        self.shards_dir = self.path / "shards"
        self.cleanup_grace_s = cleanup_grace_s
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self._shards: list[_Shard] = []
        self._known: set[Path] = set()
        # text digest -> packed (shard_idx << 32 | row), or a tuple of those when in several shards
        self._loc: dict[bytes, int | tuple[int, ...]] = {}
        self._hidden_size: int | None = None
        self._scanned = False
        self._checked: set[int] = set()  # shards verified (or written) by this process
        self._bad: set[int] = set()  # shards quarantined by this process

    # ------------------------------------------------------------------ config
    def _check_config(self) -> None:
        cfg = self.path / "config.json"
        want = {"format": _FORMAT_VERSION, "key": self.key.to_dict()}
        if cfg.exists():
            try:
                have = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"unreadable store config {cfg}: {exc}") from exc
            if have != want:
                raise ValueError(f"store config {cfg} is {have}, expected {want} (digest clash?)")
            return
        text = json.dumps(want, indent=2, sort_keys=True) + "\n"
        _atomic_write(cfg, lambda fh: fh.write(text.encode("utf-8")))
        _fsync_dir(self.path)

    # ------------------------------------------------------------------ index
    def _iter_files(self, top: Path) -> Iterator[tuple[Path, str]]:
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                yield Path(dirpath), name

    def refresh(self) -> None:
        """Index shards committed since the last scan (by this or any other process)."""
        first = not self._scanned
        self._scanned = True
        new = [
            d / name
            for d, name in self._iter_files(self.shards_dir)
            if name.endswith(".json") and not name.startswith(".") and (d / name) not in self._known
        ]
        for marker in sorted(new, key=lambda p: (p.name, str(p))):
            self._known.add(marker)
            loaded = self._load_marker(marker)
            if loaded is not None:
                self._add(*loaded)
        if first:
            self.cleanup()

    def _load_marker(self, marker: Path) -> tuple[_Shard, list[bytes]] | None:
        data: Path | None = None
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("the marker is not a JSON object")
            fmt = meta.get("format")
            if isinstance(fmt, int) and fmt > max(_READABLE_SHARD_FORMATS):
                # Written by a newer mteb-midlayer: not ours to judge or move.
                warnings.warn(
                    f"skipping store shard {marker}: format {fmt} is newer than this version "
                    f"reads ({max(_READABLE_SHARD_FORMATS)}); upgrade mteb-midlayer",
                    stacklevel=3,
                )
                return None
            if fmt not in _READABLE_SHARD_FORMATS:
                raise ValueError(f"unknown format {fmt!r}")
            data = marker.with_name(meta["data"])
            layers = _check_layers(meta["layers"])
            n, hidden = int(meta["n"]), int(meta["hidden_size"])
            hashes = [bytes.fromhex(h) for h in meta["text_hashes"]]
            sha = meta.get("sha256") if fmt >= 2 else None
            if fmt >= 2 and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
                raise ValueError(f"no valid sha256 in a format-{fmt} marker")
            size = data.stat().st_size
            if size != int(meta["nbytes"]):
                raise ValueError(f"{size} bytes on disk, marker says {meta['nbytes']}")
            if len(hashes) != n or any(len(h) != 32 for h in hashes):
                raise ValueError(f"{len(hashes)} text hashes for {n} rows")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Cannot come from our atomic writes: move it aside rather than serve garbage.
            self._quarantine(marker, data, str(exc))
            return None
        shard = _Shard(
            data=data,
            marker=marker,
            namespace=tuple(meta.get("namespace", ())),
            layers=layers,
            layer_pos={layer: i for i, layer in enumerate(layers)},
            n=n,
            hidden_size=hidden,
            sha256=sha,
        )
        return shard, hashes

    # ------------------------------------------------------------------ integrity
    def _quarantine(self, marker: Path, data: Path | None, reason: str) -> None:
        """Move a bad shard to ``<store>/quarantine/`` (same sub-path) and say so."""
        try:
            rel = marker.parent.relative_to(self.shards_dir)
        except ValueError:
            rel = Path()
        dest = self.path / _QUARANTINE / rel
        moved = True
        try:
            dest.mkdir(parents=True, exist_ok=True)
            # Marker first: once it is gone no reader (in any process) indexes the shard.
            for f in (marker, data):
                if f is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(f, dest / f.name)
        except OSError:
            moved = False
        where = f"moved to {dest}" if moved else "could not be moved aside; ignored"
        warnings.warn(
            f"store shard {data or marker} failed its check ({reason}); {where}; its texts "
            "count as missing and are encoded again",
            stacklevel=4,
        )

    def _verify(self, s: int) -> bool:
        """Check shard ``s`` once per process before serving it; quarantine it if bad."""
        if s in self._checked:
            return True
        if s in self._bad:
            return False
        shard = self._shards[s]
        try:
            fault = _shard_fault(shard)
        except OSError as exc:
            fault = f"unreadable ({exc})"
        if fault is None:
            self._checked.add(s)
            return True
        self._bad.add(s)
        self._quarantine(shard.marker, shard.data, fault)
        self._forget(s)
        return False

    def _forget(self, s: int) -> None:
        """Drop shard ``s`` from the text index (its texts then count as missing)."""
        loc = self._loc
        for h, prev in list(loc.items()):
            packed = (prev,) if isinstance(prev, int) else prev
            keep = tuple(p for p in packed if p >> _ROW_BITS != s)
            if len(keep) == len(packed):
                continue
            if not keep:
                del loc[h]
            else:
                loc[h] = keep[0] if len(keep) == 1 else keep

    def _add(self, shard: _Shard, hashes: list[bytes]) -> None:
        if self._hidden_size is None:
            self._hidden_size = shard.hidden_size
        elif shard.hidden_size != self._hidden_size:
            raise ValueError(
                f"shard {shard.marker} has hidden size {shard.hidden_size}, but the store "
                f"{self.path} holds {self._hidden_size}: mixed models under one key"
            )
        if len(hashes) != shard.n:
            raise ValueError(f"shard {shard.marker}: {len(hashes)} hashes for {shard.n} rows")
        idx = len(self._shards)
        self._shards.append(shard)
        base = idx << _ROW_BITS
        loc = self._loc
        for row, h in enumerate(hashes):
            packed = base | row
            prev = loc.get(h)
            if prev is None:
                loc[h] = packed
            elif isinstance(prev, int):
                loc[h] = (prev, packed)
            else:
                loc[h] = (*prev, packed)

    def _ensure(self) -> None:
        if not self._scanned:
            self.refresh()

    def _locate(self, h: bytes, layer: int) -> tuple[int, int] | None:
        prev = self._loc.get(h)
        if prev is None:
            return None
        for packed in (prev,) if isinstance(prev, int) else prev:
            s = packed >> _ROW_BITS
            if layer in self._shards[s].layer_pos and s not in self._bad:
                return s, packed & _ROW_MASK
        return None

    def _stored_layers(self, h: bytes) -> set[int]:
        """Layers of ``h`` in shards that pass their check (verified here at first use)."""
        prev = self._loc.get(h)
        if prev is None:
            return set()
        out: set[int] = set()
        for packed in (prev,) if isinstance(prev, int) else prev:
            s = packed >> _ROW_BITS
            if self._verify(s):
                out.update(self._shards[s].layers)
        return out

    # ------------------------------------------------------------------ public API
    @property
    def hidden_size(self) -> int | None:
        """Whole width D of the stored vectors (None while the store is empty)."""
        self._ensure()
        return self._hidden_size

    def layers(self) -> list[int]:
        """Every layer held by at least one shard (not necessarily for every text)."""
        self._ensure()
        return sorted(
            {layer for i, s in enumerate(self._shards) if i not in self._bad for layer in s.layers}
        )

    def __len__(self) -> int:
        """Distinct texts stored (for at least one layer)."""
        self._ensure()
        return len(self._loc)

    def missing(self, texts: Sequence[str], layers: Sequence[int]) -> list[int]:
        """Indices of texts lacking any of ``layers``: what a (re)run still has to encode.

        Dedupe-aware: only the first occurrence of a repeated text is listed, so encoding
        ``[texts[i] for i in missing(...)]`` encodes each distinct text once. Shards holding
        these texts are checked here (once per process); texts of a shard that fails are listed.
        """
        wanted = set(_check_layers(layers))
        self.refresh()
        seen: set[bytes] = set()
        out = []
        for i, text in enumerate(texts):
            h = _text_digest(text)
            if h in seen:
                continue
            seen.add(h)
            if not wanted <= self._stored_layers(h):
                out.append(i)
        return out

    def write(
        self,
        namespace: tuple[str, ...] | str,
        texts: Sequence[str],
        embeddings: np.ndarray,
        layers: Sequence[int],
    ) -> Path:
        """Store ``embeddings[j, i]`` = layer ``layers[j]`` of ``texts[i]``; one call = one shard.

        ``embeddings`` has shape (len(layers), len(texts), D) and is stored as float32 (pass
        torch tensors as ``t.float().cpu().numpy()``). ``namespace`` (task, split, subset, ...)
        only organises files: lookups span all namespaces. Returns the shard's data path. The
        shard becomes visible atomically, once complete.
        """
        parts = _namespace_parts(namespace)
        layer_t = _check_layers(layers)
        texts, arr = _shard_input(texts, embeddings, layer_t)
        self.refresh()
        hidden = int(arr.shape[2])
        if self._hidden_size is not None and hidden != self._hidden_size:
            raise ValueError(
                f"hidden size {hidden} does not match the store's {self._hidden_size} "
                f"({self.path}): wrong model for this key?"
            )

        directory = self.shards_dir.joinpath(*(_safe_component(p) for p in parts))
        directory.mkdir(parents=True, exist_ok=True)
        shard_id = f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:16]}"
        data = directory / f"{shard_id}.npy"
        marker = directory / f"{shard_id}.json"

        hashing: list[_HashingWriter] = []

        def write_data(fh: Any) -> None:
            hashing.append(_HashingWriter(fh))
            np.lib.format.write_array(hashing[-1], arr, allow_pickle=False)

        _atomic_write(data, write_data)
        hashes = [_text_digest(t) for t in texts]
        meta = {
            "format": _SHARD_FORMAT,
            "shard": shard_id,
            "namespace": list(parts),
            "data": data.name,
            "nbytes": data.stat().st_size,
            "sha256": hashing[-1].sha256.hexdigest(),
            "dtype": "float32",
            "layers": list(layer_t),
            "n": len(texts),
            "hidden_size": hidden,
            "created_unix": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "text_hashes": [h.hex() for h in hashes],
        }
        blob = json.dumps(meta, separators=(",", ":")).encode("utf-8")
        _atomic_write(marker, lambda fh: fh.write(blob))  # commit point
        _fsync_dir(directory)

        self._known.add(marker)
        self._add(
            _Shard(
                data=data,
                marker=marker,
                namespace=parts,
                layers=layer_t,
                layer_pos={layer: i for i, layer in enumerate(layer_t)},
                n=len(texts),
                hidden_size=hidden,
                sha256=meta["sha256"],
            ),
            hashes,
        )
        self._checked.add(len(self._shards) - 1)  # just written from memory
        return data

    def read(self, texts: Sequence[str], layer: int, dim: int | None = None) -> np.ndarray:
        """(len(texts), dim) float32 in the order given (duplicates allowed), ``[:dim]`` sliced.

        Each shard is memory-mapped and only the requested rows of one layer are copied, so
        memory is O(len(texts) * dim) whatever the store holds. No renormalisation is done after
        slicing (Matryoshka callers normalise themselves). Raises KeyError naming the missing
        texts if any is not stored for ``layer``.
        """
        (layer,) = _check_layers([layer])
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, not a string")
        self._ensure()
        hashes = [_text_digest(t) for t in texts]
        locs = [self._locate(h, layer) for h in hashes]
        if any(loc is None for loc in locs):
            self.refresh()
            locs = [loc or self._locate(h, layer) for loc, h in zip(locs, hashes, strict=True)]
        used = {loc[0] for loc in locs if loc is not None}
        bad = {s for s in used if not self._verify(s)}
        if bad:  # quarantined just now: another shard may hold some of these texts
            locs = [
                self._locate(h, layer) if loc is None or loc[0] in bad else loc
                for loc, h in zip(locs, hashes, strict=True)
            ]
        absent = [i for i, loc in enumerate(locs) if loc is None]
        if absent:
            example = texts[absent[0]]
            raise KeyError(
                f"{len(absent)} of {len(texts)} texts not stored for layer {layer} "
                f"(store {self.path}, layers held: {self.layers()}); first missing indices "
                f"{absent[:10]}, e.g. {example[:80]!r}"
            )

        width = self._hidden_size or 0
        if dim is None:
            dim = width
        elif isinstance(dim, bool) or operator.index(dim) <= 0 or (width and dim > width):
            raise ValueError(f"dim must be in 1..{width}, got {dim}")
        out = np.empty((len(texts), dim), dtype=np.float32)

        groups: dict[int, tuple[list[int], list[int]]] = {}
        for pos, loc in enumerate(locs):
            assert loc is not None
            g = groups.setdefault(loc[0], ([], []))
            g[0].append(pos)
            g[1].append(loc[1])
        for s, (positions, rows) in groups.items():
            shard = self._shards[s]
            mm = np.load(shard.data, mmap_mode="r", allow_pickle=False)
            try:
                expected = (len(shard.layers), shard.n, shard.hidden_size)
                if mm.shape != expected or mm.dtype != np.float32:
                    raise ValueError(
                        f"shard {shard.data} holds {mm.dtype}{mm.shape}, marker says "
                        f"float32{expected}"
                    )
                uniq, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
                block = mm[shard.layer_pos[layer], uniq, :dim]  # copies only these rows
                out[np.asarray(positions, dtype=np.int64)] = block[inverse]
            finally:
                del mm
        return out

    def cleanup(self, grace_s: float | None = None) -> list[Path]:
        """Remove crash debris that no live writer can still need; returns what was removed.

        Temp files are removed when their writer (pid in the name) is dead on this host, or
        they are older than ``grace_s`` (`tempfiles.stale_reason`); an ``.npy`` without its
        commit marker only when older than ``grace_s`` (a live writer may be about to commit
        it).
        """
        grace = self.cleanup_grace_s if grace_s is None else grace_s
        now = time.time()
        removed = []
        quarantine = self.path / _QUARANTINE
        for d, name in list(self._iter_files(self.path)):
            path = d / name
            if d == quarantine or quarantine in d.parents:
                continue  # kept for the user to inspect
            if parse_temp_name(name) is not None:
                stale = temp_stale_reason(path, max_age_s=grace, now=now) is not None
            elif d == self.path or not name.endswith(".npy") or path.with_suffix(".json").exists():
                continue
            else:
                try:
                    stale = now - path.stat().st_mtime > grace
                except OSError:
                    continue
            if stale:
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
        return removed

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, {self.key})"
