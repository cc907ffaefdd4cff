"""Tidy tables from mteb's own result files.

mteb's `to_dataframe` keys rows by model, not by experiment (it averages every layer into one
column), so the layer x task table is built here from the slice folders, whose
`model_meta.json` `experiment_kwargs` say which `(layer, dim, pooling, normalize, max_length,
dtype, prompts)` each result belongs to.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mteb
import pandas as pd

logger = logging.getLogger(__name__)

LONG_COLUMNS = [
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


class ResultsFolderError(ValueError):
    """A results folder that does not exist (reading never creates one)."""


@dataclass
class ResultScan:
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
) -> ResultScan:
    """Read every slice folder under `output/results` that one of our encoders wrote.

    Reads the files itself (with mteb's `TaskResult.from_disk`) rather than through
    `ResultCache.load_results`, so one torn file or a folder without `model_meta.json` is
    named in `problems` instead of failing the whole read or vanishing.
    """
    from mteb.results import TaskResult

    from .results import read_identity
    from .tasks.benchmark import task_main_score

    root = Path(output)
    if root.is_file():
        raise ResultsFolderError(f"{root} is a file; name the results folder (sweep --output).")
    if not root.is_dir():
        raise ResultsFolderError(f"No results folder at {root}.")
    rows, problems = [], []
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
        if model is not None and meta.get("name") != model:
            continue
        if revision is not None and meta.get("revision") != revision:
            continue
        if pooling is not None and kwargs.get("pooling") != pooling:
            continue
        for path in files:
            try:
                task_result = TaskResult.from_disk(path)
            except Exception as exc:
                problems.append(f"{path} is unreadable ({type(exc).__name__}); rerun sweep")
                continue
            split = (
                "test" if "test" in task_result.scores else next(iter(task_result.scores), "test")
            )
            try:
                score = task_main_score(task_result, split=split)
            except (KeyError, ValueError):
                continue
            if not math.isfinite(score):
                problems.append(f"{path} has a NaN score; rerun sweep to rescore it")
                continue
            identity = read_identity(path) or {}
            rows.append(
                {
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
                    "final_norm": kwargs.get("final_norm", "last"),
                    "include_prompt": bool(kwargs.get("include_prompt", True)),
                    "n_layers": _n_layers(identity.get("n_layers")),
                    "fuse": str(kwargs.get("fuse") or ""),
                }
            )
    df = pd.DataFrame(rows, columns=LONG_COLUMNS)
    df = df.sort_values(["model", "revision", "fuse", "layer", "dim", "task"], ignore_index=True)
    return ResultScan(df, problems)


def layer_results(
    output: Path | str,
    *,
    model: str | None = None,
    revision: str | None = None,
    pooling: str | None = None,
) -> pd.DataFrame:
    """One row per (model, revision, layer, dim, pooling, normalize, final_norm, task) with its
    main score.

    The score follows TASKS.md (English subsets, STS17 en-en; see `tasks.benchmark`).
    `max_length`, `dtype` and `prompts` (a hash) tell runs of other settings apart; `final_norm`
    is "last" for results written before the option; `n_layers` is the model's layer count L
    from the run identity (NaN when not recorded). `fuse` is a fused slice's label (e.g.
    "0+6", `fusion.py`; its `layer` is the deepest fused layer), "" for a single layer. Files
    that cannot be read are logged as warnings (`scan_results` returns them).
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
    try:
        return mteb.get_task(name).metadata.type
    except Exception:
        return None


def layer_table(long: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Wide layer x task table of main scores, with `mean`, `n_tasks` and `missing`.

    One block per Matryoshka width: the index is `layer` for a single width, else
    `(dim, layer)`; with several final norms, `final_norm` leads the index, and with several
    poolings, `pooling` leads it. `long` holds one configuration otherwise (model, revision,
    normalize). Fused slices (a `fuse` label) follow the layer rows, indexed by their label
    (e.g. "0+6").
    """
    if "pooling" in long.columns and long["pooling"].nunique() > 1:
        blocks = {
            str(mode): layer_table(long[long["pooling"] == mode], tasks)
            for mode in sorted(long["pooling"].unique())
        }
        inner = next(iter(blocks.values())).index.names
        return pd.concat(blocks, names=["pooling", *inner])
    if "final_norm" in long.columns and long["final_norm"].nunique() > 1:
        blocks = {
            str(norm): layer_table(long[long["final_norm"] == norm], tasks)
            for norm in sorted(long["final_norm"].unique())
        }
        inner = next(iter(blocks.values())).index.names
        return pd.concat(blocks, names=["final_norm", *inner])
    dims = sorted(long["dim"].unique(), reverse=True) if len(long) else []
    if len(dims) <= 1:
        return _with_fusions(long, tasks)
    blocks = {int(d): _with_fusions(long[long["dim"] == d], tasks) for d in dims}
    return pd.concat(blocks, names=["dim", "layer"])


def _with_fusions(long: pd.DataFrame, tasks: Sequence[str] | None) -> pd.DataFrame:
    """`layer_average` of the single layers, then one row per fusion (by cost, then label)."""
    from .tasks.benchmark import layer_average

    if "fuse" not in long.columns or not (long["fuse"] != "").any():
        return layer_average(long, tasks=tasks)
    plain = long[long["fuse"] == ""]
    fused = long[long["fuse"] != ""].drop(columns="layer").rename(columns={"fuse": "layer"})
    order = sorted(fused["layer"].unique(), key=lambda f: (_deepest(f), f))
    block = layer_average(fused, tasks=tasks).reindex(order)
    return block if plain.empty else pd.concat([layer_average(plain, tasks=tasks), block])


def _deepest(label: str) -> int:
    """The deepest layer of a fusion label ("0+6", "4-6"): fusions sort by their cost."""
    return max(int(x) for x in label.replace("-", "+").split("+") if x)
