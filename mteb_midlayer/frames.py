"""The two tidy frames everything after scoring reads: task scores and layer metrics.

Data flows one way: mteb result files and metric parquet rows -> these frames -> `select/`,
`leaderboard/` and `table`. This module owns both schemas (column constants plus a check) and
the per-layer aggregation of task scores; it computes nothing from a model.

- scores: one row per (configuration, layer, dim, task) with the task's main score (English
  subsets per TASKS.md), read from mteb's own result files.
- metrics: one row per (model, revision, dataset, layer, metric, variant) from
  `OUTPUT/metrics/*.parquet`, as the metrics driver writes them.

Missing results stay missing: `layer_scores` averages a layer only over the tasks it has and
says how many it has and which it lacks, so no consumer averages over fewer tasks silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .checkpoints import SERIES_COLUMNS, read_series

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
METRIC_CONFIG_COLUMNS = ["model", "revision", "pooling", "final_norm"]
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


def check_frame(df: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """`df` itself when it has every column of `columns`, else a `FrameError` naming them."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FrameError(f"{what} frame lacks columns {missing}; it has {list(df.columns)}.")
    return df


def check_scores(df: pd.DataFrame) -> pd.DataFrame:
    return check_frame(df, SCORE_COLUMNS, "scores")


def check_metrics(df: pd.DataFrame) -> pd.DataFrame:
    return check_frame(df, METRIC_COLUMNS, "metrics")


def _roots(roots: Path | str | Iterable[Path | str]) -> list[Path]:
    if isinstance(roots, (str, Path)):
        return [Path(roots)]
    return [Path(r) for r in roots]


def scores_frame(
    roots: Path | str | Iterable[Path | str],
    *,
    model: str | None = None,
    tasks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The scores frame of one or several mteb result roots (`sweep --output` folders).

    `final_norm` is filled with "last" for results that predate the option, the run columns
    with `RUN_DEFAULTS` for results that predate them. `tasks` keeps only those tasks. A root
    that does not exist is a `FileNotFoundError` (never created).
    """
    from .tables import layer_results

    parts = []
    roots = _roots(roots)  # read twice: the results, then the series manifests
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"No results folder at {root}.")
        df = layer_results(root, model=model)
        parts.append(df)
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
    df = with_checkpoints(df, roots)
    extra = [c for c in SERIES_COLUMNS if c in df.columns]
    return df[[*SCORE_COLUMNS, FUSE, *extra]].sort_values(keys, ignore_index=True)


def with_checkpoints(df: pd.DataFrame, roots: Path | str | Iterable[Path | str]) -> pd.DataFrame:
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
) -> pd.DataFrame:
    """The metrics frame of every `ROOT/metrics/*.parquet` (empty when there are none);
    `final_norm` is "last" for rows written before the option.

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
    if model is not None:
        df = df[df["model"] == model]
    df, dropped = newest_metric_runs(df)
    if notes is not None:
        notes.extend(dropped)
    return with_checkpoints(df.reset_index(drop=True), roots)


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
    keys = [*METRIC_CONFIG_COLUMNS, "dataset", "metric"]
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
        group_keys = [*METRIC_CONFIG_COLUMNS, "dataset", "run"]
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


def layer_scores(
    scores: pd.DataFrame,
    *,
    tasks: Sequence[str] | None = None,
    by_type: bool = True,
) -> pd.DataFrame:
    """Per configuration, dim and layer: the mean main score over tasks, overall and per type.

    The benchmark's aggregation (METRICS.md): `s(l)` = mean over tasks of each task's score.
    The tasks expected of every layer are `tasks` if given, else every task the configuration
    has at some layer. `score` is the mean over the tasks the layer has; `n_tasks` and
    `n_expected` say how many of how many, and `missing` names the others (comma-separated),
    so a consumer can refuse or mark incomplete layers. `task_type` is "all" for the overall
    mean, else the mteb task type. `n_layers` is the model's layer count where recorded (NaN
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
            for task_type, names in type_groups.items():
                present = [t for t in names if t in have.index]
                out.append(
                    {
                        **dict(zip(CONFIG_COLUMNS, config, strict=True)),
                        "dim": int(dim),
                        "layer": int(layer),
                        "task_type": task_type,
                        "score": float(have[present].mean()) if present else float("nan"),
                        "n_tasks": len(present),
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
