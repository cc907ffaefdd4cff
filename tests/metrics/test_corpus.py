"""Metrics on any corpus: reading plain-text / JSON Lines files, their errors, and the driver."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from mteb_midlayer.encoder import LayerEncoder
from mteb_midlayer.frames import metrics_frame
from mteb_midlayer.metrics import functional as F
from mteb_midlayer.metrics.compute import METRICS
from mteb_midlayer.metrics.corpus import corpus_digest, read_corpus, read_texts_file
from mteb_midlayer.metrics.run import layer_metrics
from mteb_midlayer.metrics.sampling import sample_texts
from mteb_midlayer.model import LayerModel
from mteb_midlayer.tasks.local import LocalDataError

from ..conftest import tiny_model, tiny_tokenizer

TEXTS = [f"text number {i}: layers, {'and ' * (i % 4)}words" for i in range(30)]


@pytest.fixture(scope="module")
def tiny_lm():
    return LayerModel.load(tiny_model("llama", n_layers=2), tiny_tokenizer(), device="cpu")


def _write(path, data: bytes | str):
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _jsonl(texts, **extra) -> str:
    return "".join(json.dumps({"id": i, "text": t, **extra}) + "\n" for i, t in enumerate(texts))


def test_plain_text_and_jsonl_give_the_same_texts_and_digest(tmp_path):
    plain = _write(tmp_path / "wiki.txt", "\ufeff" + "\r\n".join(TEXTS[:3]) + "\n\n   \n")
    jsonl = _write(tmp_path / "wiki2.jsonl", _jsonl(TEXTS[:3]) + "\n")
    assert read_texts_file(plain) == TEXTS[:3]  # BOM, CRLF and blank lines gone
    assert read_texts_file(jsonl) == TEXTS[:3]
    a, b = read_corpus(plain), read_corpus(str(jsonl))
    assert a.texts == b.texts == tuple(TEXTS[:3])
    assert a.digest == b.digest == corpus_digest(TEXTS[:3]) and len(a.digest) == 12
    assert (a.dataset, b.dataset) == (f"wiki-{a.digest}", f"wiki2-{a.digest}")
    # one changed text changes the name; the list form is named "texts"
    assert read_corpus([*TEXTS[:2], "other"]).digest != a.digest
    assert read_corpus(TEXTS[:3]).dataset == f"texts-{a.digest}"


def test_format_detected_by_content_when_the_extension_says_nothing(tmp_path):
    as_json = _write(tmp_path / "corpus.data", _jsonl(["first", "second"]))
    assert read_texts_file(as_json) == ["first", "second"]
    # a first line that is JSON but not an object is plain text, kept verbatim
    plain = _write(tmp_path / "quotes", '"quoted"\n{not json}\n')
    assert read_texts_file(plain) == ['"quoted"', "{not json}"]
    blank_texts = _write(tmp_path / "b.jsonl", _jsonl(["a", "  ", "", "b"]))
    assert read_texts_file(blank_texts) == ["a", "b"]
    assert read_corpus(as_json).name == "corpus"
    odd = _write(tmp_path / "my corpus (v2).txt", "x\n")
    assert read_corpus(odd).name == "my_corpus_v2"


@pytest.mark.parametrize(
    ("name", "data", "line", "message"),
    [
        ("c.txt", b"", None, r"c\.txt: no texts \(the file is empty or holds only blank lines\)"),
        ("c.txt", b"\n  \n\t\n", None, r"no texts \(the file is empty"),
        ("c.txt", b"fine\n\xff\xfe not utf-8\n", 2, r"c\.txt, line 2: not valid UTF-8"),
        ("c.jsonl", b'{"text": "a"}\n\n{"body": "b"}\n', 3,
         r"c\.jsonl, line 3: missing field\(s\) 'text'; the line has 'body'"),
        ("c.jsonl", b'{"text": "a"}\n{"text": 3}\n', 2,
         r"line 2: field 'text': expected a valid string, got int 3"),
        ("c.jsonl", b'{"text": "a"}\n{"text": null}\n', 2, r"expected a valid string, got null"),
        ("c.jsonl", b'{"text": "a"}\n{"text": "b"\n', 2, r"c\.jsonl, line 2: bad JSON"),
        ("c.data", b'{"text": "a"}\n["b"]\n', 2, r"line 2: expected a JSON object, got list"),
        ("c.json", b'[{"text": "a"}]\n', 1, r"c\.json, line 1: a JSON array; write one JSON"),
        ("c.jsonl", b'{"text": " "}\n', None, r"no texts \(every text is blank\)"),
    ],
)  # fmt: skip
def test_bad_files_name_file_and_line(tmp_path, name, data, line, message):
    path = _write(tmp_path / name, data)
    with pytest.raises(LocalDataError, match=message) as info:
        read_corpus(path)
    assert info.value.path == path and info.value.line == line


def test_bad_inputs(tmp_path):
    with pytest.raises(LocalDataError, match="missing file"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(LocalDataError, match="not a file"):
        read_corpus(tmp_path)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a string, got int"):
        read_corpus(["a", 1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no non-blank text"):
        read_corpus(["", " "])


def test_layer_metrics_on_a_corpus_file(tiny_lm, tmp_path):
    plain = _write(tmp_path / "domain.txt", "\n".join(TEXTS))
    df = layer_metrics(
        tiny_lm, texts=plain, output=tmp_path / "out", n=20, n_views=2, show_progress=False
    ).metrics
    digest = corpus_digest(TEXTS)
    assert set(df["dataset"]) == {f"domain-{digest}"}
    assert set(df["metric"]) == set(METRICS) and set(df["layer"]) == {0, 1, 2}
    assert df["value"].map(math.isfinite).all()
    (path,) = (tmp_path / "out" / "metrics").glob("*.parquet")
    assert f"__domain-{digest}__" in path.name
    # the numbers are those of the 20 texts sampled as for a task (seed 42)
    sample = sample_texts(TEXTS, 20, 42)
    value = df.set_index(["layer", "metric", "variant"])["value"]
    assert (df["n"][df["metric"] == "dataset_entropy"] == 20).all()
    for layer in (0, 2):
        x = torch.from_numpy(LayerEncoder(tiny_lm, layer=layer, normalize=False).embed(sample))
        assert value[(layer, "dataset_entropy", "normalized")] == pytest.approx(
            float(F.dataset_entropy(x)), abs=1e-4
        )

    # the same texts as JSON Lines, or as a list: the same numbers under their own names
    jsonl = _write(tmp_path / "domain2.jsonl", _jsonl(TEXTS, source="x"))
    other = layer_metrics(
        tiny_lm, texts=jsonl, output=tmp_path / "out", n=20, n_views=2, show_progress=False
    ).metrics
    as_list = layer_metrics(
        tiny_lm, texts=TEXTS, output=tmp_path / "out", n=20, n_views=2, show_progress=False
    ).metrics
    assert set(other["dataset"]) == {f"domain2-{digest}"}
    assert set(as_list["dataset"]) == {f"texts-{digest}"}
    for frame in (other, as_list):
        pd.testing.assert_series_equal(frame["value"], df["value"])
    assert len(list((tmp_path / "out" / "metrics").glob("*.parquet"))) == 3


def test_corpus_results_sit_beside_task_results(tiny_lm, shared_data, tmp_path):
    plain = _write(tmp_path / "domain.txt", "\n".join(TEXTS))
    common = dict(output=tmp_path, n=20, metrics="dataset_entropy,curvature_abs")
    layer_metrics(tiny_lm, tasks=["BIOSSES"], data_dir=shared_data, show_progress=False, **common)
    both = layer_metrics(
        tiny_lm, texts=plain, tasks=["BIOSSES"], data_dir=shared_data, show_progress=False,
        **common,
    )  # fmt: skip
    assert both.timings  # the corpus was computed, the task read back
    frame = metrics_frame(tmp_path)
    assert set(frame["dataset"]) == {"BIOSSES", f"domain-{corpus_digest(TEXTS)}"}
    assert set(frame["metric"]) == {"dataset_entropy", "curvature_abs"}


def test_a_bad_corpus_fails_before_the_model_loads(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", '{"text": 1}\n')
    with pytest.raises(LocalDataError, match=r"bad\.jsonl, line 1: field 'text'"):
        layer_metrics("no/such-model", texts=bad, output=tmp_path, show_progress=False)
