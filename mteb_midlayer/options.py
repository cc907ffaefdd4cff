"""One options object per concern, so no entry point lists an option by hand.

The model is a `spec.ModelSpec`. `PassOptions`: what one pass computes (layers, dims, poolings,
final norms, fusions, batching). `RunOptions`: how the work runs (jobs, devices, executor, ...).
`MetricOptions`: what `layer_metrics` measures. `sweep` and `layer_metrics` take these objects,
and also each option as a keyword (`sweep("minilm", layers=[0, 6], jobs=2)`):
`route_options` sends every keyword to the object that has a field of that name, in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .spec import ModelSpec

__all__ = [
    "MODEL_KEYWORDS",
    "MetricOptions",
    "PassOptions",
    "RunOptions",
    "option_names",
    "route_options",
    "with_options",
]


@dataclass(frozen=True)
class PassOptions:
    """What one forward pass computes: every slice of a configuration comes from it.

    `layers`: "all", a range ("0-6") or a list. `dims`: widths to truncate to (None = full).
    `pooling` and `normalize`: None = the model's own (a sentence-transformers model's Pooling
    and Normalize modules), so the last layer scores exactly as the published model; `pooling`
    may name several modes ("mean,weightedmean,last" or a list): each is its own slice and
    store, exactly as its single-pooling run files it, all pooled in one pass per text.
    `final_norm`: "last", "every" or both ("last,every"): each is its own slice, from the same
    pass. `fuse`: fused layer sets scored too, from the same store (`fusion.parse_fusions`:
    ``"0+6,4-6"``, ``"windows:2"``, ``"first-last"``). `batch_size`, `max_tokens_per_batch`
    (a budget of padded tokens): batching, no effect on any result. `shard_size`: texts per
    store shard (what a crash can lose). `search_backend`: how retrieval and reranking tasks
    search (auto: faiss when installed; scores move at rounding level only), recorded in each
    result's run identity.
    """

    layers: Sequence[int] | str | None = "all"
    dims: Sequence[int] | str | None = None
    pooling: Sequence[str] | str | None = None
    normalize: bool | None = None
    final_norm: Sequence[str] | str = "last"
    fuse: str | Sequence[Any] | None = None
    batch_size: int = 32
    max_tokens_per_batch: int | None = None
    shard_size: int | None = None
    search_backend: str = "auto"


@dataclass(frozen=True)
class RunOptions:
    """How the work runs. `jobs` > 1: a sweep scores the slices of a task in that many worker
    processes while this process encodes the next task; `devices` (``"cuda:0,cuda:1"``):
    encode in one worker process per device; `executor` (`executors.make_executor("ray",
    roots=[output])`): an engine (Ray, Slurm) runs every unit instead, `jobs` and `devices` are
    then unused; `dry_run`: plan only; `raise_error`: a failing task stops the run instead of
    being recorded in the failures."""

    jobs: int = 1
    devices: Sequence[str] | str | None = None
    executor: Any = None
    dry_run: bool = False
    show_progress: bool = True
    raise_error: bool = False


@dataclass(frozen=True)
class MetricOptions:
    """What `layer_metrics` measures: which `metrics` ("all" or names), on `n` sampled texts
    (`seed`), Rényi `alpha`, `n_views` augmented views; `overwrite`: recompute existing files."""

    metrics: Sequence[str] | str | None = "all"
    n: int = 1000
    seed: int = 42
    alpha: float = 1.0
    n_views: int = 16
    overwrite: bool = False


#: The model options an entry point takes as keywords (the rest of `ModelSpec` comes as a spec:
#: `source` is the `model` argument, `pooling` belongs to the pass).
MODEL_KEYWORDS = frozenset(f.name for f in dataclasses.fields(ModelSpec)) - {"source", "pooling"}

#: Where a keyword goes, first match first (`pooling` is the pass's, not the spec's).
_TARGETS: tuple[tuple[str, type], ...] = (
    ("passes", PassOptions),
    ("run", RunOptions),
    ("measure", MetricOptions),
    ("model", ModelSpec),
)


def option_names(cls: type) -> frozenset[str]:
    """The keywords an options class takes (a `ModelSpec`'s: `MODEL_KEYWORDS`)."""
    names = frozenset(f.name for f in dataclasses.fields(cls))
    return names & MODEL_KEYWORDS if cls is ModelSpec else names


def route_options(
    caller: str, options: Mapping[str, Any], *, unused: Collection[str] = ()
) -> dict[str, dict[str, Any]]:
    """`options` split by the object whose field each names: `{"passes": ..., "run": ...,
    "measure": ..., "model": ...}`. A keyword no object has, or one in `unused` (an option
    `caller` does not read), is a `TypeError` naming it."""
    out: dict[str, dict[str, Any]] = {key: {} for key, _ in _TARGETS}
    for name, value in options.items():
        target = next((key for key, cls in _TARGETS if name in option_names(cls)), None)
        if target is None or name in unused:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
        out[target][name] = value
    return out


def with_options(base: Any, cls: type, changes: Mapping[str, Any]) -> Any:
    """`base` (an options object, or None for the defaults) with `changes` applied."""
    return dataclasses.replace(base if base is not None else cls(), **changes)
