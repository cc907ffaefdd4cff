"""Metrics on any corpus: the texts of a plain-text or JSON Lines file, named by content.

The paper's metric-vs-depth curves use WikiText-103; users want their own domain's texts. A
corpus is filed like a task, with ``dataset = "<file stem>-<hash of its texts>"``, so its rows sit
beside the task-based ones in ``OUTPUT/metrics/`` and a changed file never reuses old results
(reformatting a file without changing its texts keeps the name).

Formats: a ``.jsonl`` / ``.json`` file, or any file whose first non-blank line is a JSON object,
is JSON Lines with a string ``text`` field per line (other fields ignored); anything else is plain
text, one text per line. Blank texts are skipped in both. Bad files raise the same
:class:`~mteb_midlayer.tasks.local.LocalDataError` as task data, naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The task-data readers, so a corpus file fails with exactly the messages task data give.
from ..tasks.kinds.base import LocalDataError, Row, read_jsonl
from ..tasks.kinds.base import iter_lines as _iter_lines

__all__ = ["Corpus", "read_corpus", "read_texts_file"]

_JSONL_SUFFIXES = (".jsonl", ".json")
#: The name of a corpus given as a list of texts rather than a file.
_LIST_NAME = "texts"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class TextRow(Row):
    """One line of a JSON Lines corpus: a string ``text`` (other fields ignored)."""

    text: str


@dataclass(frozen=True)
class Corpus:
    """Texts to compute the layer metrics on, with the name their rows are filed under."""

    name: str
    texts: tuple[str, ...]
    digest: str

    @property
    def dataset(self) -> str:
        """The ``dataset`` value of its metric rows (and part of its file name)."""
        return f"{self.name}-{self.digest}"


def corpus_digest(texts: Sequence[str]) -> str:
    """First 12 hex digits of the SHA-256 of the texts (as a JSON list): their identity."""
    payload = json.dumps(list(texts), ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.sha256(payload).hexdigest()[:12]


def _first_line(path: Path) -> tuple[int, str]:
    """The first non-blank line and its number; raises if there is none."""
    for lineno, line in _iter_lines(path):
        return lineno, line
    raise LocalDataError("no texts (the file is empty or holds only blank lines)", path)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def read_texts_file(path: Path | str) -> list[str]:
    """The non-blank texts of a corpus file, in file order (see the module doc for formats).

    Raises:
        LocalDataError: missing or empty file, a line that is not UTF-8, bad JSON, a JSON line
            without a string ``text``; the message names the file and the line.
    """
    path = Path(path)
    lineno, first = _first_line(path)
    is_jsonl = path.suffix.lower() in _JSONL_SUFFIXES or _is_json_object(first)
    if is_jsonl and first.lstrip().startswith("["):
        raise LocalDataError(
            "a JSON array; write one JSON object per line (JSON Lines) instead", path, lineno
        )
    if is_jsonl:
        texts = [row.text for row in read_jsonl(path, TextRow)]
    else:
        texts = [line.rstrip("\r\n") for _, line in _iter_lines(path)]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise LocalDataError("no texts (every text is blank)", path)
    return texts


def read_corpus(source: Path | str | Sequence[str]) -> Corpus:
    """A :class:`Corpus` from a file path (``str`` or ``Path``) or a list of texts.

    A file is named by its stem (characters other than letters, digits, ``.``, ``_``, ``-``
    replaced by ``_``); a list is named ``"texts"``. Either way the digest of its texts follows.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        texts = read_texts_file(path)
        name = _UNSAFE.sub("_", path.stem).strip("._") or "corpus"
    else:
        if isinstance(source, bytes):
            raise ValueError("texts must be a file path or a list of strings, got bytes")
        texts = list(source)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}] must be a string, got {type(t).__name__}")
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise ValueError("texts holds no non-blank text")
        name = _LIST_NAME
    return Corpus(name=name, texts=tuple(texts), digest=corpus_digest(texts))
