"""Checkpoints of one model as a series: which they are, in what order, and the manifest.

A series is several checkpoints of one model (Hub revisions, or local `run/checkpoint-*`
folders) swept under one model name. Each checkpoint keeps its own identity (a Hub commit or a
local folder's `local-<12 hex>` fingerprint), so its results are filed as today; what makes them
a series is the manifest `OUTPUT/series/<name>.json`, which maps each revision to its checkpoint
name and step. `frames` reads it to fill the `checkpoint` and `step` columns; a results root
without a manifest (a single-model run) has no such columns. It imports nothing
of the pipeline, so every later stage (frames, select, leaderboard) may read it.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import write_atomic

_SERIES_FOLDER = "series"
#: The columns a series adds to the scores and metrics frames.
SERIES_COLUMNS = ["checkpoint", "step"]

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Checkpoint:
    """One member of a series: `source` is loaded, `revision` given to the loader (None for a
    local folder: its content fingerprint becomes the revision)."""

    name: str
    step: int | None
    source: str
    revision: str | None = None


def checkpoint_step(name: str) -> int | None:
    """The training step in a checkpoint's name: its last run of digits
    (`checkpoint-1200` -> 1200, `step8000` -> 8000, `main` -> None)."""
    found = re.findall(r"\d+", name)
    return int(found[-1]) if found else None


def is_pattern(source: Any) -> bool:
    """Whether `source` is a glob of checkpoint folders (`run/checkpoint-*`)."""
    return isinstance(source, (str, Path)) and bool(_GLOB_CHARS.search(str(source)))


def local_checkpoints(pattern: str | Path) -> list[Checkpoint]:
    """The folders matching `pattern`, ordered by step (then name); an error if none match."""
    folders = [Path(p) for p in glob.glob(str(pattern)) if Path(p).is_dir()]
    if not folders:
        raise FileNotFoundError(f"No checkpoint folder matches {pattern}.")
    found = [Checkpoint(f.name, checkpoint_step(f.name), str(f)) for f in folders]
    missing = [c.name for c in found if c.step is None]
    if missing and len(found) > 1:
        raise ValueError(
            f"Cannot order checkpoints without a step in their name: {', '.join(missing)}."
        )
    return sorted(found, key=lambda c: (c.step if c.step is not None else -1, c.name))


def revision_checkpoints(model: str, revisions: Sequence[str] | str) -> list[Checkpoint]:
    """Hub revisions of `model` in the order given (`step1000,step8000,main`)."""
    if isinstance(revisions, str):
        revisions = revisions.split(",")
    names = [r.strip() for r in revisions if r.strip()]
    if not names:
        raise ValueError("--revisions names no revision.")
    if len(set(names)) != len(names):
        raise ValueError(f"--revisions names a revision twice: {', '.join(names)}.")
    return [Checkpoint(r, checkpoint_step(r), str(model), r) for r in names]


def resolve_checkpoints(
    model: Any, revisions: Sequence[str] | str | None = None
) -> list[Checkpoint]:
    """The checkpoints of a series: `revisions` of `model`, else the folders `model` matches."""
    if revisions:
        if is_pattern(model):
            raise ValueError("Give either --revisions or a checkpoint folder pattern, not both.")
        return revision_checkpoints(str(model), revisions)
    if is_pattern(model):
        return local_checkpoints(model)
    raise ValueError(
        f"{model} is not a series: give --revisions or a pattern like run/checkpoint-*."
    )


def series_name(model: Any, revisions: Sequence[str] | str | None = None) -> str:
    """The model name a series is filed under when none is given: the Hub id, or the folder
    holding the checkpoints (`run/checkpoint-*` -> `run`)."""
    if revisions:
        return str(model)
    parent = Path(str(model)).parent
    return parent.resolve().name or "series"


def manifest_path(output: Path | str, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "__" for c in name)
    return Path(output) / _SERIES_FOLDER / f"{safe}.json"


def record_checkpoint(output: Path | str, name: str, revision: str, checkpoint: Checkpoint) -> Path:
    """Add (or update) one checkpoint in the series manifest of model `name` under `output`."""
    path = manifest_path(output, name)
    data: dict[str, Any] = {"model": name, "checkpoints": []}
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
    rows = [r for r in data["checkpoints"] if r["revision"] != revision]
    rows.append(
        {
            "revision": revision,
            "checkpoint": checkpoint.name,
            "step": checkpoint.step,
            "source": checkpoint.source,
        }
    )
    data["checkpoints"] = sorted(
        rows, key=lambda r: (r["step"] if r["step"] is not None else -1, r["checkpoint"])
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1) + "\n")
    return path


def read_series(roots: Iterable[Path | str]) -> list[dict[str, Any]]:
    """Every manifest row under `roots`: model, revision, checkpoint, step (empty: no series)."""
    out = []
    for root in roots:
        folder = Path(root) / _SERIES_FOLDER
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            data = json.loads(path.read_text(encoding="utf-8"))
            for row in data.get("checkpoints", []):
                out.append(
                    {
                        "model": data["model"],
                        "revision": row["revision"],
                        "checkpoint": row["checkpoint"],
                        "step": row["step"],
                    }
                )
    return out
