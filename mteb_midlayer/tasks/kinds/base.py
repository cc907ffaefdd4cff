"""What every task kind shares: the error, JSON Lines in and out, row validation with pydantic.

A kind module (``sts``, ``classification``, ...) declares its rows as pydantic models and reads
and writes them through :func:`read_jsonl` / :func:`write_jsonl`; errors always name the file
and, when one line is at fault, the line (:class:`LocalDataError`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

from datasets import Dataset
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "Binary",
    "Id",
    "Ids",
    "Label",
    "Labels",
    "LocalDataError",
    "Number",
    "Row",
    "Texts",
    "columns",
    "iter_lines",
    "plain",
    "read_jsonl",
    "write_jsonl",
]


class LocalDataError(ValueError):
    """A task folder that does not hold valid data in the layout.

    Attributes:
        path: the file (or folder) at fault, if any.
        line: the 1-based line number in ``path``, if the fault is on one line.
    """

    def __init__(self, message: str, path: Path | str | None = None, line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        self.reason = message
        where = ""
        if path is not None:
            where = f"{path}, line {line}: " if line is not None else f"{path}: "
        super().__init__(where + message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.path, self.line))


# --------------------------------------------------------------------------------------------
# field types: strict JSON types (no "1" for 1, no true for 1), checked by pydantic
# --------------------------------------------------------------------------------------------


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)  # one column type whether a file writes 2 or 2.0


def _binary(value: int) -> int:
    if value not in (0, 1):
        raise ValueError(f"expected 0 or 1, got {value!r}")
    return value


#: A finite JSON number, as a float.
Number = Annotated[int | float, AfterValidator(_finite)]
#: A classification label: an integer or a string (never a boolean).
Label = int | str
#: A pair-classification label.
Binary = Annotated[int, AfterValidator(_binary)]
#: A document or query id: a string or an integer, kept as a string.
Id = Annotated[str | int, AfterValidator(str)]

#: Non-empty lists (a clustering set, a query's candidates).
Texts = Annotated[list[str], Field(min_length=1)]
Labels = Annotated[list[Label], Field(min_length=1)]
Ids = Annotated[list[Id], Field(min_length=1)]


class Row(BaseModel):
    """Base of the row models: strict JSON types, other fields of a line ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=False)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file, with 1-based line numbers."""
    if not path.is_file():
        raise LocalDataError("missing file" if not path.exists() else "not a file", path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LocalDataError(f"not valid UTF-8 ({e.reason})", path, lineno) from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if text.strip():
                yield lineno, text


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.60}"


def _explain(exc: ValidationError, obj: dict[str, Any]) -> str:
    """pydantic's complaint about the first bad field, as one line in our words.

    A union (``int | float``, ``str | list``) fails once per alternative: they are joined
    ("expected a valid integer or a valid number"); a check of ours keeps its own message.
    """
    errors = exc.errors(include_url=False)
    missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing" and len(e["loc"]) == 1]
    if missing:
        return (
            f"missing field(s) {', '.join(map(repr, missing))}; the line has "
            f"{', '.join(map(repr, obj)) or 'no fields'}"
        )
    first = errors[0]
    same = [e for e in errors if e["loc"][:1] == first["loc"][:1]]
    ours = next((e for e in same if e["type"] == "value_error"), None)
    if ours is not None:
        msg = ours["msg"].removeprefix("Value error, ")
    else:
        wants = list(dict.fromkeys(e["msg"] for e in same))
        if all(w.startswith("Input should be ") for w in wants):
            expected = " or ".join(w.removeprefix("Input should be ") for w in wants)
            msg = f"expected {expected}, got {_describe(first['input'])}"
        else:
            msg = wants[0][:1].lower() + wants[0][1:]
    loc = first["loc"]
    field = loc[0] if loc and isinstance(loc[0], str) and loc[0] in obj else None
    item = next((p for p in loc[1:] if isinstance(p, int)), None)
    if field is None:
        return msg
    return f"field {field!r}" + (f" item {item}" if item is not None else "") + f": {msg}"


def read_jsonl(path: Path, model: type[Row], *, consistent: Sequence[str] = ()) -> list[Row]:
    """Read a JSON Lines file into validated rows, one ``model`` a line.

    Args:
        path: the file.
        model: the row model; fields it does not declare are ignored.
        consistent: fields whose values (or list items) must all have one JSON type, since a
            dataset column holds one type.

    Raises:
        LocalDataError: naming the file and line of the first fault, or the file if it holds
            no record.
    """
    rows: list[Row] = []
    seen_type: dict[str, tuple[type, int]] = {}
    for lineno, text in iter_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise LocalDataError(f"bad JSON: {e.msg} (column {e.colno})", path, lineno) from None
        if not isinstance(obj, dict):
            raise LocalDataError(f"expected a JSON object, got {_type_name(obj)}", path, lineno)
        try:
            row = model.model_validate(obj)
        except ValidationError as e:
            raise LocalDataError(_explain(e, obj), path, lineno) from None
        for name in consistent:
            value = getattr(row, name)
            for item in value if isinstance(value, list) else [value]:
                t = type(item)
                first = seen_type.setdefault(name, (t, lineno))
                if first[0] is not t:
                    raise LocalDataError(
                        f"field {name!r}: {t.__name__} value {item!r:.60}, but line {first[1]} "
                        f"has a {first[0].__name__}; a column must hold one type",
                        path,
                        lineno,
                    )
        rows.append(row)
    if not rows:
        raise LocalDataError("no records (empty split)", path)
    return rows


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """numpy scalars and the like to JSON-able Python values."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        return value.item()
    return value


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as UTF-8 JSON Lines; refuses to write an empty split (readers reject it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    if n == 0:
        raise ValueError(f"refusing to write an empty split: {path}")
    return n


def columns(ds: Dataset, names: Sequence[str], path: Path) -> list[list[Any]]:
    """The named columns of a dataset about to be written to ``path`` (named if absent)."""
    missing = [n for n in names if n not in ds.column_names]
    if missing:
        raise ValueError(
            f"cannot write {path}: the dataset has no column(s) {missing} (it has {ds.column_names})"
        )
    return [ds[n] for n in names]
