"""Ship a choice: a selection's chosen slice, or a model's label-free pick, as a model folder.

What `select --export` does, as one library call: the chosen row becomes `export` arguments
(layer or fusion, dim, pooling, normalisation, final norm and the run settings it was scored
with), so the folder written is the slice that was scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..export import ExportResult, export
from ..model import EMBEDDED_ALIAS, EMBEDDED_NAME, LayerModel
from ..spec import check_model_name, is_local_revision, local_revision_label
from .budgets import Budget
from .recommend import export_row
from .selection import Selection


class NothingToExport(ValueError):
    """The selection has no slice to export as asked (none fits, none shared, no pick)."""


@dataclass(frozen=True)
class Shipment:
    """The export, and lines that say what was picked and why (empty for a budget's best)."""

    result: ExportResult
    lines: list[str] = field(default_factory=list)


def ship(
    selection: Selection,
    out: str | Path,
    *,
    budget: Budget | None = None,
    label_free: bool = False,
    model: str | None = None,
    source: str | None = None,
    pooling: str | None = None,
    dim: int | None = None,
    overwrite: bool = False,
    results: str | Path | None = None,
) -> Shipment:
    """Export the best slice under `budget` (`Selection.chosen`) or, with `label_free`, the
    judged `model`'s recommended label-free pick (its own pooling unless `pooling`; `dim` else
    full width). `source`: where to load the model from (default: its name; `minilm` for the
    embedded one). `results` go into the model card. Raises `NothingToExport` when nothing
    fits, and `ValueError` when a locally swept model's folder is not given as `source`."""
    if label_free:
        return _ship_recommended(selection, out, model, source, pooling, dim, overwrite, results)
    label = budget.label if budget is not None else None
    chosen = selection.chosen(label)
    if chosen is None and selection.ranked_on == []:
        raise NothingToExport(
            "The configurations share no task, so none is chosen across them: name one with --model"
        )
    if chosen is None:
        raise NothingToExport(f"No slice fits the budget {label or 'none'}")
    revision = chosen["revision"]
    if source is None and is_local_revision(revision):
        # its name (local/<folder name>) is no path: never load whatever sits there now
        raise ValueError(
            f"{chosen['model']} was swept from a local folder ({revision}) that the results "
            "do not locate (moved since?): pass --source with that folder."
        )
    fuse = chosen.get("fuse") or None
    result = export(
        source or _source(chosen["model"], check=True),
        out,
        layer=None if fuse else int(chosen["layer"]),
        fuse=fuse,
        expected_revision=revision,
        revision=local_revision_label(revision),  # a folder's fingerprint: added on load
        overwrite=overwrite,
        results=results,
        **_slice(chosen, name=chosen["model"]),
    )
    return Shipment(result)


def _ship_recommended(
    selection: Selection,
    out: str | Path,
    model: str | None,
    source: str | None,
    pooling: str | None,
    dim: int | None,
    overwrite: bool,
    results: str | Path | None,
) -> Shipment:
    """The judged model's recommended label-free pick; its row is marked `exported`."""
    rows = selection.recommendation.rows
    if rows.empty:
        raise NothingToExport(
            "No label-free recommendation to export (it needs two models or more with "
            "scores and metrics in RESULTS)"
        )
    models = sorted(rows["model"].unique())
    if model is None and len(models) > 1:
        raise NothingToExport(f"Name the judged model with --model (one of {', '.join(models)})")
    name = model or models[0]
    source = source or _source(name)
    # the model's own pooling and normalisation: its default configuration
    lm = LayerModel.load(source, name=name, device="cpu", dtype="float32")
    own_pooling, normalize = pooling or lm.default_pooling, lm.default_normalize
    del lm
    index, notes = export_row(rows, name, pooling=own_pooling, normalize=normalize, dim=dim)
    row = rows.loc[index]
    result = export(
        source,
        out,
        layer=int(row["chosen_layer"]),
        revision=row["revision"],
        overwrite=overwrite,
        results=results,
        **_slice(row.to_dict(), name=name),
    )
    rows.loc[index, "exported"] = True
    pick = (
        f"label-free pick of {name}: {row['rule']} -> layer {int(row['chosen_layer'])} "
        f"(regret {row['regret']:.4f}, gain {row['gain']:+.4f})"
    )
    return Shipment(result, [pick, *(f"note: {note}" for note in notes)])


def _source(name: str, *, check: bool = False) -> str:
    """Where to load a model named `name` in the results: the embedded one, else its name."""
    if name == EMBEDDED_NAME:
        return EMBEDDED_ALIAS
    return check_model_name(name) if check else name


def _slice(row: dict[str, Any], *, name: str) -> dict[str, Any]:
    """`export` arguments of a selection row's slice and run settings."""
    return dict(
        name=name,
        dim=int(row["dim"]),
        pooling=row["pooling"],
        normalize=bool(row["normalize"]),
        final_norm=str(row.get("final_norm") or "last"),
        max_length=int(row.get("max_length") or 0) or None,
        include_prompt=None if bool(row.get("include_prompt", True)) else False,
    )
