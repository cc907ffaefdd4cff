"""The CLI verbs on real offline inputs: exit codes and what they print."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mteb_midlayer.cli import main
from mteb_midlayer.metrics.driver import METRICS


def test_help_lists_the_verbs(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for verb in ("sweep", "metrics", "table", "mirror"):
        assert verb in out


def test_sweep_then_table(shared_data, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(
        ["sweep", "minilm", "--tasks", "BIOSSES", "--data-dir", str(shared_data),
         "--layers", "3,6", "--output", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "BIOSSES" in printed and "Encoded" in printed
    # A second configuration of the same model: replayed from the store, its own table.
    code = main(
        ["sweep", "minilm", "--tasks", "BIOSSES", "--data-dir", str(shared_data),
         "--layers", "6", "--output", str(out), "--device", "cpu", "--no-normalize"]
    )  # fmt: skip
    assert code == 0
    assert main(["table", str(out), "--csv", str(tmp_path / "t.csv")]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(table.columns[:5]) == ["model", "revision", "pooling", "normalize", "layer"]
    normed = table[table["normalize"]].set_index("layer")
    raw = table[~table["normalize"]].set_index("layer")
    assert list(normed.index) == [3, 6] and list(raw.index) == [6]
    # Spearman on cosine similarity: L2-normalising changes nothing at the last layer.
    assert abs(normed.loc[6, "BIOSSES"] - 0.81254) < 1e-4
    assert abs(raw.loc[6, "BIOSSES"] - 0.81254) < 1e-4


def test_trust_remote_code_reaches_the_loader(monkeypatch, tmp_path):
    from mteb_midlayer.model import LayerModel

    seen = []

    def fake_load(model, tokenizer=None, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(LayerModel, "load", fake_load)
    for verb in ("sweep", "metrics"):
        for flag in ([], ["--trust-remote-code"]):
            argv = [verb, "some/model", "--tasks", "BIOSSES", "--output", str(tmp_path)]
            assert main(argv + flag) == 2
    assert seen == [False, True, False, True]


def test_metrics_verb(shared_data, tmp_path, capsys):
    code = main(
        ["metrics", "minilm", "--tasks", "BIOSSES", "--data-dir", str(shared_data), "--n", "20",
         "--metrics", "dataset_entropy,curvature", "--layers", "0,6", "--output", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    rows = pd.read_parquet(tmp_path / "metrics")
    assert set(rows["metric"]) == {"dataset_entropy", "curvature"}
    assert set(rows["layer"]) == {0, 6}


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["sweep", "minilm", "--tasks", "NoSuchTask", "--output", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["mirror", "NoSuchTask", "--to", str(tmp_path)]) == 2
    assert main(["table", str(tmp_path / "empty")]) == 1


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A config-built 2-block Llama with its character tokenizer, saved like a Hub model."""
    from .conftest import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", n_layers=2).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("name", ["domain.txt", "domain.jsonl"])
def test_metrics_on_a_corpus_file(tiny_model_dir, tmp_path, capsys, name):
    from mteb_midlayer.metrics.corpus import corpus_digest

    texts = [f"sentence {i} of a small corpus" for i in range(25)]
    body = [json.dumps({"text": t}) if name.endswith(".jsonl") else t for t in texts]
    (tmp_path / name).write_text("\n".join(body) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(
        ["metrics", tiny_model_dir, "--texts", str(tmp_path / name), "--n", "20", "--n-views", "2",
         "--layers", "0,2", "--device", "cpu", "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    dataset = f"domain-{corpus_digest(texts)}"
    assert dataset in capsys.readouterr().out
    rows = pd.read_parquet(out / "metrics")
    assert set(rows["dataset"]) == {dataset} and set(rows["layer"]) == {0, 2}
    assert set(rows["metric"]) == set(METRICS)
    assert (rows.loc[rows["metric"] == "dataset_entropy", "n"] == 20).all()


def test_metrics_on_a_malformed_corpus_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n', encoding="utf-8")
    assert main(["metrics", "minilm", "--texts", str(bad), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: LocalDataError: {bad}, line 2: missing field(s) 'text'; the line has 'title'"
    )
    (tmp_path / "empty.txt").write_bytes(b"")
    assert main(["metrics", "minilm", "--texts", str(tmp_path / "empty.txt")]) == 2
    assert "empty.txt: no texts (the file is empty" in capsys.readouterr().err
