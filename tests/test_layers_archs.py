"""Any architecture, exactly: the layer matrix over tiny config-built models of every family.

For each family (tests/arch_matrix.py): layer `l` equals transformers' `hidden_states[l]` (Mamba
renumbered as the README documents), `final_norm="every"` at layer `l` equals the model cut to
`l` blocks, and asking for layer `l` runs only `l` blocks. docs/architectures.md lists the
families from this test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from mteb_midlayer.layers import (
    FinalNormError,
    base_model,
    capture_layers,
    final_norm_path,
    find_blocks,
    find_final_norm,
    num_layers,
    run_layers,
)
from mteb_midlayer.model import LayerModel

from .arch_matrix import ARCHS, N_LAYERS, NO_CONFIG_CUT, POST_NORM, arch_config, arch_model
from .conftest import REPO, tiny_tokenizer

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


def _inputs() -> dict[str, torch.Tensor]:
    """Three texts of 9, 6 and 2 tokens, right-padded."""
    torch.manual_seed(1)
    ids = torch.randint(3, 128, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _reference(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """transformers' `hidden_states`, without a KV cache as we run (GPT-Neo's cached attention
    path rounds differently, by 1e-8)."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, use_cache=False)
    hs = list(out.hidden_states)
    if model.config.model_type == "mamba":  # no embedding output; the last block twice
        with torch.no_grad():
            hs = [model.embeddings(inputs["input_ids"]), *hs[:-2], hs[-1]]
    assert len(hs) == L + 1
    assert torch.equal(hs[-1], out.last_hidden_state)
    return hs


@pytest.fixture(scope="module", params=ARCHS)
def built(request) -> Built:
    model = arch_model(request.param)
    inputs = _inputs()
    return Built(request.param, model, inputs, _reference(model, inputs))


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
    ref = _reference(model, inputs)

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
