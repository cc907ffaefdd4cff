"""The two tidy frames everything after scoring reads: task scores and layer metrics.

Data flows one way: mteb result files and metric parquet rows -> these frames -> `select/`,
`leaderboard/` and `table`. This module owns both schemas (column constants plus a check) and
the per-layer aggregation of task scores; it computes nothing from a model.

- scores: one row per (configuration, layer, dim, task) with the task's main score (English
  subsets per TASKS.md), read from mteb's own result files.
- metrics: one row per (model, revision, dataset, layer, metric, variant) from
  `OUTPUT/metrics/*.parquet`, as the metrics driver writes them.

One rule for a layer that lacks a task (`task_average`): its average is missing (NaN), never
an average over fewer tasks, and the layer is named (`missing` columns, `missing_notes`). The
layer x task table that `sweep()` returns and `table` prints (`layer_table`), the per-layer
aggregate that `select` reads (`layer_scores`) and the leaderboard's tables all apply it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .checkpoints import SERIES_COLUMNS, read_series

logger = logging.getLogger(__name__)

#: The settings of a run besides the slice: two runs that differ only here (another
#: `--max-length`, `--dtype`, prompt set or `--exclude-prompt-tokens`) are two configurations,
#: never one. `include_prompt` is False only for results whose prompt tokens were left out.
RUN_COLUMNS = ["max_length", "dtype", "prompts", "include_prompt"]
#: What tells one configuration of a model from another (besides layer and dim). The first
#: five are issue 12's JSON contract keys; the run columns follow them.
CONFIG_COLUMNS = ["model", "revision", "pooling", "normalize", "final_norm", *RUN_COLUMNS]
#: The scores frame: one row per (configuration, layer, dim, task). `n_layers` is the model's
#: layer count L (relative depth = layer / L), NaN for results that predate its recording.
SCORE_COLUMNS = [
    *CONFIG_COLUMNS,
    "layer",
    "dim",
    "task",
    "task_type",
    "score",
    "mteb_version",
    "n_layers",
]
#: The column `scores_frame` and `layer_scores` add after the schema's: a fused slice's label
#: (`fusion.py`, e.g. "0+6"; its `layer` is the deepest fused layer, what it costs), "" for a
#: single layer, so (layer, fuse, dim) is the slice. Optional in frames given to consumers (a
#: frame without it holds single layers only: `with_fuse`).
FUSE = "fuse"
#: `fuse` of a single-layer slice (and of every result written before fusions).
NO_FUSION = ""
#: What a run column holds for results written before it was recorded (so that groupings and
#: equality work: no NaN in a configuration).
RUN_DEFAULTS = {"max_length": 0, "dtype": "", "prompts": "", "include_prompt": True}
#: The metrics frame: one row per (model, revision, dataset, layer, metric, variant).
METRIC_COLUMNS = [
    "model",
    "revision",
    "dataset",
    "layer",
    "metric",
    "variant",
    "value",
    "n",
    "pooling",
    "alpha",
    "seed",
    "final_norm",
]
#: Who computed a metric row (written by the metrics driver since issue 21; NaN in older files):
#: `run` is the run identity, a hash of every setting that changes a value (model files, pooling,
#: sample size, seed, alpha, views, max length, dtype, task data, final norm; not the metrics or
#: layers asked for); `run_at` is when that run last wrote or confirmed the rows (UTC, ISO 8601);
#: `sample_size`, `n_views`, `max_length`, `dtype` and `data` (the task data's fingerprint) are
#: its settings, for notes.
METRIC_RUN_COLUMNS = ["run", "run_at", "sample_size", "n_views", "max_length", "dtype", "data"]
#: A metric's configuration: the metrics frame's rows of one run share it.
_METRIC_CONFIG_COLUMNS = ["model", "revision", "pooling", "final_norm"]
#: The per-layer aggregate of `layer_scores`.
LAYER_SCORE_COLUMNS = [
    *CONFIG_COLUMNS,
    "dim",
    "layer",
    "task_type",
    "score",
    "n_tasks",
    "n_expected",
    "missing",
    "n_layers",
]
#: `task_type` of the aggregate over every task (the benchmark's average).
ALL_TYPES = "all"
#: `final_norm` of results written before the option existed (today's convention).
DEFAULT_FINAL_NORM = "last"


class FrameError(ValueError):
    """A frame lacks columns its schema requires."""


def _check_frame(df: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """`df` itself when it has every column of `columns`, else a `FrameError` naming them."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FrameError(f"{what} frame lacks columns {missing}; it has {list(df.columns)}.")
    return df


def check_scores(df: pd.DataFrame) -> pd.DataFrame:
    return _check_frame(df, SCORE_COLUMNS, "scores")


def check_metrics(df: pd.DataFrame) -> pd.DataFrame:
    return _check_frame(df, METRIC_COLUMNS, "metrics")


def _roots(roots: Path | str | Iterable[Path | str]) -> list[Path]:
    if isinstance(roots, (str, Path)):
        return [Path(roots)]
    return [Path(r) for r in roots]


#: The rows `scan_results` reads from mteb's result files, one per (slice, task).
_LONG_COLUMNS = [
    "model",
    "revision",
    "layer",
    "dim",
    "pooling",
    "normalize",
    "task",
    "task_type",
    "score",
    "mteb_version",
    "max_length",
    "dtype",
    "prompts",
    "final_norm",
    "include_prompt",
    "n_layers",
    "fuse",
]


class ResultsFolderError(FileNotFoundError, ValueError):
    """A results folder that does not exist, or is a file (reading never creates one)."""


@dataclass
class _ResultScan:
    """The long frame of every readable layer result, and what could not be read (one line
    per file or folder, naming it)."""

    frame: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def scan_results(
    output: Path | str,
    *,
    model: str | None = None,
    revision: str | None = None,
    pooling: str | None = None,
) -> _ResultScan:
    """Read every slice folder under `output/results` that one of our encoders wrote.

    mteb's `to_dataframe` keys rows by model, not experiment, so the rows are built here from
    the slice folders, whose `model_meta.json` `experiment_kwargs` name the slice. Reads the
    files itself (with mteb's `TaskResult.from_disk`) rather than through
    `ResultCache.load_results`, so one torn file or a folder without `model_meta.json` is
    named in `problems` instead of failing the whole read or vanishing.
    """
    root = Path(output)
    if root.is_file():
        raise ResultsFolderError(f"{root} is a file; name the results folder (sweep --output).")
    if not root.is_dir():
        raise ResultsFolderError(f"No results folder at {root}.")
    rows: list[dict] = []
    problems: list[str] = []
    for folder in sorted(root.glob("results/*/*/experiments/*")):
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.glob("*.json") if p.name != "model_meta.json")
        meta_path = folder / "model_meta.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            kwargs = dict(meta.get("experiment_kwargs") or {})
        except FileNotFoundError:
            if files:
                problems.append(f"{meta_path} is missing: {len(files)} result(s) not shown")
            continue
        except (OSError, ValueError, AttributeError) as exc:
            problems.append(f"{meta_path} is unreadable ({type(exc).__name__}): not shown")
            continue
        if "layer" not in kwargs:
            continue  # not one of ours
        wanted = {"name": model, "revision": revision}
        if any(v is not None and meta.get(k) != v for k, v in wanted.items()):
            continue
        if pooling is not None and kwargs.get("pooling") != pooling:
            continue
        for path in files:
            row = _result_row(path, meta, kwargs, problems)
            if row is not None:
                rows.append(row)
    df = pd.DataFrame(rows, columns=_LONG_COLUMNS)
    df = df.sort_values(["model", "revision", "fuse", "layer", "dim", "task"], ignore_index=True)
    return _ResultScan(df, problems)


def _result_row(path: Path, meta: dict, kwargs: dict, problems: list[str]) -> dict | None:
    """One long row of a slice's result file; None (and a line in `problems`) when unusable."""
    from mteb.results import TaskResult

    from .results import read_identity
    from .tasks.benchmark import task_main_score

    try:
        task_result = TaskResult.from_disk(path)
    except Exception as exc:
        problems.append(f"{path} is unreadable ({type(exc).__name__}); rerun sweep")
        return None
    split = "test" if "test" in task_result.scores else next(iter(task_result.scores), "test")
    try:
        score = task_main_score(task_result, split=split)
    except (KeyError, ValueError):
        return None
    if not math.isfinite(score):
        problems.append(f"{path} has a NaN score; rerun sweep to rescore it")
        return None
    identity = read_identity(path) or {}
    return {
        "model": meta.get("name"),
        "revision": meta.get("revision"),
        "layer": int(kwargs["layer"]),
        "dim": int(kwargs.get("dim") or 0),
        "pooling": kwargs.get("pooling"),
        "normalize": bool(kwargs.get("normalize", False)),
        "task": task_result.task_name,
        "task_type": _task_type(task_result.task_name),
        "score": score,
        "mteb_version": task_result.mteb_version,
        "max_length": kwargs.get("max_length"),
        "dtype": kwargs.get("dtype"),
        "prompts": kwargs.get("prompts"),
        "final_norm": kwargs.get("final_norm", DEFAULT_FINAL_NORM),
        "include_prompt": bool(kwargs.get("include_prompt", True)),
        "n_layers": _n_layers(identity.get("n_layers")),
        "fuse": str(kwargs.get("fuse") or NO_FUSION),
    }


def layer_results(
    output: Path | str,
    *,
    model: str | None = None,
    revision: str | None = None,
    pooling: str | None = None,
) -> pd.DataFrame:
    """One row per (model, revision, layer, dim, pooling, normalize, final_norm, task) with its
    main score: `scan_results`' frame, its problems logged as warnings.

    The score follows TASKS.md (English subsets, STS17 en-en; see `tasks.benchmark`).
    `max_length`, `dtype` and `prompts` (a hash) tell runs of other settings apart; `final_norm`
    is "last" for results written before the option; `n_layers` is the model's layer count L
    from the run identity (NaN when not recorded). `fuse` is a fused slice's label (e.g.
    "0+6", `fusion.py`; its `layer` is the deepest fused layer), "" for a single layer.
    """
    scan = scan_results(output, model=model, revision=revision, pooling=pooling)
    for line in scan.problems:
        logger.warning(line)
    return scan.frame


def _n_layers(value: object) -> float:
    """The model's layer count L from a run identity; NaN for results written before it."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return float(value)
    return float("nan")


@functools.cache
def _task_type(name: str) -> str | None:
    import mteb

    try:
        return mteb.get_task(name).metadata.type
    except Exception:
        return None


def scores_frame(
    roots: Path | str | Iterable[Path | str],
    *,
    model: str | None = None,
    tasks: Sequence[str] | None = None,
    problems: list[str] | None = None,
) -> pd.DataFrame:
    """The scores frame of one or several mteb result roots (`sweep --output` folders).

    `final_norm` is filled with "last" for results that predate the option, the run columns
    with `RUN_DEFAULTS` for results that predate them. `tasks` keeps only those tasks. A root
    that does not exist is a `ResultsFolderError` (a `FileNotFoundError`; never created).
    Files that cannot be read are appended to `problems` when given, else logged.
    """
    parts = []
    roots = _roots(roots)  # read twice: the results, then the series manifests
    for root in roots:
        scan = scan_results(root, model=model)
        if problems is None:
            for line in scan.problems:
                logger.warning(line)
        else:
            problems.extend(scan.problems)
        parts.append(scan.frame)
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if "final_norm" not in df.columns:
        df["final_norm"] = DEFAULT_FINAL_NORM
    df["final_norm"] = df["final_norm"].fillna(DEFAULT_FINAL_NORM)
    for col in [*SCORE_COLUMNS, FUSE]:
        if col not in df.columns:
            df[col] = pd.Series(dtype=float if col == "n_layers" else object)
    df["fuse"] = df["fuse"].fillna(NO_FUSION)
    df = df.fillna(RUN_DEFAULTS)
    df["max_length"] = df["max_length"].astype(int)
    if tasks is not None:
        df = df[df["task"].isin(list(tasks))]
    keys = [*CONFIG_COLUMNS, "layer", "fuse", "dim", "task"]
    df = df.drop_duplicates(subset=keys, keep="first")
    df = _with_checkpoints(df, roots)
    extra = [c for c in SERIES_COLUMNS if c in df.columns]
    return df[[*SCORE_COLUMNS, FUSE, *extra]].sort_values(keys, ignore_index=True)


def _with_checkpoints(df: pd.DataFrame, roots: Path | str | Iterable[Path | str]) -> pd.DataFrame:
    """`df` with `checkpoint` and `step` columns from the series manifests under `roots`
    (`checkpoints.read_series`), matched on model and revision; rows of no series get None.
    Without any manifest `df` comes back unchanged (single-model runs have no such columns)."""
    rows = read_series(_roots(roots))
    if not rows or df.empty:
        return df
    series = pd.DataFrame(rows).drop_duplicates(["model", "revision"], keep="last")
    series["step"] = series["step"].astype("Int64")
    out = df.drop(columns=[c for c in SERIES_COLUMNS if c in df.columns])
    out = out.merge(series, on=["model", "revision"], how="left")
    out.attrs = df.attrs
    return out


def metrics_frame(
    roots: Path | str | Iterable[Path | str],
    *,
    model: str | None = None,
    notes: list[str] | None = None,
    fused: bool = False,
    tasks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The metrics frame of every `ROOT/metrics/*.parquet` (empty when there are none), of
    `model` and `tasks` only when given; `final_norm` is "last" for rows written before the
    option.

    `fused`: also the rows of fused slices (`metrics --fuse`), with a `fuse` column ("" on a
    layer's rows); by default only layers' rows, without it (what `select`'s rules read).

    Two runs of one metric on one dataset are never mixed: per (configuration, dataset,
    metric) only the newest run's rows are kept (`newest_metric_runs`); a line per left-out
    run is appended to `notes` when given. Files written before runs were recorded count as a
    run each (their name's hash), dated by their modification time.
    """
    parts = []
    roots = _roots(roots)
    for root in roots:
        folder = root / "metrics" if (root / "metrics").is_dir() else root
        for path in sorted(folder.glob("*.parquet")):
            if not path.name.startswith("."):  # a killed writer's temp file (older versions)
                parts.append(_with_run(pd.read_parquet(path), path))
    if not parts:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    df = pd.concat(parts, ignore_index=True)
    if "final_norm" not in df.columns:
        df["final_norm"] = DEFAULT_FINAL_NORM
    df["final_norm"] = df["final_norm"].fillna(DEFAULT_FINAL_NORM)
    check_metrics(df)
    df = with_fuse(df)
    if not fused:
        df = df[df[FUSE] == NO_FUSION].drop(columns=FUSE)
    if model is not None:
        df = df[df["model"] == model]
    if tasks is not None:
        df = df[df["dataset"].isin(list(tasks))]
    df, dropped = newest_metric_runs(df)
    if notes is not None:
        notes.extend(dropped)
    return _with_checkpoints(df.reset_index(drop=True), roots)


def _with_run(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """`df` with its run columns; an older file is one run named by its file, dated by mtime."""
    df = df.copy()
    for col in METRIC_RUN_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=object)
    old = df["run"].isna()
    if old.any():
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        df.loc[old, "run"] = "file:" + path.stem.rsplit("__", 1)[-1]
        df.loc[old, "run_at"] = mtime.isoformat(timespec="microseconds")
    return df


def _run_label(rows: pd.DataFrame) -> str:
    """A run's settings for a note, e.g. "run 1a2b3c (sample_size=30, data=hub-abc)"."""
    first = rows.iloc[0]
    shown = [
        f"{c}={first[c]}"
        for c in ("sample_size", "n_views", "seed", "alpha", "max_length", "dtype", "data")
        if c in rows.columns and pd.notna(first[c])
    ]
    return f"run {first['run']}" + (f" ({', '.join(shown)})" if shown else "")


def newest_metric_runs(metrics: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per (configuration, dataset, metric): the rows of the newest run only, and one note per
    left-out run (so rows of `metrics --n 100` and a later `--n 30` are never averaged).

    Frames without a `run` column (built by hand) are one run and come back unchanged.
    """
    if metrics.empty or "run" not in metrics.columns:
        return metrics, []
    df = metrics.copy()
    df["run"] = df["run"].fillna("")
    df["run_at"] = df["run_at"].fillna("") if "run_at" in df.columns else ""
    keys = [*_METRIC_CONFIG_COLUMNS, "dataset", "metric"]
    filled = df[keys].astype(str)  # a missing pooling or revision is a value, not a wildcard
    when = df.groupby([*[filled[k] for k in keys], df["run"]])["run_at"].transform("max")
    latest = when.groupby([filled[k] for k in keys]).transform("max")
    keep = when == latest
    # two runs dated alike: the one whose identity sorts last wins, still only one of them
    top = df["run"].where(keep, "").groupby([filled[k] for k in keys]).transform("max")
    keep &= df["run"] == top
    notes = []
    dropped = df[~keep]
    if not dropped.empty:
        group_keys = [*_METRIC_CONFIG_COLUMNS, "dataset", "run"]
        kept = df[keep]
        for key, rows in dropped.groupby([filled[k] for k in group_keys[:-1]] + [df["run"]]):
            config = dict(zip(group_keys, key, strict=True))
            sel = pd.Series(True, index=kept.index)
            for col in group_keys[:-1]:
                sel &= filled.loc[kept.index, col] == config[col]
            names = sorted(set(rows["metric"]))
            newer = kept[sel & kept["metric"].isin(names)]
            newer_label = _run_label(newer) if not newer.empty else "a newer run"
            notes.append(
                f"older metric run left out: {config['model']} (pooling {config['pooling']}, "
                f"final_norm {config['final_norm']}) on {config['dataset']}: "
                f"{', '.join(names)} of {_run_label(rows)} (dated {rows['run_at'].max()}); "
                f"kept {newer_label} (dated {newer['run_at'].max() if not newer.empty else '?'})"
            )
    return metrics[keep.to_numpy()], notes


def task_average(block: pd.DataFrame) -> pd.Series:
    """Row means over every column of `block` (tasks across), NaN for a row that lacks any.

    The one rule for a layer missing a task, wherever an average is shown or chosen from:
    never an average over fewer tasks (mteb nulls incomplete rows the same way).
    """
    return block.astype(float).mean(axis=1, skipna=False)


def layer_scores(
    scores: pd.DataFrame,
    *,
    tasks: Sequence[str] | None = None,
    by_type: bool = True,
) -> pd.DataFrame:
    """Per configuration, dim and layer: the mean main score over tasks, overall and per type.

    The benchmark's aggregation (METRICS.md): `s(l)` = mean over tasks of each task's score.
    The tasks expected of every layer are `tasks` if given, else every task the configuration
    has at some layer. `score` is that mean, NaN when the layer lacks one of them
    (`task_average`); `n_tasks` and `n_expected` say how many of how many it has, and
    `missing` names the others (comma-separated). `task_type` is "all" for the overall mean,
    else the mteb task type. `n_layers` is the model's layer count where recorded (NaN
    otherwise). Fused slices get their own rows (`fuse` their label, `layer` their deepest).
    """
    check_scores(scores)
    out = []
    for config, group in scores.groupby(CONFIG_COLUMNS, dropna=False, sort=True):
        n_layers = model_layers(group)
        expected = list(dict.fromkeys(tasks if tasks is not None else group["task"]))
        types = group.drop_duplicates("task").set_index("task")["task_type"].to_dict()
        type_groups: dict[str, list[str]] = {ALL_TYPES: expected}
        if by_type:
            for task in expected:
                type_groups.setdefault(str(types.get(task)), []).append(task)
        group = with_fuse(group)
        for (dim, layer, fuse), cell in group.groupby(["dim", "layer", "fuse"], sort=True):
            have = cell.dropna(subset=["score"]).set_index("task")["score"]
            have = have[~have.index.duplicated()]
            for task_type, names in type_groups.items():
                row = task_average(have.reindex(names).to_frame().T).iloc[0] if names else None
                out.append(
                    {
                        **dict(zip(CONFIG_COLUMNS, config, strict=True)),
                        "dim": int(dim),
                        "layer": int(layer),
                        "task_type": task_type,
                        "score": float("nan") if row is None else float(row),
                        "n_tasks": sum(t in have.index for t in names),
                        "n_expected": len(names),
                        "missing": ", ".join(t for t in names if t not in have.index),
                        "n_layers": n_layers,
                        "fuse": fuse,
                    }
                )
    return pd.DataFrame(out, columns=[*LAYER_SCORE_COLUMNS, FUSE])


def complete(layer_scores_df: pd.DataFrame) -> pd.DataFrame:
    """Rows of a `layer_scores` frame whose layer has every expected task."""
    return layer_scores_df[layer_scores_df["n_tasks"] == layer_scores_df["n_expected"]]


def model_layers(rows: pd.DataFrame) -> float:
    """The model's layer count L recorded in `rows` (their `n_layers`), NaN when none is.

    Relative depth is layer / L; guessing L from the deepest layer scored is wrong for a
    sweep that stopped short of the last layer.
    """
    if "n_layers" not in rows.columns:
        return float("nan")
    recorded = pd.to_numeric(rows["n_layers"], errors="coerce").dropna()
    return float(recorded.max()) if len(recorded) else float("nan")


def with_fuse(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a `fuse` column ("" where absent: frames built before fusions)."""
    if "fuse" in df.columns:
        return df.assign(fuse=df["fuse"].fillna(NO_FUSION))
    return df.assign(fuse=NO_FUSION)


def single_layers(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of single-layer slices (no fusion): what per-layer consumers (metric
    correlations, label-free rules, the layer x task tables) line up by layer."""
    if "fuse" not in df.columns:
        return df
    return df[df["fuse"].fillna(NO_FUSION) == NO_FUSION]


def fused_slices(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of fused slices (`fuse` set)."""
    if "fuse" not in df.columns:
        return df.iloc[0:0]
    return df[df["fuse"].fillna(NO_FUSION) != NO_FUSION]


# ---- the layer x task table: what `sweep()` returns and `table` prints

#: The columns a layer table adds after its tasks.
_LAYER_TABLE_EXTRA = ["mean", "n_tasks", "missing"]


def layer_table(long: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Wide layer x task table of main scores, with `mean`, `n_tasks` and `missing`.

    `long` holds the rows of one configuration (model, revision, normalize and the run
    columns), as `scan_results` or `scores_frame` give them. `mean` is `task_average` over the
    expected tasks (`tasks`, else every task of `long`): NaN for a layer lacking one, which
    `missing` names. One block per Matryoshka width: the index is `layer` for a single width,
    else `(dim, layer)`; with several final norms, `final_norm` leads the index, and with
    several poolings, `pooling` leads it. Fused slices (a `fuse` label) follow the layer rows,
    indexed by their label (e.g. "0+6").
    """
    for key in ("pooling", "final_norm"):
        if key in long.columns and long[key].nunique() > 1:
            blocks = {
                str(value): layer_table(long[long[key] == value], tasks)
                for value in sorted(long[key].unique())
            }
            inner = next(iter(blocks.values())).index.names
            return pd.concat(blocks, names=[key, *inner])
    dims = sorted(long["dim"].unique(), reverse=True) if len(long) else []
    if len(dims) <= 1:
        return _with_fusions(long, tasks)
    blocks = {int(d): _with_fusions(long[long["dim"] == d], tasks) for d in dims}
    return pd.concat(blocks, names=["dim", "layer"])


def _with_fusions(long: pd.DataFrame, tasks: Sequence[str] | None) -> pd.DataFrame:
    """The single layers' block, then one row per fusion (by cost, then label)."""
    long = with_fuse(long)
    if not (long["fuse"] != NO_FUSION).any():
        return _layer_block(long, tasks)
    plain = long[long["fuse"] == NO_FUSION]
    fused = long[long["fuse"] != NO_FUSION].drop(columns="layer").rename(columns={"fuse": "layer"})
    order = sorted(fused["layer"].unique(), key=lambda f: (_deepest(f), f))
    block = _layer_block(fused, tasks).reindex(order)
    return block if plain.empty else pd.concat([_layer_block(plain, tasks), block])


def _layer_block(long: pd.DataFrame, tasks: Sequence[str] | None) -> pd.DataFrame:
    """Layers down, tasks across (`tasks` first, then any other task of `long`), then `mean`
    (`task_average`), `n_tasks` and `missing`."""
    order = list(dict.fromkeys(tasks if tasks is not None else []))
    order += [t for t in dict.fromkeys(long["task"]) if t not in order]
    if long.empty:
        return pd.DataFrame(columns=[*order, *_LAYER_TABLE_EXTRA])
    dup = long.duplicated(subset=["layer", "task"], keep=False)
    if dup.any():
        first = long[dup].iloc[0]
        raise ValueError(f"layer {first['layer']!r}, task {first['task']!r} appears twice")
    wide = long.pivot(index="layer", columns="task", values="score").reindex(columns=order)
    wide = wide.astype(float).sort_index()
    wide.columns.name = None
    have = wide.notna()
    wide["mean"] = task_average(wide[order])
    wide["n_tasks"] = have.sum(axis=1).astype(int)
    wide["missing"] = [", ".join(c for c in order if not have.at[i, c]) for i in wide.index]
    return wide


def _deepest(label: str) -> int:
    """The deepest layer of a fusion label ("0+6", "4-6"): fusions sort by their cost."""
    return max(int(x) for x in str(label).replace("-", "+").split("+") if x)


def missing_notes(table: pd.DataFrame) -> list[str]:
    """One plain line per incomplete row of a `layer_table` (empty when none), naming the
    layer, e.g. "layer 3: no mean (2 of 3 tasks); missing: STS12"."""
    if "missing" not in table.columns:
        return []
    total = len([c for c in table.columns if c not in _LAYER_TABLE_EXTRA])
    lines = []
    for index, row in table[table["missing"] != ""].iterrows():
        where = ", ".join(
            f"{name or 'layer'} {value}"
            for name, value in zip(table.index.names, _tuple(index), strict=True)
        )
        lines.append(
            f"{where}: no mean ({int(row['n_tasks'])} of {total} tasks); missing: {row['missing']}"
        )
    return lines


def table_text(table: pd.DataFrame) -> str:
    """A table as the terminal shows it (4 decimals), then a line naming each layer without a
    mean (it lacks a task), so an empty cell is never read as a low score."""
    with pd.option_context(
        "display.max_columns", 50, "display.width", 200, "display.float_format", "{:.4f}".format
    ):
        text = table.to_string()
    return "\n".join([text, *(f"incomplete: {line}" for line in missing_notes(table))])


def _tuple(index: object) -> tuple:
    return index if isinstance(index, tuple) else (index,)


def config_tables(scores: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """A `layer_table` per configuration of a scores frame, keyed by its `CONFIG_COLUMNS`
    values (what `table` prints; `pd.concat(tables, names=CONFIG_COLUMNS)` is its CSV)."""
    check_scores(scores)
    return {
        tuple(key): layer_table(group)
        for key, group in scores.groupby(CONFIG_COLUMNS, dropna=False, sort=True)
    }


def config_heading(key: Sequence) -> str:
    """A `config_tables` key as one line: "model @ revision  pooling=... prompts=..."
    (`include_prompt` shown only when False)."""
    config = dict(zip(CONFIG_COLUMNS, key, strict=True))
    shown = [f"{k}={v}" for k, v in list(config.items())[2:] if not (k == "include_prompt" and v)]
    return f"{config['model']} @ {config['revision']}  " + " ".join(shown)


def checkpoint_table(scores: pd.DataFrame) -> pd.DataFrame:
    """A series' average score, checkpoints down and slices across (`final_norm`, `dim` and
    `layer` levels, those present): what `sweep` prints for a checkpoint series."""
    columns = [c for c in ("final_norm", "dim", "layer") if c in scores.columns]
    return scores.pivot_table(index="checkpoint", columns=columns, values="mean", sort=False)


def metrics_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Metric rows as one table: (pooling, final_norm where they vary,) dataset, metric and
    variant down, layers across; fused slices are columns named by their label, after the
    layers. What `metrics` prints."""
    keys = [k for k in ("pooling", "final_norm") if k in metrics.columns]
    keys = [k for k in keys if metrics[k].nunique() > 1]
    if "fuse" in metrics.columns:
        fused = metrics["fuse"].notna() & (metrics["fuse"] != NO_FUSION)  # NaN: a single layer
        metrics = metrics.assign(
            layer=metrics["layer"].astype(object).where(~fused, metrics["fuse"])
        )
    index = [*keys, "dataset", "metric", "variant"]
    return metrics.pivot_table(index=index, columns="layer", values="value")
