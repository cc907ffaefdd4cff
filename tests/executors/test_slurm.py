"""Slurm through submitit: the time format, submitit's local executor for real (no Slurm needed),
the CLI flags. Skipped, with the extra to install, where submitit is missing."""

from __future__ import annotations

import pytest

from mteb_midlayer.executors import make_executor
from mteb_midlayer.executors.slurm import SlurmTimeError, parse_slurm_time
from tests.executors.units import ToyUnitError, assert_same_results, run_all, run_plan_on, toy_units


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


# ---- submitit's local executor (no Slurm here)


@pytest.fixture
def submitit_local():
    return pytest.importorskip("submitit", reason="pip install 'mteb-midlayer[slurm]'")


@pytest.mark.slow
def test_submitit_local_runs_units_and_says_so(submitit_local, tmp_path):
    out = tmp_path / "out"
    executor = make_executor(
        "submitit",
        roots=[out],
        folder=tmp_path / "logs",
        cluster="local",
        parallelism=3,
        poll_s=0.2,
    )
    assert "no Slurm found" in executor.note and "local executor" in executor.note
    results = run_all(executor, toy_units(out, n=3, crash=1, fail=2), gpu=True)
    crashed, failed = results.pop("u1"), results.pop("u2")
    assert isinstance(failed, ToyUnitError)  # the unit's own exception, not a log text
    assert isinstance(crashed, Exception) and not isinstance(crashed, ToyUnitError)
    assert results == {"u0": 0}  # (a rerun after a dead job: the sweep-units test below)


@pytest.mark.slow
def test_submitit_local_runs_the_sweep_units(
    submitit_local, minilm_biosses, minilm_path, shared_data, tmp_path
):
    out = tmp_path / "sub"
    executor = make_executor(
        "submitit", roots=[out], folder=tmp_path / "logs", cluster="local", poll_s=0.2
    )
    results = run_plan_on(executor, minilm_path, shared_data, out)
    assert not [r for r in results.values() if isinstance(r, BaseException)], results
    assert_same_results(out, minilm_biosses.output)


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
