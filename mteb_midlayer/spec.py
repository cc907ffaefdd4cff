"""`ModelSpec`: the one description of which model to load and how, built once and passed down.

Every entry point (`LayerEncoder`, `sweep`, `layer_metrics`, the CLI) takes the same options;
they all build a `ModelSpec` (validated at construction) and hand it to `LayerModel.load`. A
loaded `LayerModel` keeps the *resolved* spec (its name, a revision that fingerprints local
weights, its max length and dtype), from which the store key and mteb's `ModelMeta` derive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .pooling import POOLINGS

__all__ = [
    "DTYPE_NAMES",
    "EMBEDDED_ALIAS",
    "ModelSpec",
    "PathNameError",
    "SpecConflictError",
    "absolute_source",
    "check_model_name",
    "check_revision",
    "excludes_prompt",
    "is_local_revision",
    "local_revision_label",
    "merge_spec",
    "prompts_hash",
    "qualified_name",
]

#: The packaged model's name as a source (`"minilm"`): never read as a folder.
EMBEDDED_ALIAS = "minilm"

#: dtype spellings accepted on the command line and in the API, with their canonical name.
DTYPE_NAMES = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


class SpecConflictError(ValueError):
    """An option that contradicts the spec (or the already loaded model) it is given with."""

    def __init__(self, option: str, given: Any, existing: Any) -> None:
        self.option, self.given, self.existing = option, given, existing
        super().__init__(
            f"{option}={given!r} conflicts with the model's {option}={existing!r}; "
            f"load the model with {option}={given!r} or leave the option out."
        )


class PathNameError(ValueError):
    """A model name or revision that cannot become a folder name under a results root."""


#: Longest folder name most filesystems take (bytes, UTF-8).
_MAX_COMPONENT_BYTES = 255
#: The fingerprint loading appends to a local folder's revision (`LayerModel.load`).
_LOCAL_FINGERPRINT = re.compile(r"(?:^|-)local-[0-9a-f]{12}$")


def _component_problem(part: str) -> str | None:
    """Why `part` cannot be one folder name (None: it can)."""
    if not part:
        return "an empty part (a leading, trailing or doubled '/', or an absolute path)"
    if part in (".", ".."):
        return f"a {part!r} part"
    if "\\" in part:
        return "a '\\' (a path separator on Windows)"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in part):
        return "a control character or an unpaired surrogate"
    if len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES:
        return f"a part longer than {_MAX_COMPONENT_BYTES} bytes"
    return None


def check_model_name(name: str) -> str:
    """`name` if it can name a results folder as mteb builds it (`org/name` ->
    `org__name`), else a one-line `PathNameError`.

    A model name becomes a folder under the results root (mteb's `ResultCache`), the metrics
    folder and an export's card; one with '..', an absolute path or more than mteb's one '/'
    would be written outside the output, or over another model's results.
    """
    if not isinstance(name, str):
        raise PathNameError(f"model name must be a string, got {name!r}.")
    parts = name.split("/")
    problem = "more than one '/' (mteb names are org/name)" if len(parts) > 2 else None
    for part in parts:
        problem = problem or _component_problem(part)
    if problem is None and len(name.replace("/", "__").encode("utf-8")) > _MAX_COMPONENT_BYTES:
        problem = f"more than {_MAX_COMPONENT_BYTES} bytes"
    if problem is not None:
        raise PathNameError(
            f"model name {name!r} cannot name a results folder: it has {problem}; "
            "give --name ORG/NAME (one '/', no '..')."
        )
    return name


def qualified_name(name: str) -> str:
    """The name results are filed under: `org/name` as given, a bare name as `local/<name>`;
    checked (`check_model_name`)."""
    return check_model_name(name if "/" in name else f"local/{name}")


def check_revision(revision: str) -> str:
    """`revision` if it can be one folder name (mteb writes `<model>/<revision>/`), else a
    one-line `PathNameError` (no '/', '..', absolute path)."""
    if not isinstance(revision, str):
        raise PathNameError(f"revision must be a string, got {revision!r}.")
    problem = "a '/'" if "/" in revision else _component_problem(revision)
    if problem is not None:
        raise PathNameError(
            f"revision {revision!r} cannot name a results folder: it has {problem}; "
            "give a commit hash or a label without '/' or '..'."
        )
    return revision


def local_revision_label(revision: str | None) -> str | None:
    """The label a local model was loaded with, its folder fingerprint taken off
    (`"v1-local-0123456789ab"` -> `"v1"`, `"local-0123456789ab"` -> None); other revisions
    unchanged. Loading the folder again appends the fingerprint of its files as they are now."""
    if revision is None:
        return None
    return _LOCAL_FINGERPRINT.sub("", revision) or None


def is_local_revision(revision: str | None) -> bool:
    """Whether `revision` carries a local folder's fingerprint (the model was a folder)."""
    return revision is not None and _LOCAL_FINGERPRINT.search(revision) is not None


def prompts_hash(prompts: Mapping[str, str] | None) -> str:
    """Short stable hash of a prompts dict (`"none"` without prompts): names the prompt set."""
    if not prompts:
        return "none"
    blob = json.dumps(dict(prompts), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:8]


def excludes_prompt(include_prompt: bool | None, prompts: Mapping[str, str] | None) -> bool:
    """Whether prompt tokens are left out of the vectors: only `include_prompt=False` *with*
    prompts changes a vector, so only then is it part of a result's or a store's identity."""
    return include_prompt is False and bool(prompts)


def absolute_source(source: str) -> str:
    """A local folder given relative to the working directory, made absolute (lexically, as
    `os.path.abspath`); anything else unchanged.

    A spec travels to workers whose working directory differs (Ray nodes, Slurm jobs), so it
    must not depend on the driver's; a model's name and revision do not change with it
    (`local/<folder name>`, a fingerprint of its files).
    """
    if source == EMBEDDED_ALIAS or os.path.isabs(source) or not os.path.exists(source):
        return source
    return os.path.abspath(source)


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how. `None` means "the model's own default" (resolved at load).

    `source`: Hub id, local folder (made absolute: `absolute_source`), or `"minilm"` (the
    packaged all-MiniLM-L6-v2); `None` for a model object passed in directly. `revision`: Hub
    commit; for a local folder a label that is combined with a fingerprint of its files.
    `pooling`: mean | cls | last | max | weightedmean | mean_sqrt_len (default: the
    sentence-transformers Pooling module, else mean).
    `include_prompt`: pool the prompt's tokens too (`True`), or leave them out as
    sentence-transformers' `Pooling(include_prompt=False)` does (INSTRUCTOR-style models);
    default: the sentence-transformers Pooling module's setting, else True.
    """

    source: str | None = None
    name: str | None = None
    revision: str | None = None
    pooling: str | None = None
    max_length: int | None = None
    dtype: str | None = None
    device: str | None = None
    prompts: Mapping[str, str] | None = None
    trust_remote_code: bool = False
    include_prompt: bool | None = None

    def __post_init__(self) -> None:
        if self.source is not None:
            object.__setattr__(self, "source", str(self.source))
            if not self.source.strip():
                raise ValueError("ModelSpec.source must be a Hub id or a folder, got ''.")
            object.__setattr__(self, "source", absolute_source(self.source))
        for key in ("name", "revision", "device"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"ModelSpec.{key} must be a non-empty string, got {value!r}.")
        if self.name is not None:  # both become folder names under the results root
            check_model_name(self.name)
        if self.revision is not None:
            check_revision(self.revision)
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(
                f"Unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}."
            )
        if self.max_length is not None and (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or self.max_length <= 0
        ):
            raise ValueError(f"max_length must be a positive int, got {self.max_length!r}.")
        if self.dtype is not None:
            key = str(self.dtype).removeprefix("torch.").lower()
            if key not in DTYPE_NAMES:
                raise ValueError(
                    f"Unknown dtype {self.dtype!r}; choose one of {sorted(set(DTYPE_NAMES))}."
                )
            object.__setattr__(self, "dtype", DTYPE_NAMES[key])
        if self.prompts is not None:
            if not isinstance(self.prompts, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.prompts.items()
            ):
                raise ValueError(f"prompts must map names to prompt strings, got {self.prompts!r}.")
            object.__setattr__(
                self, "prompts", {k: v for k, v in self.prompts.items() if v} or None
            )
        if not isinstance(self.trust_remote_code, bool):
            raise ValueError(f"trust_remote_code must be a bool, got {self.trust_remote_code!r}.")
        if self.include_prompt is not None and not isinstance(self.include_prompt, bool):
            raise ValueError(
                f"include_prompt must be True, False or None, got {self.include_prompt!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `from_dict` reads it back."""
        out = dataclasses.asdict(self)
        out["prompts"] = dict(self.prompts) if self.prompts else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown ModelSpec field(s): {', '.join(sorted(unknown))}.")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)


def merge_spec(spec: ModelSpec | None, **options: Any) -> ModelSpec:
    """`spec` with the keyword options that are set (not None, nor False where False is the
    default); a set option that differs from a set spec field is a `SpecConflictError` naming it."""
    given = {k: v for k, v in options.items() if v is not None and not _is_default_false(k, v)}
    if spec is None:
        return ModelSpec(**given)
    changes = {}
    for key, value in given.items():
        current = getattr(spec, key)
        candidate = getattr(ModelSpec(**{key: value}), key)  # normalised (dtype spellings)
        if current is not None and not _is_default_false(key, current) and current != candidate:
            raise SpecConflictError(key, value, current)
        changes[key] = candidate
    return spec.replace(**changes) if changes else spec


def _is_default_false(key: str, value: Any) -> bool:
    """`False` for a field whose default is `False` (trust_remote_code) means "not set"."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelSpec)}
    return value is False and defaults.get(key) is False
