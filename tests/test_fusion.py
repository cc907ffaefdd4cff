"""Fused layers: labels, the linearity identity (store = direct from `hidden_states`), sweep
folders and frames rows, select, and the export round trip."""

from __future__ import annotations

import json

import mteb
import numpy as np
import pytest
import torch

from mteb_midlayer import LayerEncoder
from mteb_midlayer.encoder import experiment_kwargs
from mteb_midlayer.fusion import (
    FUSABLE_POOLINGS,
    check_fusable,
    fuse_vectors,
    fusion_label,
    parse_fusions,
    parse_label,
)
from mteb_midlayer.model import LayerModel
from mteb_midlayer.plan import ScoreUnit
from mteb_midlayer.pooling import POOLINGS, pool
from mteb_midlayer.replay import EmbeddingSource, StoreEncoder

from .conftest import tiny_model, tiny_tokenizer
from .test_layers import reference_hidden_states

TEXTS = ["hello world", "a", "a much longer text than the others", "mid size text"]


# ------------------------------------------------------------------------------ labels
def test_labels_and_parsing():
    assert fusion_label([6, 0]) == "0+6"
    assert fusion_label([4, 5, 6]) == "4-6"
    assert fusion_label([5, 6]) == "5-6"
    assert parse_label("4-6") == (4, 5, 6)
    assert parse_label("0+6") == (0, 6)
    assert parse_label("0+4-6") == (0, 4, 5, 6)
    assert parse_label("0+-1", n_layers=6) == (0, 6)
    assert parse_label("4+5+6") == parse_label("4-6")
    for bad in ("3", "3+3", "6-4", "x+1"):
        with pytest.raises(ValueError):
            parse_label(bad)
    with pytest.raises(ValueError, match="out of range"):
        parse_label("0+9", n_layers=6)
    assert parse_fusions("first-last", 6) == [(0, 6)]
    assert parse_fusions("windows:2", 3) == [(0, 1), (1, 2), (2, 3)]
    assert parse_fusions("0+6,4-6,6+0", 6) == [(0, 6), (4, 5, 6)]
    assert parse_fusions(None, 6) == [] and parse_fusions([[0, 6]], 6) == [(0, 6)]
    with pytest.raises(ValueError, match="width"):
        parse_fusions("windows:9", 6)


def test_only_linear_poolings_fuse():
    assert set(FUSABLE_POOLINGS) == set(POOLINGS) - {"max"}
    with pytest.raises(ValueError, match="not linear"):
        check_fusable("max")
    with pytest.raises(ValueError, match="not linear"):
        LayerEncoder(tiny_model("bert"), tokenizer=tiny_tokenizer(), layers=[0, 2], pooling="max")


def test_experiment_kwargs_name_fusions_only():
    plain = experiment_kwargs(6, 384, "mean", True, 256, "float32", None)
    assert "fuse" not in plain  # single-layer folders keep their names
    fused = experiment_kwargs(6, 384, "mean", True, 256, "float32", None, fuse="0+6")
    assert fused == plain | {"fuse": "0+6"}


def test_score_unit_key_names_the_fusion():
    common = dict(
        model={}, resolved={}, n_parameters=1, hidden_size=8, n_layers=6, task="T",
        data_dir=None, store_root="s", output="o", layer=6, dim=8, normalize=True,
        pooling="mean", layers=(0, 6),
    )  # fmt: skip
    plain, fused = ScoreUnit(**common), ScoreUnit(**common, fuse=(0, 6))
    assert plain.key == "T-L6-d8-mean-n1-last"  # unchanged
    assert fused.key != plain.key and "F0+6" in fused.key


# ------------------------------------------------------------------- the identity
def _direct(lm: LayerModel, texts, fused, kind, dim, normalize) -> np.ndarray:
    """From plain `transformers` `hidden_states`, one text at a time: the mean of the fused
    layers' *token states* pooled (what `WeightedLayerPooling` + `Pooling` compute), then the
    dim cut, then L2 normalisation."""
    rows = []
    for text in texts:
        ids = torch.tensor([lm.tokenize([text])[0]])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        hs = reference_hidden_states(lm.model, inputs)
        states = torch.stack([hs[layer] for layer in fused]).mean(dim=0)
        rows.append(pool(states, inputs["attention_mask"], kind)[0, :dim].numpy())
    out = np.stack(rows)
    if normalize:
        out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return out


@pytest.fixture(scope="module")
def tiny_lms():
    return {
        arch: LayerModel.load(tiny_model(arch, n_layers=4), tiny_tokenizer(), device="cpu")
        for arch in ("bert", "gpt2")
    }


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("kind", FUSABLE_POOLINGS)
def test_store_and_encoder_equal_direct_hidden_states(tiny_lms, tmp_path, arch, kind):
    """Every linear pooling: the fusion from the store's per-layer vectors (no new pass), and
    `LayerEncoder(layers=...)`, equal the pooled mean of `hidden_states`, with dims and
    normalisation (the fused mean first, then the cut, then L2)."""
    lm = tiny_lms[arch]
    source = EmbeddingSource(lm, tmp_path / "store", pooling=kind, layers=range(5))
    meta = mteb.get_task("BIOSSES").metadata
    for fused, dim, normalize in [((0, 4), 32, False), ((1, 3), 16, True), ((1, 2, 3), 32, True)]:
        want = _direct(lm, TEXTS, fused, kind, dim, normalize)
        enc = StoreEncoder(source, layer=-1, dim=dim, normalize=normalize, fuse=fused)
        assert enc.layer == max(fused)
        got = enc.encode([{"text": TEXTS}], task_metadata=meta, hf_split="test", hf_subset="x")
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        direct = LayerEncoder(lm, layers=list(fused), pooling=kind, dim=dim, normalize=normalize)
        np.testing.assert_allclose(direct.embed(TEXTS), want, atol=1e-5, rtol=0)
        assert direct.mteb_model_meta.experiment_kwargs["fuse"] == fusion_label(fused)
        assert direct.mteb_model_meta.experiment_kwargs["layer"] == max(fused)
    assert source.n_encoded == len(TEXTS)  # one pass, every fusion replayed from the store


def test_fuse_vectors_is_the_order_free_mean():
    a, b = np.float32([[1, 2]]), np.float32([[3, -2]])
    np.testing.assert_array_equal(fuse_vectors([a, b]), [[2, 0]])
    np.testing.assert_array_equal(fuse_vectors([a, b]), fuse_vectors([b, a]))


# -------------------------------------------------------------------- sweep end to end
@pytest.fixture(scope="module")
def fused_sweep(minilm, shared_data, tmp_path_factory):
    from mteb_midlayer import sweep

    out = tmp_path_factory.mktemp("fused") / "sweep"
    table = sweep(
        minilm,
        tasks=["BIOSSES"],
        data_dir=shared_data,
        layers=[5],
        fuse="0+6,5-6",
        dims=[384, 128],
        output=out,
        show_progress=False,
    )
    return out, table


def test_sweep_fusion_folders_and_identity(fused_sweep):
    out, table = fused_sweep
    assert table.failures == {}
    assert table.n_encoded > 0
    folders = sorted(p.parent.name for p in out.rglob("BIOSSES.json") if "identity" not in str(p))
    kwargs = {}
    for folder in out.glob("results/*/*/experiments/*"):
        kwargs[folder.name] = json.loads((folder / "model_meta.json").read_text())[
            "experiment_kwargs"
        ]
    assert len(kwargs) == len(folders) == 6  # (5, 0+6, 5-6) x (384, 128)
    plain = {k: v for k, v in kwargs.items() if "fuse" not in v}
    # single-layer folders keep the names they had before fusions
    assert sorted(plain) == [
        "dim_128__dtype_float32__layer_5__max_length_256__normalize_True__pooling_mean__prompts_none",
        "dim_384__dtype_float32__layer_5__max_length_256__normalize_True__pooling_mean__prompts_none",
    ]
    fused = sorted((v["fuse"], v["layer"], v["dim"]) for v in kwargs.values() if "fuse" in v)
    assert fused == [("0+6", 6, 128), ("0+6", 6, 384), ("5-6", 6, 128), ("5-6", 6, 384)]
    identities = [json.loads(p.read_text()) for p in out.rglob("BIOSSES.identity.json")]
    assert sorted(i.get("fuse", "") for i in identities) == ["", "", "0+6", "0+6", "5-6", "5-6"]


def test_sweep_fusion_rows_in_table_and_frames(fused_sweep, minilm, shared_data, tmp_path):
    from mteb_midlayer import frames
    from mteb_midlayer.sweep import sweep

    out, table = fused_sweep
    assert list(table.scores.index) == [(384, 5), (384, "0+6"), (384, "5-6"), (128, 5), (128, "0+6"),
                                 (128, "5-6")]  # fmt: skip
    scores = frames.scores_frame(out)
    assert sorted(zip(scores["fuse"], scores["layer"], strict=True)) == sorted(
        [("", 5), ("0+6", 6), ("5-6", 6)] * 2
    )
    per_layer = frames.layer_scores(scores)
    assert set(per_layer["fuse"]) == {"", "0+6", "5-6"}
    # the fused score equals mteb on the direct in-memory fused encoder
    task = mteb_task(shared_data)
    direct = LayerEncoder(minilm, layers=[0, 6])
    res = mteb.evaluate(direct, task, cache=None, show_progress_bar=False)
    got = scores[(scores["fuse"] == "0+6") & (scores["dim"] == 384)]["score"].item()
    assert got == pytest.approx(res.task_results[0].get_score(), abs=1e-6)
    # a rerun with the same fusions rescores nothing and encodes nothing
    again = sweep(
        minilm, tasks=["BIOSSES"], data_dir=shared_data, layers=[5], fuse="0+6,5-6",
        dims=[384, 128], output=out, show_progress=False,
    )  # fmt: skip
    assert again.n_encoded == 0 and not again.plan.score


def mteb_task(shared_data):
    from mteb_midlayer.sweep import select_tasks

    return select_tasks(["BIOSSES"], None, shared_data)[0]


def test_max_pooling_sweep_refuses_fusions(minilm, tmp_path):
    from mteb_midlayer import sweep

    with pytest.raises(ValueError, match="not linear"):
        sweep(minilm, tasks=["BIOSSES"], pooling="max", fuse="0+6", output=tmp_path, dry_run=True)


# -------------------------------------------------------------------------- export
def _modules(out) -> list[str]:
    return [m["type"].rsplit(".", 1)[1] for m in json.loads((out / "modules.json").read_text())]


def test_export_fusion_round_trip_minilm(minilm_path, tmp_path):
    """`export --fuse 0+6`: cut to the deepest layer's blocks + WeightedLayerPooling, equal to
    `LayerEncoder(layers=[0, 6])` to 1e-5, loading with sentence-transformers alone."""
    from sentence_transformers import SentenceTransformer

    from mteb_midlayer.export import export

    from .conftest import fresh_process_max_diff

    out = tmp_path / "fused"
    result = export(minilm_path, out, fuse="0+6", dim=128)
    assert (result.fuse, result.layer, result.dim) == ("0+6", 6, 128)
    assert not result.needs_mteb_midlayer
    assert _modules(out) == ["Transformer", "WeightedLayerPooling", "Pooling", "Dense", "Normalize"]
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 and config["output_hidden_states"] is True
    want = LayerEncoder(minilm_path, layers=[0, 6], dim=128, device="cpu").embed(TEXTS)
    got = SentenceTransformer(str(out), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert fresh_process_max_diff(out, TEXTS, want, tmp_path) <= 1e-5
    assert "layers 0+6 (fused)" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("arch", "fuse", "pooling", "raw"),
    [
        ("gpt2", "1+2", "last", True),  # inner deepest layer: raw stream, final norm skipped
        ("llama", "0+4", "mean", False),  # deepest = L: the cut model is the whole model
        ("bert", "1-3", "cls", False),
        ("gpt2", "2-4", "weightedmean", False),
        ("llama", "1+3", "mean_sqrt_len", True),
    ],
)
def test_export_fusion_tiny_models(tmp_path, arch, fuse, pooling, raw):
    from sentence_transformers import SentenceTransformer

    from mteb_midlayer.export import export

    src = tmp_path / "src"
    tiny_model(arch).save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    out = tmp_path / "out"
    result = export(str(src), out, fuse=fuse, pooling=pooling, normalize=True)
    assert result.needs_mteb_midlayer == raw
    layers = list(parse_label(fuse))
    want = LayerEncoder(str(src), layers=layers, pooling=pooling, normalize=True).embed(TEXTS)
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=raw)
    np.testing.assert_allclose(st.encode(TEXTS), want, atol=1e-5, rtol=0)
    assert "WeightedLayerPooling" in _modules(out)


def test_export_fusion_refusals(tmp_path):
    from mteb_midlayer.export import ExportError, export

    src = tmp_path / "src"
    tiny_model("gpt2").save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    with pytest.raises(ExportError, match="every"):
        export(str(src), tmp_path / "a", fuse="1+2", final_norm="every")
    with pytest.raises(ExportError, match="not linear"):
        export(str(src), tmp_path / "b", fuse="1+2", pooling="max")
    with pytest.raises(ExportError, match="either"):
        export(str(src), tmp_path / "c", layer=2, fuse="1+2")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_select_export_of_a_fusion(fused_sweep, minilm_path, tmp_path, capsys):
    """`select --export`: the best slice here is the fusion 0+6 (over layer 5 and 5-6)."""
    from sentence_transformers import SentenceTransformer

    from mteb_midlayer.cli import main

    out, _ = fused_sweep
    target = tmp_path / "chosen"
    assert main(["select", str(out), "--export", str(target), "--source", minilm_path]) == 0
    assert "layers 0+6" in capsys.readouterr().out
    assert "WeightedLayerPooling" in _modules(target)
    dim = json.loads((target / "modules.json").read_text())  # the chosen width
    width = 128 if any(m["type"].endswith("Dense") for m in dim) else None
    want = LayerEncoder(minilm_path, layers=[0, 6], dim=width, device="cpu").embed(TEXTS)
    got = SentenceTransformer(str(target), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    card = (target / "README.md").read_text()
    assert "| BIOSSES |" in card  # the fusion's own score, from the results


def test_cli_export_needs_layer_or_fuse(tmp_path, capsys):
    from mteb_midlayer.cli import main

    for flags in ([], ["--layer", "3", "--fuse", "0+6"]):  # neither, both: usage errors
        with pytest.raises(SystemExit) as exit_:
            main(["export", "minilm", str(tmp_path / "x"), *flags])
        assert exit_.value.code == 2 and "--fuse" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_sweep_fuse_dry_run(shared_data, tmp_path, capsys):
    """`sweep --fuse`: the plan scores the layers plus each fusion; its layers join the store."""
    from mteb_midlayer.cli import main

    out = tmp_path / "plan"
    argv = ["sweep", "minilm", "--data-dir", str(shared_data), "--tasks", "BIOSSES"]
    argv += ["--layers", "6", "--fuse", "first-last,windows:6", "--dry-run", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 score units" in printed  # layer 6, 0+6 (first-last), windows:6: 0-5 and 1-6
    assert not out.exists()


# ------------------------------------------------------------------------------ metrics
def test_fused_metrics_equal_the_metrics_of_the_fused_vectors(tiny_lms, tmp_path):
    """`layer_metrics(fuse=...)`: a fusion's pooled-vector metrics are those of the mean of its
    layers' pooled vectors (`LayerEncoder(layers=...)`, an independent path), views included;
    the layers' rows equal a run without fusions; token metrics have no fused rows."""
    import pandas as pd

    from mteb_midlayer import layer_metrics
    from mteb_midlayer.frames import metrics_frame
    from mteb_midlayer.metrics import functional as F
    from mteb_midlayer.metrics.augment import augment_views

    lm = tiny_lms["bert"]
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "eps",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    texts = [" ".join(words[(i * 7 + j) % 12] for j in range(2 + i % 5)) for i in range(24)]
    chosen = "dataset_entropy,effective_rank,prompt_entropy,infonce,dime"
    common = dict(
        texts=texts, n=24, metrics=chosen, n_views=2, layers=[0, 2, 4], show_progress=False
    )
    fused = layer_metrics(
        lm, output=tmp_path / "f", fuse="0+4,1-3", pooling="mean", **common
    ).metrics
    plain = layer_metrics(lm, output=tmp_path / "p", pooling="mean", **common).metrics
    keys = ["layer", "metric", "variant"]
    layers_rows = fused[fused["fuse"] == ""].drop(columns="fuse").reset_index(drop=True)
    pd.testing.assert_frame_equal(
        layers_rows.drop(columns=["run_at"]), plain.drop(columns=["run_at"]), atol=1e-6, rtol=0
    )
    views = list(augment_views(texts, 2, seed=42))
    for fusion, label in [((0, 4), "0+4"), ((1, 2, 3), "1-3")]:
        enc = LayerEncoder(lm, layers=list(fusion), pooling="mean", normalize=False)
        x = torch.as_tensor(enc.embed(texts))
        a, b = (torch.as_tensor(enc.embed(v)) for v in views)
        rows = fused[fused["fuse"] == label].set_index(keys)["value"]
        deepest = fusion[-1]
        assert set(rows.index.get_level_values("layer")) == {deepest}
        assert set(rows.index.get_level_values("metric")) == {
            "dataset_entropy", "effective_rank", "infonce", "dime"
        }  # fmt: skip
        want = {
            "dataset_entropy": F.dataset_entropy(x, 1.0),
            "effective_rank": F.effective_rank(x),
            "infonce": F.infonce(a, b),
        }
        for metric, value in want.items():
            variant = {"dataset_entropy": "normalized", "effective_rank": "value"}.get(
                metric, "loss"
            )
            assert rows[(deepest, metric, variant)] == pytest.approx(float(value), abs=1e-4)
    # readers: layers only by default, fused rows on request
    assert "fuse" not in metrics_frame(tmp_path / "f").columns
    assert len(metrics_frame(tmp_path / "f")) == len(layers_rows)
    both = metrics_frame(tmp_path / "f", fused=True)
    assert sorted(set(both["fuse"])) == ["", "0+4", "1-3"] and len(both) == len(fused)
    with pytest.raises(ValueError, match="not linear"):
        layer_metrics(lm, output=tmp_path / "m", fuse="0+4", pooling="max", **common)


def test_fused_metrics_through_units_equal_the_driver(tiny_lms, shared_data, tmp_path):
    """A metrics unit (what a worker, Ray or Slurm runs) computes the fused rows too."""
    import pandas as pd

    from mteb_midlayer import layer_metrics
    from mteb_midlayer.executors.local import SerialExecutor

    options = dict(
        tasks=["BIOSSES"], data_dir=shared_data, n=12, n_views=2, layers=[0, 4], fuse="0+4",
        metrics="effective_rank,dime", pooling="mean", show_progress=False,
    )  # fmt: skip
    lm = tiny_lms["gpt2"]
    units = layer_metrics(lm, output=tmp_path / "u", executor=SerialExecutor(), **options)
    here = layer_metrics(lm, output=tmp_path / "h", **options)
    assert units.failures == {} and set(units.metrics["fuse"]) == {"", "0+4"}
    pd.testing.assert_frame_equal(
        units.metrics.drop(columns="run_at"), here.metrics.drop(columns="run_at"), atol=1e-6, rtol=0
    )
