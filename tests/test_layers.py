"""Layer access (`mteb_midlayer.layers`): any layer of any architecture, exactly, and the final
norm at every layer as a slice option.

The architecture matrix runs over tiny config-built models of every family (tests/arch_matrix.py):
layer `l` equals transformers' `hidden_states[l]` (Mamba renumbered as the README documents),
`final_norm="every"` at layer `l` equals the model cut to `l` blocks, and asking for layer `l`
runs only `l` blocks; docs/architectures.md lists the families from this file. The final-norm
section follows the option end to end (encoder, one-pass sweep, tables, metrics, export, CLI).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mteb_midlayer import LayerEncoder, frames
from mteb_midlayer.export import export
from mteb_midlayer.frames import layer_results
from mteb_midlayer.layers import (
    FinalNormError,
    base_model,
    capture_layers,
    check_final_norms,
    final_norm_path,
    find_blocks,
    find_final_norm,
    num_layers,
    resolve_layer,
    resolve_layers,
    run_layers,
)
from mteb_midlayer.model import LayerModel
from mteb_midlayer.pooling import POOLINGS, pool
from mteb_midlayer.results import identity_path
from mteb_midlayer.sweep import sweep

from .arch_matrix import ARCHS, N_LAYERS, NO_CONFIG_CUT, POST_NORM, arch_config, arch_model
from .conftest import (
    REPO,
    TINY_ARCHS,
    count_forwards,
    fresh_process_max_diff,
    mock_sts_task,
    tiny_layer_model,
    tiny_model,
    tiny_tokenizer,
)


def reference_hidden_states(
    model: nn.Module, inputs: dict[str, torch.Tensor]
) -> list[torch.Tensor]:
    """`hidden_states` under our convention, from plain transformers outputs, without a KV cache
    as we run (GPT-Neo's cached attention path rounds differently, by 1e-8).

    transformers' Mamba omits the embedding output and lists the last block twice (raw, then
    normed); every other family already matches the convention.
    """
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, use_cache=False)
    hs = list(out.hidden_states)
    if model.config.model_type == "mamba":
        with torch.no_grad():
            hs = [model.embeddings(inputs["input_ids"]), *hs[:-2], hs[-1]]
    assert torch.equal(hs[-1], out.last_hidden_state)
    return hs


def _inputs(arch: str | None = None) -> dict[str, torch.Tensor]:
    """Three texts of 9, 6 and 2 tokens, right-padded (BERT also gets token type ids)."""
    torch.manual_seed(1)
    ids = torch.randint(3, 128, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if arch == "bert":
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_layer_model_pools_like_reference(arch):
    """The whole path (tokenize, sort, batch, pad, pool) equals a one-text-at-a-time reference."""
    lm = LayerModel.load(tiny_model(arch, n_layers=3), tiny_tokenizer(), device="cpu")
    texts = ["hello world", "a", "a much longer text than the others", "", "mid size"]
    for kind in POOLINGS:
        got = {}
        for batch in lm.iter_batches(texts, [0, 1, 2, 3], kind, batch_size=2):
            for row, index in enumerate(batch.indices):
                got[index] = {layer: batch.pooled[layer][row] for layer in batch.pooled}
        for index, text in enumerate(texts):
            ids = torch.tensor([lm.tokenize([text])[0]])
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if arch == "bert":
                inputs["token_type_ids"] = torch.zeros_like(ids)
            ref = reference_hidden_states(lm.model, inputs)
            for layer in range(4):
                expected = pool(ref[layer], inputs["attention_mask"], kind)[0]
                torch.testing.assert_close(got[index][layer], expected, rtol=1e-4, atol=1e-5)


def test_resolve_layer():
    assert resolve_layer(-1, 6) == 6
    assert resolve_layer(-7, 6) == 0
    assert resolve_layer(3, 6) == 3
    for bad in (7, -8):
        with pytest.raises(ValueError, match=r"0\.\.6"):
            resolve_layer(bad, 6)
    assert resolve_layers("all", 2) == [0, 1, 2]
    assert resolve_layers("0,2,-1", 6) == [0, 2, 6]


def test_one_forward_pass_serves_both_final_norms():
    model = tiny_model("llama", n_layers=4)
    calls = []
    model.register_forward_pre_hook(lambda *_a: calls.append(1))
    find_final_norm(model)  # one probe pass per model finds the norm (then cached)
    assert len(calls) == 1
    calls.clear()
    both = capture_layers(model, _inputs("llama"), [0, 2, 4], final_norms=("last", "every"))
    capture_layers(model, _inputs("llama"), [1], final_norms=("every",))
    assert len(calls) == 2
    assert sorted(both) == [(layer, s) for layer in (0, 2, 4) for s in ("every", "last")]


def test_reduce_runs_inside_the_capture():
    """A pooling reduce keeps only (batch, width) per layer; each state is handed over once."""
    model = tiny_model("gpt2", n_layers=4)
    inputs = _inputs("gpt2")
    mask = inputs["attention_mask"]
    seen = []

    def reduce(layer, setting, state):
        seen.append((layer, setting, tuple(state.shape)))
        return pool(state, mask, "mean")

    pooled = run_layers(model, inputs, [1, 3], reduce=reduce)
    full = run_layers(model, inputs, [1, 3])
    assert seen == [(1, "last", (3, 9, 32)), (3, "last", (3, 9, 32))]
    for layer in (1, 3):
        torch.testing.assert_close(pooled[layer], pool(full[layer], mask, "mean"))


def test_bad_final_norm_is_named():
    with pytest.raises(ValueError, match=r"Unknown final_norm 'first'.*last, every"):
        check_final_norms(["last", "first"])
    assert check_final_norms("every,last,every") == ("every", "last")


# ----------------------------------------------------------------- the architecture matrix
L = N_LAYERS
DOC = REPO / "docs" / "architectures.md"


def _doc_rows(path: Path = DOC) -> dict[str, list[str]]:
    """`{test id: cells}` of the families table in docs/architectures.md."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0].strip("`")] = cells
    return rows


@dataclass
class Built:
    arch: str
    model: nn.Module
    inputs: dict[str, torch.Tensor]
    hidden_states: list[torch.Tensor]  # our numbering, from plain transformers outputs


@pytest.fixture(scope="module", params=ARCHS)
def built(request) -> Built:
    model = arch_model(request.param)
    inputs = _inputs()
    states = reference_hidden_states(model, inputs)
    assert len(states) == L + 1
    return Built(request.param, model, inputs, states)


def _block_runs(model: nn.Module) -> tuple[list[int], list]:
    """A list that gains an entry each time a block finishes a run, and the hooks' handles."""
    runs: list[int] = []
    handles = [
        block.register_forward_hook(lambda *_a: runs.append(1))
        for block in dict.fromkeys(find_blocks(model))
    ]
    return runs, handles


def test_each_layer_equals_hidden_states_and_runs_only_its_blocks(built):
    assert num_layers(built.model) == L
    runs, handles = _block_runs(built.model)
    try:
        for layer in range(L + 1):
            runs.clear()
            got = run_layers(built.model, built.inputs, [layer])[layer]
            torch.testing.assert_close(got, built.hidden_states[layer], rtol=0, atol=0)
            assert len(runs) == layer  # early exit: blocks 0..layer-1 only (L: all of them)
    finally:
        for handle in handles:
            handle.remove()
    every = run_layers(built.model, built.inputs, range(L + 1))
    for layer in range(L + 1):
        torch.testing.assert_close(every[layer], built.hidden_states[layer], rtol=0, atol=0)


def _cut_by_config(built: Built, layer: int) -> torch.Tensor:
    """`last_hidden_state` of the model built from its config with `layer` layers, same weights."""
    import transformers

    config = arch_config(built.arch, layer)
    torch.manual_seed(0)
    cls = transformers.T5EncoderModel if built.arch == "t5-encoder" else transformers.AutoModel
    short = (cls(config) if cls is transformers.T5EncoderModel else cls.from_config(config)).eval()
    missing, _unexpected = short.load_state_dict(built.model.state_dict(), strict=False)
    assert not missing
    with torch.no_grad():
        return short(**built.inputs, use_cache=False).last_hidden_state


def _cut_by_skipping(built: Built, layer: int) -> torch.Tensor:
    """`last_hidden_state` of the model whose block runs from `layer` on return their input:
    the same as cutting it to `layer` blocks, for a family whose cut cannot be built."""
    runs = [0]

    def skip(_m, args, kwargs, output):
        index, runs[0] = runs[0], runs[0] + 1
        if index < layer:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [
        block.register_forward_hook(skip, with_kwargs=True)
        for block in dict.fromkeys(find_blocks(built.model))
    ]
    try:
        with torch.no_grad():
            return built.model(**built.inputs, use_cache=False).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()


def test_every_equals_the_model_cut_to_l_blocks(built):
    norm = find_final_norm(built.model)
    assert (norm is None) == (built.arch in POST_NORM)
    both = capture_layers(built.model, built.inputs, range(L + 1), final_norms=("last", "every"))
    for layer in range(L + 1):
        cut = (
            _cut_by_skipping(built, layer)
            if layer in NO_CONFIG_CUT.get(built.arch, ())
            else _cut_by_config(built, layer)
        )
        torch.testing.assert_close(both[(layer, "every")], cut, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            both[(layer, "last")], built.hidden_states[layer], rtol=0, atol=0
        )
    for layer in range(L):
        same = torch.equal(both[(layer, "every")], both[(layer, "last")])
        assert same == (norm is None), f"layer {layer}"  # a norm found is one that acts
    torch.testing.assert_close(both[(L, "every")], both[(L, "last")], rtol=0, atol=0)


def test_a_final_norm_that_cannot_be_found_is_refused():
    """A pre-norm model that changes its last block's output outside any single module: `every`
    is refused in one line rather than guessed; `last` is unaffected."""
    model = arch_model("llama")
    inputs = _inputs()
    ref = reference_hidden_states(model, inputs)

    def rescale(_m, _args, output):
        output.last_hidden_state = output.last_hidden_state * 2
        return output

    model.register_forward_hook(rescale)
    with pytest.raises(FinalNormError, match=r"^Cannot find the final norm of LlamaModel: [^\n]*$"):
        capture_layers(model, inputs, [1], final_norms=("every",))
    torch.testing.assert_close(run_layers(model, inputs, [1])[1], ref[1], rtol=0, atol=0)


def test_the_probe_follows_a_cut_block_list():
    """Cutting the block list in place (export does) is seen: blocks and norm are found anew."""
    from mteb_midlayer.export import truncate

    model = arch_model("phi")
    norm = find_final_norm(model)
    assert norm is model.final_layernorm  # Phi's name is in no list: found by the probe
    truncate(model, 1)
    assert num_layers(model) == 1 and find_final_norm(model) is norm
    albert = arch_model("albert")
    assert num_layers(albert) == L and len(find_blocks(albert)) == 1
    truncate(albert, 2)  # a shared stack keeps its list; the config counts the runs
    assert json.loads(albert.config.to_json_string())["num_hidden_layers"] == 2
    runs, _handles = _block_runs(albert)
    run_layers(albert, _inputs(), [2])
    assert num_layers(albert) == 2 and len(runs) == 2


def test_the_docs_list_exactly_the_tested_families():
    assert list(_doc_rows()) == list(ARCHS)


def test_the_docs_row_says_what_the_code_finds(built):
    _id, _family, cls, blocks, norm = _doc_rows()[built.arch]
    backbone = base_model(built.model)
    path = next(name for name, m in backbone.named_modules() if m is find_blocks(built.model))
    assert cls == f"`{type(built.model).__name__}`"
    assert blocks.startswith(f"`{path}`")
    assert ("shared" in blocks) == (num_layers(built.model) != len(find_blocks(built.model)))
    found = final_norm_path(built.model)
    assert norm == (f"`{found}`" if found else "—")
    # the whole wrapper loads it and counts the same layers (ALBERT could not be loaded before)
    assert LayerModel.load(built.model, tiny_tokenizer(), device="cpu").n_layers == L


# ------------------------------------------------------- final_norm as a slice option
NORM_TEXTS = [
    "A man is playing a guitar.",
    "Two dogs run through a field of tall grass.",
    "short",
    "The committee postponed the vote until next week.",
]


def _scores(out) -> pd.DataFrame:
    df = layer_results(out)
    return df.set_index(["final_norm", "layer"])["score"].sort_index()


def test_encoder_every_differs_from_last_on_a_decoder_and_names_its_slice():
    lm = tiny_layer_model("llama")
    last = LayerEncoder(lm, layer=2).embed(NORM_TEXTS)
    every = LayerEncoder(lm, layer=2, final_norm="every")
    assert every.mteb_model_meta.experiment_kwargs["final_norm"] == "every"
    assert "final_norm" not in LayerEncoder(lm, layer=2).mteb_model_meta.experiment_kwargs
    assert np.abs(every.embed(NORM_TEXTS) - last).max() > 1e-2
    # at the last layer the final norm is applied once under both settings
    np.testing.assert_allclose(
        LayerEncoder(lm, layer=4, final_norm="every").embed(NORM_TEXTS),
        LayerEncoder(lm, layer=4).embed(NORM_TEXTS),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="Unknown final_norm 'both'"):
        LayerEncoder(lm, layer=2, final_norm="both")
    with pytest.raises(ValueError, match="max_tokens_per_batch must be a positive int"):
        LayerEncoder(lm, layer=2, max_tokens_per_batch=0)


def test_encoder_token_budget_changes_nothing():
    lm = tiny_layer_model("gpt2")
    a = LayerEncoder(lm, layer=3, final_norm="every").embed(NORM_TEXTS)
    b = LayerEncoder(lm, layer=3, final_norm="every", max_tokens_per_batch=20).embed(NORM_TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_sweep_last_and_every_in_one_pass_equal_two_single_runs(tmp_path):
    lm = tiny_layer_model("llama")
    calls = count_forwards(lm)

    def run(out: str, **options):
        kw = dict(layers=[0, 2, 4], show_progress=False, batch_size=64)
        return sweep(lm, tasks=[mock_sts_task()], output=tmp_path / out, **kw, **options)

    both = run("both", final_norm="last,every").scores
    forwards_both = len(calls)
    calls.clear()
    run("last")
    forwards_last = len(calls)
    run("every", final_norm="every", max_tokens_per_batch=64)  # batching is in no result
    assert forwards_both == forwards_last > 0  # both settings from the same forward passes
    got = _scores(tmp_path / "both")
    want = pd.concat([_scores(tmp_path / "last"), _scores(tmp_path / "every")]).sort_index()
    pd.testing.assert_series_equal(got, want, atol=1e-6, rtol=0)
    # the table keeps both settings apart (inner-layer vectors differ: see the encoder test)
    assert both.index.names == ["final_norm", "layer"]
    task = "MockSTSTask"
    assert both.loc[("every", 4), task] == pytest.approx(both.loc[("last", 4), task], abs=1e-6)
    # relative depth: L is recorded with each result; so is the search backend
    df = layer_results(tmp_path / "both")
    assert set(df["n_layers"]) == {4.0} and set(df["final_norm"]) == {"last", "every"}
    folder = next((tmp_path / "both").glob("results/*/*/experiments/*final_norm_every*"))
    identity = json.loads(identity_path(folder / f"{task}.json").read_text())
    assert identity["n_layers"] == 4 and identity["final_norm"] == "every"
    assert identity["search_backend"] in ("faiss", "torch")
    # select and leaderboards treat the two settings as two configurations
    from mteb_midlayer.leaderboard import publish
    from mteb_midlayer.select import select

    best = select(tmp_path / "both").best
    assert sorted(best[best["budget"] == "none"]["final_norm"]) == ["every", "last"]
    scores = frames.scores_frame(tmp_path / "both")
    publish(scores, frames.metrics_frame(tmp_path / "both"), tmp_path / "lb", benchmark="b",
            with_plots=False)  # fmt: skip
    csv = pd.read_csv(tmp_path / "lb" / "b.csv")
    assert sorted(set(csv["final_norm"])) == ["every", "last"] and len(csv) == 6
    # a rerun reuses everything: nothing is encoded again
    again = sweep(
        lm,
        tasks=[mock_sts_task()],
        layers=[0, 2, 4],
        final_norm=["every", "last"],
        output=tmp_path / "both",
        show_progress=False,
    )
    assert again.n_encoded == 0


def test_every_on_bert_is_a_noted_no_op_filed_as_its_own_slice(tmp_path, caplog, monkeypatch):
    from mteb_midlayer import layers

    monkeypatch.setattr(layers, "_NO_NORM_NOTED", set())  # noted once per process: not yet
    lm = tiny_layer_model("bert")
    with caplog.at_level(logging.WARNING, logger="mteb_midlayer.layers"):
        every = LayerEncoder(lm, layer=2, final_norm="every").embed(NORM_TEXTS)
    assert "has no final norm" in caplog.text and "equals 'last'" in caplog.text
    np.testing.assert_array_equal(every, LayerEncoder(lm, layer=2).embed(NORM_TEXTS))
    sweep(
        lm,
        tasks=[mock_sts_task()],
        layers=[1, 4],
        final_norm="last,every",
        output=tmp_path,
        show_progress=False,
    )
    scores = _scores(tmp_path)
    assert set(scores.index.get_level_values("final_norm")) == {"last", "every"}
    np.testing.assert_allclose(scores.loc["every"], scores.loc["last"], atol=1e-9)


def test_scores_frame_keeps_runs_that_differ_only_in_max_length(tmp_path):
    for max_length in (8, 64):
        lm = tiny_layer_model("gpt2", max_length=max_length)
        sweep(lm, tasks=[mock_sts_task()], layers=[2], output=tmp_path, show_progress=False)
    scores = frames.scores_frame(tmp_path)
    assert sorted(scores["max_length"]) == [8, 64]
    # two configurations, not one deduplicated row
    assert len(frames.layer_scores(scores).query("task_type == 'all'")) == 2
    per_layer = frames.layer_scores(scores, by_type=False)
    assert len(per_layer) == 2 and (per_layer["n_tasks"] == 1).all()
    assert set(per_layer["n_layers"]) == {4.0}


def test_metrics_rows_carry_final_norm_and_see_the_normed_states(tmp_path):
    from mteb_midlayer.metrics.run import layer_metrics

    lm = tiny_layer_model("gpt_neox")
    texts = [f"text number {i} says {'word ' * (i % 5)}" for i in range(24)]
    df = layer_metrics(
        lm,
        texts=texts,
        n=24,
        metrics="effective_rank,curvature",
        layers=[1, 4],
        final_norm="last,every",
        output=tmp_path,
        show_progress=False,
    ).metrics
    value = df.set_index(["final_norm", "layer", "metric", "variant"])["value"]
    for metric in ("effective_rank", "curvature"):
        last, every = value.xs(metric, level="metric"), None
        every = last.loc["every"]
        last = last.loc["last"]
        assert every.loc[4].to_numpy() == pytest.approx(last.loc[4].to_numpy(), abs=1e-5)
        assert every.loc[1].to_numpy() != pytest.approx(last.loc[1].to_numpy(), abs=1e-4)
    read = frames.metrics_frame(tmp_path)
    assert set(read["final_norm"]) == {"last", "every"}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_exports_a_plain_truncated_model_that_sentence_transformers_loads_alone(
    tmp_path, arch
):
    src = tmp_path / "src"
    model, tok = tiny_model(arch), tiny_tokenizer()
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "out"
    result = export(str(src), out, layer=2, pooling="mean", final_norm="every")
    assert not result.needs_mteb_midlayer and result.final_norm == "every"
    modules = json.loads((out / "modules.json").read_text())
    assert not any("mteb_midlayer" in m["type"] for m in modules)
    assert "| final norm | every |" in (out / "README.md").read_text()
    want = LayerEncoder(
        str(src), layer=2, pooling="mean", final_norm="every", device="cpu", dtype="float32"
    ).embed(NORM_TEXTS)
    assert fresh_process_max_diff(out, NORM_TEXTS, want, tmp_path) <= 1e-5


def test_cli_sweep_final_norm_then_select_exports_the_every_slice(shared_data, tmp_path, capsys):
    from mteb_midlayer.cli import main

    src = tmp_path / "src"
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "res"
    code = main(
        ["sweep", str(src), "--tasks", "BIOSSES", "--data-dir", str(shared_data),
         "--layers", "2,4", "--final-norm", "every", "--max-tokens-per-batch", "512",
         "--output", str(out), "--device", "cpu", "--jobs", "1"]
    )  # fmt: skip
    assert code == 0
    scores = frames.scores_frame(out)
    assert set(scores["final_norm"]) == {"every"} and sorted(scores["layer"]) == [2, 4]
    assert main(["sweep", str(src), "--final-norm", "none", "--output", str(out)]) == 2
    assert "Unknown final_norm 'none'" in capsys.readouterr().err
    exported = tmp_path / "exp"
    code = main(["select", str(out), "--export", str(exported), "--source", str(src)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "final_norm=every" in printed and "RawStreamTransformer" not in printed
    modules = json.loads((exported / "modules.json").read_text())
    assert not any("mteb_midlayer" in m["type"] for m in modules)
