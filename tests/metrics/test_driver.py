"""The metrics driver: wiring checked against the pure functions on independently computed states."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mteb_midlayer.encoder import LayerEncoder
from mteb_midlayer.metrics import functional as F
from mteb_midlayer.metrics.augment import augment_views
from mteb_midlayer.metrics.driver import METRICS, ROW_COLUMNS, layer_metrics, parse_metrics
from mteb_midlayer.metrics.sampling import sample_texts, task_texts
from mteb_midlayer.model import LayerModel
from mteb_midlayer.sweep import select_tasks


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return LayerModel.load(minilm_path, device="cpu")


def test_parse_metrics():
    assert parse_metrics("all") == list(METRICS)
    assert parse_metrics("lidar,curvature") == ["curvature", "lidar"]
    with pytest.raises(ValueError, match="Unknown metrics"):
        parse_metrics("entropy")


def test_sampling_is_seeded_and_flattens_lists():
    texts = [f"t{i}" for i in range(100)]
    a, b = sample_texts(texts, 10, 42), sample_texts(texts, 10, 42)
    assert a == b and len(set(a)) == 10 and a != sample_texts(texts, 10, 7)
    assert sample_texts(texts[:5], 10) == texts[:5]
    from datasets import Dataset

    from mteb_midlayer.metrics.sampling import _texts_of

    clustering = Dataset.from_dict({"sentences": [["a", "b"], ["c"]], "labels": [[0, 1], [2]]})
    assert list(_texts_of(clustering)) == ["a", "b", "c"]
    sts = Dataset.from_dict({"sentence1": ["x"], "sentence2": ["y"], "score": [1.0]})
    assert list(_texts_of(sts)) == ["x", "y"]


def _token_states(lm: LayerModel, texts: list[str], layer: int) -> list[torch.Tensor]:
    """Per-text states from plain transformers, one text at a time (no padding at all)."""
    out = []
    for text in texts:
        ids = torch.tensor([lm.tokenize([text])[0]])
        with torch.no_grad():
            hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
        out.append(hs[layer][0])
    return out


def test_layer_metrics_end_to_end(minilm, shared_data, tmp_path):
    df = layer_metrics(
        minilm,
        tasks=["BIOSSES"],
        data_dir=shared_data,
        output=tmp_path,
        n=40,
        n_views=4,
        layers=[0, 3, 6],
        show_progress=False,
    )
    assert list(df.columns) == ROW_COLUMNS
    assert set(df["metric"]) == set(METRICS)
    assert set(df["layer"]) == {0, 3, 6}
    assert df["value"].notna().all()
    on_disk = pd.read_parquet(tmp_path / "metrics")  # one pandas call
    pd.testing.assert_frame_equal(on_disk.reset_index(drop=True), df.reset_index(drop=True))

    task = select_tasks(["BIOSSES"], None, shared_data)[0]
    texts = sample_texts(task_texts(task), 40, 42)
    value = df.set_index(["layer", "metric", "variant"])["value"]
    for layer in (0, 3, 6):
        x = torch.from_numpy(LayerEncoder(minilm, layer=layer, normalize=False).embed(texts))
        assert value[(layer, "dataset_entropy", "normalized")] == pytest.approx(
            float(F.dataset_entropy(x)), abs=1e-4
        )
        assert value[(layer, "effective_rank", "value")] == pytest.approx(
            float(F.effective_rank(x)), rel=1e-4
        )
        tokens = _token_states(minilm, texts, layer)
        assert value[(layer, "prompt_entropy", "normalized")] == pytest.approx(
            float(F.prompt_entropy(tokens)), abs=1e-4
        )
        assert value[(layer, "curvature", "radians")] == pytest.approx(
            float(F.curvature(tokens)), abs=1e-4
        )
        assert value[(layer, "curvature_abs", "radians")] == pytest.approx(
            float(F.curvature_abs(tokens)), abs=1e-4
        )
        views = augment_views(texts, 4, seed=42)
        enc = LayerEncoder(minilm, layer=layer, normalize=False)
        stacked = torch.stack([torch.from_numpy(enc.embed(v)) for v in views], dim=1)
        assert value[(layer, "lidar", "n_views=4")] == pytest.approx(
            float(F.lidar(stacked)), rel=1e-3
        )
        assert value[(layer, "infonce", "loss")] == pytest.approx(
            float(F.infonce(stacked[:, 0], stacked[:, 1])), abs=1e-4
        )

    # a rerun with the same settings reads the file back and computes nothing
    again = layer_metrics(
        minilm, tasks=["BIOSSES"], data_dir=shared_data, output=tmp_path, n=40, n_views=4,
        layers=[0, 3, 6], show_progress=False,
    )  # fmt: skip
    assert again.attrs["timings"] == {}
    pd.testing.assert_frame_equal(again, df)


def test_layer_metrics_rejects_bad_options(minilm):
    with pytest.raises(ValueError, match="n_views"):
        layer_metrics(minilm, tasks=["BIOSSES"], n_views=1, show_progress=False)


def test_a_bad_task_fails_alone_and_the_run_resumes(minilm, shared_data, tmp_path, caplog):
    """A task with a broken line and one with no split file fail, are named, and the others run;
    a torn file is recomputed with a warning naming it; a repaired task is computed on rerun."""
    data = tmp_path / "data"
    (data / "STS12").mkdir(parents=True)
    (data / "STS12" / "test.jsonl").write_text(
        '{"sentence1": "a", "sentence2": "b", "score": 1}\n{oops\n'
    )
    (data / "STS13").mkdir()  # no test.jsonl
    (data / "BIOSSES").symlink_to(shared_data / "BIOSSES")
    options = dict(
        data_dir=data, output=tmp_path / "out", n=10, metrics="effective_rank", layers=[6],
        show_progress=False,
    )  # fmt: skip
    df = layer_metrics(minilm, **options)
    failures = df.attrs["failures"]
    assert set(failures) == {"STS12", "STS13"}
    assert "line 2" in failures["STS12"] and "test.jsonl" in failures["STS13"]
    assert set(df["dataset"]) == {"BIOSSES"}

    [done] = (tmp_path / "out" / "metrics").glob("*BIOSSES*.parquet")
    done.write_bytes(done.read_bytes()[:20])
    (data / "STS12" / "test.jsonl").write_text(
        '{"sentence1": "a cat", "sentence2": "a dog", "score": 1}\n' * 3
    )
    with caplog.at_level("WARNING", logger="mteb_midlayer.metrics.driver"):
        again = layer_metrics(minilm, **options)
    assert f"Recomputing {done}" in caplog.text
    assert set(again.attrs["failures"]) == {"STS13"}
    assert set(again["dataset"]) == {"BIOSSES", "STS12"}
    pd.testing.assert_frame_equal(
        again[again["dataset"] == "BIOSSES"].reset_index(drop=True), df.reset_index(drop=True)
    )
