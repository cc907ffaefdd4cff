"""The metrics driver: wiring checked against the pure functions on independently computed states."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mteb_midlayer.encoder import LayerEncoder
from mteb_midlayer.layers import find_final_norm
from mteb_midlayer.metrics import functional as F
from mteb_midlayer.metrics.augment import augment_views
from mteb_midlayer.metrics.compute import (
    METRICS,
    ROW_COLUMNS,
    Timer,
    parse_metrics,
    run_identity,
)
from mteb_midlayer.metrics.run import layer_metrics
from mteb_midlayer.metrics.sampling import sample_texts, task_texts
from mteb_midlayer.model import LayerModel
from mteb_midlayer.tasks.selection import select_tasks

from ..conftest import tiny_model, tiny_tokenizer


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
    ).metrics
    assert list(df.columns) == ROW_COLUMNS
    assert set(df["metric"]) == set(METRICS)
    assert set(df["layer"]) == {0, 3, 6}
    # the run that computed the rows (issue 21): one identity, its settings beside it
    assert df["run"].nunique() == 1 and df["run_at"].nunique() == 1
    assert set(df["sample_size"]) == {40} and set(df["n_views"]) == {4}
    assert df["data"].iloc[0].startswith("local-") and df["dtype"].iloc[0] == "torch.float32"
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
    assert again.timings == {}
    pd.testing.assert_frame_equal(again.metrics, df)


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
    result = layer_metrics(minilm, **options)
    df, failures = result.metrics, result.failures
    assert set(failures) == {"STS12", "STS13"}
    assert "line 2" in failures["STS12"] and "test.jsonl" in failures["STS13"]
    assert set(df["dataset"]) == {"BIOSSES"}

    [done] = (tmp_path / "out" / "metrics").glob("*BIOSSES*.parquet")
    done.write_bytes(done.read_bytes()[:20])
    (data / "STS12" / "test.jsonl").write_text(
        '{"sentence1": "a cat", "sentence2": "a dog", "score": 1}\n' * 3
    )
    with caplog.at_level("WARNING", logger="mteb_midlayer.metrics.compute"):
        result = layer_metrics(minilm, **options)
    again = result.metrics
    assert f"Recomputing {done}" in caplog.text
    assert set(result.failures) == {"STS13"}
    assert set(again["dataset"]) == {"BIOSSES", "STS12"}
    recomputed = again[again["dataset"] == "BIOSSES"].reset_index(drop=True)
    assert recomputed["run_at"].iloc[0] > df["run_at"].iloc[0]  # a new run of the same identity
    pd.testing.assert_frame_equal(
        recomputed.drop(columns="run_at"), df.reset_index(drop=True).drop(columns="run_at")
    )


#: 12 texts in batches of 4 and 3 augmented views: 3 batches x (1 + 3) passes = 12 forwards.
ONE_PASS_TEXTS = [f"text {i} says {'more words ' * (i % 5)}and ends." for i in range(12)]
ONE_PASS = dict(texts=ONE_PASS_TEXTS, n=12, n_views=3, batch_size=4, show_progress=False)


def _counted(lm: LayerModel) -> list[int]:
    """A list that grows by one per forward pass of the network (from now on: the once-per-model
    final-norm probe pass is made first)."""
    find_final_norm(lm.model)
    calls: list[int] = []
    lm.model.register_forward_pre_hook(lambda *_a: calls.append(1))
    return calls


def _one_pass_lm(which: str, minilm_path: str | None = None) -> LayerModel:
    if which == "minilm":
        return LayerModel.load(minilm_path, device="cpu")
    return LayerModel.load(tiny_model(which), tiny_tokenizer(), name=f"tiny/{which}", device="cpu")


def _values(df: pd.DataFrame) -> pd.DataFrame:
    """Rows without `run_at`: when a run was made differs between runs of one identity."""
    return df.drop(columns="run_at")


def _run(lm: LayerModel, calls: list[int], out, final_norm: str, **kwargs):
    """The rows of one `layer_metrics` run and how many forward passes it made."""
    before = len(calls)
    result = layer_metrics(lm, output=out, final_norm=final_norm, **{**ONE_PASS, **kwargs})
    return result.metrics, len(calls) - before


@pytest.mark.parametrize("which", ["llama", "minilm"])
def test_both_final_norms_from_one_pass_equal_single_setting_runs(which, minilm_path, tmp_path):
    lm = _one_pass_lm(which, minilm_path)
    calls = _counted(lm)
    both, n_both = _run(lm, calls, tmp_path / "both", "last,every")
    last, n_last = _run(lm, calls, tmp_path / "last", "last")
    every, n_every = _run(lm, calls, tmp_path / "every", "every")
    assert n_both == n_last == n_every == 12  # one pass per text batch and view, not two
    assert set(both["metric"]) == set(METRICS) and list(both.columns) == ROW_COLUMNS
    pd.testing.assert_frame_equal(
        _values(both),
        _values(pd.concat([last, every], ignore_index=True)),
        check_exact=False,
        rtol=0,
        atol=1e-6,
    )
    files = {p.name for p in (tmp_path / "both" / "metrics").iterdir()}
    assert len(files) == 2
    assert files == {
        p.name for d in ("last", "every") for p in (tmp_path / d / "metrics").iterdir()
    }
    inner = both[both["layer"] == 1].set_index(["final_norm", "metric", "variant"])["value"]
    differ = (inner.loc["last"] - inner.loc["every"]).abs().max()
    if which == "llama":  # the settings are really different, so the equality above means something
        assert differ > 1e-3
    else:  # MiniLM has no final norm: `every` is `last`
        assert differ == 0


def test_only_a_missing_final_norm_is_computed(tmp_path):
    lm = _one_pass_lm("gpt_neox")
    calls = _counted(lm)
    out = tmp_path / "out"
    metrics = "dataset_entropy,prompt_entropy,curvature,infonce"
    last, n_last = _run(lm, calls, out, "last", metrics=metrics)
    [last_file] = (out / "metrics").glob("*.parquet")
    written = last_file.stat().st_mtime_ns
    both, n_both = _run(lm, calls, out, "last,every", metrics=metrics)
    # `every` alone was computed, in one pass per batch of text and of each of 2 views (no LiDAR)
    assert n_last == n_both == 3 * (1 + 2)
    assert last_file.stat().st_mtime_ns == written and len(list((out / "metrics").iterdir())) == 2
    pd.testing.assert_frame_equal(both[both["final_norm"] == "last"], last)
    alone, _ = _run(lm, calls, tmp_path / "alone", "every", metrics=metrics)
    pd.testing.assert_frame_equal(
        _values(both[both["final_norm"] == "every"].reset_index(drop=True)),
        _values(alone),
        atol=1e-6,
        rtol=0,
    )
    before = len(calls)
    rerun = layer_metrics(
        lm, output=out, final_norm="every,last", **{**ONE_PASS, "metrics": metrics}
    )
    again = rerun.metrics
    assert len(calls) == before and rerun.timings == {}
    assert list(again["final_norm"].unique()) == ["every", "last"]


def test_metrics_units_compute_both_final_norms_in_one_pass(shared_data, tmp_path):
    from mteb_midlayer.executors.local import SerialExecutor

    lm = _one_pass_lm("llama")
    calls = _counted(lm)
    options = dict(
        tasks=["BIOSSES"], data_dir=shared_data, n=12, n_views=2, batch_size=4, layers=[0, 2, 4],
        metrics="effective_rank,curvature,dime", show_progress=False,
    )  # fmt: skip
    result = layer_metrics(
        lm, output=tmp_path / "units", final_norm="last,every", executor=SerialExecutor(), **options
    )
    units = result.metrics
    assert len(calls) == 3 * (1 + 2) and result.failures == {}
    here = layer_metrics(lm, output=tmp_path / "last", final_norm="last", **options).metrics
    here_every = layer_metrics(lm, output=tmp_path / "every", final_norm="every", **options).metrics
    pd.testing.assert_frame_equal(
        _values(units), _values(pd.concat([here, here_every], ignore_index=True)), atol=1e-6, rtol=0
    )
    assert set(units["final_norm"]) == {"last", "every"}
    names = {p.name for p in (tmp_path / "units" / "metrics").iterdir()}
    assert names == {
        p.name for d in ("last", "every") for p in (tmp_path / d / "metrics").iterdir()
    }


def test_timer_counts_a_nested_phase_apart_from_the_enclosing_one():
    import time

    timer = Timer(torch.device("cpu"))
    with timer("encode"):
        time.sleep(0.02)
        with timer("prompt_entropy"):
            time.sleep(0.2)
        time.sleep(0.02)
    assert timer.seconds["prompt_entropy"] >= 0.2
    assert 0.04 <= timer.seconds["encode"] < 0.15


KEYED = dict(model="m", revision="r", pooling="mean", n=100, seed=42, alpha=1.0, n_views=16,
             metrics=["lidar"], layers=[0, 1], max_length=128, dtype="float32", data="hub-x")  # fmt: skip


def test_run_identity_ignores_only_what_changes_no_value():
    same = run_identity(KEYED, "last")
    assert run_identity({**KEYED, "metrics": ["dime"], "layers": [2]}, "last") == same
    for change in (dict(n=30), dict(seed=1), dict(data="hub-y"), dict(n_views=4)):
        assert run_identity({**KEYED, **change}, "last") != same, change
    assert run_identity(KEYED, "every") != same


def test_an_older_file_read_back_gets_its_run(tmp_path):
    from mteb_midlayer.frames import METRIC_COLUMNS
    from mteb_midlayer.metrics.compute import _read_back

    row = dict(model="m", revision="r", dataset="A", layer=0, metric="lidar", variant="v",
               value=1.0, n=10, pooling="mean", alpha=1.0, seed=42)  # fmt: skip
    path = tmp_path / "old.parquet"
    pd.DataFrame([row]).to_parquet(path, index=False)  # before final_norm and runs
    back = _read_back(path, "last", KEYED)
    assert list(back.columns) == ROW_COLUMNS and back["final_norm"].tolist() == ["last"]
    assert back["run"].tolist() == [run_identity(KEYED, "last")]
    assert back["sample_size"].tolist() == [100] and back[METRIC_COLUMNS].notna().all().all()
