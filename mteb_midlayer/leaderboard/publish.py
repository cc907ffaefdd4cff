"""One call that writes a whole leaderboard folder from the two frames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import plots as P
from . import render as R
from . import tables as T
from .series import publish_series


def _safe_name(name: str) -> str:
    """A benchmark name as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "leaderboard"


def _page_plots(
    scores: pd.DataFrame, metrics: pd.DataFrame, plot_dir: Path, name: str, shown: list[Path]
) -> list[Path]:
    """Depth curves of the scores (and of the metrics, score vs metric): the files written;
    the first file of each plot is appended to `shown` (the page's figures)."""
    written = list(P.plot_depth(scores, plot_dir / f"{name}-depth"))
    shown.append(written[0])
    if not metrics.empty:
        for plot in (P.plot_metrics_depth, P.plot_score_vs_metric):
            stem = plot_dir / f"{name}-{plot.__name__.removeprefix('plot_').replace('_', '-')}"
            files = (
                plot(metrics, stem) if plot is P.plot_metrics_depth else plot(scores, metrics, stem)
            )
            shown.append(files[0])
            written += files
    return written


def _config_plots(
    scores: pd.DataFrame, plot_dir: Path, name: str, dim_plots: dict[str, Path]
) -> list[Path]:
    """Per configuration, a layer x dim heatmap (several dims) and a start x end heatmap of
    fused windows: the files written; each first file goes into `dim_plots` by its slug."""
    written: list[Path] = []
    for config in T.configs(scores):
        if len(T.dims_of(scores, config)) > 1:
            slug = T.config_slug(config)
            files = P.plot_dim_heatmap(
                T.dim_table(scores, config),
                plot_dir / f"{name}-{slug}-dims",
                title=f"{T.config_label(config)}: average by layer and dim",
            )
            dim_plots[slug] = files[0]
            written += files
        grid = T.window_grid(T.fusion_table(scores, config, T.dims_of(scores, config)[0]))
        if grid.notna().sum().sum() > 1:  # windows of fused layers: start x end heatmap
            slug = T.config_slug(config)
            files = P.plot_dim_heatmap(
                grid,
                plot_dir / f"{name}-{slug}-windows",
                title=f"{T.config_label(config)}: fused windows, average",
                xlabel="end layer",
                ylabel="start layer",
            )
            dim_plots[f"{slug}-windows"] = files[0]
            written += files
    return written


def publish(
    scores: pd.DataFrame,
    metrics: pd.DataFrame,
    folder: Path | str,
    *,
    benchmark: str,
    title: str | None = None,
    data: str = "not stated",
    command: str = "",
    with_plots: bool = True,
) -> list[Path]:
    """Write BENCH.md, BENCH.csv, BENCH.html (+ BENCH-metrics.csv, plots/) and index.html.

    `scores`/`metrics` are `frames.scores_frame`/`frames.metrics_frame` outputs; `data` says which
    copy of the task data was scored and `command` what produced the results (provenance).
    """
    if scores.empty:
        raise ValueError("No scores to publish: the results folders hold no layer results.")
    folder = Path(folder)
    manifest = R.read_manifest(folder)  # a broken one stops us before any file is written
    folder.mkdir(parents=True, exist_ok=True)
    name = _safe_name(benchmark)
    title = title or f"{benchmark}: main score by layer"
    prov = R.provenance(scores, data=data, command=command)
    written = [R.to_csv(scores, folder / f"{name}.csv")]
    if not metrics.empty:
        written.append(R.metrics_to_csv(metrics, folder / f"{name}-metrics.csv"))
    page_plots: list[Path] = []
    dim_plots: dict[str, Path] = {}
    if with_plots:
        written += _page_plots(scores, metrics, folder / "plots", name, page_plots)
        written += _config_plots(scores, folder / "plots", name, dim_plots)
    series_files, series_plots = publish_series(
        scores, metrics, folder, name, with_plots=with_plots
    )  # a checkpoint series: checkpoint x layer heatmaps, score-vs-step curves
    written += series_files
    page_plots += series_plots
    written.append(R.to_md(scores, folder / f"{name}.md", title=title, prov=prov, plots=page_plots))
    page = R.to_html(
        scores,
        folder / f"{name}.html",
        title=title,
        prov=prov,
        plots=page_plots,
        dim_plots=dim_plots,
    )
    written.append(page)
    written.append(R.write_index(folder, benchmark, page, scores, manifest))
    return written


def written_lines(paths: list[Path]) -> list[str]:
    """One "wrote PATH" line per file `publish` wrote; an SVG rides on its PNG's line."""
    written = list(dict.fromkeys(paths))
    lines = []
    for path in written:
        if path.suffix != ".svg" or path.with_suffix(".png") not in written:
            svg = path.suffix == ".png" and path.with_suffix(".svg") in written
            lines.append(f"wrote {path}" + (" (and .svg)" if svg else ""))
    return lines
