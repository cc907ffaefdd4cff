"""Content-addressed store of pooled embeddings: one forward pass serves every layer and dim.

On-disk layout (one directory per configuration)::

    <root>/<key.digest()>/config.json                 # the StoreKey, human-readable
    <root>/<key.digest()>/shards/<namespace...>/<id>.npy   # float32 (n_layers, n, D)
    <root>/<key.digest()>/shards/<namespace...>/<id>.json  # commit marker: layers, text hashes

A shard is visible only once its ``.json`` marker exists; the marker is written last, and every
file is written to a dot-prefixed temp file in the same directory, fsynced and ``os.replace``d
into place. A SIGKILL at any moment therefore leaves either a complete shard or debris that
readers ignore (temp files, an ``.npy`` without its marker), which :meth:`EmbeddingStore.cleanup`
removes once it is safe to do so.

Lookups are by configuration + sha256 of the exact model input across *all* namespaces of that
configuration: a text shared by two tasks is encoded once, and a different configuration (other
revision, pooling, prompt, max length or dtype) lives in another directory and never sees it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import operator
import os
import re
import socket
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingStore", "StoreKey", "text_hash"]

FORMAT_VERSION = 1
_TMP_PREFIX = ".tmp-"
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

    def __post_init__(self) -> None:
        for name in ("model", "revision", "pooling", "dtype"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"StoreKey.{name} must be a non-empty string, got {value!r}")
        if self.prompt_type is not None and not isinstance(self.prompt_type, str):
            raise ValueError(f"StoreKey.prompt_type must be str or None, got {self.prompt_type!r}")
        if (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or self.max_length <= 0
        ):
            raise ValueError(f"StoreKey.max_length must be a positive int, got {self.max_length!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, the content of ``config.json``."""
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable 16-hex-char id: sha256 of the canonical JSON of the fields."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


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


def _host() -> str:
    return _SAFE.sub("_", socket.gethostname())[:40] or "host"


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temp file in the same directory, fsync, then os.replace into ``path``."""
    tmp = path.with_name(f"{_TMP_PREFIX}{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


@dataclass(frozen=True)
class _Shard:
    data: Path
    marker: Path
    namespace: tuple[str, ...]
    layers: tuple[int, ...]
    layer_pos: dict[int, int]
    n: int
    hidden_size: int


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

    # ------------------------------------------------------------------ config
    def _check_config(self) -> None:
        cfg = self.path / "config.json"
        want = {"format": FORMAT_VERSION, "key": self.key.to_dict()}
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
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            data = marker.with_name(meta["data"])
            layers = _check_layers(meta["layers"])
            n, hidden = int(meta["n"]), int(meta["hidden_size"])
            hashes = [bytes.fromhex(h) for h in meta["text_hashes"]]
            size = data.stat().st_size
            if meta.get("format") != FORMAT_VERSION or size != int(meta["nbytes"]):
                raise ValueError(f"format/size mismatch ({size} bytes on disk)")
            if len(hashes) != n or any(len(h) != 32 for h in hashes):
                raise ValueError(f"{len(hashes)} text hashes for {n} rows")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Cannot come from our atomic writes; skip rather than serve garbage.
            warnings.warn(f"ignoring unreadable shard {marker}: {exc}", stacklevel=3)
            return None
        shard = _Shard(
            data=data,
            marker=marker,
            namespace=tuple(meta.get("namespace", ())),
            layers=layers,
            layer_pos={layer: i for i, layer in enumerate(layers)},
            n=n,
            hidden_size=hidden,
        )
        return shard, hashes

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
            if layer in self._shards[s].layer_pos:
                return s, packed & _ROW_MASK
        return None

    def _stored_layers(self, h: bytes) -> set[int]:
        prev = self._loc.get(h)
        if prev is None:
            return set()
        out: set[int] = set()
        for packed in (prev,) if isinstance(prev, int) else prev:
            out.update(self._shards[packed >> _ROW_BITS].layers)
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
        return sorted({layer for s in self._shards for layer in s.layers})

    def __len__(self) -> int:
        """Distinct texts stored (for at least one layer)."""
        self._ensure()
        return len(self._loc)

    def missing(self, texts: Sequence[str], layers: Sequence[int]) -> list[int]:
        """Indices of texts lacking any of ``layers``: what a (re)run still has to encode.

        Dedupe-aware: only the first occurrence of a repeated text is listed, so encoding
        ``[texts[i] for i in missing(...)]`` encodes each distinct text once.
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

        _atomic_write(data, lambda fh: np.lib.format.write_array(fh, arr, allow_pickle=False))
        hashes = [_text_digest(t) for t in texts]
        meta = {
            "format": FORMAT_VERSION,
            "shard": shard_id,
            "namespace": list(parts),
            "data": data.name,
            "nbytes": data.stat().st_size,
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
            ),
            hashes,
        )
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
        they are older than ``grace_s``; an ``.npy`` without its commit marker only when older
        than ``grace_s`` (a live writer may be about to commit it).
        """
        grace = self.cleanup_grace_s if grace_s is None else grace_s
        now = time.time()
        host = _host()
        removed = []
        for d, name in list(self._iter_files(self.path)):
            path = d / name
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            stale = age > grace
            if name.startswith(_TMP_PREFIX):
                m = re.match(rf"{re.escape(_TMP_PREFIX)}(.+)-(\d+)-[0-9a-f]{{8}}-", name)
                if m and m.group(1) == host and not _pid_alive(int(m.group(2))):
                    stale = True
            elif d == self.path or not name.endswith(".npy") or path.with_suffix(".json").exists():
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
