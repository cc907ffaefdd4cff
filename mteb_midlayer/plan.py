"""The sweep as a plan of work units, written down before anything runs.

A sweep is made of two kinds of independent pieces: an `EncodeUnit` puts one shard of a task's
texts (every sweep layer, one forward pass) into the embedding store; a `ScoreUnit` scores one
`(task, slice)` from the store with mteb. A task's score units depend on its encode units.
Units are frozen, picklable and carry only plain data (the model spec as a dict, paths as str),
so any process (a local worker, a Ray task, a Slurm job) can run them; the texts of a task are
written under `<output>/plan/` by the driver and read back by range.

Which texts a task asks for is found by running mteb once on the task with a recording encoder
(`scoring.record_requests`): the texts, prompt types and order are then exactly those of the
scoring runs. `plan_units` writes the whole plan down before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .replay import EmbeddingSource, StoreEncoder
from .results import AtomicResultCache, pending_slices, task_fingerprint, write_atomic
from .scoring import TaskTexts, record_requests
from .spec import prompts_hash
from .store import plan_digest, raise_if_disk_full
from .tasks.selection import task_data_dir, task_subsets

__all__ = [
    "EncodeUnit",
    "MetricsUnit",
    "Plan",
    "RecordedTexts",
    "ScoreUnit",
    "SweepPlan",
    "TaskTexts",
    "encode_units",
    "plan_units",
    "read_texts",
    "record_requests",
    "request_spec",
    "write_texts",
]

logger = logging.getLogger(__name__)

_PLAN_FOLDER = "plan"


@dataclass
class SweepPlan:
    """What a sweep will do, resolved and validated before any work starts."""

    layers: list[int]
    dims: list[int]
    pooling: str
    normalize: bool
    tasks: list[Any]
    failures: dict[str, str] = field(default_factory=dict)
    final_norms: tuple[str, ...] = ("last",)
    #: fused layer sets (`fusion.py`), each scored at every dim and final norm
    fusions: list[tuple[int, ...]] = field(default_factory=list)
    #: every pooling of the pass (`pooling` is the first); each is its own slice
    poolings: tuple[str, ...] = ()

    @property
    def slices(self) -> list[tuple[int, int, str]]:
        """Every `(layer, dim, final_norm)` to score."""
        return [
            (layer, dim, norm)
            for norm in self.final_norms
            for layer in self.layers
            for dim in self.dims
        ]

    @property
    def fused_slices(self) -> list[tuple[tuple[int, ...], int, str]]:
        """Every `(fusion, dim, final_norm)` to score."""
        return [
            (fused, dim, norm)
            for norm in self.final_norms
            for fused in self.fusions
            for dim in self.dims
        ]

    @property
    def store_layers(self) -> list[int]:
        """The layers the store holds: the swept ones and every fused one."""
        return sorted({*self.layers, *(x for fused in self.fusions for x in fused)})


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

    `settings` is the driver's record of the run: it names the task's parquet file and says
    what is measured (`metrics.compute.task_metrics`); the other fields say how the passes run.
    """

    model: dict[str, Any]
    resolved: dict[str, Any]
    task: str
    data_dir: str | None
    output: str
    settings: dict[str, Any]
    batch_size: int = 32
    overwrite: bool = False
    final_norms: tuple[str, ...] = ("last",)
    #: the driver's task subsets (e.g. English only), so a worker rebuilds the same task
    hf_subsets: tuple[str, ...] | None = None
    max_tokens_per_batch: int | None = None

    @property
    def key(self) -> str:
        return f"metrics-{self.task}"


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


def _texts_path(output: Path | str, store_digest: str, task: str, prompt_type: str | None) -> Path:
    """Where the driver writes a task's texts for one prompt type (per store configuration)."""
    return Path(output) / _PLAN_FOLDER / store_digest / task / f"{prompt_type or 'none'}.json"


def write_texts(path: Path, texts: TaskTexts) -> None:
    """Write once: an existing file with the same texts is left alone (a second driver)."""
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


def request_spec(lm: Any) -> dict[str, Any]:
    """The spec a fresh process loads `lm` (a `LayerModel`) from: its resolved spec, with a local
    folder's fingerprint taken off the revision (loading adds it again) and the device left to it."""
    spec = lm.current_spec()
    revision = spec.revision
    if revision and revision.startswith("local-"):
        revision = None
    elif revision and "-local-" in revision:
        revision = revision.split("-local-")[0]
    elif revision and revision.startswith("weights-"):
        revision = None
    return spec.replace(revision=revision, device=None).to_dict()


def _slice_encoders(plan: SweepPlan, source: EmbeddingSource) -> list[StoreEncoder]:
    """One store-backed encoder per slice of the plan: every pooling, layer, dim and final
    norm, then every fusion."""
    return [
        StoreEncoder(
            source, layer=layer, dim=dim, normalize=plan.normalize, final_norm=norm, pooling=mode
        )
        for mode in source.poolings
        for layer, dim, norm in plan.slices
    ] + [
        StoreEncoder(
            source,
            layer=-1,
            dim=dim,
            normalize=plan.normalize,
            final_norm=norm,
            fuse=f,
            pooling=mode,
        )
        for mode in source.poolings
        for f, dim, norm in plan.fused_slices
    ]


def plan_units(
    plan: SweepPlan,
    source: EmbeddingSource,
    output: Path,
    *,
    dry_run: bool = False,
    raise_error: bool = False,
    search_backend: str = "torch",
    recorded: RecordedTexts | None = None,
) -> Plan:
    """Write down every unit of the sweep before anything runs.

    Per task: the slices whose result does not stand become score units; if any, mteb is run
    once with a recording encoder to learn the task's texts (`scoring.record_requests`), which
    are written under `<output>/plan/` (not in a dry run) and cut into encode units of one
    store shard each. A task that cannot be planned is recorded in `plan.failures`.
    With `recorded` (a checkpoint series), a task recorded before is not recorded again and
    its texts file is the one written then.
    """
    absent = not output.exists()
    cache = AtomicResultCache(output)  # mteb's cache makes its folder
    if dry_run and absent:
        output.rmdir()
    encoders = _slice_encoders(plan, source)
    # what every unit names its model by: the spec a worker loads, the one the store is keyed by
    model = {"model": request_spec(source.lm), "resolved": source.lm.current_spec().to_dict()}
    units = Plan(failures=plan.failures)
    for task in plan.tasks:
        name = task.metadata.name
        try:
            pending = pending_slices(
                task, encoders, cache, search_backend, remove_stale=not dry_run
            )
            units.done[name] = len(encoders) - len(pending)
            if not pending:
                continue
            memo_key, requests = _task_requests(task, source.lm, recorded)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise_if_disk_full(exc, output)
            if raise_error:
                raise
            plan.failures[name] = f"{type(exc).__name__}: {exc}"
            logger.error("Task %s cannot be planned: %s", name, exc)
            continue
        units.texts[name] = requests
        depends = []
        for texts in requests:
            new = _encode_units_of(texts, task, source, output, model, memo_key, recorded, dry_run)
            units.encode.extend(new)
            depends.extend(u.key for u in new)
        units.score.extend(
            _score_unit(enc, task, source, output, model, search_backend, tuple(depends))
            for enc in pending
        )
    return units


def _task_requests(
    task: Any, lm: Any, recorded: RecordedTexts | None
) -> tuple[tuple[str, str, str], list[TaskTexts]]:
    """The texts `task` asks for (recorded once per series), with the key they are kept under."""
    name = task.metadata.name
    memo_key = (name, task_fingerprint(task), prompts_hash(lm.prompts))
    if recorded is not None and memo_key in recorded.entries:
        return memo_key, recorded.entries[memo_key]
    loaded_here = not task.data_loaded
    if loaded_here:
        task.load_data()
    try:
        requests = record_requests(task, lm.prompts, lm.name)
    finally:
        if loaded_here:
            task.unload_data()
    if recorded is not None:
        recorded.entries[memo_key] = requests
        recorded.n_recorded += 1
    return memo_key, requests


def _encode_units_of(
    texts: TaskTexts,
    task: Any,
    source: EmbeddingSource,
    output: Path,
    model: dict[str, Any],
    memo_key: tuple[str, str, str],
    recorded: RecordedTexts | None,
    dry_run: bool,
) -> list[EncodeUnit]:
    """The encode units of one prompt type's texts; the texts file written first (the store's
    configuration before it), unless in a dry run."""
    # One name for several poolings ("mean,last"); a single pooling's is unchanged.
    pass_pooling = ",".join(source.poolings)
    path = _texts_path(output, plan_digest(model["resolved"], pass_pooling), task.metadata.name,
                      texts.prompt_type)  # fmt: skip
    if recorded is not None:  # a series: every checkpoint reads the first one's file
        path = recorded.files.setdefault((memo_key, texts.prompt_type), path)
    if not dry_run:
        try:
            for mode in source.poolings:  # the store's config first, then the plan
                for norm in source.final_norms:
                    source.store(texts.prompt_type, norm, mode)
            write_texts(path, texts)
        except OSError as exc:
            raise_if_disk_full(exc, path)  # stops the run, as in the store
            raise
    return encode_units(
        texts,
        path,
        source.shard_size,
        **model,
        data_dir=task_data_dir(task),
        store_root=str(source.root),
        layers=tuple(source.layers),
        pooling=pass_pooling,
        batch_size=source.batch_size,
        final_norms=tuple(source.final_norms),
        max_tokens_per_batch=source.max_tokens_per_batch,
    )


def _score_unit(
    enc: StoreEncoder,
    task: Any,
    source: EmbeddingSource,
    output: Path,
    model: dict[str, Any],
    search_backend: str,
    depends: tuple[str, ...],
) -> ScoreUnit:
    """The score unit of one pending slice of `task`."""
    lm = source.lm
    return ScoreUnit(
        **model,
        n_parameters=lm.n_parameters,
        hidden_size=lm.hidden_size,
        n_layers=lm.n_layers,
        task=task.metadata.name,
        data_dir=task_data_dir(task),
        hf_subsets=task_subsets(task),
        store_root=str(source.root),
        output=str(output),
        layer=enc.layer,
        dim=enc.dim,
        normalize=enc.normalize,
        pooling=enc.pooling,
        layers=tuple(source.layers),
        batch_size=source.batch_size,
        final_norm=enc.final_norm,
        final_norms=tuple(source.final_norms),
        search_backend=search_backend,
        depends_on=depends,
        fuse=enc.fuse,
    )
