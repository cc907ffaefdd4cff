"""Executors and work units: serial and process pools, claims, and sweeps that equal a serial one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from mteb_midlayer.executors import claims, work
from mteb_midlayer.executors.local import ProcessExecutor, SerialExecutor
from mteb_midlayer.model import LayerModel
from mteb_midlayer.plan import TaskTexts, encode_units, request_spec, write_texts
from mteb_midlayer.replay import store_key
from mteb_midlayer.store import EmbeddingStore
from mteb_midlayer.sweep import sweep

from ..conftest import REPO, tiny_model, tiny_tokenizer

CLASSIFICATION = "TweetSentimentExtractionClassification"


def _square(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    time.sleep(1.0 if x == 0 else 0.0)
    return x * x


def _pid(_: int) -> int:
    time.sleep(0.2)
    return os.getpid()


def _threads(_: int) -> tuple[int, str | None]:
    import torch

    return torch.get_num_threads(), (work._DEVICE or [None])[0]


def test_serial_executor_yields_results_and_exceptions_in_order():
    out = list(SerialExecutor().map(_square, [1, 3, 2], gpu=False))
    assert [u for u, _ in out] == [1, 3, 2]
    assert out[0][1] == 1 and out[2][1] == 4
    assert isinstance(out[1][1], ValueError) and str(out[1][1]) == "three"


@pytest.mark.slow
def test_process_executor_completion_order_one_thread_and_devices():
    with ProcessExecutor(jobs=2) as ex:
        pids: set[int] = set()
        while len(pids) < 2:  # both workers up (started, imports done) before timing
            pids |= {pid for _, pid in ex.map(_pid, [0, 1], gpu=False)}
        out = list(ex.map(_square, [0, 1, 3], gpu=False))
        assert {u: r for u, r in out if not isinstance(r, BaseException)} == {0: 0, 1: 1}
        assert out[-1][0] == 0  # the slow unit completes last
        assert isinstance(dict(out)[3], ValueError)
        assert {r for _, r in ex.map(_threads, range(4), gpu=False)} == {(1, None)}
    with ProcessExecutor(devices=["cpu", "cpu"]) as ex:
        assert ex.jobs == 2
        assert {r for _, r in ex.map(_threads, range(4), gpu=True)} == {(1, "cpu")}
    with pytest.raises(ValueError, match="at least one device"):
        ProcessExecutor(devices=[])


# ------------------------------------------------------------------------------------ claims
def _write_claim(
    path: Path,
    pid: int,
    host: str,
    age_s: float = 0.0,
    heartbeat_s: float | None = None,
    beat_age_s: float | None = None,
) -> None:
    """A claim as another holder writes it; `beat_age_s`: how old its last heartbeat is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host, "time": time.time() - age_s}
    if heartbeat_s is not None:
        record["heartbeat_s"] = heartbeat_s
    path.write_text(json.dumps(record))
    beat = time.time() - (age_s if beat_age_s is None else beat_age_s)
    os.utime(path, (beat, beat))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    import socket

    path = tmp_path / "c" / "unit.claim"
    assert claims.try_claim(path) and not claims.try_claim(path)
    assert not claims.take_over_if_stale(path)  # held by this live process
    claims.release(path)
    assert not path.exists()

    _write_claim(path, _dead_pid(), socket.gethostname())
    assert claims.take_over_if_stale(path) and claims.try_claim(path)
    path.unlink()
    _write_claim(path, os.getpid(), "another-host", age_s=10.0)
    assert not claims.take_over_if_stale(path, stale_s=60)  # cannot tell; not old yet
    assert claims.take_over_if_stale(path, stale_s=5)  # older than stale_s
    path.write_text("")  # torn: its holder died between create and write
    assert not claims.take_over_if_stale(path, grace_s=60)
    assert claims.take_over_if_stale(path, grace_s=0)


def test_another_hosts_claim_is_judged_by_its_heartbeat(tmp_path):
    path = tmp_path / "c" / "unit.claim"
    # Dead host: its last heartbeat is 6 min old -> taken over within minutes, not after 6 h.
    _write_claim(path, os.getpid(), "another-host", age_s=400, heartbeat_s=30, beat_age_s=360)
    assert claims.read_holder(path).heartbeat_s == 30
    assert claims.take_over_if_stale(path) and not path.exists()
    assert claims.try_claim(path)
    path.unlink()
    # Alive host: claimed 7 h ago (past DEFAULT_STALE_S) but its heartbeat is fresh -> held.
    _write_claim(path, os.getpid(), "another-host", age_s=7 * 3600, heartbeat_s=1, beat_age_s=5)
    assert not claims.take_over_if_stale(path)
    # The limit is configurable, and never under 3 of the holder's own intervals.
    assert claims.take_over_if_stale(path, heartbeat_stale_s=2)  # 5 s > max(2 s, 3 x 1 s)
    _write_claim(path, os.getpid(), "another-host", heartbeat_s=100, beat_age_s=250)
    assert not claims.take_over_if_stale(path, heartbeat_stale_s=60)  # 250 s < 3 x 100 s
    _write_claim(path, os.getpid(), "another-host", heartbeat_s=100, beat_age_s=310)
    assert claims.take_over_if_stale(path, heartbeat_stale_s=60)


def test_a_same_host_claim_is_judged_by_its_pid(tmp_path):
    import socket

    path = tmp_path / "unit.claim"
    host = socket.gethostname()
    _write_claim(path, _dead_pid(), host, heartbeat_s=30, beat_age_s=0)  # fresh beat, dead pid
    assert claims.take_over_if_stale(path)
    _write_claim(path, os.getpid(), host, heartbeat_s=30, beat_age_s=100)  # alive, beat late
    assert not claims.take_over_if_stale(path)
    # ... unless its heartbeat stopped long ago: the pid was reused by another process.
    _write_claim(path, os.getpid(), host, heartbeat_s=30, beat_age_s=400)
    assert claims.take_over_if_stale(path)


def test_a_claim_beaten_while_being_taken_over_is_put_back(tmp_path, monkeypatch):
    path = tmp_path / "unit.claim"
    _write_claim(path, os.getpid(), "another-host", heartbeat_s=30, beat_age_s=400)
    rename = os.rename

    def beat_then_rename(src, dst):  # the holder's heartbeat lands between check and move
        os.utime(src)
        rename(src, dst)

    monkeypatch.setattr(claims.os, "rename", beat_then_rename)
    assert not claims.take_over_if_stale(path)
    assert claims.read_holder(path).host == "another-host"
    assert [p.name for p in tmp_path.iterdir()] == ["unit.claim"]


def _wait_until(check, timeout_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def test_the_heartbeat_refreshes_the_claim_and_stops_with_it(tmp_path):
    path = tmp_path / "unit.claim"
    assert claims.try_claim(path, heartbeat_s=0.05)
    old = time.time() - 3600
    os.utime(path, (old, old))
    with claims.holding(path, 0.05) as heart:
        assert _wait_until(lambda: heart.beats >= 2)
        assert time.time() - path.stat().st_mtime < 1.0  # refreshed from an hour old
        assert heart.is_alive() and heart.name.startswith("claim-heartbeat")
    assert not heart.is_alive() and not heart.lost and not path.exists()

    assert claims.try_claim(path, heartbeat_s=0.05)
    with pytest.raises(RuntimeError, match="boom"), claims.holding(path, 0.05) as heart:
        raise RuntimeError("boom")
    assert not heart.is_alive() and not path.exists()  # stopped and released on an exception
    with pytest.raises(ValueError, match="heartbeat_s must be > 0"):
        claims.Heartbeat(path, 0)


def test_a_holder_whose_claim_was_taken_over_stops_beating_it(tmp_path):
    path = tmp_path / "unit.claim"
    assert claims.try_claim(path, heartbeat_s=0.02)
    with claims.holding(path, 0.02) as heart:
        path.unlink()  # taken over: another host claims the unit
        _write_claim(path, os.getpid(), "another-host", heartbeat_s=30, beat_age_s=100)
        assert _wait_until(lambda: heart.lost)
        assert time.time() - path.stat().st_mtime > 90  # the new claim was never beaten
    assert path.exists()  # and not released by us


def _unit(lm: LayerModel, tmp_path: Path, texts: list[str]):
    tt = TaskTexts(task="T", prompt_type=None, texts=tuple(texts))
    write_texts(tmp_path / "texts.json", tt)
    (unit,) = encode_units(
        tt, tmp_path / "texts.json", len(texts), model=request_spec(lm),
        resolved=lm.current_spec().to_dict(), data_dir=None, store_root=str(tmp_path / "store"),
        layers=(0, 6), pooling="mean", batch_size=8,
    )  # fmt: skip
    work.seed_model(unit.model, lm)
    return unit


def test_encode_unit_waits_for_a_live_claim_then_does_only_what_is_missing(minilm, tmp_path):
    unit = _unit(minilm, tmp_path, [f"sentence number {i}" for i in range(5)])
    path = work.claim_path(unit)
    assert claims.try_claim(path)  # a live holder (this process) has the unit
    threading.Timer(1.0, claims.release, [path]).start()
    report = work.run_encode_unit(unit, poll_s=0.1)
    assert report.waited_s >= 0.8 and report.n_encoded == 5 and not path.exists()
    store = EmbeddingStore(unit.store_root, store_key(minilm, "mean", None))
    assert len(store) == 5
    assert work.run_encode_unit(unit).n_encoded == 0  # written: nothing to do
    assert len(list(Path(unit.store_root).rglob("shards/**/*.json"))) == 1


@pytest.mark.parametrize("where", ["this-host", "another-host"])
def test_encode_unit_takes_over_a_dead_holders_claim(minilm, tmp_path, where):
    import socket

    unit = _unit(minilm, tmp_path, ["a", "b", "c"])
    if where == "this-host":
        _write_claim(work.claim_path(unit), _dead_pid(), socket.gethostname())
    else:  # a host that died 10 minutes ago: no heartbeat since
        _write_claim(work.claim_path(unit), 1, "dead-host", heartbeat_s=30, beat_age_s=600)
    report = work.run_encode_unit(unit, poll_s=0.05, heartbeat_s=0.05)
    assert report.n_encoded == 3 and report.waited_s == 0
    assert not work.claim_path(unit).exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("claim-heartbeat")]


def test_a_worker_with_another_model_refuses_the_unit(minilm, tmp_path):
    unit = _unit(minilm, tmp_path, ["a"])
    other = dict(unit.resolved, revision="other")
    with pytest.raises(work.UnitError, match="revision"):
        work.run_encode_unit(type(unit)(**{**unit.__dict__, "resolved": other}))


# ----------------------------------------------------------------------------- whole sweeps
@pytest.fixture(scope="module")
def data_dir(shared_data, tmp_path_factory) -> Path:
    """BIOSSES and a small cut of a classification task."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(shared_data / "BIOSSES", root / "BIOSSES")
    (root / CLASSIFICATION).mkdir()
    for split, n in (("train", 120), ("test", 60)):
        lines = (shared_data / CLASSIFICATION / f"{split}.jsonl").read_text().splitlines()
        (root / CLASSIFICATION / f"{split}.jsonl").write_text("\n".join(lines[:n]) + "\n")
    return root


def _results(out: Path) -> dict[str, dict]:
    """Slice folder/task -> the JSON scores (everything but times)."""
    return {
        f"{p.parent.name}/{p.stem}": json.loads(p.read_text())["scores"]
        for p in (out / "results").rglob("*.json")
        if p.parent.name.startswith("dim_") and p.name != "model_meta.json"
    }


@pytest.mark.slow
def test_jobs_and_devices_give_bit_identical_results(minilm_path, data_dir, two_drivers, tmp_path):
    """Two worker processes (`jobs=2`, one device each) write what one driver alone (`--jobs 1`:
    the two-drivers run, same settings) writes."""
    kwargs = dict(
        tasks=["BIOSSES", CLASSIFICATION], data_dir=data_dir, layers=[0, 6], dims=[384, 64],
        shard_size=16, batch_size=16, show_progress=False,
    )  # fmt: skip
    serial, procs, _ = two_drivers
    assert [p.returncode for p in procs] == [0, 0]
    pooled = sweep(minilm_path, output=tmp_path / "pooled", jobs=2, devices="cpu,cpu", **kwargs)
    assert pooled.failures == {}
    assert pooled.n_encoded == 183 + 180
    a, b = _results(serial), _results(tmp_path / "pooled")
    assert len(a) == 8 and a == b  # every score, not only the main one, bit for bit


def _cli(out: Path, data: Path, jobs: int) -> list[str]:
    return [
        sys.executable, "-m", "mteb_midlayer.cli", "sweep", "minilm",
        "--tasks", f"BIOSSES,{CLASSIFICATION}", "--data-dir", str(data), "--layers", "0,6",
        "--dims", "384,64", "--output", str(out), "--shard-size", "16", "--batch-size", "16",
        "--device", "cpu", "--jobs", str(jobs),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }


def _stored_texts(out: Path) -> int:
    markers = (out / "store").rglob("shards/**/*.json")
    return sum(json.loads(m.read_text())["n"] for m in markers)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive_not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _encoded(stdout: str) -> int:
    return int(stdout.split("Encoded ")[1].split()[0])


@pytest.fixture(scope="module")
def two_drivers(data_dir, tmp_path_factory) -> tuple[Path, list[subprocess.Popen], list[str]]:
    """Two CLI drivers (`--jobs 1`) started together on one output; it is also the clean run
    the killed driver's resumed output is compared with."""
    out = tmp_path_factory.mktemp("two-drivers") / "out"
    procs = [
        subprocess.Popen(
            _cli(out, data_dir, 1),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    stdouts = [p.communicate(timeout=600)[0] for p in procs]
    return out, procs, stdouts


@pytest.mark.slow
def test_two_drivers_on_one_output_encode_each_text_once(two_drivers):
    out, procs, stdouts = two_drivers
    assert [p.returncode for p in procs] == [0, 0]
    assert _stored_texts(out) == 183 + 180  # every text once, not once per driver
    assert sum(_encoded(s) for s in stdouts) == 183 + 180
    table = [s.split("Encoded ")[0] for s in stdouts]
    assert table[0] == table[1]  # both drivers print the same scores
    assert len(_results(out)) == 8
    assert not list((out / "store" / "claims").glob("*.claim"))


@pytest.mark.slow
def test_killed_driver_loses_at_most_its_unit(data_dir, two_drivers, tmp_path):
    """A driver killed (SIGKILL) while encoding takes its workers with it; the same command
    then encodes only what is missing and writes what a clean run writes."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(out, data_dir, 2), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while _stored_texts(out) < 3 * 16 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the scoring pool (and its resource tracker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(600):  # the workers end with their driver (once done importing)
        if not any(Path(f"/proc/{pid}").exists() for pid in workers):
            break
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive_not_zombie(pid)]
    before = _stored_texts(out)
    assert before >= 3 * 16 and not _results(out)

    resumed = subprocess.run(
        _cli(out, data_dir, 2), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _encoded(resumed.stdout) == 183 + 180 - before  # nothing written was recomputed
    assert _stored_texts(out) == 183 + 180
    clean, procs, _ = two_drivers  # the same command, never killed
    assert [p.returncode for p in procs] == [0, 0]
    assert _results(out) == _results(clean)


@pytest.mark.slow
def test_metrics_units_in_a_worker_equal_the_driver(minilm_path, data_dir, tmp_path):
    from mteb_midlayer.metrics.run import layer_metrics

    kwargs = dict(
        tasks=["BIOSSES", CLASSIFICATION], data_dir=data_dir, n=40, layers=[0, 6],
        metrics="dataset_entropy,effective_rank,prompt_entropy", show_progress=False,
    )  # fmt: skip
    here_run = layer_metrics(minilm_path, output=tmp_path / "here", **kwargs)
    with ProcessExecutor(devices=["cpu"]) as ex:
        there_run = layer_metrics(minilm_path, output=tmp_path / "there", executor=ex, **kwargs)
    assert here_run.failures == there_run.failures == {}
    here, there = here_run.metrics, there_run.metrics
    assert len(here) == len(there) > 0
    assert set(there["dataset"]) == {"BIOSSES", CLASSIFICATION} and set(there["layer"]) == {0, 6}
    key = ["dataset", "metric", "variant", "layer"]
    a, b = here.sort_values(key).reset_index(drop=True), there.sort_values(key)
    assert a[key].equals(b[key].reset_index(drop=True))
    assert a["value"].to_numpy() == pytest.approx(b["value"].to_numpy(), rel=1e-6)
    assert len(list((tmp_path / "there" / "metrics").glob("*.parquet"))) == 2


@pytest.mark.slow
def test_workers_score_the_subsets_the_driver_planned(minilm_path, shared_data, tmp_path):
    """The default sweep keeps a multilingual task's English subsets; a scoring worker that
    rebuilt the task from its name alone asked the store for German texts never encoded."""
    name = "AmazonCounterfactualClassification"
    for subset in ("en", "de"):
        (tmp_path / "data" / name / subset).mkdir(parents=True)
        for split, n in (("train", 120), ("test", 60)):
            lines = (shared_data / name / subset / f"{split}.jsonl").read_text().splitlines()
            (tmp_path / "data" / name / subset / f"{split}.jsonl").write_text(
                "\n".join(lines[:n]) + "\n"
            )
    table = sweep(minilm_path, data_dir=tmp_path / "data", output=tmp_path / "out", layers=[6],
                  jobs=2, show_progress=False)  # fmt: skip
    assert table.failures == {}
    assert {u.hf_subsets for u in table.plan.score} == {("en",)}
    (result,) = [p for p in (tmp_path / "out").rglob(f"{name}.json") if p.parent.name != "identity"]
    assert [s["hf_subset"] for s in json.loads(result.read_text())["scores"]["test"]] == ["en"]
    # a worker's rebuilt task is the driver's: same subsets, same folder, no repeated notes
    work._TASK.clear()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        task = work._task(name, str(tmp_path / "data"), ("en",))
    assert not [w for w in said if "local data in" in str(w.message)]
    assert task.hf_subsets == ["en"] and task.local_data_dir == tmp_path / "data" / name
    assert work._task(name, str(tmp_path / "data")).hf_subsets == ["en", "de"]


class _Recording(SerialExecutor):
    """The serial executor, keeping the units it was given (what would go to workers)."""

    def __init__(self) -> None:
        self.units: list = []

    def map(self, fn, units, *, gpu):
        self.units += list(units)
        return super().map(fn, units, gpu=gpu)


def _result_files(root: Path) -> dict[str, dict]:
    """Result path under `root/results` (model, revision, slice, task) -> its scores."""
    return {
        str(p.relative_to(root / "results")): json.loads(p.read_text()).get("scores")
        for p in sorted((root / "results").rglob("*.json"))
        if p.parent.name.startswith("dim_") and p.name != "model_meta.json"
    }


def test_a_relative_model_path_reaches_workers_absolute(data_dir, tmp_path, monkeypatch):
    from mteb_midlayer.metrics.run import layer_metrics

    folder = tmp_path / "models" / "my-model"
    tiny_model("bert", n_layers=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    monkeypatch.chdir(folder.parent)
    kwargs = dict(tasks=["BIOSSES"], data_dir=data_dir, layers=[1], show_progress=False)
    sweep_kw = dict(kwargs, dims=[32], device="cpu")
    rel = sweep("./my-model", output="out", executor=_Recording(), **sweep_kw)
    plan = rel.plan
    assert {u.model["source"] for u in plan.encode + plan.score} == {str(folder)}
    assert {u.resolved["source"] for u in plan.encode + plan.score} == {str(folder)}
    assert all(Path(u.output).is_absolute() for u in plan.score)

    # A worker elsewhere (another working directory, no model loaded yet) can run the units.
    monkeypatch.chdir(tmp_path)
    work._MODELS.clear()
    assert work.run_encode_unit(plan.encode[0]).n_encoded == 0  # loaded, checked, all stored
    assert work.run_score_unit(plan.score[0]).skipped

    # Results are named as from the absolute path (name local/my-model, a content revision).
    absolute = sweep(str(folder), output=tmp_path / "abs", **sweep_kw)
    rel_files, abs_files = _result_files(folder.parent / "out"), _result_files(tmp_path / "abs")
    assert list(rel_files) == list(abs_files) and len(rel_files) == 1
    assert next(iter(rel_files)).startswith("local__my-model/local-")
    assert rel_files == abs_files
    assert rel.scores.equals(absolute.scores)
    dry = sweep(str(folder), output=tmp_path / "dry", dry_run=True, **sweep_kw).plan
    assert [u.key for u in dry.encode] == [u.key for u in plan.encode]  # one claim for both

    # metrics: its units carry absolute model, output and data paths too
    monkeypatch.chdir(folder.parent)
    ex = _Recording()
    metrics_kw = dict(metrics="dataset_entropy", n=8)
    result = layer_metrics("my-model", output="out", executor=ex, **kwargs, **metrics_kw)
    df = result.metrics
    (unit,) = ex.units
    assert unit.model["source"] == str(folder) and unit.output == str(folder.parent / "out/metrics")
    assert Path(unit.data_dir).is_absolute() and not result.failures
    assert set(df["model"]) == {"local/my-model"}
