"""One model spec: validated at construction, round-trips, and conflicts are named."""

from __future__ import annotations

import pytest

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
