"""The sweep as a plan of work units, written down before anything runs.

A sweep is made of two kinds of independent pieces: an `EncodeUnit` puts one shard of a task's
texts (every sweep layer, one forward pass) into the embedding store; a `ScoreUnit` scores one
`(task, slice)` from the store with mteb. A task's score units depend on its encode units.
Units are frozen, picklable and carry only plain data (the model spec as a dict, paths as str),
so any process (a local worker, a Ray task, a Slurm job) can run them; the texts of a task are
written under `<output>/plan/` by the driver and read back by range.

Which texts a task asks for is found by running mteb once on the task with a recording encoder
(`record_requests`): the texts, prompt types and order are then exactly those of the scoring runs.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EncodeUnit",
    "MetricsUnit",
    "Plan",
    "RecordedTexts",
    "ScoreUnit",
    "TaskTexts",
    "encode_units",
    "read_texts",
    "record_requests",
    "write_texts",
]

PLAN_FOLDER = "plan"


@dataclass(frozen=True)
class EncodeUnit:
    """Texts ``[start, stop)`` of one texts file of a task, every sweep layer, into the store.

    `model`: the spec the worker loads (`ModelSpec.to_dict()`, as the user gave it);
    `resolved`: the spec the driver's model resolved to (name, revision, max_length, dtype,
    prompts), which keys the store and which the worker's model must match. `pooling`: one
    mode, or several comma-separated ("mean,last"): every one pooled in the same pass, each
    into its own store.
    """

    model: dict[str, Any]
    resolved: dict[str, Any]
    task: str
    data_dir: str | None
    store_root: str
    texts_file: str
    prompt_type: str | None
    start: int
    stop: int
    layers: tuple[int, ...]
    pooling: str
    batch_size: int = 32
    texts_digest: str = ""
    final_norms: tuple[str, ...] = ("last",)
    max_tokens_per_batch: int | None = None
    #: What every text starts with (mteb's prompt for this task and prompt type); pooling
    #: leaves its tokens out when the model's `include_prompt` is False.
    prompt: str = ""

    @property
    def n_texts(self) -> int:
        return self.stop - self.start

    @property
    def key(self) -> str:
        """Unique and stable across drivers: what the claim of this unit is named after."""
        raw = json.dumps(
            [
                self.resolved,
                self.pooling,
                self.layers,
                self.final_norms,
                self.prompt_type,
                self.texts_digest,
            ],
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
        return f"{self.task}-{self.prompt_type or 'none'}-{self.start}-{self.stop}-{digest}"


@dataclass(frozen=True)
class ScoreUnit:
    """One `(task, slice)` scored by mteb from the store into the result root `output`.

    `resolved` is the driver's resolved model spec; `n_parameters`, `hidden_size`, `n_layers` complete
    what a result's `ModelMeta` needs, so a scoring worker never loads the network.
    `depends_on`: keys of the task's encode units.
    """

    model: dict[str, Any]
    resolved: dict[str, Any]
    n_parameters: int | None
    hidden_size: int
    n_layers: int
    task: str
    data_dir: str | None
    store_root: str
    output: str
    layer: int
    dim: int
    normalize: bool
    pooling: str
    layers: tuple[int, ...]
    batch_size: int = 32
    final_norm: str = "last"
    final_norms: tuple[str, ...] = ("last",)
    search_backend: str = "torch"
    depends_on: tuple[str, ...] = ()
    #: the driver's task subsets (e.g. English only), so a worker rebuilds the same task
    hf_subsets: tuple[str, ...] | None = None
    #: the fused layers of a fusion slice (`fusion.py`; `layer` is their deepest), else ()
    fuse: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        fused = "-F" + "+".join(map(str, self.fuse)) if self.fuse else ""
        return (
            f"{self.task}-L{self.layer}{fused}-d{self.dim}-{self.pooling}-n{int(self.normalize)}"
            f"-{self.final_norm}"
        )


@dataclass(frozen=True)
class MetricsUnit:
    """The unsupervised layer metrics of one `(model, task)` into `output` (the metrics folder).

    `settings` is the driver's record of the run (it names the task's parquet file); the other
    fields are `metrics.driver.layer_metrics`'s options (`pooling`: one mode, or several
    comma-separated, all from the same passes).
    """

    model: dict[str, Any]
    resolved: dict[str, Any]
    task: str
    data_dir: str | None
    output: str
    settings: dict[str, Any]
    metrics: tuple[str, ...]
    layers: tuple[int, ...]
    pooling: str
    n: int
    seed: int
    alpha: float
    n_views: int
    batch_size: int = 32
    overwrite: bool = False
    final_norms: tuple[str, ...] = ("last",)
    #: the driver's task subsets (e.g. English only), so a worker rebuilds the same task
    hf_subsets: tuple[str, ...] | None = None
    max_tokens_per_batch: int | None = None
    #: fused slices (`fusion.py`) whose pooled-vector metrics come with the layers'
    fusions: tuple[tuple[int, ...], ...] = ()

    @property
    def key(self) -> str:
        return f"metrics-{self.task}"


@dataclass(frozen=True)
class TaskTexts:
    """The distinct texts a task sends the encoder for one prompt type, in first-asked order,
    each starting with `prompt` (the one mteb's rules pick for this task and prompt type)."""

    task: str
    prompt_type: str | None
    texts: tuple[str, ...]
    prompt: str = ""

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(hashlib.sha256(t.encode("utf-8")).digest())
        return h.hexdigest()


@dataclass
class Plan:
    """Every unit of a sweep; `texts[task]` = its `TaskTexts`, `failures` = tasks left out."""

    encode: list[EncodeUnit] = field(default_factory=list)
    score: list[ScoreUnit] = field(default_factory=list)
    texts: dict[str, list[TaskTexts]] = field(default_factory=dict)
    #: slices per task whose result already stands (no unit)
    done: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def encode_for(self, task: str) -> list[EncodeUnit]:
        return [u for u in self.encode if u.task == task]

    def score_for(self, task: str) -> list[ScoreUnit]:
        return [u for u in self.score if u.task == task]

    @property
    def tasks(self) -> list[str]:
        names = [u.task for u in self.encode] + [u.task for u in self.score] + list(self.done)
        return list(dict.fromkeys(names))

    def summary(self) -> str:
        """What `sweep --dry-run` prints: unit counts, then texts and slices per task."""
        lines = [
            f"Plan: {len(self.encode)} encode units, {len(self.score)} score units, "
            f"{len(self.tasks)} tasks."
        ]
        enc = Counter(u.task for u in self.encode)
        sco = Counter(u.task for u in self.score)
        width = max([len(t) for t in self.tasks] + [4])
        lines.append(f"  {'task':<{width}}  {'texts':>6}  encode_units  slices  done")
        for task in self.tasks:
            n_texts = sum(len(t.texts) for t in self.texts.get(task, []))
            lines.append(
                f"  {task:<{width}}  {n_texts:>6}  {enc[task]:>12}  {sco[task]:>6}"
                f"  {self.done.get(task, 0):>4}"
            )
        for task, reason in self.failures.items():
            lines.append(f"  {task}: cannot run ({reason})")
        return "\n".join(lines)

    def to_json(self) -> str:
        """The units as JSON (for a record of the run, or to hand them to another engine)."""
        return json.dumps(
            {
                "encode": [asdict(u) for u in self.encode],
                "score": [asdict(u) for u in self.score],
                "failures": self.failures,
            },
            indent=1,
            default=str,
        )


@dataclass
class RecordedTexts:
    """A task's recorded texts, kept across the sweeps of a checkpoint series.

    Which texts a task asks for depends on the task's data and the prompts, never on the
    weights, so a series records each task once (`n_recorded` counts the recordings) and every
    checkpoint's encode units read the one texts file written for the first checkpoint.
    Keyed by `(task, task data fingerprint, prompts hash)`.
    """

    entries: dict[tuple[str, str, str], list[TaskTexts]] = field(default_factory=dict)
    files: dict[tuple[tuple[str, str, str], str | None], Path] = field(default_factory=dict)
    n_recorded: int = 0


def texts_path(output: Path | str, store_digest: str, task: str, prompt_type: str | None) -> Path:
    """Where the driver writes a task's texts for one prompt type (per store configuration)."""
    return Path(output) / PLAN_FOLDER / store_digest / task / f"{prompt_type or 'none'}.json"


def write_texts(path: Path, texts: TaskTexts) -> None:
    """Write once: an existing file with the same texts is left alone (a second driver)."""
    from .results import write_atomic

    payload = {"task": texts.task, "prompt_type": texts.prompt_type, "digest": texts.digest}
    if path.exists():
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("digest") == texts.digest:
                return
        except (OSError, json.JSONDecodeError):
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(payload | {"texts": list(texts.texts)}, ensure_ascii=False))


def read_texts(unit: EncodeUnit) -> list[str]:
    """The unit's texts from its texts file, checked against the digest it was planned with."""
    data = json.loads(Path(unit.texts_file).read_text(encoding="utf-8"))
    if unit.texts_digest and data.get("digest") != unit.texts_digest:
        raise ValueError(
            f"{unit.texts_file} changed since the plan was made (digest {data.get('digest')} "
            f"!= {unit.texts_digest}); rerun the sweep to plan again."
        )
    return data["texts"][unit.start : unit.stop]


def encode_units(
    texts: TaskTexts, texts_file: Path | str, shard_size: int, **common: Any
) -> list[EncodeUnit]:
    """One unit per `shard_size` texts (the store's shard: what a crash can lose)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 text, got {shard_size}")
    return [
        EncodeUnit(
            task=texts.task,
            prompt_type=texts.prompt_type,
            texts_file=str(texts_file),
            start=start,
            stop=min(start + shard_size, len(texts.texts)),
            texts_digest=texts.digest,
            prompt=texts.prompt,
            **common,
        )
        for start in range(0, len(texts.texts), shard_size)
    ]


def record_requests(task: Any, prompts: dict[str, str] | None, name: str) -> list[TaskTexts]:
    """Run mteb once on `task` with an encoder that records the texts (after prompts) per
    prompt type and answers with zero vectors: the scoring runs later ask for
    exactly these texts. The task's data must be loaded (mteb leaves preloaded data alone)."""
    import mteb
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta

    from .encoder import loader_texts, resolve_prompt

    seen: dict[str | None, dict[str, None]] = {}
    prompt_of: dict[str | None, str] = {}

    class Recorder(AbsEncoder):
        def __init__(self) -> None:
            self.model = None
            self.model_prompts = prompts
            self.mteb_model_meta = ModelMeta.create_empty(
                overwrites=dict(name=name, revision="plan", embed_dim=16)
            )

        def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
                   prompt_type: Any = None, **kwargs: Any) -> np.ndarray:  # fmt: skip
            prompt = resolve_prompt(prompts, task_metadata, prompt_type)
            texts = [prompt + text for text in loader_texts(inputs)]
            kind = prompt_type.value if prompt_type is not None else None
            if prompt_of.setdefault(kind, prompt) != prompt:
                raise ValueError(
                    f"{task_metadata.name} asks for prompt type {kind} with two prompts "
                    f"({prompt_of[kind]!r}, {prompt!r}); the store keeps one per prompt type."
                )
            bucket = seen.setdefault(kind, {})
            for t in texts:
                bucket.setdefault(t, None)
            return _zero_vectors(texts)

    from .sweep import _quiet_scoring

    with _quiet_scoring(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scorers complain about constant vectors
        mteb.evaluate(
            Recorder(),
            task,
            cache=None,
            overwrite_strategy="always",
            show_progress_bar=False,
            raise_error=True,
            encode_kwargs={"batch_size": 512, "show_progress_bar": False},
        )
    return [
        TaskTexts(
            task=task.metadata.name, prompt_type=kind, texts=tuple(bucket), prompt=prompt_of[kind]
        )
        for kind, bucket in seen.items()
    ]


def _zero_vectors(texts: Sequence[str], dim: int = 16) -> np.ndarray:
    """Zero vectors: every scorer (a logistic regression, a search) finishes at once on them."""
    return np.zeros((len(texts), dim), dtype=np.float32)


def count_stored(store: Any, texts: Sequence[str], layers: Sequence[int]) -> int:
    """How many of `texts` the store already holds for every layer."""
    return len(texts) - len(store.missing(list(texts), list(layers)))
