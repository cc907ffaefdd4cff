"""Ray and submitit executors, for real: a local Ray instance on 2 CPUs, submitit's local
executor (no Slurm needed). Skipped, with the extra to install, where they are missing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mteb_midlayer.executors import (
    MissingExtraError,
    SharedFilesystemError,
    UnknownExecutorError,
    make_executor,
)
from mteb_midlayer.executors.probe import (
    Probe,
    check_probes,
    run_checked,
    shared_probes,
    write_probe,
)
from mteb_midlayer.executors.slurm import SlurmTimeError, parse_slurm_time
from mteb_midlayer.plan import write_texts
from tests.executor_units import ToyUnit, ToyUnitError, run_toy_unit


def toy_units(root: Path, n: int = 4, **flags) -> list[ToyUnit]:
    root.mkdir(parents=True, exist_ok=True)
    crash = flags.pop("crash", None)
    fail = flags.pop("fail", None)
    return [
        ToyUnit(f"u{i}", i, str(root), crash_once=(i == crash), fail=(i == fail)) for i in range(n)
    ]


def run_all(executor, units, *, gpu: bool) -> dict[str, object]:
    return {unit.name: result for unit, result in executor.map(run_toy_unit, units, gpu=gpu)}


# ---- the probe and the factory (no extra needed)


def test_probe_is_read_back_and_removed(tmp_path):
    with shared_probes([tmp_path / "out"]) as probes:
        (probe,) = probes
        assert Path(probe.path).parent == (tmp_path / "out").absolute()
        assert Path(probe.path).read_text() == probe.token and len(probe.token) == 32
        check_probes(probes)  # this process sees it
    assert not Path(probe.path).exists()


def test_probe_not_seen_names_node_and_path(tmp_path):
    missing = Probe(str(tmp_path / ".midlayer-probe-abc"), "abc")
    with pytest.raises(
        SharedFilesystemError,
        match=r"node n7 cannot read the probe file .*probe-abc that the driver wrote \(no such file",
    ):
        check_probes([missing], node="n7")
    other = write_probe(tmp_path)
    stale = Probe(other.path, "not-the-token")
    outcome = run_checked(run_toy_unit, ToyUnit("u", 3, str(tmp_path)), [stale])
    assert isinstance(outcome.error, SharedFilesystemError)
    assert outcome.error.node == socket.gethostname() and outcome.error.path == other.path
    assert "another token" in outcome.error.reason
    assert not (tmp_path / "u.txt").exists()  # the unit did not run


def test_run_checked_returns_the_error_as_an_object(tmp_path):
    ok = run_checked(run_toy_unit, ToyUnit("a", 3, str(tmp_path)), [])
    assert (ok.value, ok.error) == (9, None)
    bad = run_checked(run_toy_unit, ToyUnit("b", 3, str(tmp_path), fail=True), [])
    assert isinstance(bad.error, ToyUnitError)


def test_unknown_executor():
    with pytest.raises(
        UnknownExecutorError, match="unknown executor 'dask'; choose one of local, ray, submitit"
    ):
        make_executor("dask")


def test_missing_extra_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(
        MissingExtraError,
        match=r"--executor ray needs the ray package: pip install 'mteb-midlayer\[ray\]'",
    ):
        make_executor("ray")
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'mteb-midlayer\[slurm\]'"):
        make_executor("submitit")


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440), ("1-2:30", 1590), ("0-0:0:30", 1)],
)
def test_parse_slurm_time(text, minutes):
    assert parse_slurm_time(text) == minutes


@pytest.mark.parametrize("text", ["soon", "1:2:3:4", "0", "-5"])
def test_parse_slurm_time_refuses(text):
    with pytest.raises(SlurmTimeError, match="--slurm-time"):
        parse_slurm_time(text)


# ---- Ray: a local instance on 2 CPUs, shared by the tests of this module


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="pip install 'mteb-midlayer[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_runs_units_and_checks_each_node(ray_local, tmp_path):
    executor = make_executor("ray", roots=[tmp_path])
    assert executor.name == "ray"
    results = run_all(executor, toy_units(tmp_path), gpu=True)
    assert results == {"u0": 0, "u1": 1, "u2": 4, "u3": 9}
    assert executor.num_gpus_per_encode == 0  # a CPU-only cluster: encode units take no GPU
    assert len(executor._checked_nodes) == 1
    assert not list(tmp_path.glob(".midlayer-probe-*"))  # removed after the run
    # a unit that raises comes back as its own exception, the others still finish
    failed = run_all(executor, toy_units(tmp_path / "f", fail=2), gpu=False)
    assert isinstance(failed.pop("u2"), ToyUnitError) and failed == {"u0": 0, "u1": 1, "u3": 9}


@pytest.mark.slow
def test_ray_node_that_cannot_read_the_probe_is_named(ray_local, tmp_path):
    executor = make_executor("ray")
    absent = Probe(str(tmp_path / ".midlayer-probe-x"), "x")
    with pytest.raises(
        SharedFilesystemError,
        match=rf"node {socket.gethostname()} \(.*Ray node .*probe-x that the driver wrote \(no such file",
    ):
        executor.check_nodes([absent])


@pytest.mark.slow
def test_ray_killed_worker_loses_only_its_unit(ray_local, tmp_path):
    from ray.exceptions import WorkerCrashedError

    units = toy_units(tmp_path, crash=1)
    first = run_all(make_executor("ray", max_retries=0), units, gpu=True)
    assert isinstance(first.pop("u1"), WorkerCrashedError)
    assert first == {"u0": 0, "u2": 4, "u3": 9}
    rerun = run_all(make_executor("ray", max_retries=0), units, gpu=True)
    assert rerun == {"u0": 0, "u1": 1, "u2": 4, "u3": 9}
    # with a retry Ray reruns the dead worker's unit itself
    retried = run_all(
        make_executor("ray", max_retries=1), toy_units(tmp_path / "r", crash=3), gpu=True
    )
    assert retried == {"u0": 0, "u1": 1, "u2": 4, "u3": 9}


# ---- submitit's local executor (no Slurm here)


@pytest.fixture
def submitit_local():
    return pytest.importorskip("submitit", reason="pip install 'mteb-midlayer[slurm]'")


@pytest.mark.slow
def test_submitit_local_runs_units_and_says_so(submitit_local, tmp_path):
    out = tmp_path / "out"
    executor = make_executor(
        "submitit", roots=[out], folder=tmp_path / "logs", cluster="local", parallelism=3
    )
    assert "no Slurm found" in executor.note and "local executor" in executor.note
    results = run_all(executor, toy_units(out, n=3, crash=1, fail=2), gpu=True)
    crashed, failed = results.pop("u1"), results.pop("u2")
    assert isinstance(failed, ToyUnitError)  # the unit's own exception, not a log text
    assert isinstance(crashed, Exception) and not isinstance(crashed, ToyUnitError)
    assert results == {"u0": 0}  # (a rerun after a dead job: the sweep-units test below)


# ---- the CLI flags


def test_cli_slurm_flags_without_submitit_are_refused():
    from mteb_midlayer.cli import build_parser, executor_kwargs

    args = build_parser().parse_args(["sweep", "--slurm-time", "30", "--ray-address", "auto"])
    assert executor_kwargs(build_parser().parse_args(["sweep"])) == {}
    with pytest.raises(
        ValueError, match="--ray-address, --slurm-time only apply with another --executor"
    ):
        executor_kwargs(args)


def test_cli_devices_only_with_the_local_executor():
    from mteb_midlayer.cli import build_parser, executor_kwargs

    args = build_parser().parse_args(["sweep", "--executor", "submitit", "--devices", "cuda:0"])
    with pytest.raises(ValueError, match="--devices is for the local executor"):
        executor_kwargs(args)


def test_cli_missing_extra_is_one_line(monkeypatch, capsys):
    import sys

    from mteb_midlayer.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["sweep", "--executor", "ray", "--tasks", "BIOSSES"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: MissingExtraError: --executor ray needs the ray package: "
        "pip install 'mteb-midlayer[ray]'"
    ]


def test_cli_builds_submitit_executor_and_says_where(submitit_local, tmp_path, capsys):
    from mteb_midlayer.cli import build_parser, executor_kwargs

    args = build_parser().parse_args(
        [
            "metrics",
            "--executor",
            "submitit",
            "--output",
            str(tmp_path),
            "--slurm-time",
            "1:30:00",
            "--slurm-partition",
            "gpu",
            "--slurm-gpus-per-task",
            "2",
        ]
    )
    executor = executor_kwargs(args)["executor"]
    assert (executor.name, executor.partition, executor.gpus_per_task) == ("submitit", "gpu", 2)
    assert executor.timeout_min == 90 and executor.folder == tmp_path / "submitit"
    assert executor.roots == [tmp_path]
    expected = (
        "no Slurm found" if executor.cluster == "local" else "Slurm job arrays on partition gpu"
    )
    assert expected in capsys.readouterr().err


# ---- the sweep's own units (plan.py) on Ray and submitit: same files, same scores as local

SWEEP = dict(tasks=["BIOSSES"], layers="0,6", show_progress=False)


def result_files(output: Path) -> list[str]:
    """The mteb result files (and their identities) under a results root, relative."""
    skip = {"store", "plan", "submitit"}
    return sorted(
        str(p.relative_to(output))
        for p in output.rglob("*.json")
        if p.relative_to(output).parts[0] not in skip
    )


def scores(output: Path):
    from mteb_midlayer.tables import layer_results

    long = layer_results(output)
    return long.set_index(["task", "layer", "dim"])["score"].sort_index()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, minilm_path, shared_data):
    from mteb_midlayer.sweep import sweep

    out = tmp_path_factory.mktemp("local")
    sweep(minilm_path, data_dir=shared_data, output=out, **SWEEP)
    return out


def planned(model: str, data_dir: Path, output: Path, **opts):
    """The sweep's plan for `output` (dry run), with the task texts written as a real run does."""
    from mteb_midlayer.plan import write_texts
    from mteb_midlayer.sweep import sweep

    plan = sweep(model, data_dir=data_dir, output=output, dry_run=True, **SWEEP, **opts)
    plan = plan.attrs["plan"]
    for unit in plan.encode:
        (texts,) = [t for t in plan.texts[unit.task] if t.prompt_type == unit.prompt_type]
        write_texts(Path(unit.texts_file), texts)
    return plan


def run_plan_on(executor, model: str, data_dir: Path, output: Path, **opts) -> dict:
    """The sweep's units for `output` (its dry-run plan, with the task texts written as a real
    run writes them), run through `executor`: encode units, then score units."""
    from mteb_midlayer.executors import run_encode_unit, run_score_unit

    plan = planned(model, data_dir, output, **opts)
    done = [*executor.map(run_encode_unit, plan.encode, gpu=True)]
    done += executor.map(run_score_unit, plan.score, gpu=False)
    return {unit.key: result for unit, result in done}


def assert_same_results(output: Path, reference: Path) -> None:
    assert result_files(output) == result_files(reference)
    got, want = scores(output), scores(reference)
    assert len(want) == 2 and list(got.index) == list(want.index)
    assert got.to_numpy() == pytest.approx(want.to_numpy(), abs=2e-6)


@pytest.mark.slow
def test_ray_sweep_units_kill_a_worker_then_rerun(
    ray_local, local_sweep, minilm_path, shared_data, tmp_path
):
    from ray.exceptions import WorkerCrashedError

    from tests.executor_units import CrashFirstExecutor

    out = tmp_path / "ray"
    ray_exec = make_executor("ray", roots=[out], max_retries=0)
    crashing = CrashFirstExecutor(ray_exec, str(tmp_path))
    first = run_plan_on(crashing, minilm_path, shared_data, out, shard_size=64)
    crashed = [r for r in first.values() if isinstance(r, WorkerCrashedError)]
    assert len(crashed) == 1  # the first encode unit's worker died; the others ran
    assert len(first) == 3 + 2  # 183 distinct texts in shards of 64, then 2 slices
    rerun = run_plan_on(ray_exec, minilm_path, shared_data, out, shard_size=64)
    encoded = [r.n_encoded for r in rerun.values() if hasattr(r, "n_encoded")]
    assert 0 < sum(encoded) <= 64  # only the dead worker's shard is encoded again
    assert not [r for r in rerun.values() if isinstance(r, BaseException)]
    assert_same_results(out, local_sweep)


@pytest.mark.slow
def test_ray_two_maps_of_the_same_units_encode_each_text_once(
    ray_local, minilm_path, shared_data, tmp_path
):
    from mteb_midlayer.executors import run_encode_unit

    plan = planned(minilm_path, shared_data, tmp_path / "twice", shard_size=64)
    executor = make_executor("ray", roots=[tmp_path / "twice"])
    first = executor.map(run_encode_unit, plan.encode, gpu=True)  # both in flight at once,
    second = executor.map(run_encode_unit, plan.encode, gpu=True)  # as two drivers would be
    reports = [result for _, result in [*first, *second]]
    assert len(reports) == 6 and not [r for r in reports if isinstance(r, BaseException)]
    assert sum(r.n_encoded for r in reports) == 183  # claimed: each shard encoded once
    shards = sorted(p.name for p in (tmp_path / "twice" / "store").rglob("*.npy"))
    assert len(shards) == 3, shards


@pytest.mark.slow
def test_ray_workers_elsewhere_load_a_relative_model_and_take_over_a_dead_hosts_claim(
    ray_local, shared_data, tmp_path, monkeypatch
):
    """The driver names its model relative to its cwd, which the Ray workers do not share; one
    unit's claim was left by a host that died 10 minutes ago (no heartbeat since)."""
    import json
    import os
    import time

    from mteb_midlayer.executors import run_encode_unit, run_score_unit
    from mteb_midlayer.executors.base import claim_path
    from mteb_midlayer.sweep import sweep
    from tests.conftest import tiny_model, tiny_tokenizer

    folder = tmp_path / "models" / "tiny"
    tiny_model("bert", n_layers=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    data = tmp_path / "data" / "BIOSSES"
    data.mkdir(parents=True)
    lines = (shared_data / "BIOSSES" / "test.jsonl").read_text().splitlines()[:20]
    (data / "test.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(folder.parent)

    def cwd() -> str:
        return os.getcwd()

    assert ray_local.get(ray_local.remote(cwd).remote()) != os.getcwd()
    out = tmp_path / "out"
    executor = make_executor("ray", roots=[out])
    kwargs = dict(tasks=["BIOSSES"], data_dir=data.parent, layers="1,2", show_progress=False)
    table = sweep("tiny", output=out, shard_size=16, dry_run=True, **kwargs)
    plan = table.attrs["plan"]
    for unit in plan.encode:
        (texts,) = plan.texts[unit.task]
        write_texts(Path(unit.texts_file), texts)
    dead = claim_path(plan.encode[0])
    dead.parent.mkdir(parents=True)
    dead.write_text(json.dumps({"pid": 1, "host": "dead-host", "time": 0, "heartbeat_s": 30}))
    os.utime(dead, (time.time() - 600, time.time() - 600))

    encoded = [r for _, r in executor.map(run_encode_unit, plan.encode, gpu=True)]
    assert not [r for r in encoded if isinstance(r, BaseException)], encoded
    assert sum(r.n_encoded for r in encoded) == len(texts.texts) and len(encoded) > 1
    assert max(r.waited_s for r in encoded) == 0  # the dead host's claim was taken over at once
    assert not list(dead.parent.iterdir())  # every claim released
    scored = [r for _, r in executor.map(run_score_unit, plan.score, gpu=False)]
    assert not [r for r in scored if isinstance(r, BaseException)], scored
    assert {Path(f).parts[:2] for f in result_files(out / "results")} == {
        ("local__tiny", plan.encode[0].resolved["revision"])
    }


@pytest.mark.slow
def test_submitit_local_runs_the_sweep_units(
    submitit_local, local_sweep, minilm_path, shared_data, tmp_path
):
    out = tmp_path / "sub"
    executor = make_executor(
        "submitit", roots=[out], folder=tmp_path / "logs", cluster="local", poll_s=0.5
    )
    results = run_plan_on(executor, minilm_path, shared_data, out)
    assert not [r for r in results.values() if isinstance(r, BaseException)], results
    assert_same_results(out, local_sweep)


@pytest.mark.slow
def test_cli_sweep_through_ray_equals_local(
    ray_local, local_sweep, minilm_path, shared_data, tmp_path, monkeypatch, capsys
):
    from mteb_midlayer.cli import main

    monkeypatch.chdir(tmp_path)  # a relative --output: workers get absolute paths
    argv = ["sweep", minilm_path, "--tasks", "BIOSSES", "--data-dir", str(shared_data)]
    argv += ["--layers", "0,6", "--output", "out", "--executor", "ray", "--shard-size", "100"]
    assert main(argv) == 0
    assert "Encoded 183 new texts" in capsys.readouterr().out
    assert_same_results(tmp_path / "out", local_sweep)
    assert main(argv) == 0  # a rerun computes nothing
    assert "Encoded 0 new texts" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob(".midlayer-probe-*"))


@pytest.mark.slow
def test_cli_metrics_through_ray_equals_local(ray_local, minilm_path, shared_data, tmp_path):
    import pandas as pd

    from mteb_midlayer.cli import main
    from mteb_midlayer.metrics.driver import layer_metrics

    opts = dict(tasks=["BIOSSES"], layers="0,6", n=40, metrics="dataset_entropy,effective_rank")
    local = layer_metrics(
        minilm_path, data_dir=shared_data, output=tmp_path / "local", show_progress=False, **opts
    )
    argv = [
        "metrics",
        minilm_path,
        "--tasks",
        "BIOSSES",
        "--data-dir",
        str(shared_data),
        "--layers",
        "0,6",
    ]
    argv += [
        "--n",
        "40",
        "--metrics",
        "dataset_entropy,effective_rank",
        "--output",
        str(tmp_path / "ray"),
    ]
    assert main([*argv, "--executor", "ray"]) == 0
    got = pd.read_parquet(tmp_path / "ray" / "metrics")
    keys = ["dataset", "layer", "metric", "variant"]
    got, want = (df.sort_values(keys).reset_index(drop=True) for df in (got, local))
    assert len(want) == 2 * 3 and want["value"].notna().all()  # entropy raw + normalized, rank
    got, want = (df.drop(columns="run_at") for df in (got, want))  # each run has its own time
    pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-6, rtol=0)
    names = sorted(p.name for p in (tmp_path / "ray" / "metrics").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "local" / "metrics").iterdir())
