"""Tiny config-built models of every architecture family we hold `layers.py` to.

Each entry builds a randomly initialised config (hidden 32, a few blocks, vocab 128) so the whole
matrix builds and runs in seconds. `ARCHS` is the list `docs/architectures.md` states as supported.
"""

from __future__ import annotations

from typing import Any

import torch

VOCAB = 128
HIDDEN = 32
N_LAYERS = 3

#: arch -> (transformers config class name, AutoModel class name, config kwargs builder)
_COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _decoder(**extra: Any) -> dict[str, Any]:
    """Llama-style keyword names (hidden_size, num_hidden_layers, heads, intermediate_size)."""
    return (
        dict(
            hidden_size=HIDDEN,
            num_attention_heads=4,
            intermediate_size=2 * HIDDEN,
            max_position_embeddings=64,
            **_COMMON,
        )
        | extra
    )


def _encoder(**extra: Any) -> dict[str, Any]:
    """BERT-style keyword names."""
    return (
        dict(
            hidden_size=HIDDEN,
            num_attention_heads=4,
            intermediate_size=2 * HIDDEN,
            max_position_embeddings=64,
            **_COMMON,
        )
        | extra
    )


#: arch -> (config class, kwargs without the layer count, the config's layer-count key)
CONFIGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "bert": ("BertConfig", _encoder(), "num_hidden_layers"),
    "roberta": ("RobertaConfig", _encoder(pad_token_id=1, bos_token_id=0), "num_hidden_layers"),
    "xlm-roberta": (
        "XLMRobertaConfig",
        _encoder(pad_token_id=1, bos_token_id=0),
        "num_hidden_layers",
    ),
    "electra": ("ElectraConfig", _encoder(embedding_size=16), "num_hidden_layers"),
    "distilbert": (
        "DistilBertConfig",
        dict(dim=HIDDEN, n_heads=4, hidden_dim=2 * HIDDEN, max_position_embeddings=64, **_COMMON),
        "n_layers",
    ),
    "albert": ("AlbertConfig", _encoder(embedding_size=16), "num_hidden_layers"),
    "albert-2groups": (
        "AlbertConfig",
        _encoder(embedding_size=16, num_hidden_groups=2),
        "num_hidden_layers",
    ),
    "deberta-v2": (
        "DebertaV2Config",
        _encoder(relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"]),
        "num_hidden_layers",
    ),
    "mpnet": ("MPNetConfig", _encoder(pad_token_id=1, bos_token_id=0), "num_hidden_layers"),
    "modernbert": (
        "ModernBertConfig",
        dict(
            hidden_size=HIDDEN,
            num_attention_heads=4,
            intermediate_size=2 * HIDDEN,
            max_position_embeddings=64,
            global_attn_every_n_layers=2,
            local_attention=8,
            vocab_size=VOCAB,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        ),
        "num_hidden_layers",
    ),
    "t5-encoder": (
        "T5Config",
        dict(d_model=HIDDEN, d_kv=8, d_ff=2 * HIDDEN, num_heads=4, vocab_size=VOCAB),
        "num_layers",
    ),
    "gpt2": ("GPT2Config", dict(n_embd=HIDDEN, n_head=4, n_positions=64, **_COMMON), "n_layer"),
    "gpt-neo": (
        "GPTNeoConfig",
        dict(
            hidden_size=HIDDEN,
            num_heads=4,
            max_position_embeddings=64,
            window_size=8,
            **_COMMON,
        ),
        "num_layers",
    ),
    "gptj": (
        "GPTJConfig",
        dict(n_embd=HIDDEN, n_head=4, rotary_dim=4, n_positions=64, **_COMMON),
        "n_layer",
    ),
    "gpt-neox": ("GPTNeoXConfig", _decoder(), "num_hidden_layers"),
    "opt": (
        "OPTConfig",
        dict(
            hidden_size=HIDDEN,
            num_attention_heads=4,
            ffn_dim=2 * HIDDEN,
            word_embed_proj_dim=HIDDEN,
            max_position_embeddings=64,
            **_COMMON,
        ),
        "num_hidden_layers",
    ),
    "bloom": ("BloomConfig", dict(hidden_size=HIDDEN, n_head=4, **_COMMON), "n_layer"),
    "falcon": (
        "FalconConfig",
        dict(hidden_size=HIDDEN, num_attention_heads=4, **_COMMON),
        "num_hidden_layers",
    ),
    "llama": ("LlamaConfig", _decoder(num_key_value_heads=2), "num_hidden_layers"),
    "mistral": ("MistralConfig", _decoder(num_key_value_heads=2), "num_hidden_layers"),
    "qwen2": ("Qwen2Config", _decoder(num_key_value_heads=2), "num_hidden_layers"),
    "qwen3": ("Qwen3Config", _decoder(num_key_value_heads=2, head_dim=8), "num_hidden_layers"),
    "gemma": ("GemmaConfig", _decoder(num_key_value_heads=2, head_dim=8), "num_hidden_layers"),
    "gemma2": (
        "Gemma2Config",
        _decoder(num_key_value_heads=2, head_dim=8, sliding_window=8),
        "num_hidden_layers",
    ),
    "gemma3": (
        "Gemma3TextConfig",
        _decoder(num_key_value_heads=2, head_dim=8, sliding_window=8),
        "num_hidden_layers",
    ),
    "phi": ("PhiConfig", _decoder(), "num_hidden_layers"),
    "phi3": ("Phi3Config", _decoder(num_key_value_heads=2), "num_hidden_layers"),
    "stablelm": ("StableLmConfig", _decoder(num_key_value_heads=2), "num_hidden_layers"),
    "olmo2": ("Olmo2Config", _decoder(num_key_value_heads=2), "num_hidden_layers"),
    "mamba": (
        "MambaConfig",
        dict(hidden_size=HIDDEN, state_size=8, **_COMMON),
        "num_hidden_layers",
    ),
    "mamba2": (
        "Mamba2Config",
        dict(
            hidden_size=HIDDEN,
            state_size=8,
            num_heads=8,
            head_dim=8,
            n_groups=1,
            chunk_size=8,
            **_COMMON,
        ),
        "num_hidden_layers",
    ),
}
ARCHS = tuple(CONFIGS)


def arch_config(arch: str, n_layers: int = N_LAYERS):
    """The tiny config of `arch` with `n_layers` blocks (a `pytest.skip` if transformers lacks it)."""
    import pytest
    import transformers

    cls_name, kwargs, count_key = CONFIGS[arch]
    cls = getattr(transformers, cls_name, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {cls_name}")
    if arch == "gpt-neo":  # one attention type per layer, alternating
        types = [("global", "local")[i % 2] for i in range(n_layers)]
        kwargs = kwargs | {"attention_types": [[types, 1]]}
    return cls(**kwargs, **{count_key: n_layers})


def arch_model(arch: str, n_layers: int = N_LAYERS, seed: int = 0) -> torch.nn.Module:
    """The tiny base model (`AutoModel`; `T5EncoderModel` for T5), random weights, eval mode."""
    import transformers

    config = arch_config(arch, n_layers)
    torch.manual_seed(seed)
    if arch == "t5-encoder":
        return transformers.T5EncoderModel(config).eval()
    return transformers.AutoModel.from_config(config).eval()


#: Families whose last hidden state is their last block's output (post-norm encoders): no final
#: norm, so `final_norm="every"` equals `"last"`. Every other family has one.
POST_NORM = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "electra",
        "distilbert",
        "albert",
        "albert-2groups",
        "deberta-v2",
        "mpnet",
    }
)
#: Families whose model cut to `l` blocks cannot be built from a config with `l` layers:
#: DeBERTa-v2 and ModernBERT refuse zero layers; ALBERT with 2 layer groups re-spreads its groups
#: over the new count (run i uses group i * groups // layers), so the cut is not a prefix.
NO_CONFIG_CUT = {"deberta-v2": {0}, "modernbert": {0}, "albert-2groups": {1, 2}}
