"""`table` / `layer_results` on damaged result folders: every problem is named, none is fatal."""

from __future__ import annotations

import pytest

from mteb_midlayer.cli import main
from mteb_midlayer.frames import ResultsFolderError, scan_results
from mteb_midlayer.sweep import sweep

from .conftest import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def results(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    folder = root / "model"
    tiny_model("bert", n_layers=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    out = root / "out"
    sweep(
        str(folder), tasks=["BIOSSES"], data_dir=shared_data, layers=[1, 2], output=out,
        device="cpu", show_progress=False,
    )  # fmt: skip
    return out


def _copy(results, tmp_path):
    import shutil

    return shutil.copytree(results, tmp_path / "copy")


def test_missing_model_meta_is_reported_not_dropped(results, tmp_path, capsys):
    out = _copy(results, tmp_path)
    [meta] = [p for p in out.rglob("model_meta.json") if "layer_1" in str(p)]
    meta.unlink()
    scan = scan_results(out)
    assert list(scan.frame["layer"]) == [2]
    assert any(str(meta) in line and "is missing" in line for line in scan.problems)
    assert main(["table", str(out)]) == 0
    assert f"warning: {meta} is missing" in capsys.readouterr().err


def test_truncated_result_is_named(results, tmp_path, capsys):
    out = _copy(results, tmp_path)
    [path] = [p for p in out.glob("results/*/*/experiments/*/BIOSSES.json") if "layer_2" in str(p)]
    path.write_text(path.read_text()[:50])
    assert main(["table", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{path} is unreadable" in captured.err
    assert "BIOSSES" in captured.out  # layer 1 still shown


def test_nan_score_is_named(results, tmp_path):
    import json

    out = _copy(results, tmp_path)
    [path] = [p for p in out.glob("results/*/*/experiments/*/BIOSSES.json") if "layer_2" in str(p)]
    data = json.loads(path.read_text())
    data["scores"]["test"][0]["main_score"] = float("nan")
    path.write_text(json.dumps(data))
    scan = scan_results(out)
    assert any(f"{path} has a NaN score" in line for line in scan.problems)


def test_a_path_that_does_not_exist_is_an_error_and_not_created(tmp_path):
    with pytest.raises(ResultsFolderError, match="No results folder at"):
        scan_results(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_mteb_reader_sees_our_results_with_match_name(results):
    """What README says about mteb's own reader: it needs load_experiments="match_name"."""
    import mteb

    cache = mteb.ResultCache(results)
    assert not cache.load_results(include_remote=False).model_results
    found = cache.load_results(include_remote=False, load_experiments="match_name")
    assert len(found.model_results) == 2
