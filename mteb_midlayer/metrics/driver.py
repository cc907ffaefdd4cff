"""The metrics driver: every unsupervised metric for every layer, from the fewest passes.

Per task: sample N texts (`sampling`), run the model once over them, pooling every layer and,
in the same pass, scoring the token-level metrics (prompt entropy, curvature) batch by batch so
token states are never all held at once; then once per augmented view (InfoNCE and DiME use
views 0 and 1, LiDAR all `n_views`). The maths is `functional`; this module only moves tensors
and writes tidy rows to `DIR/metrics/*.parquet` (`pd.read_parquet(DIR / "metrics")` reads all).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..batching import check_batch_limits
from ..frames import METRIC_COLUMNS
from ..layers import check_final_norms, resolve_layers
from ..model import LayerModel, warn_constant_pooling
from ..pooling import check_pooling
from ..results import task_fingerprint
from ..spec import ModelSpec
from ..tempfiles import clean_temp_files, temp_path
from . import functional as F
from .augment import augment_views
from .corpus import Corpus, read_corpus
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
#: One tidy row per (model, revision, dataset, layer, metric, variant): the metrics frame's schema.
ROW_COLUMNS = list(METRIC_COLUMNS)


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
LIDAR_SCATTER_DTYPE = torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock seconds per named phase (device-synchronised), for the cost benchmark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                _sync(timer.device)
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                _sync(timer.device)
                timer.seconds[name] += time.perf_counter() - self.start

        return _Phase()


def encode_texts(
    lm: LayerModel,
    texts: Sequence[str],
    layers: Sequence[int],
    pooling: str,
    *,
    batch_size: int,
    token_metrics: Sequence[str] = (),
    alpha: float = 1.0,
    timer: Timer | None = None,
    desc: str = "Encoding",
    show_progress: bool = False,
    final_norm: str = "last",
    max_tokens_per_batch: int | None = None,
) -> tuple[torch.Tensor, dict[tuple[str, int], Any]]:
    """Pooled states `(n_layers, N, D)` on the device, plus per-text token metrics per layer.

    Token-level metrics are computed batch by batch inside the same forward pass, on the same
    states as the pooled ones (under `final_norm="every"`, the normed states).
    """
    timer = timer or Timer(lm.device)
    pooled = torch.empty((len(layers), len(texts), lm.hidden_size), device=lm.device)
    per_text: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    n = len(texts)
    for layer in layers:
        if "prompt_entropy" in token_metrics:
            nan = torch.full((n,), float("nan"), dtype=torch.float64, device=lm.device)
            per_text[("prompt_entropy", layer)] = {"normalized": nan.clone(), "raw": nan.clone()}
        for name in [m for m in _PER_TEXT if m in token_metrics]:
            nan = torch.full((n,), float("nan"), dtype=torch.float64, device=lm.device)
            per_text[(name, layer)] = {"value": nan}
    batches = lm.iter_batches(
        texts,
        layers,
        pooling,
        batch_size=batch_size,
        token_layers=layers if token_metrics else (),
        show_progress=show_progress,
        desc=desc,
        final_norms=(final_norm,),
        max_tokens_per_batch=max_tokens_per_batch,
    )
    while True:
        with timer("encode"):
            batch = next(batches, None)
        if batch is None:
            break
        index = torch.tensor(batch.indices, device=lm.device)
        for i, layer in enumerate(layers):
            pooled[i, index] = batch.pooled[layer]
        for layer, tokens in batch.tokens.items():
            if "prompt_entropy" in token_metrics:
                with timer("prompt_entropy"), linalg_threads(lm.device):
                    pe = F.prompt_entropy_per_text(tokens, alpha=alpha)
                    slot = per_text[("prompt_entropy", layer)]
                    slot["normalized"][index] = pe.normalized
                    slot["raw"][index] = pe.raw
            for name in [m for m in _PER_TEXT if m in token_metrics]:
                with timer(name):
                    cv = _PER_TEXT[name](tokens)
                    per_text[(name, layer)]["value"][index] = cv.values
    return pooled, per_text


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
                value = F.lidar(views[i], scatter_dtype=LIDAR_SCATTER_DTYPE)
                add(layer, "lidar", f"n_views={views.shape[2]}", value, n_texts)
    return rows


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = temp_path(path)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def layer_metrics(
    model: Any = None,
    *,
    spec: ModelSpec | None = None,
    tasks: Sequence[Any] | None = None,
    benchmark: str | None = None,
    data_dir: Path | str | None = None,
    texts: Path | str | Sequence[str] | None = None,
    output: Path | str = "results",
    n: int = 1000,
    metrics: Sequence[str] | str | None = "all",
    alpha: float = 1.0,
    seed: int = 42,
    n_views: int = 16,
    layers: Sequence[int] | str | None = "all",
    pooling: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    tokenizer: Any = None,
    batch_size: int = 32,
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    raise_error: bool = False,
    executor: Any = None,
    final_norm: Sequence[str] | str = "last",
    max_tokens_per_batch: int | None = None,
) -> pd.DataFrame:
    """Compute the layer metrics of `model` on each task; write and return tidy rows.

    `final_norm`: "last", "every" or both; each setting's rows carry it in `final_norm` (and
    its own file). `max_tokens_per_batch`: batch by padded tokens (changes no value).
    `executor` (an `executors.base.Executor`, e.g. `ProcessExecutor(devices=["cuda:0",
    "cuda:1"])`) runs one metrics unit per task there (the model is loaded from its spec in
    each worker); a `--texts` corpus is computed here.

    `texts`: a corpus file (plain text, one text a line, or JSON Lines with a `text` field) or a
    list of texts, computed instead of the tasks (beside them if `tasks` or `benchmark` is also
    given), sampled like a task and filed as dataset `"<file stem>-<hash of its texts>"`.
    Model options come as a `ModelSpec` or keywords, as for `sweep`. A task whose file already
    exists with the same settings (model files, max length, dtype, task data) is read back, not
    recomputed; an unreadable file is recomputed with a warning. A task that fails is recorded
    in `df.attrs["failures"]` (name -> reason) and the others still run.
    `df.attrs["timings"]` holds seconds per phase (encoding, each metric) of what was computed.
    `executor` (`executors.make_executor("ray" | "submitit", roots=[output])`): one unit per
    task (`plan.MetricsUnit`, run by `executors.base.run_metrics_unit` in a worker that loads the
    model); else all here.
    """
    from ..sweep import select_tasks

    chosen = parse_metrics(metrics)
    if n_views < 2 and VIEW_METRICS & set(chosen):
        raise ValueError("InfoNCE, DiME and LiDAR need n_views >= 2.")
    corpus = read_corpus(texts) if texts is not None else None  # a bad file fails before loading
    final_norms = check_final_norms(final_norm)
    check_batch_limits(batch_size, max_tokens_per_batch)
    lm = LayerModel.coerce(
        model,
        tokenizer,
        spec=spec,
        name=name,
        revision=revision,
        device=device,
        dtype=dtype,
        max_length=max_length,
        trust_remote_code=trust_remote_code,
    )
    pooling = check_pooling(pooling or (spec and spec.pooling) or lm.default_pooling)
    warn_constant_pooling(lm, pooling)
    layer_list = resolve_layers(layers, lm.n_layers)
    if executor is not None:  # a worker elsewhere would resolve a relative path from its own cwd
        output = Path(output).absolute()
        data_dir = Path(data_dir).absolute() if data_dir else None
    failures: dict[str, str] = {}
    # A corpus stands in for a task (`task_texts` reads it); tasks too only if asked for.
    task_objects: list[Any] = [corpus] if corpus is not None else []
    if corpus is None or tasks or benchmark:
        task_objects += select_tasks(tasks, benchmark, data_dir, failures)
    if Path(output).exists() and not Path(output).is_dir():
        raise NotADirectoryError(f"--output {output} is a file; name a folder for the results.")
    out_dir = Path(output) / "metrics"
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_temp_files(out_dir)  # what killed writers left (never a live writer's)
    settings = {
        "model": lm.name,
        "revision": lm.revision,
        "pooling": pooling,
        "n": n,
        "seed": seed,
        "alpha": alpha,
        "n_views": n_views,
        "metrics": chosen,
        "layers": layer_list,
        "max_length": lm.max_length,
        "dtype": str(lm.dtype),
    }
    timer = Timer(lm.device)
    frames = []
    if executor is not None:
        remote = [t for t in task_objects if not isinstance(t, Corpus)]
        task_objects = [t for t in task_objects if isinstance(t, Corpus)]
        frames += _run_units(
            executor, lm, remote, settings, out_dir, chosen, layer_list, pooling, timer, failures,
            n=n, seed=seed, alpha=alpha, n_views=n_views, batch_size=batch_size,
            overwrite=overwrite, raise_error=raise_error, final_norms=tuple(final_norms),
            max_tokens_per_batch=max_tokens_per_batch,
        )  # fmt: skip
    for task in tqdm(task_objects, desc="Metrics", unit="task", disable=not show_progress):
        task_name = _dataset_name(task)
        try:
            parts = [
                _task_metrics(
                    lm, task, settings, out_dir, chosen, layer_list, pooling, timer,
                    n=n, seed=seed, alpha=alpha, n_views=n_views, batch_size=batch_size,
                    overwrite=overwrite, show_progress=show_progress, final_norm=norm,
                    max_tokens_per_batch=max_tokens_per_batch,
                )
                for norm in final_norms
            ]  # fmt: skip
            df = pd.concat(parts, ignore_index=True)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if raise_error:
                raise
            failures[task_name] = f"{type(exc).__name__}: {exc}"
            logger.error("Metrics of task %s failed: %s", task_name, exc)
            continue
        finally:
            if getattr(task, "data_loaded", False) and hasattr(task, "unload_data"):
                task.unload_data()
        frames.append(df)
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROW_COLUMNS)
    result.attrs["timings"] = dict(timer.seconds)
    result.attrs["failures"] = failures
    return result


def _run_units(
    executor: Any,
    lm: LayerModel,
    tasks: Sequence[Any],
    settings: dict[str, Any],
    out_dir: Path,
    chosen: list[str],
    layer_list: list[int],
    pooling: str,
    timer: Timer,
    failures: dict[str, str],
    *,
    raise_error: bool,
    **options: Any,
) -> list[pd.DataFrame]:
    """One `MetricsUnit` per task, run by `executor`; rows in task order, failures recorded."""
    from ..executors.base import run_metrics_unit, seed_model, task_subsets
    from ..plan import MetricsUnit
    from ..sweep import _data_dir, request_spec

    units = [
        MetricsUnit(
            model=request_spec(lm),
            resolved=lm.current_spec().to_dict(),
            task=task.metadata.name,
            data_dir=_data_dir(task),
            hf_subsets=task_subsets(task),
            output=str(out_dir),
            settings=settings,
            metrics=tuple(chosen),
            layers=tuple(layer_list),
            pooling=pooling,
            **options,
        )
        for task in tasks
    ]
    if units:
        seed_model(units[0].model, lm)
    done: dict[str, pd.DataFrame] = {}
    for unit, result in executor.map(run_metrics_unit, units, gpu=True):
        if isinstance(result, BaseException):
            if raise_error:
                raise result
            failures[unit.task] = f"{type(result).__name__}: {result}"
            logger.error("Metrics of task %s failed: %s", unit.task, result)
            continue
        for phase, seconds in result.attrs.get("timings", {}).items():
            timer.seconds[phase] += seconds
        done[unit.task] = result
    return [done[u.task] for u in units if u.task in done]


def _dataset_name(task: Any) -> str:
    """The `dataset` of a task's or a corpus's metric rows."""
    return task.dataset if isinstance(task, Corpus) else task.metadata.name


def _task_metrics(
    lm: LayerModel,
    task: Any,
    settings: dict[str, Any],
    out_dir: Path,
    chosen: list[str],
    layer_list: list[int],
    pooling: str,
    timer: Timer,
    *,
    n: int,
    seed: int,
    alpha: float,
    n_views: int,
    batch_size: int,
    overwrite: bool,
    show_progress: bool,
    final_norm: str = "last",
    max_tokens_per_batch: int | None = None,
) -> pd.DataFrame:
    """One task's rows under one final norm: read back if its file (same settings and data) is
    whole, else computed and written atomically. ("last" is left out of the file's key, so
    files written before the option are still read back.)"""
    task_name = _dataset_name(task)
    data = f"corpus-{task.digest}" if isinstance(task, Corpus) else task_fingerprint(task)
    keyed = {**settings, "data": data}
    if final_norm != "last":
        keyed["final_norm"] = final_norm
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:10]
    safe_model = lm.name.replace("/", "__")
    path = out_dir / f"{safe_model}__{task_name}__{digest}.parquet"
    if path.exists() and not overwrite:
        try:
            old = pd.read_parquet(path)
            return old if "final_norm" in old.columns else old.assign(final_norm=final_norm)
        except Exception as exc:
            logger.warning("Recomputing %s: unreadable (%s).", path, type(exc).__name__)
    texts = sample_texts(task_texts(task), n, seed)
    token_metrics = [m for m in chosen if m in TOKEN_METRICS]
    pooled, per_text = encode_texts(
        lm,
        texts,
        layer_list,
        pooling,
        batch_size=batch_size,
        token_metrics=token_metrics,
        alpha=alpha,
        timer=timer,
        desc=f"{task_name} texts",
        show_progress=show_progress,
        final_norm=final_norm,
        max_tokens_per_batch=max_tokens_per_batch,
    )
    views = None
    if VIEW_METRICS & set(chosen):
        needed = n_views if "lidar" in chosen else 2
        augmented = augment_views(texts, needed, seed=seed)
        views = torch.empty((len(layer_list), len(texts), needed, lm.hidden_size), device=lm.device)
        for v, view_texts in enumerate(augmented):
            views[:, :, v], _ = encode_texts(
                lm,
                view_texts,
                layer_list,
                pooling,
                batch_size=batch_size,
                timer=timer,
                desc=f"{task_name} view {v + 1}/{needed}",
                show_progress=show_progress,
                final_norm=final_norm,
                max_tokens_per_batch=max_tokens_per_batch,
            )
    with linalg_threads(lm.device):
        rows = compute_rows(
            pooled, per_text, views, layer_list, chosen, alpha=alpha, seed=seed, timer=timer
        )
    df = pd.DataFrame(rows)
    df.insert(0, "dataset", task_name)
    df.insert(0, "revision", lm.revision)
    df.insert(0, "model", lm.name)
    df["pooling"] = pooling
    df["alpha"] = alpha
    df["seed"] = seed
    df["final_norm"] = final_norm
    df = df[ROW_COLUMNS]
    _atomic_parquet(df, path)
    return df
