"""Display shapes of the scores frame: what a leaderboard shows, before any formatting.

Pure functions of `frames.scores_frame` output (STYLE.md 4): the layer x task table of one
configuration and width, the layer x dim table of averages, and the cross-model summary. Values
stay raw (0..1, no rounding); renderers format them. Missing results stay NaN: an average over
a layer that lacks a task is NaN here, with `tasks` ("2/3") and `missing` saying why, never an
average over fewer tasks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pandas as pd

from .. import frames

#: Column of the overall average (the benchmark's aggregation: mean over tasks).
AVERAGE = "average"
#: Prefix of the per-type average columns, e.g. "avg STS".
TYPE_PREFIX = "avg "


@dataclass(frozen=True)
class LayerTable:
    """One configuration at one width: layers down, tasks and averages across.

    `table` holds raw scores (NaN = missing); `best` maps every score column to the layer with
    its highest value and `gain` to that value minus the last layer's (NaN when either is
    missing); `types` maps each task column to its task type; `status` per layer says how many
    tasks it has ("2/3") and which it lacks.
    """

    config: dict
    dim: int
    table: pd.DataFrame
    best: pd.Series
    gain: pd.Series
    types: dict[str, str]
    status: pd.DataFrame = field(repr=False)

    @property
    def last_layer(self) -> int:
        return int(self.table.index.max())

    @property
    def task_columns(self) -> list[str]:
        return list(self.types)

    @property
    def average_columns(self) -> list[str]:
        return [c for c in self.table.columns if c not in self.types]


def configs(scores: pd.DataFrame) -> list[dict]:
    """Every configuration (model, revision, pooling, normalize, final_norm) in `scores`."""
    frames.check_scores(scores)
    keys = scores[frames.CONFIG_COLUMNS].drop_duplicates()
    return [dict(zip(frames.CONFIG_COLUMNS, row, strict=True)) for row in keys.itertuples(False)]


def select_config(scores: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The rows of `scores` that belong to `config`."""
    mask = pd.Series(True, index=scores.index)
    for key in frames.CONFIG_COLUMNS:
        value = config[key]
        same = scores[key].isna() if pd.isna(value) else scores[key] == value  # None == None
        mask &= same
    return scores[mask]


def _run_settings(config: dict) -> list[str]:
    """The run settings (max length, dtype, prompts) that the results recorded."""
    return [
        f"{key}={config[key]}"
        for key in frames.RUN_COLUMNS
        if key in config and config[key] != frames.RUN_DEFAULTS[key]
    ]


def config_label(config: dict) -> str:
    """A short human label: the model, then what tells its configurations apart."""
    norm = "norm" if config["normalize"] else "raw"
    parts = [config["model"], config["pooling"], norm, f"final_norm={config['final_norm']}"]
    return " · ".join([*map(str, parts), *_run_settings(config)])


#: Longest readable part of a slug (file names stay well under 255 bytes with their suffixes).
SLUG_TEXT = 80


def config_slug(config: dict) -> str:
    """A file-, anchor- and CSS-safe name of a configuration (letters, digits, - and _), unique.

    The readable part maps `org/m.1` and `org/m-1` alike, so a short hash of the full
    configuration follows it: two configurations never share a plot file or an anchor.
    """
    fields = [
        *(str(config[k]) for k in ("model", "revision", "pooling", "normalize", "final_norm")),
        *_run_settings(config),
    ]
    text = "".join(
        c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in "-".join(fields)
    )
    digest = hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()[:8]
    return f"{text[:SLUG_TEXT]}-{digest}"


def _ordered_tasks(scores: pd.DataFrame) -> dict[str, str]:
    """Task -> type, grouped by type then name, so per-type blocks sit together."""
    types = scores.drop_duplicates("task").set_index("task")["task_type"].fillna("unknown")
    return {t: str(types[t]) for t in sorted(types.index, key=lambda t: (str(types[t]), t))}


def layer_task_table(scores: pd.DataFrame, config: dict, dim: int) -> LayerTable:
    """The layer x task table of one configuration at width `dim`, with averages and marks.

    Columns: every task in `scores` (the page's task set, so configurations are compared on
    the same tasks), then `avg <type>` per type and `average`. An average is NaN unless the layer
    has every task it covers (mteb nulls incomplete rows the same way). `best` ignores NaN; `gain` is best minus the last layer.
    """
    own = frames.single_layers(select_config(scores, config))  # fusions: `fusion_table`
    types = _ordered_tasks(scores)
    tasks = list(types)
    at_dim = own[own["dim"] == dim]
    if at_dim.empty:
        raise ValueError(f"No scores at dim {dim} for {config_label(config)}.")
    wide = at_dim.pivot_table(index="layer", columns="task", values="score", aggfunc="first")
    wide = wide.reindex(columns=tasks)
    wide.index = wide.index.astype(int)
    wide.columns.name = None
    scores_only = wide[tasks]
    for task_type in dict.fromkeys(types.values()):
        wide[f"{TYPE_PREFIX}{task_type}"] = frames.task_average(
            scores_only[[t for t in tasks if types[t] == task_type]]
        )
    wide[AVERAGE] = frames.task_average(scores_only)
    have = scores_only.notna()
    status = pd.DataFrame(
        {
            "tasks": have.sum(axis=1).astype(str) + f"/{len(tasks)}",
            "missing": have.apply(lambda r: ", ".join(t for t in tasks if not r[t]), axis=1),
        }
    )
    best = pd.Series(
        {c: wide[c].idxmax() if wide[c].notna().any() else float("nan") for c in wide.columns},
        dtype=object,
    )
    last = wide.loc[wide.index.max()]
    gain = wide.max(skipna=True) - last
    return LayerTable(
        config=config, dim=int(dim), table=wide, best=best, gain=gain, types=types, status=status
    )


#: Column of a fusion table: the blocks a fusion runs (its deepest layer).
BLOCKS = "blocks"
#: Column of a fusion table: its average minus the best single layer's (same dim).
VS_BEST_LAYER = "vs best layer"
#: Column of a fusion table: its average minus the best single layer that runs no more blocks.
VS_SAME_BLOCKS = "vs best layer <= blocks"


def _deepest(label: str) -> int:
    return max(int(x) for x in str(label).replace("-", "+").split("+") if x)


def fusion_table(scores: pd.DataFrame, config: dict, dim: int) -> pd.DataFrame:
    """The fused slices (`fusion.py`) of one configuration at width `dim`, shown under the
    layer rows: one row per fusion label (by deepest layer, then label), `blocks` (what it
    costs: its deepest layer), the task columns and averages as in `layer_task_table`, and
    `vs best layer` (its average minus the best single layer's) and `vs best layer <= blocks`
    (minus the best single layer that runs no more blocks: the gain at equal cost). Empty
    when there is none."""
    own = frames.fused_slices(select_config(scores, config))
    types = _ordered_tasks(scores)
    tasks = list(types)
    at_dim = own[own["dim"] == dim]
    if at_dim.empty:
        return pd.DataFrame(columns=[BLOCKS, *tasks, AVERAGE, VS_BEST_LAYER, VS_SAME_BLOCKS])
    wide = at_dim.pivot_table(index="fuse", columns="task", values="score", aggfunc="first")
    wide = wide.reindex(columns=tasks)
    wide = wide.reindex(sorted(wide.index, key=lambda f: (_deepest(f), f)))
    wide.columns.name = None
    wide.index.name = "fusion"
    scores_only = wide[tasks]
    for task_type in dict.fromkeys(types.values()):
        wide[f"{TYPE_PREFIX}{task_type}"] = frames.task_average(
            scores_only[[t for t in tasks if types[t] == task_type]]
        )
    wide[AVERAGE] = frames.task_average(scores_only)
    wide.insert(0, BLOCKS, [_deepest(f) for f in wide.index])
    try:
        layer_avg = layer_task_table(scores, config, dim).table[AVERAGE]
    except ValueError:  # fusions without single layers at this width
        layer_avg = pd.Series(dtype=float)
    wide[VS_BEST_LAYER] = wide[AVERAGE] - layer_avg.max(skipna=True)
    cheaper = [layer_avg[layer_avg.index <= b].max(skipna=True) for b in wide[BLOCKS]]
    wide[VS_SAME_BLOCKS] = wide[AVERAGE] - pd.Series(cheaper, index=wide.index, dtype=float)
    return wide


def window_grid(fusions: pd.DataFrame) -> pd.DataFrame:
    """Start x end grid of the average of the window fusions ("a-b", contiguous) of a
    `fusion_table`; NaN where a window was not scored. Empty when there is no window."""
    windows = [f for f in fusions.index if "+" not in str(f)]
    if not windows:
        return pd.DataFrame()
    spans = [tuple(int(x) for x in str(f).split("-")) for f in windows]
    starts = sorted({a for a, _ in spans})
    ends = sorted({b for _, b in spans})
    grid = pd.DataFrame(float("nan"), index=starts, columns=ends)
    for (a, b), label in zip(spans, windows, strict=True):
        grid.loc[a, b] = fusions.loc[label, AVERAGE]
    grid.index.name = "start"
    grid.columns.name = "end"
    return grid


def dims_of(scores: pd.DataFrame, config: dict) -> list[int]:
    """The widths a configuration was scored at, widest first."""
    own = select_config(scores, config)
    return sorted((int(d) for d in own["dim"].unique()), reverse=True)


def dim_table(scores: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Layer x dim table of the overall average (the 2D-Matryoshka view); NaN if incomplete."""
    cols = {d: layer_task_table(scores, config, d).table[AVERAGE] for d in dims_of(scores, config)}
    out = pd.DataFrame(cols)
    out.index.name = "layer"
    out.columns.name = "dim"
    return out


_SUMMARY_COLUMNS = [
    *frames.CONFIG_COLUMNS,
    "dim",
    "last_layer",
    "last_average",
    "best_layer",
    "best_depth",
    "best_average",
    "gain",
    "tasks",
]


def summary_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration at its widest dim, sorted by best average (best first).

    The last layer is the deepest layer scored; `best_depth` = best / L, the model's layer count
    recorded with its results (else the last layer scored; 0 = embeddings); `tasks` is
    "have/expected" at the last layer.
    """
    rows = []
    for config in configs(scores):
        dim = dims_of(scores, config)[0]
        lt = layer_task_table(scores, config, dim)
        best = lt.best[AVERAGE]
        last = lt.last_layer
        depth_of = _model_depth(scores, config, lt)
        rows.append(
            {
                **config,
                "dim": dim,
                "last_layer": last,
                "last_average": lt.table.loc[last, AVERAGE],
                "best_layer": best,
                "best_depth": best / depth_of if pd.notna(best) and depth_of else float("nan"),
                "best_average": lt.table[AVERAGE].max(skipna=True),
                "gain": lt.gain[AVERAGE],
                "tasks": lt.status.loc[last, "tasks"],
            }
        )
    out = pd.DataFrame(rows, columns=_SUMMARY_COLUMNS)
    out["best_layer"] = out["best_layer"].astype("Int64")
    return out.sort_values(
        ["best_average", "model"], ascending=[False, True], na_position="last", ignore_index=True
    )


def _model_depth(scores: pd.DataFrame, config: dict, lt: LayerTable) -> int:
    """The model's layer count L for relative depth: recorded with the results (`n_layers`),
    else the deepest layer scored (results written before L was recorded)."""
    recorded = frames.model_layers(select_config(scores, config))
    return int(recorded) if recorded == recorded else lt.last_layer


def depth_curves(scores: pd.DataFrame) -> pd.DataFrame:
    """Per configuration at its widest dim: layer, relative depth and every average column.

    Long rows (config columns, `layer`, `depth`, `column`, `score`) that plots draw as lines;
    depth = layer / L (0 = embeddings, 1 = last layer), L as in `_model_depth`.
    """
    parts = []
    for config in configs(scores):
        lt = layer_task_table(scores, config, dims_of(scores, config)[0])
        long = lt.table[lt.average_columns].rename_axis("layer").reset_index()
        long = long.melt(id_vars="layer", var_name="column", value_name="score")
        depth_of = _model_depth(scores, config, lt)
        long["depth"] = long["layer"] / depth_of if depth_of else float("nan")
        parts.append(long.assign(**config))
    return pd.concat(parts, ignore_index=True)


def tidy_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """The CSV rows: one per (configuration, layer, dim, task), missing ones included as NaN.

    Every task in `scores` is expected of each configuration at each (layer, dim) it was
    scored at, so a missing result is an empty `main_score` rather than an absent row.
    """
    frames.check_scores(scores)
    parts = []
    tasks = scores.drop_duplicates("task")[["task", "task_type"]]
    for config in configs(scores):
        own = frames.with_fuse(select_config(scores, config))
        grid = own[["layer", "fuse", "dim"]].drop_duplicates().merge(tasks, how="cross")
        full = grid.merge(
            own[["layer", "fuse", "dim", "task", "score", "mteb_version"]],
            on=["layer", "fuse", "dim", "task"],
            how="left",
        )
        for key, value in config.items():
            full[key] = value
        parts.append(full)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CSV_COLUMNS)
    out = frames.with_fuse(out.rename(columns={"score": "main_score"}))
    # fused slices (`fusion.py`) add a last column, `fuse` (their label, "" for a layer)
    columns = [*CSV_COLUMNS, frames.FUSE] if (out["fuse"] != "").any() else CSV_COLUMNS
    return out.sort_values(
        [*frames.CONFIG_COLUMNS, "dim", "fuse", "layer", "task"],
        ascending=[True] * len(frames.CONFIG_COLUMNS) + [False, True, True, True],
        ignore_index=True,
    )[columns]


CSV_COLUMNS = [
    "model",
    "revision",
    "pooling",
    "normalize",
    "final_norm",
    "layer",
    "dim",
    "task",
    "task_type",
    "main_score",
    "mteb_version",
    *frames.RUN_COLUMNS,
]
