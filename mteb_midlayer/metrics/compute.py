"""Every unsupervised metric for every layer of one task, from the fewest passes.

Per task: sample N texts (`sampling`), run the model once over them, pooling every layer and,
in the same pass, scoring the token-level metrics (prompt entropy, curvature) inside each layer's
capture so token states never outlive it; then once per augmented view (InfoNCE and DiME use
views 0 and 1, LiDAR all `n_views`). Each pass serves every requested `final_norm` and
`pooling` at once. The maths is `functional`; this module only moves tensors and writes tidy
rows to `DIR/metrics/*.parquet` (`pd.read_parquet(DIR / "metrics")` reads all), one file per
task, pooling and final norm. The driver that runs it over tasks is `metrics.run`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..frames import FUSE, METRIC_COLUMNS, METRIC_RUN_COLUMNS, NO_FUSION
from ..fusion import Fusion, fuse_stacked, fusion_label, parse_label
from ..layers import check_final_norms
from ..model import LayerModel, TokenScorer
from ..pooling import check_poolings
from ..results import task_fingerprint
from ..tempfiles import atomic_write
from . import functional as F
from .augment import augment_views
from .corpus import Corpus
from .eigen import linalg_threads
from .sampling import sample_texts, task_texts

logger = logging.getLogger(__name__)

METRICS = (
    "dataset_entropy",
    "effective_rank",
    "prompt_entropy",
    "curvature",
    "curvature_abs",
    "infonce",
    "lidar",
    "dime",
    "intrinsic_dimension",
)
TOKEN_METRICS = frozenset({"prompt_entropy", "curvature", "curvature_abs"})
#: Token-level metrics with one value per text, scored batch by batch in the forward pass.
_PER_TEXT = {"curvature": F.curvature_per_text, "curvature_abs": F.curvature_abs_per_text}
VIEW_METRICS = frozenset({"infonce", "lidar", "dime"})
#: Metrics of pooled vectors only (a fused slice has these: it has pooled vectors, no tokens).
_POOLED_METRICS = frozenset(METRICS) - TOKEN_METRICS
#: One tidy row per (model, revision, dataset, layer, metric, variant): the metrics frame's schema,
#: then the run that computed it (`frames.METRIC_RUN_COLUMNS`).
ROW_COLUMNS = [*METRIC_COLUMNS, *METRIC_RUN_COLUMNS]
#: Settings that do not change a value: runs that differ only here are one run (their rows may
#: be read together, e.g. `--layers 0-3` then `--layers 4-6`).
_NOT_IN_RUN = frozenset({"metrics", "layers", "fuse"})


def parse_metrics(metrics: Sequence[str] | str | None) -> list[str]:
    """`"all"`/None -> every metric; else the named ones, checked."""
    if metrics is None or metrics == "all":
        return list(METRICS)
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"Unknown metrics {unknown}; choose from {', '.join(METRICS)} or 'all'.")
    return [m for m in METRICS if m in metrics]


#: Precision of LiDAR's scatter over N * V rows, its cost: float32 moves LiDAR by <= 3e-7
#: relative, even on collapsed views (see `functional.lidar`). DiME stays float64 throughout.
_LIDAR_SCATTER_DTYPE = torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock seconds per named phase (device-synchronised), for the cost benchmark.

    A phase opened inside another pauses it: the token metrics, scored inside the forward pass,
    count as themselves, not as encoding.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: list[list[Any]] = []  # [name, start of its running stretch]

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        _sync(self.device)
        now = time.perf_counter()
        if self._open:
            outer = self._open[-1]
            self.seconds[outer[0]] += now - outer[1]
        self._open.append([name, now])
        try:
            yield
        finally:
            _sync(self.device)
            now = time.perf_counter()
            _, start = self._open.pop()
            self.seconds[name] += now - start
            if self._open:
                self._open[-1][1] = now


@dataclass
class Encoded:
    """One final norm's share of a pass: pooled states and per-text token metrics per layer."""

    #: `(n_layers, N, D)` on the device.
    pooled: torch.Tensor
    #: `{(metric, layer): {variant: (N,) float64}}`, NaN where a text has no value.
    per_text: dict[tuple[str, int], dict[str, torch.Tensor]]


def _empty_per_text(
    token_metrics: Sequence[str], layers: Sequence[int], n: int, device: torch.device
) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    nan = torch.full((n,), float("nan"), dtype=torch.float64, device=device)
    slots: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for layer in layers:
        if "prompt_entropy" in token_metrics:
            slots[("prompt_entropy", layer)] = {"normalized": nan.clone(), "raw": nan.clone()}
        for name in [m for m in _PER_TEXT if m in token_metrics]:
            slots[(name, layer)] = {"value": nan.clone()}
    return slots


def _token_scorer(
    token_metrics: Sequence[str], alpha: float, timer: Timer, device: torch.device
) -> TokenScorer:
    """The per-text token metrics of one batch's token states, `{metric: {variant: (B,)}}`.

    Run by `LayerModel.iter_batches` inside each layer's capture, once per final norm, so a
    layer's token states (normed ones under `every`) are scored and dropped before the next.
    """

    def score(_layer: int, _setting: str, tokens: list[torch.Tensor]) -> dict[str, Any]:
        out: dict[str, dict[str, torch.Tensor]] = {}
        if "prompt_entropy" in token_metrics:
            with timer("prompt_entropy"), linalg_threads(device):
                pe = F.prompt_entropy_per_text(tokens, alpha=alpha)
            out["prompt_entropy"] = {"normalized": pe.normalized, "raw": pe.raw}
        for name in [m for m in _PER_TEXT if m in token_metrics]:
            with timer(name):
                out[name] = {"value": _PER_TEXT[name](tokens).values}
        return out

    return score


def encode_texts(
    lm: LayerModel,
    texts: Sequence[str],
    layers: Sequence[int],
    pooling: str,
    **options: Any,
) -> dict[str, Encoded]:
    """`{final_norm: Encoded}` of one pooling (`encode_pooled` with its options)."""
    (mode,) = check_poolings(pooling)
    encoded = encode_pooled(lm, texts, layers, (mode,), **options)
    return {norm: value for (_mode, norm), value in encoded.items()}


def encode_pooled(
    lm: LayerModel,
    texts: Sequence[str],
    layers: Sequence[int],
    poolings: Sequence[str] | str,
    *,
    batch_size: int,
    token_metrics: Sequence[str] = (),
    alpha: float = 1.0,
    timer: Timer | None = None,
    desc: str = "Encoding",
    show_progress: bool = False,
    final_norms: Sequence[str] | str = ("last",),
    max_tokens_per_batch: int | None = None,
) -> dict[tuple[str, str], Encoded]:
    """`{(pooling, final_norm): Encoded}` for every pooling and setting, from one pass.

    Token-level metrics are scored inside each layer's capture (`_token_scorer`), on the same
    states as the pooled ones (under `final_norm="every"`, the normed states; the tokens every
    pooling sees), so no token states are kept: the device holds one `(n_layers, N, D)` pooled
    tensor per (pooling, setting). The per-text token metrics of a setting are computed once
    and shared by its poolings (they see the same tokens).
    """
    timer = timer or Timer(lm.device)
    norms = check_final_norms(final_norms)
    modes = check_poolings(poolings)
    n = len(texts)
    per_text = {norm: _empty_per_text(token_metrics, layers, n, lm.device) for norm in norms}
    out = {
        (mode, norm): Encoded(
            pooled=torch.empty((len(layers), n, lm.hidden_size), device=lm.device),
            per_text=per_text[norm],
        )
        for mode in modes
        for norm in norms
    }
    scorer = _token_scorer(token_metrics, alpha, timer, lm.device) if token_metrics else None
    batches = lm.iter_batches(
        texts,
        layers,
        modes,
        batch_size=batch_size,
        token_layers=layers if token_metrics else (),
        show_progress=show_progress,
        desc=desc,
        final_norms=norms,
        max_tokens_per_batch=max_tokens_per_batch,
        score_tokens=scorer,
    )
    while True:
        with timer("encode"):
            batch = next(batches, None)
        if batch is None:
            break
        index = torch.tensor(batch.indices, device=lm.device)
        for (mode, norm), encoded in out.items():
            for i, layer in enumerate(layers):
                encoded.pooled[i, index] = batch.by_pooling[mode][norm][layer]
        for (layer, norm), scores in batch.token_scores.items():
            for name, variants in scores.items():
                for variant, values in variants.items():
                    per_text[norm][(name, layer)][variant][index] = values
    return out


def _mean_valid(values: torch.Tensor) -> tuple[float, int]:
    valid = ~torch.isnan(values)
    n = int(valid.sum())
    return (float(values[valid].mean()) if n else float("nan")), n


def compute_rows(
    pooled: torch.Tensor,
    per_text: dict[tuple[str, int], dict[str, torch.Tensor]],
    views: torch.Tensor | None,
    layers: Sequence[int],
    metrics: Sequence[str],
    *,
    alpha: float = 1.0,
    n_perms: int = 10,
    seed: int = 42,
    timer: Timer | None = None,
) -> list[dict[str, Any]]:
    """Every metric of every layer as `{layer, metric, variant, value, n}` rows.

    `pooled`: `(n_layers, N, D)`; `views`: `(n_layers, N, V, D)` or None.
    """
    timer = timer or Timer(pooled.device)
    rows: list[dict[str, Any]] = []

    def add(layer: int, metric: str, variant: str, value: Any, n: int) -> None:
        rows.append(
            {"layer": layer, "metric": metric, "variant": variant, "value": float(value), "n": n}
        )

    n_texts = pooled.shape[1]
    for i, layer in enumerate(layers):
        x = pooled[i]
        if "dataset_entropy" in metrics:
            with timer("dataset_entropy"):
                add(layer, "dataset_entropy", "normalized", F.dataset_entropy(x, alpha), n_texts)
                add(layer, "dataset_entropy", "raw", F.matrix_entropy(x, alpha, False), n_texts)
        if "effective_rank" in metrics:
            with timer("effective_rank"):
                add(layer, "effective_rank", "value", F.effective_rank(x), n_texts)
        if "intrinsic_dimension" in metrics:
            with timer("intrinsic_dimension"):
                add(layer, "intrinsic_dimension", "twonn", F.intrinsic_dimension(x), n_texts)
        if "prompt_entropy" in metrics:
            slot = per_text[("prompt_entropy", layer)]
            for variant in ("normalized", "raw"):
                value, n = _mean_valid(slot[variant])
                add(layer, "prompt_entropy", variant, value, n)
        for name in ("curvature", "curvature_abs"):
            if name in metrics:
                value, n = _mean_valid(per_text[(name, layer)]["value"])
                add(layer, name, "radians", value, n)
        if views is None:
            continue
        a, b = views[i, :, 0], views[i, :, 1]
        if "infonce" in metrics:
            with timer("infonce"):
                loss = F.infonce(a, b)
                add(layer, "infonce", "loss", loss, n_texts)
                add(layer, "infonce", "mi_bound", F.infonce_mi_bound(loss, n_texts), n_texts)
        if "dime" in metrics:
            with timer("dime"):
                gen = torch.Generator(device=a.device).manual_seed(seed)
                add(layer, "dime", "value", F.dime(a, b, alpha, n_perms, gen), n_texts)
        if "lidar" in metrics:
            with timer("lidar"):
                value = F.lidar(views[i], scatter_dtype=_LIDAR_SCATTER_DTYPE)
                add(layer, "lidar", f"n_views={views.shape[2]}", value, n_texts)
    return rows


def _compute_fused_rows(
    pooled: torch.Tensor,
    views: torch.Tensor | None,
    layers: Sequence[int],
    fusions: Sequence[Fusion],
    metrics: Sequence[str],
    **options: Any,
) -> list[dict[str, Any]]:
    """The pooled-vector metrics of each fused slice, as `compute_rows` rows plus `fuse` (the
    fusion's label; `layer` is its deepest layer, what it costs).

    A fusion's vectors are the equal-weight mean of its layers' pooled vectors (and of each
    augmented view's), exactly what `sweep --fuse` scores; token-level metrics are not defined
    on a fusion and are left out.
    """
    chosen = [m for m in metrics if m in _POOLED_METRICS]
    rows: list[dict[str, Any]] = []
    for fusion in fusions if chosen else ():
        x = fuse_stacked(pooled, layers, fusion)[None]
        v = fuse_stacked(views, layers, fusion)[None] if views is not None else None
        for row in compute_rows(x, {}, v, [fusion[-1]], chosen, **options):
            rows.append({**row, FUSE: fusion_label(fusion)})
    return rows


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda fh: df.to_parquet(fh, index=False))


def dataset_name(task: Any) -> str:
    """The `dataset` of a task's or a corpus's metric rows."""
    return task.dataset if isinstance(task, Corpus) else task.metadata.name


def task_metrics(
    lm: LayerModel,
    task: Any,
    settings: dict[str, Any],
    out_dir: Path,
    timer: Timer,
    *,
    batch_size: int,
    overwrite: bool,
    show_progress: bool,
    final_norms: Sequence[str] | str = ("last",),
    max_tokens_per_batch: int | None = None,
) -> pd.DataFrame:
    """One task's rows under each pooling and final norm, in the order given.

    `settings` is the run's record (`metrics.run.layer_metrics` writes it): the model, its
    revision, max length and dtype, and what is measured (`pooling`, one mode or several
    comma-separated; `n` texts sampled with `seed`; `alpha`; `n_views`; `metrics`; `layers`).

    Each (pooling, setting) has its own file (named by the settings with that pooling, task
    data and final norm; "last" is left out of the key, so files written before the option are
    still read back). A whole file is read back; the missing ones are computed together, one
    pass per text and per view (`_compute_settings`), and each written atomically.
    """
    norms = check_final_norms(final_norms)
    modes = check_poolings(settings["pooling"])
    pairs = [(mode, norm) for mode in modes for norm in norms]
    task_name = dataset_name(task)
    data = f"corpus-{task.digest}" if isinstance(task, Corpus) else task_fingerprint(task)
    keyed = {**settings, "data": data}
    paths = {
        (mode, norm): _metrics_path(out_dir, lm.name, task_name, {**keyed, "pooling": mode}, norm)
        for mode, norm in pairs
    }
    parts: dict[tuple[str, str], pd.DataFrame] = {}
    if not overwrite:
        done = {
            pair: _read_back(paths[pair], pair[1], {**keyed, "pooling": pair[0]}) for pair in pairs
        }
        parts = {pair: df for pair, df in done.items() if df is not None}
    missing = [pair for pair in pairs if pair not in parts]
    if missing:
        texts = sample_texts(task_texts(task), settings["n"], settings["seed"])
        rows = _compute_settings(
            lm, texts, settings, timer, task_name=task_name, batch_size=batch_size,
            show_progress=show_progress,
            final_norms=tuple(dict.fromkeys(norm for _, norm in missing)),
            poolings=tuple(dict.fromkeys(mode for mode, _ in missing)),
            max_tokens_per_batch=max_tokens_per_batch,
        )  # fmt: skip
        alpha, seed = settings["alpha"], settings["seed"]
        for mode, norm in missing:
            df = _rows_frame(rows[mode, norm], lm, task_name, mode, alpha, seed, norm)
            df = _with_run_columns(df, {**keyed, "pooling": mode}, norm, _now())
            _atomic_parquet(df, paths[mode, norm])
            parts[mode, norm] = df
    return pd.concat([parts[pair] for pair in pairs], ignore_index=True)


def _metrics_path(
    out_dir: Path, model: str, task_name: str, keyed: dict[str, Any], final_norm: str
) -> Path:
    """The file of one task's rows under one final norm."""
    if final_norm != "last":
        keyed = {**keyed, "final_norm": final_norm}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:10]
    return out_dir / f"{model.replace('/', '__')}__{task_name}__{digest}.parquet"


def run_identity(keyed: dict[str, Any], final_norm: str) -> str:
    """A metric run's identity: a hash of every setting that changes a value (model files,
    pooling, sample size, seed, alpha, views, max length, dtype, task data, final norm).

    Readers never mix two identities' rows of one metric on one dataset (`frames.metrics_frame`
    keeps the newest run).
    """
    kept = {k: v for k, v in keyed.items() if k not in _NOT_IN_RUN}
    kept["final_norm"] = final_norm
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _with_run_columns(
    df: pd.DataFrame, keyed: dict[str, Any], final_norm: str, run_at: str
) -> pd.DataFrame:
    """`df` with the run that computed it (`frames.METRIC_RUN_COLUMNS`)."""
    df = df.copy()
    df["run"] = run_identity(keyed, final_norm)
    df["run_at"] = run_at
    df["sample_size"] = int(keyed["n"])
    df["n_views"] = int(keyed["n_views"])
    df["max_length"] = keyed.get("max_length")
    df["dtype"] = str(keyed.get("dtype"))
    df["data"] = str(keyed["data"])
    return df[[*ROW_COLUMNS, *([FUSE] if FUSE in df.columns else [])]]


def _read_back(path: Path, final_norm: str, keyed: dict[str, Any]) -> pd.DataFrame | None:
    """A finished file's rows, or None. Older files get their `final_norm` and run columns in
    memory (the file's name is the hash of `keyed`, so its run is this one, dated by mtime)."""
    if not path.exists():
        return None
    try:
        old = pd.read_parquet(path)
    except Exception as exc:
        logger.warning("Recomputing %s: unreadable (%s).", path, type(exc).__name__)
        return None
    if "final_norm" not in old.columns:
        old = old.assign(final_norm=final_norm)
    if "run" not in old.columns:
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        old = _with_run_columns(old, keyed, final_norm, mtime.isoformat(timespec="microseconds"))
    return old


def _compute_settings(
    lm: LayerModel,
    texts: list[str],
    settings: dict[str, Any],
    timer: Timer,
    *,
    task_name: str,
    batch_size: int,
    show_progress: bool,
    final_norms: tuple[str, ...],
    max_tokens_per_batch: int | None,
    poolings: tuple[str, ...],
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """`{(pooling, final_norm): metric rows}` for every pooling of `poolings` and setting
    (the other options from the run's `settings`, as in `task_metrics`), from one pass over the texts and one per augmented view: the
    network runs as often as for a single pooling and setting.

    Peak memory: token states are scored inside each layer's capture and dropped (at most one
    layer's, of one batch, under one setting, besides the forward pass's own activations); what
    is held per (pooling, setting) is the pooled `(n_layers, N, D)` and, for the view metrics,
    the views `(n_layers, N, V, D)` (V = `n_views` with LiDAR, else 2), float32 on the device.
    So k poolings x 2 settings hold 2k times one's pooled states and views, and nothing grows
    with text length; where that does not fit, run them one after the other (a later run reads
    the earlier files back and computes only its own).
    """
    chosen, asked = list(settings["metrics"]), list(settings["layers"])
    seed, alpha, n_views = settings["seed"], settings["alpha"], settings["n_views"]
    fusions = [parse_label(label) for label in settings.get("fuse", ())]
    # a fusion's layers are encoded too (its vectors are their mean); rows: the asked layers
    layer_list = sorted({*asked, *(x for f in fusions for x in f)}) if fusions else asked
    modes = check_poolings(poolings)
    pairs = [(mode, norm) for mode in modes for norm in final_norms]
    token_metrics = [m for m in chosen if m in TOKEN_METRICS]
    encoded = encode_pooled(
        lm, texts, layer_list, modes, batch_size=batch_size, token_metrics=token_metrics,
        alpha=alpha, timer=timer, desc=f"{task_name} texts", show_progress=show_progress,
        final_norms=final_norms, max_tokens_per_batch=max_tokens_per_batch,
    )  # fmt: skip
    views: dict[tuple[str, str], torch.Tensor | None] = dict.fromkeys(pairs)
    if VIEW_METRICS & set(chosen):
        needed = n_views if "lidar" in chosen else 2
        shape = (len(layer_list), len(texts), needed, lm.hidden_size)
        views = {pair: torch.empty(shape, device=lm.device) for pair in pairs}
        for v, view_texts in enumerate(augment_views(texts, needed, seed=seed)):
            view = encode_pooled(
                lm, view_texts, layer_list, modes, batch_size=batch_size, timer=timer,
                desc=f"{task_name} view {v + 1}/{needed}", show_progress=show_progress,
                final_norms=final_norms, max_tokens_per_batch=max_tokens_per_batch,
            )  # fmt: skip
            for pair in pairs:
                views[pair][:, :, v] = view[pair].pooled
    options = dict(alpha=alpha, seed=seed, timer=timer)
    with linalg_threads(lm.device):
        return {
            pair: _pair_rows(
                encoded[pair], views[pair], layer_list, asked, fusions, chosen, options
            )
            for pair in pairs
        }


def _pair_rows(
    encoded: Encoded,
    views: torch.Tensor | None,
    layer_list: list[int],
    asked: list[int],
    fusions: list[Fusion],
    chosen: list[str],
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """One (pooling, setting)'s rows: the asked layers', then each fusion's."""
    pooled, view = encoded.pooled, views
    if fusions:  # the pass also encoded the fusions' layers: rows for the asked ones
        own = [layer_list.index(layer) for layer in asked]
        pooled, view = pooled[own], (None if view is None else view[own])
    rows = compute_rows(pooled, encoded.per_text, view, asked, chosen, **options)
    return rows + _compute_fused_rows(encoded.pooled, views, layer_list, fusions, chosen, **options)


def _rows_frame(
    rows: list[dict[str, Any]],
    lm: LayerModel,
    task_name: str,
    pooling: str,
    alpha: float,
    seed: int,
    final_norm: str,
) -> pd.DataFrame:
    """Metric rows as the metrics frame's tidy schema (`METRIC_COLUMNS`; the run's columns
    follow in `_with_run_columns`)."""
    df = pd.DataFrame(rows)
    df.insert(0, "dataset", task_name)
    df.insert(0, "revision", lm.revision)
    df.insert(0, "model", lm.name)
    df["pooling"] = pooling
    df["alpha"] = alpha
    df["seed"] = seed
    df["final_norm"] = final_norm
    if FUSE in df.columns:  # a run with fused slices: "" on the layers' rows
        return df[[*METRIC_COLUMNS, FUSE]].fillna({FUSE: NO_FUSION})
    return df[METRIC_COLUMNS]
