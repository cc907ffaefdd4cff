"""The executor factory (executors/__init__.py) and the extras it needs (extras.py)."""

from __future__ import annotations

import pytest

from mteb_midlayer.executors import MissingExtraError, UnknownExecutorError, make_executor


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
