"""Tests of the embedding store: exact round trips, keys, resumability, crash safety, memory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

import mteb_midlayer
from mteb_midlayer.store import EmbeddingStore, StoreKey, text_hash
from mteb_midlayer.tempfiles import parse_temp_name

REPO = Path(mteb_midlayer.__file__).resolve().parent.parent
KEY = StoreKey(
    model="org/model",
    revision="0123abcd",
    pooling="mean",
    prompt_type=None,
    max_length=512,
    dtype="float16",
)
D = 16


def _emb(n_layers: int, n: int, d: int = D, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_layers, n, d)).astype(np.float32)


def _texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} text number {i}" for i in range(n)]


# ---------------------------------------------------------------- keys and hashes


def test_key_digest_is_stable_and_config_json_is_readable(tmp_path):
    assert KEY.digest() == StoreKey(**KEY.to_dict()).digest()
    # Pinned: changing the hashing would silently orphan every existing store.
    assert KEY.digest() == "78d61609195390c4"
    store = EmbeddingStore(tmp_path, KEY)
    assert store.path == tmp_path / KEY.digest()
    cfg = json.loads((store.path / "config.json").read_text())
    assert cfg["key"] == {
        "model": "org/model",
        "revision": "0123abcd",
        "pooling": "mean",
        "prompt_type": None,
        "max_length": 512,
        "dtype": "float16",
    }
    EmbeddingStore(tmp_path, KEY)  # reopening an existing config is fine


def test_the_store_identity_of_a_spec_is_pinned():
    # One source for the store's identity (StoreKey.for_spec, plan_digest); pinned, as above.
    from mteb_midlayer.spec import ModelSpec
    from mteb_midlayer.store import plan_digest

    spec = ModelSpec(
        source="org/m",
        name="org/m",
        revision="abc123",
        max_length=128,
        dtype="float32",
        prompts={"query": "q: "},
        include_prompt=False,
    )
    key = StoreKey.for_spec(spec, "mean", "query", "every")
    assert key == StoreKey("org/m", "abc123", "mean", "query", 128, "float32", "every", False)
    assert key.digest() == "1d51004dc734f787"
    assert StoreKey.for_spec(spec.replace(revision=None), "mean", None).revision == (
        "no_revision_available"
    )
    assert plan_digest(spec.to_dict(), "mean,last") == "40be4b370e04"


def test_key_validation_and_config_clash(tmp_path):
    with pytest.raises(ValueError, match="max_length"):
        dataclasses.replace(KEY, max_length=0)
    with pytest.raises(ValueError, match="model"):
        dataclasses.replace(KEY, model="")
    with pytest.raises(ValueError, match="prompt_type"):
        dataclasses.replace(KEY, prompt_type=3)
    # A config.json that does not match the key (digest clash / tampering) is refused.
    other = dataclasses.replace(KEY, pooling="cls")
    (tmp_path / KEY.digest()).mkdir()
    (tmp_path / KEY.digest() / "config.json").write_text(
        json.dumps({"format": 1, "key": other.to_dict()})
    )
    with pytest.raises(ValueError, match="digest clash"):
        EmbeddingStore(tmp_path, KEY)


def test_text_hash_is_sha256_of_exact_model_input():
    assert text_hash("hello") == hashlib.sha256(b"hello").hexdigest()
    assert text_hash("query: hello") != text_hash("hello")
    assert len(text_hash("\ud800 lone surrogate")) == 64


# ---------------------------------------------------------------- round trip


def test_round_trip_exact_dim_slicing_order_and_duplicates(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    texts = _texts("a", 10)
    emb = _emb(3, 10)
    store.write(("Task", "test", "en"), texts, emb, [0, 6, 12])
    assert store.hidden_size == D and store.layers() == [0, 6, 12] and len(store) == 10

    for j, layer in enumerate([0, 6, 12]):
        got = store.read(texts, layer)
        assert got.dtype == np.float32 and got.shape == (10, D)
        np.testing.assert_array_equal(got, emb[j])
    np.testing.assert_array_equal(store.read(texts, 6, dim=4), emb[1, :, :4])

    order = [7, 2, 2, 9, 0, 7]
    got = store.read([texts[i] for i in order], 12, dim=5)
    np.testing.assert_array_equal(got, emb[2][order, :5])

    fresh = EmbeddingStore(tmp_path, KEY)  # index rebuilt from disk
    np.testing.assert_array_equal(fresh.read(texts[::-1], 0), emb[0][::-1])
    assert fresh.read([], 0).shape == (0, D)
    with pytest.raises(ValueError, match="dim"):
        fresh.read(texts, 0, dim=D + 1)
    with pytest.raises(ValueError, match="dim"):
        fresh.read(texts, 0, dim=0)


def test_float64_and_float16_inputs_are_stored_as_float32(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    emb = _emb(1, 3).astype(np.float16)
    store.write("t", ["x", "y", "z"], emb, [1])
    np.testing.assert_array_equal(store.read(["z", "x"], 1), emb[0, [2, 0]].astype(np.float32))


def test_missing_before_and_after_and_dedupe(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    texts = ["a", "b", "a", "c", "b", "d"]
    assert store.missing(texts, [0, 1]) == [0, 1, 3, 5]  # first occurrences only
    store.write("t", ["a", "c"], _emb(2, 2), [0, 1])
    assert store.missing(texts, [0, 1]) == [1, 5]
    assert store.missing(texts, [0, 1, 2]) == [0, 1, 3, 5]  # layer 2 absent for all
    todo = store.missing(texts, [0, 1])
    store.write("t", [texts[i] for i in todo], _emb(2, len(todo), seed=1), [0, 1])
    assert store.missing(texts, [0, 1]) == []
    assert store.read(texts, 1).shape == (6, D)
    assert len(store) == 4


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", "org/other"),
        ("revision", "fedcba98"),
        ("pooling", "last"),
        ("prompt_type", "query"),
        ("max_length", 256),
        ("dtype", "bfloat16"),
    ],
)
def test_configs_differing_in_one_field_do_not_see_each_other(tmp_path, field, value):
    a = EmbeddingStore(tmp_path, KEY)
    other_key = dataclasses.replace(KEY, **{field: value})
    assert other_key.digest() != KEY.digest()
    a.write("t", ["x"], _emb(1, 1), [0])
    b = EmbeddingStore(tmp_path, other_key)
    assert b.missing(["x"], [0]) == [0]
    with pytest.raises(KeyError):
        b.read(["x"], 0)
    assert len(b) == 0 and b.hidden_size is None


def test_texts_shared_across_namespaces_are_encoded_once(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    train, test = _texts("s", 6), [*_texts("s", 4), "only in test"]
    emb = _emb(2, 6)
    store.write(("TaskA", "train"), train, emb, [0, 3])
    # A second task/split sharing four texts only needs the new one.
    assert store.missing(test, [0, 3]) == [4]
    store.write(("TaskB", "test", "de"), ["only in test"], _emb(2, 1, seed=7), [0, 3])
    got = store.read(test, 3)
    np.testing.assert_array_equal(got[:4], emb[1, :4])
    np.testing.assert_array_equal(got[4], _emb(2, 1, seed=7)[1, 0])
    shard_dirs = {p.parent.relative_to(store.shards_dir) for p in store.shards_dir.rglob("*.npy")}
    assert shard_dirs == {Path("TaskA/train"), Path("TaskB/test/de")}
    markers = [json.loads(p.read_text()) for p in store.shards_dir.rglob("*.json")]
    assert sorted(m["namespace"] for m in markers) == [["TaskA", "train"], ["TaskB", "test", "de"]]


def test_odd_namespace_components_stay_inside_the_store(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    path = store.write(("../escape", "a/b", ".hidden"), ["x"], _emb(1, 1), [0])
    assert store.shards_dir in path.parents
    assert EmbeddingStore(tmp_path, KEY).read(["x"], 0).shape == (1, D)


def test_partial_layers(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    texts = _texts("p", 4)
    e02 = _emb(2, 4)
    store.write("t", texts, e02, [0, 2])
    e4 = _emb(1, 2, seed=3)
    store.write("t", texts[:2], e4, [4])  # layer 4 only for the first two
    assert store.layers() == [0, 2, 4]
    assert store.missing(texts, [0, 2]) == []
    assert store.missing(texts, [0, 4]) == [2, 3]
    np.testing.assert_array_equal(store.read(texts[:2], 4), e4[0])
    np.testing.assert_array_equal(store.read(texts, 2), e02[1])  # served across shards
    with pytest.raises(KeyError, match=r"2 of 4 texts not stored for layer 4.*\[2, 3\]"):
        store.read(texts, 4)
    with pytest.raises(KeyError, match="layer 1"):
        store.read(texts, 1)


# ---------------------------------------------------------------- validation


def test_write_validates_inputs(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    with pytest.raises(ValueError, match="shape"):
        store.write("t", ["a", "b"], _emb(2, 3), [0, 1])
    with pytest.raises(ValueError, match="shape"):
        store.write("t", ["a"], _emb(1, 1)[0], [0])
    with pytest.raises(ValueError, match="duplicate layers"):
        store.write("t", ["a"], _emb(2, 1), [1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        store.write("t", ["a"], _emb(1, 1), [-1])
    with pytest.raises(ValueError, match="empty"):
        store.write("t", [], np.zeros((1, 0, D), np.float32), [0])
    with pytest.raises(ValueError, match="namespace"):
        store.write((), ["a"], _emb(1, 1), [0])
    for bad in (np.nan, np.inf, -np.inf):
        emb = _emb(2, 3)
        emb[1, 2, 5] = bad
        with pytest.raises(ValueError, match=r"NaN/inf for 1 text.*\[2\].*layers \[7\]"):
            store.write("t", ["a", "b", "c"], emb, [3, 7])
    assert len(store) == 0 and not list(store.shards_dir.rglob("*.npy"))
    store.write("t", ["a"], _emb(1, 1), [0])
    with pytest.raises(ValueError, match="hidden size"):
        store.write("t", ["b"], _emb(1, 1, d=D + 1), [0])


def test_inconsistent_hidden_size_across_shards_is_an_error(tmp_path):
    EmbeddingStore(tmp_path / "a", KEY).write("t", ["x"], _emb(1, 1, d=8), [0])
    EmbeddingStore(tmp_path / "b", KEY).write("t", ["y"], _emb(1, 1, d=9), [0])
    for f in (tmp_path / "b" / KEY.digest() / "shards" / "t").iterdir():
        os.replace(f, tmp_path / "a" / KEY.digest() / "shards" / "t" / f.name)
    with pytest.raises(ValueError, match="hidden size"):
        EmbeddingStore(tmp_path / "a", KEY).read(["x"], 0)


# ---------------------------------------------------------------- crash safety


def _is_temp(name: str) -> bool:
    return parse_temp_name(name) is not None


def _shard_files(store: EmbeddingStore) -> list[Path]:
    return sorted(p for p in store.shards_dir.rglob("*") if p.is_file())


def test_crash_debris_is_ignored_and_complete_shards_still_read(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    texts = _texts("c", 5)
    emb = _emb(2, 5)
    store.write("t", texts, emb, [0, 1])
    d = store.shards_dir / "t"
    # What a SIGKILL can leave: a half-written temp .npy, a temp marker, an .npy whose marker
    # was never committed (holding texts that must not be served).
    (d / ".tmp-otherhost-123-deadbeef-999.npy").write_bytes(b"\x93NUMPY trunc")
    (d / ".tmp-otherhost-123-deadbeef-999.json").write_text('{"format": 1, "dat')
    np.save(d / "0000000000001-orphan.npy", _emb(2, 1))
    # And damage no atomic write can produce, which must still never be served as data:
    bad = EmbeddingStore(tmp_path / "x", KEY)
    bad_npy = bad.write("t", ["victim"], _emb(1, 1), [0])
    bad_npy.write_bytes(bad_npy.read_bytes()[:-7])  # truncated committed data
    for f in (bad_npy, bad_npy.with_suffix(".json")):
        os.replace(f, d / f.name)
    (d / "9999999999999-corrupt.json").write_text("{not json")

    with pytest.warns(UserWarning, match="failed its check") as rec:
        fresh = EmbeddingStore(tmp_path, KEY)
        assert len(fresh) == 5
    assert len(rec) == 2
    assert "185 bytes on disk, marker says 192" in str(rec[0].message)
    np.testing.assert_array_equal(fresh.read(texts, 1), emb[1])
    assert fresh.missing(["victim", *texts], [0]) == [0]
    # Debris of a writer that may still be alive (other host, recent) is left alone by default.
    assert (d / ".tmp-otherhost-123-deadbeef-999.npy").exists()
    assert (d / "0000000000001-orphan.npy").exists()
    removed = fresh.cleanup(grace_s=0)
    assert {p.name for p in removed} == {
        ".tmp-otherhost-123-deadbeef-999.npy",
        ".tmp-otherhost-123-deadbeef-999.json",
        "0000000000001-orphan.npy",
    }
    # The damage was moved aside once, with its sub-path, and is not reported again.
    quarantined = {p.relative_to(fresh.path) for p in (fresh.path / "quarantine").rglob("*")}
    assert quarantined == {
        Path("quarantine/t"),
        Path("quarantine/t") / bad_npy.name,
        Path("quarantine/t") / bad_npy.with_suffix(".json").name,
        Path("quarantine/t/9999999999999-corrupt.json"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(EmbeddingStore(tmp_path, KEY).read(texts, 0), emb[0])


def test_cleanup_removes_temp_files_of_dead_local_writers_at_once(tmp_path):
    from mteb_midlayer.tempfiles import host_tag

    store = EmbeddingStore(tmp_path, KEY)
    store.write("t", ["a"], _emb(1, 1), [0])
    cmd = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    d = store.shards_dir / "t"
    dead_tmp = d / f".x.npy.tmp-{host_tag()}-{dead}-0badf00d"
    live_tmp = d / f".y.npy.tmp-{host_tag()}-{os.getpid()}-0badf00d"
    dead_tmp.write_bytes(b"x")
    live_tmp.write_bytes(b"y")
    assert store.cleanup() == [dead_tmp]
    assert live_tmp.exists()
    old = time.time() - 7200
    os.utime(live_tmp, (old, old))
    assert store.cleanup() == [live_tmp]
    assert store.read(["a"], 0).shape == (1, D)


CHILD = r"""
import os, sys, time
from pathlib import Path
import numpy as np
from mteb_midlayer.store import EmbeddingStore, StoreKey

B, L, DIM, LAYERS = 32, 3, 256, [0, 4, 8]

def batch(b):
    texts = [f"batch {b} text {i}" for i in range(B)]
    return texts, np.random.default_rng(b).standard_normal((L, B, DIM)).astype(np.float32)

if __name__ == "__main__":
    root, progress, mode, key = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    store = EmbeddingStore(root, StoreKey(**__import__("json").loads(key)))
    current = [0]
    if mode in ("commit", "data"):
        real_replace, real_write = os.replace, np.lib.format.write_array
        def hang():
            progress.write_text("stuck")
            time.sleep(600)
        def replace(src, dst):  # die between the data file and its commit marker
            if current[0] == 2 and str(dst).endswith(".json") and mode == "commit":
                hang()
            return real_replace(src, dst)
        def write_array(fh, arr, **kw):  # die half-way through the data file
            if current[0] == 2 and mode == "data":
                fh.write(b"\x93NUMPY partial header")
                fh.flush()
                hang()
            return real_write(fh, arr, **kw)
        os.replace, np.lib.format.write_array = replace, write_array
    for b in range(int(sys.argv[5]) if len(sys.argv) > 5 else 10**6):
        current[0] = b
        texts, emb = batch(b)
        store.write(("Task", f"w{mode}"), texts, emb, LAYERS)
        tmp = progress.with_suffix(".tmp")  # atomic, so the parent never reads half a number
        tmp.write_text(str(b + 1))
        os.replace(tmp, progress)
"""


def _child_batch(b: int) -> tuple[list[str], np.ndarray]:
    ns: dict = {}
    exec(CHILD, ns)  # same generator as the child, without its __main__ part
    return ns["batch"](b)


def _spawn(tmp_path: Path, mode: str, n_batches: int | None = None) -> tuple:
    """Start the child writer on the store at tmp_path/store; returns (process, progress file)."""
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    progress = tmp_path / f"progress-{mode}"
    args = [sys.executable, str(script), str(tmp_path / "store"), str(progress), mode]
    args.append(json.dumps(KEY.to_dict()))
    if n_batches is not None:
        args.append(str(n_batches))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(args, env=env), progress


def _wait_for(progress: Path, proc: subprocess.Popen, pred, timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = progress.read_text() if progress.exists() else ""
        if text and pred(text):
            return text
        assert proc.poll() is None, f"child exited early with {proc.returncode}"
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"child made no progress: {progress.read_text()!r}")


def _check_after_kill(tmp_path: Path, n_batches: int) -> int:
    """Every visible shard is whole and exact; missing() lists exactly the rest; resume works."""
    store = EmbeddingStore(tmp_path / "store", KEY)
    layers = [0, 4, 8]
    all_texts, done = [], 0
    for b in range(n_batches):
        texts, emb = _child_batch(b)
        all_texts += texts
        miss = store.missing(texts, layers)
        assert miss in ([], list(range(len(texts)))), f"batch {b} partially visible"
        if not miss:
            done += 1
            for j, layer in enumerate(layers):
                np.testing.assert_array_equal(store.read(texts, layer), emb[j])
    assert len(store) == done * 32
    for b in range(n_batches):  # resume: write what is left, then everything reads
        texts, emb = _child_batch(b)
        if store.missing(texts, layers):
            store.write(("Task", "resume"), texts, emb, layers)
    assert store.missing(all_texts, layers) == []
    assert store.read(all_texts, 8, dim=3).shape == (len(all_texts), 3)
    return done


def test_sigkill_mid_loop_leaves_only_complete_shards(tmp_path):
    proc, progress = _spawn(tmp_path, "loop")
    try:
        _wait_for(progress, proc, lambda t: int(t) >= 3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    written = int(progress.read_text())
    done = _check_after_kill(tmp_path, written + 3)
    assert written <= done <= written + 1  # at most the batch in flight is lost


@pytest.mark.parametrize("mode", ["commit", "data"])
def test_sigkill_inside_a_write_is_invisible(tmp_path, mode):
    proc, progress = _spawn(tmp_path, mode)
    try:
        _wait_for(progress, proc, lambda t: t == "stuck")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = EmbeddingStore(tmp_path / "store", KEY)  # first scan cleans the dead pid's temp
    texts, _ = _child_batch(2)
    assert store.missing(texts, [0]) == list(range(32))
    leftovers = {p.name for p in _shard_files(store)}
    assert not any(_is_temp(name) for name in leftovers)
    assert len([n for n in leftovers if n.endswith(".json")]) == 2
    assert len([n for n in leftovers if n.endswith(".npy")]) == (3 if mode == "commit" else 2)
    assert _check_after_kill(tmp_path, 4) == 2


def test_concurrent_writers_of_one_config_do_not_clash(tmp_path):
    # Two workers racing on the same task and texts: both must commit every shard intact.
    procs = [_spawn(tmp_path, f"w{i}", n_batches=4)[0] for i in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    store = EmbeddingStore(tmp_path / "store", KEY)
    assert len(list(store.shards_dir.rglob("*.json"))) == 8
    assert not any(_is_temp(p.name) for p in _shard_files(store))
    assert len(store) == 4 * 32
    for b in range(4):
        texts, emb = _child_batch(b)
        np.testing.assert_array_equal(store.read(texts, 4), emb[1])


def test_other_instances_see_new_shards(tmp_path):
    a, b = EmbeddingStore(tmp_path, KEY), EmbeddingStore(tmp_path, KEY)
    assert b.missing(["x"], [0]) == [0]
    emb = _emb(1, 1)
    a.write("t", ["x"], emb, [0])
    np.testing.assert_array_equal(b.read(["x"], 0), emb[0])  # read refreshes on a miss
    assert b.missing(["x"], [0]) == []


# ---------------------------------------------------------------- memory


def test_read_maps_shards_and_copies_only_one_layer_slice(tmp_path, monkeypatch):
    n_layers, n, d = 8, 2000, 384  # 24.6 MB shard
    store = EmbeddingStore(tmp_path, KEY)
    texts = _texts("m", n)
    emb = _emb(n_layers, n, d)
    store.write("big", texts, emb, list(range(n_layers)))
    expected = emb[5, :, :64].copy()
    del emb

    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    fresh = EmbeddingStore(tmp_path, KEY)
    len(fresh)  # build the index outside the measurement
    tracemalloc.start()
    try:
        got = fresh.read(texts, 5, dim=64)
        peak = tracemalloc.get_traced_memory()[1]
        real_load(next(fresh.shards_dir.rglob("*.npy")))  # sanity: a full load is visible
        full_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    assert got.nbytes == n * 64 * 4
    assert calls == ["r"]
    shard_bytes = n_layers * n * d * 4
    assert full_peak >= shard_bytes
    assert peak < 4 * got.nbytes + 2_000_000 < shard_bytes / 5


# ---------------------------------------------------------------- integrity (checksums)


def _npy_header_len(path: Path) -> int:
    with open(path, "rb") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        return fh.tell()


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _damage(path: Path, how: str) -> None:
    start = _npy_header_len(path)
    if how == "finite":  # other finite values: only the checksum can tell
        _overwrite(path, start, np.full(4, 0.5, np.float32).tobytes())
    elif how == "zeroed":
        _overwrite(path, start + 8, bytes(32))
    elif how == "nan":
        _overwrite(path, start, np.full(2, np.nan, np.float32).tobytes())
    elif how == "header":
        _overwrite(path, 0, b"\x00GARBAGE")
    elif how == "shape":  # a valid header of another shape, same file size
        arr = np.load(path)
        raw = path.read_bytes()
        path.write_bytes(b"")
        np.save(path, arr.reshape(arr.shape[0], -1, 2))
        assert path.stat().st_size == len(raw)


@pytest.mark.parametrize("how", ["finite", "zeroed", "nan", "header", "shape"])
def test_a_damaged_shard_is_quarantined_reported_and_counts_as_missing(tmp_path, how):
    store = EmbeddingStore(tmp_path, KEY)
    good, victim = _texts("g", 3), _texts("v", 4)
    emb = _emb(2, 4)
    store.write(("T", "test"), good, _emb(2, 3, seed=1), [0, 1])
    shard = store.write(("T", "test"), victim, emb, [0, 1])
    _damage(shard, how)

    fresh = EmbeddingStore(tmp_path, KEY)
    with pytest.warns(UserWarning, match="failed its check") as rec:
        assert fresh.missing([*good, *victim], [0, 1]) == [3, 4, 5, 6]
    (msg,) = [str(r.message) for r in rec]
    assert str(shard) in msg and "quarantine" in msg
    assert "sha256" in msg  # format 2: the checksum catches every kind of damage
    assert not shard.exists() and not shard.with_suffix(".json").exists()
    moved = fresh.path / "quarantine" / "T" / "test"
    assert {p.name for p in moved.iterdir()} == {shard.name, shard.with_suffix(".json").name}
    assert fresh.read(good, 1).shape == (3, D)  # the sound shard is still served
    with pytest.raises(KeyError, match="4 of 4 texts not stored"):
        fresh.read(victim, 0)
    # Re-encoding (here: rewriting) makes them whole again, exact.
    fresh.write(("T", "test"), victim, emb, [0, 1])
    np.testing.assert_array_equal(EmbeddingStore(tmp_path, KEY).read(victim, 1), emb[1])


def test_read_checks_a_shard_before_serving_it_once_per_process(tmp_path, monkeypatch):
    import mteb_midlayer.store as store_mod

    store = EmbeddingStore(tmp_path, KEY)
    texts = _texts("r", 5)
    emb = _emb(1, 5)
    shard = store.write("t", texts, emb, [3])
    calls = []
    real = store_mod._file_sha256
    monkeypatch.setattr(store_mod, "_file_sha256", lambda p: calls.append(p) or real(p))
    store.read(texts, 3)
    assert calls == []  # written by this instance: known good

    fresh = EmbeddingStore(tmp_path, KEY)
    for _ in range(3):
        np.testing.assert_array_equal(fresh.read(texts, 3), emb[0])
    assert fresh.missing(texts, [3]) == []
    assert calls == [shard]  # hashed once, at first use

    _damage(shard, "zeroed")
    other = EmbeddingStore(tmp_path, KEY)
    with (
        pytest.warns(UserWarning, match=r"failed its check \(sha256"),
        pytest.raises(KeyError, match="5 of 5 texts not stored for layer 3"),
    ):
        other.read(texts, 3)
    assert other.layers() == [] and len(other) == 0


def _as_format_1(shard: Path) -> None:
    marker = shard.with_suffix(".json")
    meta = json.loads(marker.read_text())
    meta["format"] = 1
    del meta["sha256"]
    marker.write_text(json.dumps(meta))


def test_format_1_shards_without_checksum_are_served_after_header_and_finite_checks(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    ok, nan, hdr = _texts("ok", 2), _texts("nan", 2), _texts("hdr", 2)
    emb = _emb(2, 2)
    _as_format_1(store.write("t", ok, emb, [0, 1]))
    bad_nan = store.write("t", nan, emb, [0, 1])
    bad_hdr = store.write("t", hdr, emb, [0, 1])
    for shard, how in ((bad_nan, "nan"), (bad_hdr, "shape")):
        _as_format_1(shard)
        _damage(shard, how)
    fresh = EmbeddingStore(tmp_path, KEY)
    with pytest.warns(UserWarning, match="failed its check") as rec:
        assert fresh.missing([*ok, *nan, *hdr], [0, 1]) == [2, 3, 4, 5]
    reasons = sorted(str(r.message) for r in rec)
    assert any("NaN/inf values at layer 0" in m and str(bad_nan) in m for m in reasons)
    assert any("marker says float32(2, 2, 16)" in m and str(bad_hdr) in m for m in reasons)
    np.testing.assert_array_equal(fresh.read(ok, 1), emb[1])


def test_a_shard_of_a_newer_format_is_skipped_not_moved(tmp_path):
    store = EmbeddingStore(tmp_path, KEY)
    shard = store.write("t", ["x"], _emb(1, 1), [0])
    marker = shard.with_suffix(".json")
    meta = json.loads(marker.read_text())
    marker.write_text(json.dumps({**meta, "format": 99}))
    with pytest.warns(UserWarning, match="format 99 is newer"):
        assert EmbeddingStore(tmp_path, KEY).missing(["x"], [0]) == [0]
    assert marker.exists() and shard.exists()


# ---------------------------------------------------------------- disk full


def test_disk_full_raises_store_full_error_and_keeps_what_was_written(tmp_path, monkeypatch):
    import errno

    from mteb_midlayer.store import StoreFullError

    store = EmbeddingStore(tmp_path, KEY)
    store.write("t", ["kept"], _emb(1, 1), [0])
    real = np.lib.format.write_array

    def full(fh, arr, **kwargs):
        fh.write(b"\x93NUMPY")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", full)
    with pytest.raises(StoreFullError, match=r"disk full while writing .*\.npy \(.* free there\)"):
        store.write("t", ["lost"], _emb(1, 1), [0])
    monkeypatch.setattr(np.lib.format, "write_array", real)
    assert isinstance(StoreFullError(tmp_path), OSError)
    assert not [p for p in _shard_files(store) if _is_temp(p.name)]
    fresh = EmbeddingStore(tmp_path, KEY)
    assert fresh.missing(["kept", "lost"], [0]) == [1]


def test_raise_if_disk_full_finds_enospc_in_the_chain(tmp_path):
    import errno

    from mteb_midlayer.store import StoreFullError, raise_if_disk_full

    raise_if_disk_full(ValueError("other"), tmp_path)  # not a full disk: nothing happens
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r.json"))
        except OSError as inner:
            raise RuntimeError("mteb could not save the result") from inner
    except RuntimeError as outer:
        with pytest.raises(StoreFullError, match=r"r\.json"):
            raise_if_disk_full(outer, tmp_path)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root); skipped where it cannot be mounted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk(tiny_tmpfs):
    from mteb_midlayer.store import StoreFullError

    store = EmbeddingStore(tiny_tmpfs, KEY)
    small = _emb(1, 10)  # 640 bytes
    store.write("t", _texts("s", 10), small, [0])
    with pytest.raises(StoreFullError, match="disk full") as info:
        store.write("t", _texts("b", 2000), _emb(1, 2000), [0])  # 128 KB > 64 KiB
    assert info.value.free_bytes is not None and info.value.free_bytes < 64 * 1024
    assert not [p for p in _shard_files(store) if _is_temp(p.name)]
    np.testing.assert_array_equal(
        EmbeddingStore(tiny_tmpfs, KEY).read(_texts("s", 10), 0), small[0]
    )


# ---------------------------------------------------------------- in a sweep (end to end)


def _biosses_sweep(minilm_path: str, shared_data: Path, out: Path):
    from mteb_midlayer.sweep import sweep

    return sweep(
        minilm_path, tasks=["BIOSSES"], data_dir=shared_data, layers=[6], output=out,
        device="cpu", show_progress=False,
    )  # fmt: skip


def test_a_bit_flipped_shard_is_recomputed_in_a_sweep_with_a_message(
    minilm_path, shared_data, minilm_biosses, tmp_path
):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(minilm_biosses.output, out, symlinks=True)  # the session's BIOSSES sweep
    score = minilm_biosses.table.loc[6, "BIOSSES"]
    assert score == pytest.approx(0.81254, abs=1e-4)
    shard = sorted((out / "store").rglob("*.npy"))[0]
    n_rows = json.loads(shard.with_suffix(".json").read_text())["n"]
    _overwrite(shard, _npy_header_len(shard) + 4 * 100, bytes(4 * 384 * 20))  # zero 20 rows
    for result in out.rglob("BIOSSES.json"):
        result.unlink()  # rescore from the store (what a new slice or a lost result does)
    with pytest.warns(UserWarning, match=r"store shard .*\.npy failed its check \(sha256"):
        again = _biosses_sweep(minilm_path, shared_data, out)
    assert again.failures == {}
    assert again.n_encoded == n_rows  # that shard's texts re-encoded, not served
    assert again.scores.loc[6, "BIOSSES"] == pytest.approx(score, abs=1e-6)
    assert len(list((out / "store").rglob("quarantine/**/*.npy"))) == 1


@pytest.mark.parametrize("how", ["patched", "tmpfs", "result"])
def test_disk_full_stops_the_sweep_with_one_message(
    how, minilm_path, shared_data, tmp_path, monkeypatch, capsys, request
):
    import errno

    import mteb

    from mteb_midlayer.cli import main

    out = tmp_path / "out"
    if how == "tmpfs":
        out = request.getfixturevalue("tiny_tmpfs") / "out"
    elif how == "result":  # the store has room, mteb's result file does not

        def no_room(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "BIOSSES.json"))

        monkeypatch.setattr(mteb.ResultCache, "save_to_cache", no_room)
    else:

        def full(fh, arr, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(np.lib.format, "write_array", full)
    # --jobs 1: the patches above act in this process only
    code = main(
        ["sweep", minilm_path, "--tasks", "BIOSSES,STS12", "--data-dir", str(shared_data),
         "--layers", "6", "--output", str(out), "--device", "cpu", "--jobs", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith(("error", "FAILED"))]
    assert len(lines) == 1 and lines[0].startswith("error: StoreFullError: disk full while writing")
    assert "run the same command again to resume" in lines[0]
    assert (out / "store").is_dir()  # what was written (the store config) is kept
    assert not list(out.rglob("STS12.json"))  # stopped: the next task was not tried
    if how == "result":
        assert "BIOSSES.json" in lines[0]
        assert list((out / "store").rglob("*.npy"))  # the embeddings were kept for the rerun
