"""The plan of work units: what a sweep will do, written down before anything runs."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest

from mteb_midlayer.model import LayerModel
from mteb_midlayer.plan import (
    EncodeUnit,
    ScoreUnit,
    TaskTexts,
    encode_units,
    read_texts,
    record_requests,
    request_spec,
    write_texts,
)
from mteb_midlayer.sweep import sweep
from mteb_midlayer.tasks.selection import select_tasks


def _texts(n: int) -> TaskTexts:
    return TaskTexts(task="T", prompt_type="query", texts=tuple(f"text {i}" for i in range(n)))


def _common(tmp_path) -> dict:
    return dict(
        model={"source": "minilm"},
        resolved={"name": "a/b", "revision": "r"},
        data_dir=None,
        store_root=str(tmp_path / "store"),
        layers=(0, 6),
        pooling="mean",
    )


def test_encode_units_cover_the_texts_once_in_shards(tmp_path):
    texts = _texts(10)
    units = encode_units(texts, tmp_path / "t.json", 4, **_common(tmp_path))
    assert [(u.start, u.stop) for u in units] == [(0, 4), (4, 8), (8, 10)]
    assert sum(u.n_texts for u in units) == 10
    assert len({u.key for u in units}) == 3  # claims are named after the key
    write_texts(tmp_path / "t.json", texts)
    assert [t for u in units for t in read_texts(u)] == list(texts.texts)
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        encode_units(texts, tmp_path / "t.json", 0, **_common(tmp_path))


def test_units_are_frozen_picklable_plain_data(tmp_path):
    unit = encode_units(_texts(3), tmp_path / "t.json", 2, **_common(tmp_path))[0]
    again = pickle.loads(pickle.dumps(unit))
    assert again == unit and again.key == unit.key
    with pytest.raises(dataclasses.FrozenInstanceError):
        unit.start = 1  # type: ignore[misc]
    for field in dataclasses.fields(EncodeUnit) + dataclasses.fields(ScoreUnit):
        assert "Path" not in str(field.type) and "LayerModel" not in str(field.type), field


def test_a_changed_texts_file_is_refused(tmp_path):
    unit = encode_units(_texts(3), tmp_path / "t.json", 2, **_common(tmp_path))[0]
    write_texts(tmp_path / "t.json", _texts(4))  # another plan wrote other texts
    with pytest.raises(ValueError, match="changed since the plan was made"):
        read_texts(unit)


def test_recorded_texts_are_what_mteb_asks_for(shared_data):
    biosses = select_tasks(["BIOSSES"], None, shared_data)[0]
    biosses.load_data()
    (recorded,) = record_requests(biosses, None, "a/b")
    test = biosses.dataset["test"]
    assert recorded.prompt_type is None
    assert set(recorded.texts) == set(test["sentence1"]) | set(test["sentence2"])
    assert len(recorded.texts) == len(set(recorded.texts)) == 183


def test_request_spec_reloads_a_local_folder_to_the_same_revision(minilm, minilm_path):
    spec = request_spec(minilm)
    assert spec["source"] == minilm_path and spec["device"] is None
    assert not (spec["revision"] or "").startswith("local-")
    again = LayerModel.load(minilm_path, device="cpu")  # what a worker does from the unit
    assert again.current_spec().revision == minilm.current_spec().revision


def test_dry_run_prints_the_plan_and_writes_nothing(minilm, shared_data, tmp_path):
    out = tmp_path / "out"
    kwargs = dict(
        tasks=["BIOSSES"], data_dir=shared_data, layers=[0, 6], dims=[384, 64], output=out,
        shard_size=50, show_progress=False,
    )  # fmt: skip
    table = sweep(minilm, dry_run=True, **kwargs)
    plan = table.plan
    assert not out.exists()
    assert len(plan.encode) == math.ceil(183 / 50) and len(plan.score) == 4
    assert {(u.layer, u.dim) for u in plan.score} == {(0, 384), (0, 64), (6, 384), (6, 64)}
    assert all(set(u.depends_on) == {e.key for e in plan.encode} for u in plan.score)
    summary = plan.summary()
    assert "Plan: 4 encode units, 4 score units, 1 tasks." in summary
    assert summary.splitlines()[-1].split() == ["BIOSSES", "183", "4", "4", "0"]

    done = sweep(minilm, **kwargs)
    assert done.n_encoded == 183
    assert (out / "plan").is_dir()  # a real run keeps its texts files
    replan = sweep(minilm, dry_run=True, **kwargs).plan
    assert (len(replan.encode), len(replan.score), replan.done) == (0, 0, {"BIOSSES": 4})
