"""Ray for real: one local instance on 2 CPUs, started once for every Ray test (they all live in
this module), running toy units and the sweep's own units. Skipped, with the extra to install,
where Ray is missing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mteb_midlayer.executors import SharedFilesystemError, make_executor
from mteb_midlayer.executors.probe import Probe
from mteb_midlayer.plan import write_texts
from tests.executors.units import (
    ToyUnitError,
    assert_same_results,
    planned,
    result_files,
    run_all,
    run_plan_on,
    toy_units,
)


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
def test_ray_retries_a_dead_workers_unit(ray_local, tmp_path):
    """With a retry Ray reruns the dead worker's unit itself. (Without one, only that unit is
    lost and a rerun finishes it: test_ray_sweep_units_kill_a_worker_then_rerun.)"""
    retried = run_all(
        make_executor("ray", max_retries=1), toy_units(tmp_path / "r", crash=3), gpu=True
    )
    assert retried == {"u0": 0, "u1": 1, "u2": 4, "u3": 9}


# ---- the sweep's own units (plan.py): same files, same scores as the local sweep


@pytest.mark.slow
def test_ray_sweep_units_kill_a_worker_then_rerun(
    ray_local, minilm_biosses, minilm_path, shared_data, tmp_path
):
    from ray.exceptions import WorkerCrashedError

    from tests.executors.units import CrashFirstExecutor

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
    assert_same_results(out, minilm_biosses.output)


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
    from mteb_midlayer.executors.work import claim_path
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
    plan = table.plan
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
def test_cli_sweep_through_ray_equals_local(
    ray_local, minilm_biosses, minilm_path, shared_data, tmp_path, monkeypatch, capsys
):
    from mteb_midlayer.cli import main

    monkeypatch.chdir(tmp_path)  # a relative --output: workers get absolute paths
    argv = ["sweep", minilm_path, "--tasks", "BIOSSES", "--data-dir", str(shared_data)]
    argv += ["--layers", "0,6", "--output", "out", "--executor", "ray", "--shard-size", "100"]
    assert main(argv) == 0
    assert "Encoded 183 new texts" in capsys.readouterr().out
    assert_same_results(tmp_path / "out", minilm_biosses.output)
    assert main(argv) == 0  # a rerun computes nothing
    assert "Encoded 0 new texts" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob(".midlayer-probe-*"))


@pytest.mark.slow
def test_cli_metrics_through_ray_equals_local(ray_local, minilm_path, shared_data, tmp_path):
    import pandas as pd

    from mteb_midlayer.cli import main
    from mteb_midlayer.metrics.run import layer_metrics

    opts = dict(tasks=["BIOSSES"], layers="0,6", n=40, metrics="dataset_entropy,effective_rank")
    local = layer_metrics(
        minilm_path, data_dir=shared_data, output=tmp_path / "local", show_progress=False, **opts
    ).metrics
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
