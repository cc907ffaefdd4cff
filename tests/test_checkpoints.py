"""Checkpoint series: which checkpoints, in what order, and the manifest."""

from __future__ import annotations

import pytest

from mteb_midlayer.checkpoints import (
    Checkpoint,
    checkpoint_step,
    local_checkpoints,
    read_series,
    record_checkpoint,
    resolve_checkpoints,
    revision_checkpoints,
)


def test_checkpoint_order_and_steps(tmp_path):
    for name in ("checkpoint-10", "checkpoint-9", "checkpoint-100"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-5.txt").write_text("not a folder")
    found = local_checkpoints(tmp_path / "checkpoint-*")
    assert [c.name for c in found] == ["checkpoint-9", "checkpoint-10", "checkpoint-100"]
    assert [c.step for c in found] == [9, 10, 100]
    assert all(c.revision is None for c in found)  # the folder's fingerprint is its revision
    hub = revision_checkpoints("org/model", "step1000,step8000,main")
    assert [(c.name, c.step, c.revision) for c in hub] == [
        ("step1000", 1000, "step1000"),
        ("step8000", 8000, "step8000"),
        ("main", None, "main"),
    ]
    assert checkpoint_step("main") is None
    with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
        local_checkpoints(tmp_path / "nothing-*")
    with pytest.raises(ValueError, match="not a series"):
        resolve_checkpoints(str(tmp_path / "checkpoint-9"))


def test_manifest_round_trip(tmp_path):
    record_checkpoint(tmp_path, "m", "rev-b", Checkpoint("checkpoint-20", 20, "/x/20"))
    record_checkpoint(tmp_path, "m", "rev-a", Checkpoint("checkpoint-10", 10, "/x/10"))
    record_checkpoint(tmp_path, "m", "rev-b", Checkpoint("checkpoint-20", 20, "/x/20"))  # again
    rows = read_series([tmp_path])
    assert [(r["revision"], r["checkpoint"], r["step"]) for r in rows] == [
        ("rev-a", "checkpoint-10", 10),
        ("rev-b", "checkpoint-20", 20),
    ]
    assert read_series([tmp_path / "none"]) == []
