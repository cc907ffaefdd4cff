"""The CLI verbs on real offline inputs: exit codes and what they print."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mteb_midlayer.cli import main
from mteb_midlayer.metrics.compute import METRICS


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
         "--layers", "3,6", "--output", str(out), "--device", "cpu", "--jobs", "1"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "BIOSSES" in printed and "Encoded" in printed
    # A second configuration of the same model: replayed from the store, its own table.
    code = main(
        ["sweep", "minilm", "--tasks", "BIOSSES", "--data-dir", str(shared_data),
         "--layers", "6", "--output", str(out), "--device", "cpu", "--no-normalize", "--jobs", "1"]
    )  # fmt: skip
    assert code == 0
    assert main(["table", str(out), "--csv", str(tmp_path / "t.csv")]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(table.columns[:10]) == [
        "model", "revision", "pooling", "normalize", "final_norm", "max_length", "dtype",
        "prompts", "include_prompt", "layer",
    ]  # fmt: skip
    normed = table[table["normalize"]].set_index("layer")
    raw = table[~table["normalize"]].set_index("layer")
    assert list(normed.index) == [3, 6] and list(raw.index) == [6]
    # Spearman on cosine similarity: L2-normalising changes nothing at the last layer.
    assert abs(normed.loc[6, "BIOSSES"] - 0.81254) < 1e-4
    assert abs(raw.loc[6, "BIOSSES"] - 0.81254) < 1e-4


def test_trust_remote_code_reaches_the_loader(monkeypatch, tmp_path):
    from mteb_midlayer.model import LayerModel

    seen = []

    def fake_load(model=None, tokenizer=None, *, spec=None, **kwargs):
        seen.append(spec.trust_remote_code)
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
    capsys.readouterr()
    # a results path that does not exist is an error, and is not created
    assert main(["table", str(tmp_path / "empty")]) == 2
    assert "No results folder at" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()
    (tmp_path / "exists").mkdir()
    assert main(["table", str(tmp_path / "exists")]) == 1


def test_unknown_model_messages(tmp_path, capsys):
    argv = ["--tasks", "BIOSSES", "--output", str(tmp_path / "out")]
    assert main(["sweep", "no-such-org/no-such-model", *argv]) == 2
    err = capsys.readouterr().err
    assert "is not a local folder" in err and "Hub is unreachable or has no model" in err, err
    assert "huggingface.co" not in err
    assert main(["sweep", "./no/such/dir", *argv]) == 2
    assert "No such folder: ./no/such/dir" in capsys.readouterr().err


def test_bad_options_are_refused_at_parse_time(tmp_path, capsys):
    for flag in ("0", "-3"):
        with pytest.raises(SystemExit) as exc:
            main(["sweep", "minilm", "--batch-size", flag, "--output", str(tmp_path)])
        assert exc.value.code == 2
        assert "--batch-size: must be >= 1" in capsys.readouterr().err
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    for verb in ("sweep", "metrics"):
        with pytest.raises(SystemExit):
            main([verb, "minilm", "--output", str(a_file)])
        assert "is a file; name a folder for the results" in capsys.readouterr().err


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


def test_every_integer_flag_is_checked_at_parse_time(tmp_path, capsys):
    """Issue 22: one argparse type per kind of integer; before, --shard-size, --jobs, --n,
    export's --dim and select's budgets accepted 0 or negatives and failed deep inside."""
    refused = [
        ["sweep", "--shard-size", "0"], ["sweep", "--jobs", "0"], ["sweep", "--max-length", "-1"],
        ["sweep", "--max-tokens-per-batch", "0"], ["metrics", "--n", "0"],
        ["metrics", "--n-views", "0"], ["metrics", "--seed", "-1"],
        ["sweep", "--slurm-gpus-per-task", "-1"], ["select", "--max-dim", "-8"],
        ["select", "--max-layer", "x"], ["select", "--dim", "0"],
        ["export", "minilm", "out", "--layer", "1", "--dim", "0"],
    ]  # fmt: skip
    for argv in refused:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        assert "must be >= " in capsys.readouterr().err or argv[-1] == "x", argv
    # a layer may count from the end (the library resolves it); slurm GPUs may be 0
    from mteb_midlayer.cli import build_parser
    from mteb_midlayer.executors.local import available_cores

    assert build_parser().parse_args(["export", "m", "o", "--layer", "-1"]).layer == -1
    assert (
        build_parser().parse_args(["sweep", "--slurm-gpus-per-task", "0"]).slurm_gpus_per_task == 0
    )
    assert build_parser().parse_args(["sweep"]).jobs == available_cores()  # as documented


def test_leaderboard_page_flag_and_its_deprecated_alias(tmp_path, capsys):
    from .leaderboard.conftest import DATA

    assert main(["leaderboard", str(DATA), "--to", str(tmp_path), "--page", "p", "--no-plots"]) == 0
    assert (tmp_path / "p.md").exists() and "deprecated" not in capsys.readouterr().err
    argv = ["leaderboard", str(DATA), "--to", str(tmp_path), "--benchmark", "old", "--no-plots"]
    assert main(argv) == 0
    assert "--benchmark is deprecated; use --page" in capsys.readouterr().err
    text = (tmp_path / "old.md").read_text()
    assert f"mteb-midlayer leaderboard {DATA} --to {tmp_path} --page old --no-plots" in text


def test_nothing_to_show_exits_1_in_every_reading_verb(tmp_path, capsys):
    """0 done, 1 nothing matched (or a task failed), 2 bad usage or an error (docs/cli.md)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["table", str(empty)]) == 1
    assert main(["select", str(empty)]) == 1  # was 0
    assert main(["leaderboard", str(empty), "--to", str(tmp_path / "lb")]) == 1
    for verb in (["table"], ["select"], ["leaderboard", "--to", str(tmp_path / "lb")]):
        assert main([verb[0], str(tmp_path / "nope"), *verb[1:]]) == 2
    assert not (tmp_path / "nope").exists()
