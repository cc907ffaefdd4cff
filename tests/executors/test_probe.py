"""The shared-filesystem probe every node reads back before the first unit runs."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mteb_midlayer.executors import SharedFilesystemError
from mteb_midlayer.executors.probe import (
    Probe,
    check_probes,
    run_checked,
    shared_probes,
    write_probe,
)
from tests.executors.units import ToyUnit, ToyUnitError, run_toy_unit


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
