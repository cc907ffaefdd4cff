"""Export: a layer slice as a sentence-transformers folder equal to `LayerEncoder` (fp32, CPU)."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

import mteb
import numpy as np
import pytest
from safetensors import safe_open
from sentence_transformers import SentenceTransformer

from mteb_midlayer import LayerEncoder
from mteb_midlayer.cli import main
from mteb_midlayer.export import ExportError, export
from mteb_midlayer.layers import FinalNormError
from mteb_midlayer.tasks.local import local_task

from .arch_matrix import arch_model
from .conftest import fresh_process_max_diff, tiny_model, tiny_tokenizer

TEXTS = [
    "A man is playing a guitar.",
    "Two dogs run through a field of tall grass, barking at a red kite.",
    "short",
    "The committee postponed the vote until next week because of the storm.",
]


def _reference(model, **kwargs) -> np.ndarray:
    return LayerEncoder(model, device="cpu", dtype="float32", **kwargs).embed(TEXTS)


def _saved_tiny(arch: str, folder):
    model, tok = tiny_model(arch), tiny_tokenizer()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(("layer", "dim"), [(3, 128), (6, None)])
def test_minilm_round_trip(minilm_path, tmp_path, layer, dim):
    out = tmp_path / "slice"
    result = export(minilm_path, out, layer=layer, dim=dim)
    assert (result.layer, result.dim, result.pooling, result.normalize) == (
        layer,
        dim or 384,
        "mean",
        True,
    )
    assert not result.needs_mteb_midlayer
    got = SentenceTransformer(str(out), device="cpu").encode(TEXTS)
    want = _reference(minilm_path, layer=layer, dim=dim)
    assert got.shape == (len(TEXTS), dim or 384)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == layer  # only the first L blocks are kept
    modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((out / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", *(["Dense"] if dim else []), "Normalize"]
    card = (out / "README.md").read_text()
    assert f"layer | {layer} of 6" in card and "sentence-transformers/all-MiniLM-L6-v2" in card
    with safe_open(out / "model.safetensors", "pt") as f:
        blocks = {int(k.split("layer.")[1].split(".")[0]) for k in f.keys() if "layer." in k}  # noqa: SIM118
    assert blocks == set(range(layer))


@pytest.mark.parametrize(
    ("arch", "layer", "pooling", "raw"),
    [
        ("bert", 2, "cls", False),
        ("gpt2", 2, "last", True),  # inner decoder layer: final norm skipped
        ("gpt2", 4, "mean", False),  # last layer: final norm applied, plain Transformer
        ("llama", 3, "mean", True),
        ("llama", 0, "max", True),  # the embedding output: a backbone with no block
        ("bert", 1, "weightedmean", False),
        ("gpt2", 3, "mean_sqrt_len", True),
    ],
)
def test_tiny_models_round_trip(tmp_path, arch, layer, pooling, raw):
    src = _saved_tiny(arch, tmp_path / "src")
    out = tmp_path / "out"
    # max_length 12 truncates the longer texts: the export truncates them the same way
    kwargs = dict(dim=16, pooling=pooling, normalize=False, max_length=12)
    result = export(src, out, layer=layer, **kwargs)
    assert result.needs_mteb_midlayer is raw
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=raw)
    got = st.encode(TEXTS)
    want = _reference(src, layer=layer, **kwargs)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert result.max_length == 12
    first = json.loads((out / "modules.json").read_text())[0]["type"]
    assert first.endswith("RawStreamTransformer" if raw else ".Transformer")


@pytest.mark.slow
def test_bert_export_loads_in_a_fresh_process_with_sentence_transformers_only(tmp_path):
    src = _saved_tiny("bert", tmp_path / "src")
    out = tmp_path / "out"
    export(src, out, layer=3, dim=20, pooling="mean", normalize=True)
    want = _reference(src, layer=3, dim=20, pooling="mean", normalize=True)
    assert fresh_process_max_diff(out, TEXTS, want, tmp_path) <= 1e-5


@pytest.mark.slow
def test_mteb_evaluate_of_the_export_equals_the_layer_encoder_score(
    minilm_path, shared_data, tmp_path
):
    out = tmp_path / "slice"
    export(minilm_path, out, layer=3, dim=128)

    def score(model) -> float:
        task = local_task(mteb.get_task("BIOSSES"), shared_data / "BIOSSES")
        res = mteb.evaluate(model, task, cache=None, co2_tracker=False, show_progress_bar=False)
        return res.task_results[0].get_score()

    exported = score(SentenceTransformer(str(out), device="cpu"))
    direct = score(LayerEncoder(minilm_path, layer=3, dim=128, device="cpu"))
    assert exported == pytest.approx(direct, abs=1e-6)
    assert exported == pytest.approx(0.519630, abs=1e-5)  # the committed sweep's slice score


def test_bad_input_one_clear_line_and_nothing_left_behind(minilm_path, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"layer 7 is out of range .* 0\.\.6"):
        export(minilm_path, out, layer=7)
    with pytest.raises(ExportError, match="dim 500 is out of range"):
        export(minilm_path, out, layer=3, dim=500)
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; pass --overwrite"):
        export(minilm_path, out, layer=3)
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders
    # --overwrite replaces a previous export only, never a folder of one's own
    with pytest.raises(ExportError, match=r"not a previous export .* name a new or empty folder"):
        export(minilm_path, out, layer=2, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    export(minilm_path, out, layer=3)
    export(minilm_path, out, layer=2, overwrite=True)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("arch", ["phi", "modernbert"])
def test_pre_norm_model_whose_norm_no_name_list_had_round_trips(tmp_path, arch):
    """Phi (`final_layernorm`) and ModernBERT (`final_norm`): the norm skipped at an inner layer
    is the one the probe finds on the full model, recorded in the folder by its path."""
    src = tmp_path / "src"
    arch_model(arch).save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    out = tmp_path / "out"
    kwargs = dict(pooling="mean", normalize=False)
    result = export(str(src), out, layer=2, **kwargs)
    assert result.needs_mteb_midlayer
    saved = json.loads((out / "sentence_bert_config.json").read_text())
    assert saved["skip_module"] == {"phi": "final_layernorm", "modernbert": "final_norm"}[arch]
    want = _reference(str(src), layer=2, **kwargs)
    got = SentenceTransformer(str(out), device="cpu", trust_remote_code=True).encode(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # the norm matters here: the model cut to 2 blocks (its norm kept) is another slice
    every = _reference(str(src), layer=2, final_norm="every", **kwargs)
    assert np.abs(every - want).max() > 1e-2
    # a folder without the recorded path (older exports) finds the norm on the cut model
    del saved["skip_module"]
    (out / "sentence_bert_config.json").write_text(json.dumps(saved))
    again = SentenceTransformer(str(out), device="cpu", trust_remote_code=True).encode(TEXTS)
    np.testing.assert_allclose(again, want, atol=1e-5, rtol=0)


def test_a_spec_gives_the_same_export_as_the_keywords(tmp_path):
    from mteb_midlayer.spec import ModelSpec, SpecConflictError

    src = _saved_tiny("gpt2", tmp_path / "src")
    keywords = export(src, tmp_path / "a", layer=2, pooling="mean", max_length=12)
    # an export is built and checked in fp32 on the CPU, whatever the spec's device and dtype
    spec = ModelSpec(source=src, max_length=12, device="cuda:7", dtype="bf16")
    with_spec = export(None, tmp_path / "b", spec=spec, layer=2, pooling="mean")
    assert with_spec == replace(keywords, path=tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    with pytest.raises(SpecConflictError, match="max_length"):
        export(src, tmp_path / "c", spec=spec, layer=2, max_length=16)
    with pytest.raises(TypeError, match="dtype"):
        export(src, tmp_path / "d", layer=2, dtype="float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "src"]


def test_a_final_norm_that_cannot_be_found_is_one_line(tmp_path, monkeypatch):
    ex = importlib.import_module("mteb_midlayer.export")  # `mteb_midlayer.export` is the function

    def refuse(model):
        raise FinalNormError("Cannot find the final norm of GPT2Model: no single module.")

    monkeypatch.setattr(ex, "find_final_norm", refuse)
    src = _saved_tiny("gpt2", tmp_path / "src")
    with pytest.raises(ExportError, match=r"^Cannot find the final norm of GPT2Model"):
        export(src, tmp_path / "out", layer=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_unsupported_architecture_is_refused(tmp_path, monkeypatch):
    # Pretend GPT-2 had no final norm: the cut model would apply ln_f to block 2's output, the
    # probe check sees it, and nothing is written.
    ex = importlib.import_module("mteb_midlayer.export")  # `mteb_midlayer.export` is the function

    monkeypatch.setattr(ex, "find_final_norm", lambda model: None)
    src = _saved_tiny("gpt2", tmp_path / "src")
    with pytest.raises(ExportError, match="unsupported architecture GPT2Model"):
        export(src, tmp_path / "out", layer=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_export_and_errors(minilm_path, tmp_path, capsys):
    from .select.conftest import RESULTS

    out = tmp_path / "cli"
    args = ["export", minilm_path, str(out), "--layer", "3", "--dim", "128"]
    assert main([*args, "--results", str(RESULTS)]) == 0
    assert "layer 3/6, dim 128/384" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "| BIOSSES | STS | 0.5196 |" in card  # the slice's own score from RESULTS
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty; pass --overwrite" in err


@pytest.mark.slow
def test_cli_select_exports_the_best_slice_under_the_budget(minilm_path, tmp_path, capsys):
    from .select.conftest import RESULTS

    out = tmp_path / "chosen"
    argv = ["select", str(RESULTS), "--max-layer", "4", "--export", str(out)]
    assert main([*argv, "--source", minilm_path]) == 0
    text = capsys.readouterr().out
    # best with at most 4 blocks on the committed results: layer 4 at full width (0.5886)
    assert "layer 4/6, dim 384/384" in text
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    assert "Mean over 2 tasks: 0.5886" in (out / "README.md").read_text()


# ---- issue 21: nothing lost (OUT checks, work folders), nothing silently wrong (card, select)


def _tree(root) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return _saved_tiny("bert", tmp_path_factory.mktemp("tiny-bert") / "model")


@pytest.mark.parametrize("out", [".", "x/..", ".."])
def test_export_never_replaces_the_current_directory_or_one_holding_it(
    tiny_bert, tmp_path, monkeypatch, capsys, out
):
    here = tmp_path / "t"
    here.mkdir()
    (here / "f").write_text("x")
    (here / "x").mkdir()
    monkeypatch.chdir(here)
    before = _tree(tmp_path)
    assert main(["export", tiny_bert, out, "--layer", "1", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "current directory: export into a new folder" in err
    assert _tree(tmp_path) == before  # nothing removed, no work folder left


def test_overwrite_refuses_results_folders_and_folders_holding_the_model(tiny_bert, tmp_path):
    res = tmp_path / "res"
    (res / "results").mkdir(parents=True)
    (res / "results" / "r.json").write_text("{}")
    with pytest.raises(ExportError, match=r"is a results folder \(sweep --output\)"):
        export(tiny_bert, res, layer=1, overwrite=True)
    box = tmp_path / "box"
    (box / "res" / "results").mkdir(parents=True)
    with pytest.raises(ExportError, match="is or holds the results folder"):
        export(tiny_bert, box, layer=1, results=box / "res", overwrite=True)
    with pytest.raises(ExportError, match="is or holds the model"):
        export(tiny_bert, Path(tiny_bert).parent, layer=1, overwrite=True)
    assert (res / "results" / "r.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "res"]


def test_a_killed_exports_work_folder_is_removed_by_the_next_export(tiny_bert, tmp_path):
    import subprocess
    import sys

    from mteb_midlayer.tempfiles import host_tag

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    killed = tmp_path / f".exp.export-{host_tag()}-{proc.pid}-0badf00d"
    (killed / "backbone").mkdir(parents=True)
    (killed / "backbone" / "model.safetensors").write_bytes(b"0" * 4096)
    legacy = tmp_path / ".exp.export-ab12_x9z"  # an earlier version's, fresh: may be live
    legacy.mkdir()
    export(tiny_bert, tmp_path / "exp", layer=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [legacy.name, "exp"]


def test_select_export_onto_its_own_results_is_refused(minilm_path, tmp_path, capsys):
    import shutil

    from .select.conftest import RESULTS

    res = tmp_path / "res"
    shutil.copytree(RESULTS, res)
    before = _tree(res)
    argv = ["select", str(res), "--export", str(res), "--overwrite", "--source", minilm_path]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is or holds the results folder" in err
    assert _tree(res) == before


def test_the_card_shows_names_as_written_and_inert():
    from mteb_midlayer.export import ExportResult, markdown_inert, model_card

    name = "=HYPERLINK|x/`<img src=x onerror=alert(1)>`*[a](b)*\n# h\u2028i"
    result = ExportResult(
        path=Path("o"), model=name, revision="@rev|\r\n<b>", layer=1, n_layers=2, dim=4,
        hidden_size=4, pooling="mean", normalize=False, max_length=8,
        needs_mteb_midlayer=False, max_abs_diff=0.0,
    )  # fmt: skip
    card = model_card(result)
    plain = model_card(replace(result, model="org/name", revision="abc"))
    assert card.count("\n") == plain.count("\n")  # no line the names added
    assert "<" not in card.replace("\\<", "") and "`<" not in card
    assert f"| source model | {markdown_inert(name)} |" in card
    row = next(line for line in card.splitlines() if line.startswith("| revision |"))
    assert row.replace("\\|", "").count("|") == 3  # still two cells
    assert markdown_inert("a|b`c\nd") == "a\\|b\\`c\\\\nd"


def _local_results(tmp_path, name: str, revision: str):
    """The committed select results, filed as if swept from a local folder."""
    import shutil

    from .select.conftest import RESULTS

    res = tmp_path / "res"
    shutil.copytree(RESULTS, res)
    for meta in res.glob("results/*/*/experiments/*/model_meta.json"):
        data = json.loads(meta.read_text())
        meta.write_text(json.dumps({**data, "name": name, "revision": revision}))
    return res


def test_select_export_of_a_local_model_asks_for_its_folder(minilm_path, tmp_path, capsys):
    res = _local_results(tmp_path, "local/gone", "local-0123456789ab")
    argv = ["select", str(res), "--max-layer", "4", "--export", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --source with that folder" in err
    # another folder (other files) is refused, not exported under the results' scores
    assert main([*argv, "--source", minilm_path]) == 2
    assert "not the results' 'local-0123456789ab'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_select_export_of_a_local_model_from_its_folder_carries_its_scores(
    minilm_path, tmp_path, capsys
):
    import shutil

    from mteb_midlayer.model import folder_fingerprint

    folder = shutil.copytree(minilm_path, tmp_path / "minilm")  # a local model, not the package's
    revision = f"local-{folder_fingerprint(folder)}"
    res = _local_results(tmp_path, "local/minilm", revision)
    out = tmp_path / "out"
    argv = ["select", str(res), "--max-layer", "4", "--export", str(out), "--source", str(folder)]
    assert main(argv) == 0
    card = (out / "README.md").read_text()
    assert f"| revision | {revision} |" in card  # not the fingerprint twice
    assert "Mean over 2 tasks: 0.5886" in card
