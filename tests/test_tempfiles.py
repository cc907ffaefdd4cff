"""Temp files of atomic writes: who wrote them, and removing only those no writer needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mteb_midlayer import tempfiles
from mteb_midlayer.frames import metrics_frame
from mteb_midlayer.results import write_atomic
from mteb_midlayer.tempfiles import TempName, clean_temp_files, host_tag, parse_temp_name

from .conftest import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_temp_names_say_who_wrote_them_and_hide_from_readers(tmp_path):
    tmp = tempfiles.temp_path(tmp_path / "STS12.json")
    assert tmp.parent == tmp_path and tmp.name.startswith(".STS12.json.tmp-")
    assert not tmp.name.endswith((".json", ".parquet"))  # no reader's glob takes it for data
    assert parse_temp_name(tmp.name) == TempName("STS12.json", host_tag(), os.getpid())
    assert tempfiles.temp_path(tmp_path / "a") != tempfiles.temp_path(tmp_path / "a")
    # names earlier versions wrote: store (with host), results and metrics (pid only)
    assert parse_temp_name(".tmp-box-7-0badf00d-1.npy") == TempName("1.npy", "box", 7)
    assert parse_temp_name("STS12.json.tmp-42") == TempName("STS12.json", None, 42)
    assert parse_temp_name(".tmp-42-BIOSSES.parquet") == TempName("BIOSSES.parquet", None, 42)
    for name in ("STS12.json", "model_meta.json", ".tmp", "x.tmp-", "a.json.stale-1234abcd"):
        assert parse_temp_name(name) is None


def test_clean_removes_dead_writers_and_old_debris_never_a_live_writers(tmp_path, dead_pid):
    host = host_tag()
    deep = tmp_path / "results" / "m" / "rev" / "experiments" / "L1"
    deep.mkdir(parents=True)
    files = {
        "dead_here": deep / f".T.json.tmp-{host}-{dead_pid}-0badf00d",
        "live_here": deep / f".U.json.tmp-{host}-{os.getpid()}-0badf00d",
        "other_host_recent": deep / f".V.json.tmp-elsewhere-{dead_pid}-0badf00d",
        "other_host_old": deep / f".W.json.tmp-elsewhere-{dead_pid}-0badf00d",
        "legacy_recent": tmp_path / f"X.json.tmp-{dead_pid}",  # host unknown: by age only
        "legacy_old": tmp_path / f".tmp-{dead_pid}-Y.parquet",
        "data": deep / "T.json",
    }
    for path in files.values():
        path.write_text("{}")
    _age(files["other_host_old"], 2 * 86400)
    _age(files["legacy_old"], 2 * 86400)
    _age(files["live_here"], 2 * 86400)  # a reused pid's file goes by age too

    removed = clean_temp_files(tmp_path)
    assert sorted(removed) == sorted(
        [files["dead_here"], files["other_host_old"], files["legacy_old"], files["live_here"]]
    )
    assert {k for k, p in files.items() if p.exists()} == {
        "other_host_recent",
        "legacy_recent",
        "data",
    }
    os.utime(files["other_host_recent"])
    live = tempfiles.temp_path(deep / "Z.json")  # this live process's, however old
    live.write_text("{")
    assert clean_temp_files(tmp_path, max_age_s=3600) == []
    assert clean_temp_files(tmp_path / "absent") == []


def test_atomic_writes_leave_no_temp_file(tmp_path):
    write_atomic(tmp_path / "a.json", json.dumps({"x": 1}))
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_replaces_the_content_whole(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old content that is longer than the new one")
    tempfiles.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    tempfiles.atomic_write(path, "ünï\n")
    assert path.read_bytes() == "ünï\n".encode()
    tempfiles.atomic_write(path, lambda fh: (fh.write(b"a"), fh.write(b"b")))
    assert path.read_bytes() == b"ab"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_atomic_write_removes_its_temp_file_on_error_and_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "a.json"
    path.write_text("old")
    seen = []

    def half_then_fail(fh):
        fh.write(b"half")
        seen.extend(p.name for p in tmp_path.iterdir() if p.name != "a.json")
        raise error

    with pytest.raises(type(error)):
        tempfiles.atomic_write(path, half_then_fail)
    assert len(seen) == 1 and parse_temp_name(seen[0]).name == "a.json"  # it was written there
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert path.read_text() == "old"


@pytest.fixture(scope="module")
def tiny_data(shared_data, tmp_path_factory) -> Path:
    """BIOSSES cut to 12 pairs."""
    root = tmp_path_factory.mktemp("data")
    (root / "BIOSSES").mkdir()
    lines = (shared_data / "BIOSSES" / "test.jsonl").read_text().splitlines()[:12]
    (root / "BIOSSES" / "test.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _debris(out: Path, dead_pid: int) -> dict[str, Path]:
    """A dead writer's temp files in each part of an output folder, a live one's, and one
    of another host's (recent)."""
    host = host_tag()
    files = {
        "dead_metrics": out / "metrics" / f".T.parquet.tmp-{host}-{dead_pid}-0badf00d",
        "dead_result": out / "results" / "m" / f".T.json.tmp-{host}-{dead_pid}-0badf00d",
        "dead_plan": out / "plan" / f".none.json.tmp-{host}-{dead_pid}-0badf00d",
        "live": out / "results" / f".U.json.tmp-{host}-{os.getpid()}-0badf00d",
        "other_host": out / "metrics" / f".V.parquet.tmp-elsewhere-{dead_pid}-0badf00d",
        "legacy": out / "metrics" / f".tmp-{dead_pid}-W.parquet",  # an older version's, torn
        "not_ours": out / "notes" / f".a.tmp-{host}-{dead_pid}-0badf00d",  # outside our folders
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PAR1 torn")
    return files


@pytest.mark.parametrize("run", ["sweep", "metrics"])
def test_a_run_cleans_its_output_folder_first(run, tiny_data, tmp_path, dead_pid):
    from mteb_midlayer.metrics.run import layer_metrics
    from mteb_midlayer.sweep import sweep

    out = tmp_path / "out"
    files = _debris(out, dead_pid)
    model, tok = tiny_model("bert", n_layers=2), tiny_tokenizer()
    common = dict(output=out, layers=[1], show_progress=False, device="cpu")
    if run == "sweep":
        table = sweep(
            model, tokenizer=tok, tasks=["BIOSSES"], data_dir=tiny_data, dims=[32], **common
        )
        assert not table.failures and -1 <= table.scores.loc[1, "BIOSSES"] <= 1
    else:
        texts = ["a b c", "d e f", "g h", "i j k l"]
        df = layer_metrics(
            model, tokenizer=tok, texts=texts, metrics="dataset_entropy", n=4, **common
        ).metrics
        assert len(df) >= 1 and df["value"].notna().all()
    gone = {k for k, p in files.items() if not p.exists()}
    want = {"dead_metrics"} if run == "metrics" else {"dead_metrics", "dead_result", "dead_plan"}
    assert gone == want  # the live writer's, the other host's and a hostless recent one stay
    # what a run leaves is readable: no reader takes a temp file for data
    assert len(metrics_frame(out)) == (len(df) if run == "metrics" else 0)


def _work_folder(path: Path, age_s: float = 0.0) -> Path:
    (path / "backbone").mkdir(parents=True)
    weights = path / "backbone" / "model.safetensors"
    weights.write_bytes(b"0" * 1024)
    if age_s:
        for p in (weights, path / "backbone", path):
            _age(p, age_s)
    return path


def test_clean_temp_folders_removes_dead_exports_work_never_a_live_ones(tmp_path, dead_pid):
    host = host_tag()
    folders = {
        "dead_here": _work_folder(tmp_path / f".out.export-{host}-{dead_pid}-0badf00d"),
        "other_out_dead": _work_folder(tmp_path / f".other.export-{host}-{dead_pid}-1badf00d"),
        "live_here": _work_folder(tmp_path / f".out.export-{host}-{os.getpid()}-2badf00d"),
        "other_host_recent": _work_folder(tmp_path / f".out.export-elsewhere-{dead_pid}-3badf00d"),
        "other_host_old": _work_folder(
            tmp_path / f".out.export-elsewhere-{dead_pid}-4badf00d", age_s=2 * 86400
        ),
        "legacy_recent": _work_folder(tmp_path / ".out.export-k2x_9ab1"),  # tempfile.mkdtemp's
        "legacy_old": _work_folder(tmp_path / ".out.export-q7z_0cd3", age_s=2 * 86400),
        "an_export": _work_folder(tmp_path / "out"),
        "lookalike": _work_folder(tmp_path / "out.export-k2x_9ab1"),  # not hidden: not ours
    }
    removed = tempfiles.clean_temp_folders(tmp_path)
    gone = {"dead_here", "other_out_dead", "other_host_old", "legacy_old"}
    assert sorted(removed) == sorted(folders[k] for k in gone)
    assert {k for k, p in folders.items() if p.exists()} == set(folders) - gone
    made = tempfiles.make_temp_folder(tmp_path / "out")
    assert made.parent == tmp_path and made.name.startswith(".out.export-")
    assert tempfiles.folder_stale_reason(made, max_age_s=0.0, now=time.time() - 10) is None
    assert tempfiles.clean_temp_folders(tmp_path / "absent") == []
