"""Plots of a leaderboard: frames in, PNG and SVG files out (matplotlib, Agg, imported lazily).

Every function writes `stem.png` and `stem.svg` and returns both paths. The x axis of depth
plots is the relative depth, layer / deepest layer scored (0 = embeddings, 1 = last layer), so
models of different depths share one axis. Missing averages (a layer without every task) are
gaps in a line, never zeros.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import frames
from . import tables as T

_FORMATS = ("png", "svg")


def _plt():
    """matplotlib's pyplot on the Agg backend (no display needed), imported on first use."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("Plots need matplotlib: pip install 'mteb-midlayer[plots]'.") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path | str) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in _FORMATS:
        path = stem.parent / f"{stem.name}.{ext}"  # not with_suffix: names hold dots
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata=_metadata(ext))
        paths.append(path)
    _plt().close(fig)
    return paths


def _metadata(ext: str) -> dict:
    # No creation date / software version in the files, so reruns give identical bytes.
    return {"Software": None} if ext == "png" else {"Date": None, "Creator": None}


def _grid(n: int, *, width: float = 4.2, height: float = 3.2):
    plt = _plt()
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def plain(text: object) -> str:
    """Text drawn as it is: matplotlib reads a pair of `$` as math (and fails on bad math), so a
    name such as `org/$\\frac{$m` would stop the plots; escaped, it is drawn literally."""
    return str(text).replace("$", r"\$")


def _label(row) -> str:
    return plain(T.config_label(dict(zip(frames.CONFIG_COLUMNS, row, strict=True))))


def plot_depth(scores: pd.DataFrame, stem: Path | str) -> list[Path]:
    """Score against relative depth, one line per configuration; overall, then per task type.

    A star marks each line's best layer; an incomplete layer is a gap in its line.
    """
    curves = T.depth_curves(scores)
    columns = [T.AVERAGE, *sorted(set(curves["column"]) - {T.AVERAGE})]
    n_tasks = scores.drop_duplicates("task")["task_type"].fillna("unknown").value_counts()
    fig, axes = _grid(len(columns))
    for ax, column in zip(axes, columns, strict=True):
        part = curves[curves["column"] == column]
        for config, line in part.groupby(frames.CONFIG_COLUMNS, dropna=False, sort=True):
            line = line.sort_values("layer")
            (drawn,) = ax.plot(
                line["depth"], 100 * line["score"], marker="o", ms=3, label=_label(config)
            )
            if line["score"].notna().any():
                best = line.loc[line["score"].idxmax()]
                ax.plot(
                    best["depth"],
                    100 * best["score"],
                    marker="*",
                    ms=13,
                    color=drawn.get_color(),
                    mec="black",
                    mew=0.8,
                )
        task_type = column.removeprefix(T.TYPE_PREFIX)
        n = int(n_tasks.sum()) if column == T.AVERAGE else int(n_tasks.get(task_type, 0))
        title = "All tasks (average)" if column == T.AVERAGE else task_type
        ax.set_title(f"{title} · {n} task{'s' if n != 1 else ''}", fontsize=10)
        ax.set_xlabel("relative depth (0 = embeddings, 1 = last layer)", fontsize=8)
        ax.set_ylabel("main score ×100", fontsize=8)
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0], note="★ best layer; gaps: layers without every task")
    return _save(fig, stem)


def _legend(fig, ax, *, note: str | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=max(1, min(len(labels), 2)),
        fontsize=8,
        title=note,
        title_fontsize=8,
        frameon=False,
    )


def _metric_layers(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean of each (model, revision, metric, variant, layer) over datasets, with its depth."""
    frames.check_metrics(metrics)
    keys = ["model", "revision", "metric", "variant", "layer"]
    mean = metrics.groupby(keys, dropna=False)["value"].mean().reset_index()
    last = mean.groupby(["model", "revision"])["layer"].transform("max")
    mean["depth"] = mean["layer"] / last.where(last > 0)
    return mean


def plot_metrics_depth(metrics: pd.DataFrame, stem: Path | str) -> list[Path]:
    """Every metric (and variant) against relative depth, mean over tasks, one line per model."""
    mean = _metric_layers(metrics)
    panels = list(mean.groupby(["metric", "variant"], sort=True))
    if not panels:
        raise ValueError("No metric rows to plot.")
    fig, axes = _grid(len(panels), width=3.6, height=2.8)
    for ax, ((metric, variant), part) in zip(axes, panels, strict=True):
        for (model, revision), line in part.groupby(["model", "revision"], sort=True):
            line = line.sort_values("layer")
            ax.plot(
                line["depth"], line["value"], marker="o", ms=3, label=plain(f"{model} @ {revision}")
            )
        ax.set_title(f"{metric} ({variant})", fontsize=9)
        ax.set_xlabel("relative depth", fontsize=8)
        ax.set_xlim(-0.03, 1.03)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0], note="mean over tasks")
    return _save(fig, stem)


def plot_score_vs_metric(
    scores: pd.DataFrame, metrics: pd.DataFrame, stem: Path | str
) -> list[Path]:
    """Average score of each layer against each metric of that layer (mean over tasks).

    One point per (model, layer) at the widest dim, the layer number written next to it: the
    link between a label-free metric and the score that `select` measures.
    """
    curves = T.depth_curves(scores)
    curves = curves[curves["column"] == T.AVERAGE]
    mean = _metric_layers(metrics)
    joined = mean.merge(
        curves[["model", "revision", "layer", "score"]], on=["model", "revision", "layer"]
    )
    panels = list(joined.groupby(["metric", "variant"], sort=True))
    if not panels:
        raise ValueError("No layer has both a score and a metric: nothing to plot.")
    fig, axes = _grid(len(panels), width=3.6, height=2.8)
    for ax, ((metric, variant), part) in zip(axes, panels, strict=True):
        for (model, revision), pts in part.groupby(["model", "revision"], sort=True):
            ax.scatter(pts["value"], 100 * pts["score"], s=14, label=plain(f"{model} @ {revision}"))
            for x, y, layer in zip(pts["value"], pts["score"], pts["layer"], strict=True):
                if pd.notna(y):
                    ax.annotate(
                        str(layer),
                        (x, 100 * y),
                        fontsize=6,
                        xytext=(2, 2),
                        textcoords="offset points",
                    )
        ax.set_title(f"{metric} ({variant})", fontsize=9)
        ax.set_xlabel("metric value", fontsize=8)
        ax.set_ylabel("average ×100", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0], note="numbers: layer")
    return _save(fig, stem)


def plot_dim_heatmap(
    dim_table: pd.DataFrame,
    stem: Path | str,
    *,
    title: str,
    xlabel: str = "dim",
    ylabel: str = "layer",
) -> list[Path]:
    """Heatmap of `tables.dim_table` (layers down, widths across); missing cells left blank.
    Also draws `tables.window_grid` (start down, end across) with the labels changed."""
    plt = _plt()
    values = 100 * dim_table.to_numpy(dtype=float)
    fig, ax = plt.subplots(
        figsize=(1.2 * dim_table.shape[1] + 2.4, 0.42 * dim_table.shape[0] + 1.6),
        layout="constrained",
    )
    image = ax.imshow(values, cmap="Greens", aspect="auto")
    ax.set_xticks(range(dim_table.shape[1]), [str(d) for d in dim_table.columns])
    ax.set_yticks(range(dim_table.shape[0]), [str(i) for i in dim_table.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    finite = values[~pd.isna(values)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    best = divmod(int(pd.Series(values.ravel()).idxmax()), values.shape[1]) if finite.size else None
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "—" if pd.isna(v) else f"{v:.1f}"
            weight = "bold" if best == (i, j) else "normal"
            color = "white" if not pd.isna(v) and v > mid else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color, weight=weight)
    ax.set_title(plain(title), fontsize=9)
    fig.colorbar(image, ax=ax, label="average ×100", shrink=0.8)
    return _save(fig, stem)


def plot_checkpoint_heatmaps(
    tables: dict[str, pd.DataFrame], stem: Path | str, *, title: str
) -> list[Path]:
    """One heatmap per table (checkpoints down in step order, layers across): the average
    score first, then each metric; missing cells are blank."""
    if not tables:
        raise ValueError("No checkpoint table to plot.")
    first = next(iter(tables.values()))
    fig, axes = _grid(
        len(tables), width=0.5 * first.shape[1] + 2.6, height=0.35 * first.shape[0] + 1.6
    )
    for ax, (label, table) in zip(axes, tables.items(), strict=True):
        values = table.to_numpy(dtype=float)
        image = ax.imshow(values, cmap="viridis", aspect="auto")
        ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], fontsize=7)
        ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index], fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(label, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, stem)


def plot_score_vs_step(
    table: pd.DataFrame, steps: pd.Series, stem: Path | str, *, title: str
) -> list[Path]:
    """Average score against training step, one line per layer (columns of `table`); a
    checkpoint without a step (a Hub `main`) has no point."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.4), layout="constrained")
    x = [float(steps[c]) if pd.notna(steps[c]) else float("nan") for c in table.index]  # "main"
    for layer in table.columns:
        ax.plot(
            x, 100 * table[layer].to_numpy(dtype=float), marker="o", ms=3, label=f"layer {layer}"
        )
    ax.set_xlabel("training step", fontsize=8)
    ax.set_ylabel("average ×100", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, stem)
