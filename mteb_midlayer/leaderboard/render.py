"""Renderers: frames in, files out (Markdown, CSV, one self-contained HTML page, an index).

Nothing here computes a result: the numbers come from `leaderboard.tables`; this module only
formats them (scores x100 with two decimals, as mteb's leaderboard shows them; CSV stays raw),
marks the best layer and shows missing results as "—", never as 0.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from .. import __version__, frames
from ..inert import md_code, md_text, write_csv
from . import tables as T

#: How a missing result is shown (never 0, never blank in a rendered table).
MISSING = "—"


@dataclass(frozen=True)
class Provenance:
    """What produced a page: shown on every page so a reader can reproduce it."""

    models: list[str]
    tasks: list[str]
    data: str
    mteb_version: str
    package_version: str
    date: str
    command: str

    def items(self) -> list[tuple[str, str]]:
        return [
            ("Models", ", ".join(self.models)),
            (f"Tasks ({len(self.tasks)})", ", ".join(self.tasks)),
            ("Task data", self.data),
            ("mteb version", self.mteb_version),
            ("mteb-midlayer version", self.package_version),
            ("Date", self.date),
            ("Command", self.command),
        ]


def provenance(scores: pd.DataFrame, *, data: str, command: str) -> Provenance:
    """The provenance of a leaderboard built from `scores` (date = now, UTC)."""
    models = sorted(
        {f"{m} @ {r}" for m, r in zip(scores["model"], scores["revision"], strict=True)}
    )
    versions = sorted({str(v) for v in scores["mteb_version"].dropna()})
    return Provenance(
        models=models,
        tasks=sorted(scores["task"].unique()),
        data=data,
        mteb_version=", ".join(versions) or "unknown",
        package_version=__version__,
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
    )


def _fmt_score(value: float) -> str:
    """A score as mteb's leaderboard shows it (x100, two decimals); missing as "—"."""
    return MISSING if value is None or pd.isna(value) else f"{100 * float(value):.2f}"


def _fmt_gain(value: float) -> str:
    return MISSING if value is None or pd.isna(value) else f"{100 * float(value):+.2f}"


def layer_label(layer: int, last: int) -> str:
    """Layer number, with the two ends named so a reader needs no model card."""
    if layer == 0:
        return "0 (emb)"
    return f"{layer} (last)" if layer == last else str(layer)


# ---------------------------------------------------------------- CSV


def to_csv(scores: pd.DataFrame, path: Path | str) -> Path:
    """Tidy raw rows (`tables.CSV_COLUMNS`), one per configuration/layer/dim/task.

    A missing result is a row with an empty `main_score`. Values are not rounded; a text cell
    a spreadsheet would run as a formula is quoted (`inert.write_csv`).
    """
    return write_csv(T.tidy_rows(scores), path)


def metrics_to_csv(metrics: pd.DataFrame, path: Path | str) -> Path:
    """The metrics frame as it is (raw rows), for readers who want the numbers behind the plots."""
    return write_csv(frames.check_metrics(metrics), path)


# ---------------------------------------------------------------- Markdown


def _md_layer_table(lt: T.LayerTable) -> str:
    """The layer x task table as Markdown: best per column in bold, best/gain rows below."""
    last = lt.last_layer
    rows = {}
    for layer, values in lt.table.iterrows():
        cells = {}
        for col, value in values.items():
            text = _fmt_score(value)
            cells[col] = f"**{text}**" if lt.best.get(col) == layer else text
        cells["tasks"] = lt.status.loc[layer, "tasks"]
        cells["missing"] = md_text(lt.status.loc[layer, "missing"] or "")
        rows[layer_label(int(layer), last)] = cells
    rows["best layer"] = {
        c: (MISSING if pd.isna(b) else str(int(b))) for c, b in lt.best.items()
    } | {"tasks": "", "missing": ""}
    rows["gain best − last"] = {c: _fmt_gain(g) for c, g in lt.gain.items()} | {
        "tasks": "",
        "missing": "",
    }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.columns = [md_text(c) for c in frame.columns]
    frame.index.name = "layer"
    return frame.to_markdown(
        disable_numparse=True, colalign=["left"] + ["right"] * (frame.shape[1] - 1)
    )


def _md_dim_table(dims: pd.DataFrame) -> str:
    last = int(dims.index.max())
    best = dims.stack().idxmax() if dims.notna().any().any() else None
    out = pd.DataFrame(index=[layer_label(int(i), last) for i in dims.index])
    for dim in dims.columns:
        col = []
        for layer, value in dims[dim].items():
            text = _fmt_score(value)
            col.append(f"**{text}**" if best == (layer, dim) else text)
        out[f"dim {dim}"] = col
    out.index.name = "layer"
    return out.to_markdown(disable_numparse=True, colalign=["left"] + ["right"] * out.shape[1])


def _md_fusion_table(fused: pd.DataFrame) -> str:
    """Fused slices under the layer table: blocks run, scores x100, gain over the best layer."""
    out = pd.DataFrame(index=fused.index)
    out[T.BLOCKS] = fused[T.BLOCKS].astype(int).astype(str)
    gains = (T.VS_BEST_LAYER, T.VS_SAME_BLOCKS)
    for col in fused.columns:
        if col not in (T.BLOCKS, *gains):
            out[col] = fused[col].map(_fmt_score)
    for col in gains:
        out[col] = fused[col].map(_fmt_gain)
    out.index.name = "fusion"
    return out.to_markdown(disable_numparse=True, colalign=["left"] + ["right"] * out.shape[1])


def _md_window_grid(grid: pd.DataFrame) -> str:
    """The windows' average, start layer down and end layer across ("—": not scored)."""
    out = grid.map(_fmt_score)
    out.columns = [f"end {c}" for c in grid.columns]
    out.index = [f"start {i}" for i in grid.index]
    return out.to_markdown(disable_numparse=True, colalign=["left"] + ["right"] * out.shape[1])


def _md_fusions(scores: pd.DataFrame, config: dict, dim: int) -> list[str]:
    """The fused-layers section of a configuration (nothing when it has no fusion)."""
    fused = T.fusion_table(scores, config, dim)
    if fused.empty:
        return []
    parts = [
        "### Fused layers",
        "",
        "Equal-weight mean of the layers' pooled vectors (`sweep --fuse`); blocks: what the "
        "fusion runs (its deepest layer); vs best layer: its average minus the best single "
        "layer's; vs best layer <= blocks: minus the best single layer that runs no more "
        "blocks (the gain at equal cost).",
        "",
        _md_fusion_table(fused),
        "",
    ]
    grid = T.window_grid(fused)
    if not grid.empty:
        parts += ["Windows (layers start..end), average:", "", _md_window_grid(grid), ""]
    return parts


def _md_summary(summary: pd.DataFrame) -> str:
    view = pd.DataFrame(
        {
            "model": summary["model"].map(md_text),
            "revision": summary["revision"].map(md_text),
            "pooling": summary["pooling"].map(md_text),
            "normalize": summary["normalize"],
            "final_norm": summary["final_norm"],
            "dim": summary["dim"],
            "last layer avg": summary["last_average"].map(_fmt_score),
            "best layer": [
                MISSING if pd.isna(b) else f"{int(b)} / {int(n)} ({d:.2f})"
                for b, n, d in zip(
                    summary["best_layer"],
                    summary["last_layer"],
                    summary["best_depth"],
                    strict=True,
                )
            ],
            "best layer avg": summary["best_average"].map(_fmt_score),
            "gain": summary["gain"].map(_fmt_gain),
            "tasks": summary["tasks"],
        }
    )
    align = ["left"] * 5 + ["right"] * (view.shape[1] - 5)
    return view.to_markdown(index=False, disable_numparse=True, colalign=align)


def _md_provenance(prov: Provenance) -> str:
    lines = [f"- **{k}**: {md_text(v)}" for k, v in prov.items() if k != "Command"]
    lines.append(f"- **Command**: {md_code(prov.command)}")
    return "\n".join(lines)


def to_md(
    scores: pd.DataFrame,
    path: Path | str,
    *,
    title: str,
    prov: Provenance,
    plots: Sequence[Path] = (),
) -> Path:
    """One Markdown page (renders on GitHub): summary, then per configuration its tables.

    Scores are main scores x100; bold marks the best layer of each column; "—" is a missing
    result, and an average over a layer that lacks a task is "—" (the `missing` column names
    the task). `plots` (PNG files) are linked relative to the page.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {md_text(title)}", "", _md_provenance(prov), ""]
    parts += [
        "Main scores x100 (mteb's main score per task). **Bold**: best layer of the column. "
        f"{MISSING}: missing (an average is shown only for layers with every task). "
        "Gain: best layer minus last layer.",
        "",
        "## Summary",
        "",
        _md_summary(T.summary_table(scores)),
        "",
    ]
    for plot in plots:
        rel = Path(plot).resolve().relative_to(path.parent.resolve())
        parts += [f"![{rel.stem}]({rel.as_posix()})", ""]
    for config in T.configs(scores):
        dims = T.dims_of(scores, config)
        lt = T.layer_task_table(scores, config, dims[0])
        parts += [
            f"## {md_text(T.config_label(config))}",
            "",
            f"Revision {md_code(config['revision'])}, dim {dims[0]}.",
            "",
            _md_layer_table(lt),
            "",
        ]
        parts += _md_fusions(scores, config, dims[0])
        if len(dims) > 1:
            parts += [
                "### Average by layer and width (2D Matryoshka)",
                "",
                _md_dim_table(T.dim_table(scores, config)),
                "",
            ]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# ---------------------------------------------------------------- HTML


def _shade(value: float, lo: float, hi: float) -> str:
    """Background colour of a score cell: paler for the column's worst, greener for its best."""
    if value is None or pd.isna(value):
        return "#f1f1f1"
    t = 1.0 if hi <= lo else (float(value) - lo) / (hi - lo)
    return f"hsl(140, 55%, {96 - 38 * t:.0f}%)"


def _cell(value: float, lo: float, hi: float, *, best: bool = False, text: str | None = None):
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return {
        "v": "" if missing else f"{float(value):.6g}",
        "text": text if text is not None else _fmt_score(value),
        "bg": _shade(value, lo, hi),
        "best": best,
        "missing": missing,
    }


def _html_dim_rows(table: pd.DataFrame, last: int) -> list[dict]:
    """Rows of the layer x dim table (the best cell marked)."""
    lo, hi = table.min().min(), table.max().max()
    best = table.stack().idxmax() if table.notna().any().any() else None
    return [
        {
            "label": layer_label(int(layer), last),
            "cells": [_cell(v, lo, hi, best=best == (layer, d)) for d, v in values.items()],
        }
        for layer, values in table.iterrows()
    ]


def _html_fusions(fused: pd.DataFrame) -> dict:
    """Template context of the fused slices: one row per fusion (cells and gains), and the
    start x end grid of fused windows."""
    gains = (T.VS_BEST_LAYER, T.VS_SAME_BLOCKS)
    fusion_columns = [c for c in fused.columns if c not in (T.BLOCKS, *gains)]
    fusion_rows = [
        {
            "label": str(label),
            "blocks": int(values[T.BLOCKS]),
            "cells": [
                _cell(values[c], fused[c].min(), fused[c].max(), best=False) for c in fusion_columns
            ],
            "gains": [
                {
                    "v": "" if pd.isna(values[g]) else f"{values[g]:.6g}",
                    "text": _fmt_gain(values[g]),
                }
                for g in gains
            ],
        }
        for label, values in fused.iterrows()
    ]
    grid = T.window_grid(fused)
    window_rows = []
    if not grid.empty:
        lo, hi = grid.min().min(), grid.max().max()
        window_rows = [
            {"label": str(start), "cells": [_cell(v, lo, hi) for v in values.to_numpy()]}
            for start, values in grid.iterrows()
        ]
    return {
        "fusion_columns": fusion_columns,
        "fusion_rows": fusion_rows,
        "window_ends": [str(c) for c in grid.columns],
        "window_rows": window_rows,
    }


def _html_model(scores: pd.DataFrame, config: dict, plots: dict[str, str]) -> dict:
    """Template context of one configuration: task rows x layer columns, averages below."""
    dims = T.dims_of(scores, config)
    lt = T.layer_task_table(scores, config, dims[0])
    last = lt.last_layer
    layers = [int(i) for i in lt.table.index]

    def row(col: str, label: str, task_type: str) -> dict:
        values = lt.table[col]
        lo, hi = values.min(skipna=True), values.max(skipna=True)
        best = lt.best[col]
        cells = [_cell(values[layer], lo, hi, best=best == layer) for layer in layers]
        best_text = MISSING if pd.isna(best) else str(int(best))
        return {
            "label": label,
            "type": task_type,
            "cells": cells,
            "best": {"v": "" if pd.isna(best) else str(int(best)), "text": best_text},
            "gain": {
                "v": "" if pd.isna(lt.gain[col]) else f"{lt.gain[col]:.6g}",
                "text": _fmt_gain(lt.gain[col]),
            },
        }

    tasks = [row(t, t, lt.types[t]) for t in lt.task_columns]
    averages = [
        row(c, c, c.removeprefix(T.TYPE_PREFIX) if c != T.AVERAGE else "")
        for c in lt.average_columns
    ]
    incomplete = [
        f"layer {i}: {lt.status.loc[i, 'tasks']} tasks, missing {lt.status.loc[i, 'missing']}"
        for i in layers
        if lt.status.loc[i, "missing"]
    ]
    dim_rows = _html_dim_rows(T.dim_table(scores, config), last) if len(dims) > 1 else []
    return {
        **_html_fusions(T.fusion_table(scores, config, dims[0])),
        "window_plot": plots.get(T.config_slug(config) + "-windows"),
        "slug": T.config_slug(config),
        "label": T.config_label(config),
        "config": config,
        "dim": dims[0],
        "dims": dims,
        "layers": [{"n": i, "label": layer_label(i, last)} for i in layers],
        "tasks": tasks,
        "averages": averages,
        "incomplete": incomplete,
        "dim_rows": dim_rows,
        "dim_plot": plots.get(T.config_slug(config)),
    }


def _summary_rows(scores: pd.DataFrame) -> list[dict]:
    summary = T.summary_table(scores)
    lo, hi = summary["best_average"].min(), summary["best_average"].max()
    rows = []
    for rank, r in enumerate(summary.itertuples(index=False), start=1):
        best = r.best_layer
        rows.append(
            {
                "rank": rank,
                "slug": T.config_slug(r._asdict()),
                "label": T.config_label(r._asdict()),
                "revision": r.revision,
                "dim": r.dim,
                "last": _cell(r.last_average, lo, hi),
                "best_layer": {
                    "v": "" if pd.isna(best) else str(int(best)),
                    "text": MISSING if pd.isna(best) else f"{int(best)} / {r.last_layer}",
                },
                "depth": {
                    "v": "" if pd.isna(r.best_depth) else f"{r.best_depth:.4f}",
                    "text": MISSING if pd.isna(r.best_depth) else f"{r.best_depth:.2f}",
                },
                "best": _cell(r.best_average, lo, hi, best=rank == 1),
                "gain": {
                    "v": "" if pd.isna(r.gain) else f"{r.gain:.6g}",
                    "text": _fmt_gain(r.gain),
                },
                "tasks": r.tasks,
            }
        )
    return rows


def _png_data_uri(path: Path | str) -> str:
    """A PNG as a data: URI, so the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _template(name: str):
    import jinja2

    env = jinja2.Environment(autoescape=jinja2.select_autoescape(default=True))
    source = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return env.from_string(source)


def to_html(
    scores: pd.DataFrame,
    path: Path | str,
    *,
    title: str,
    prov: Provenance,
    plots: Sequence[Path] = (),
    dim_plots: dict[str, Path] | None = None,
) -> Path:
    """One self-contained page (inline CSS/JS, plots as data URIs; opens offline).

    Sortable columns (click a header), cells shaded by score within their row, the best layer
    outlined and bold, a task-type filter, and the provenance block.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dim_uris = {k: _png_data_uri(v) for k, v in (dim_plots or {}).items()}
    models = [_html_model(scores, c, dim_uris) for c in T.configs(scores)]
    task_types = sorted({t["type"] for m in models for t in m["tasks"]})
    page = _template("page.html.j2").render(
        title=title,
        prov=prov.items(),
        summary=_summary_rows(scores),
        models=models,
        task_types=task_types,
        plots=[{"name": Path(p).stem, "uri": _png_data_uri(p)} for p in plots],
        missing=MISSING,
    )
    path.write_text(page, encoding="utf-8")
    return path


class ManifestError(ValueError):
    """A `leaderboard.json` that cannot be read: named, and found before any page is written."""


_MANIFEST = "leaderboard.json"


def read_manifest(folder: Path | str) -> dict:
    """The pages listed in `folder/leaderboard.json` ({} when there is none).

    A file that is not JSON, or not the mapping `write_index` writes, is a `ManifestError`
    naming it (one line), so a caller can check it before writing anything.
    """
    path = Path(folder) / _MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ManifestError(
            f"{path} is not readable JSON ({reason}); fix or delete it (it lists the pages "
            "of earlier runs for index.html)."
        ) from None
    entries_ok = isinstance(manifest, dict) and all(
        isinstance(e, dict)
        and isinstance(e.get("page"), str)
        and isinstance(e.get("models"), list)
        and all(isinstance(m, dict) and {"label", "anchor"} <= m.keys() for m in e["models"])
        for e in manifest.values()
    )
    if not entries_ok:
        raise ManifestError(
            f"{path} is not a leaderboard list ({{benchmark: {{page, models}}}}); fix or "
            "delete it (it lists the pages of earlier runs for index.html)."
        )
    return manifest


def write_index(
    folder: Path | str,
    benchmark: str,
    page: Path,
    scores: pd.DataFrame,
    manifest: dict | None = None,
) -> Path:
    """`folder/index.html` linking every benchmark page written there and every model on it.

    The list lives in `folder/leaderboard.json`, so pages written by earlier runs stay linked;
    `manifest` is that list as `read_manifest` read it (read here when not given).
    """
    folder = Path(folder)
    manifest_path = folder / _MANIFEST
    manifest = dict(read_manifest(folder) if manifest is None else manifest)
    manifest[benchmark] = {
        "page": page.name,
        "models": [
            {"label": T.config_label(c), "anchor": T.config_slug(c)} for c in T.configs(scores)
        ],
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    items = []
    for name, entry in sorted(manifest.items()):
        links = "".join(
            f'<li><a href="{html.escape(entry["page"])}#{html.escape(str(m["anchor"]))}">'
            f"{html.escape(str(m['label']))}</a></li>"
            for m in entry["models"]
        )
        items.append(
            f'<li><a href="{html.escape(entry["page"])}">{html.escape(name)}</a><ul>{links}</ul></li>'
        )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Leaderboards</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}"
        "li{margin:.3rem 0}</style></head><body><h1>Leaderboards</h1>"
        f"<ul>{''.join(items)}</ul></body></html>"
    )
    index = folder / "index.html"
    index.write_text(body, encoding="utf-8")
    return index
