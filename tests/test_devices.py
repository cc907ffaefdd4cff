"""devices: core counting and the OpenMP waiting policy."""

from __future__ import annotations

import os

from mteb_midlayer import devices


def test_available_cores_is_the_affinity_mask():
    assert devices.available_cores() == len(os.sched_getaffinity(0))


def test_passive_omp_wait_sets_passive_but_a_users_setting_wins(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    devices.passive_omp_wait()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    devices.passive_omp_wait()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
