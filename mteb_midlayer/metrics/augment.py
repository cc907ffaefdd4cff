"""Seeded, reproducible text augmentation for the augmentation-invariance metrics.

Our own implementation of the reference chain in ``METRICS.md`` (nlpaug's SplitAug,
RandomCharAug(action="substitute") and KeyboardAug with their defaults), applied in that order:

1. **split**: each eligible word, with probability ``p``, is split in two at a random inner
   position (``"layer" -> "la yer"``);
2. **substitute**: each eligible word, with probability ``p``, gets ``max(1, int(len * char_p))``
   (at most 10) of its letters/digits replaced by random ASCII letters/digits;
3. **keyboard**: each eligible word, with probability ``p``, gets the same number of characters
   replaced by a neighbouring key on a QWERTY keyboard (case kept).

A word is eligible when its core (the token without leading/trailing punctuation) has at least
``min_chars`` (4) characters; this is re-evaluated before each step, so halves of a split word
that are shorter than 4 characters are left alone afterwards. Whitespace between tokens and
punctuation around words are preserved exactly. Unlike nlpaug's defaults we only substitute
letters and digits with letters and digits (no special characters), so punctuation structure
stays intact and no brackets or quotes are ever injected into the text.

The functions take and return plain ``str`` (never the ``str()`` of a list, a bug of the research
code). :func:`augment_views` derives each text's RNG from ``(seed, view index, text)`` with a
stable hash, so a text's views do not depend on batch composition, order, or ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Sequence

__all__ = ["KEYBOARD_NEIGHBOURS", "augment", "augment_views"]

_QWERTY_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")
# Each lower row is offset about half a key to the right of the one above it.


def _build_keyboard() -> dict[str, str]:
    pos = {c: (r, col) for r, row in enumerate(_QWERTY_ROWS) for col, c in enumerate(row)}
    out: dict[str, str] = {}
    for c, (r, col) in pos.items():
        # Same row: left/right. Row above: same column and one to the right. Row below: one to
        # the left and the same column (staggered layout).
        cells = [(r, col - 1), (r, col + 1), (r - 1, col), (r - 1, col + 1)]
        cells += [(r + 1, col - 1), (r + 1, col)]
        neigh = [
            _QWERTY_ROWS[rr][cc]
            for rr, cc in cells
            if 0 <= rr < len(_QWERTY_ROWS) and 0 <= cc < len(_QWERTY_ROWS[rr])
        ]
        out[c] = "".join(neigh)
    return out


KEYBOARD_NEIGHBOURS: dict[str, str] = _build_keyboard()
"""QWERTY neighbour map over lower-case letters and digits (upper case is mapped via lower)."""

_SUBSTITUTE_CHARS = string.ascii_letters + string.digits
_MAX_CHARS_PER_WORD = 10  # nlpaug's aug_char_max default
_TOKEN = re.compile(r"(\s+)")
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def _split_core(token: str) -> tuple[str, str, str]:
    m = _CORE.match(token)
    assert m is not None  # the pattern matches any string
    return m.group(1), m.group(2), m.group(3)


def _n_chars(length: int, char_p: float) -> int:
    return max(1, min(_MAX_CHARS_PER_WORD, int(length * char_p)))


def _op_split(core: str, rng: random.Random, char_p: float) -> str:
    cut = rng.randint(1, len(core) - 1)
    return core[:cut] + " " + core[cut:]


def _op_substitute(core: str, rng: random.Random, char_p: float) -> str:
    positions = [i for i, c in enumerate(core) if c.isascii() and c.isalnum()]
    if not positions:
        return core
    chars = list(core)
    for i in rng.sample(positions, min(len(positions), _n_chars(len(core), char_p))):
        options = _SUBSTITUTE_CHARS.replace(chars[i], "")
        chars[i] = rng.choice(options)
    return "".join(chars)


def _op_keyboard(core: str, rng: random.Random, char_p: float) -> str:
    positions = [i for i, c in enumerate(core) if c.lower() in KEYBOARD_NEIGHBOURS]
    if not positions:
        return core
    chars = list(core)
    for i in rng.sample(positions, min(len(positions), _n_chars(len(core), char_p))):
        new = rng.choice(KEYBOARD_NEIGHBOURS[chars[i].lower()])
        chars[i] = new.upper() if chars[i].isupper() else new
    return "".join(chars)


def _apply(text: str, op, rng: random.Random, p: float, char_p: float, min_chars: int) -> str:
    parts = _TOKEN.split(text)
    for k, token in enumerate(parts):
        if not token or token.isspace():
            continue
        lead, core, trail = _split_core(token)
        # One Bernoulli draw per eligible word keeps the RNG stream aligned with eligibility only.
        if len(core) >= min_chars and rng.random() < p:
            parts[k] = lead + op(core, rng, char_p) + trail
    return "".join(parts)


def augment(
    text: str,
    rng: random.Random,
    p: float = 0.3,
    char_p: float = 0.3,
    min_chars: int = 4,
) -> str:
    """Return one augmented copy of ``text`` (split, then substitute, then keyboard typos).

    ``p``: per-eligible-word probability of each operation; ``char_p``: fraction of a chosen
    word's characters changed by the character operations; ``min_chars``: minimum word length
    (without surrounding punctuation) to be eligible. Empty or whitespace-only text is returned
    unchanged. Deterministic given the state of ``rng``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if not 0.0 <= p <= 1.0 or not 0.0 <= char_p <= 1.0:
        raise ValueError(f"p and char_p must be in [0, 1], got p={p}, char_p={char_p}")
    if min_chars < 2:
        raise ValueError(f"min_chars must be >= 2 (a word must be splittable), got {min_chars}")
    if not text.strip():
        return text
    for op in (_op_split, _op_substitute, _op_keyboard):
        text = _apply(text, op, rng, p, char_p, min_chars)
    return text


def _text_rng(seed: int, view: int, text: str) -> random.Random:
    key = f"{seed}\x1f{view}\x1f{text}".encode("utf-8", "surrogatepass")
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def augment_views(
    texts: Sequence[str],
    n_views: int,
    seed: int = 42,
    p: float = 0.3,
    char_p: float = 0.3,
    min_chars: int = 4,
) -> list[list[str]]:
    """Augmented views of every text: ``views[view_index][text_index]`` (all views augmented).

    Each (text, view) gets its own RNG seeded from ``(seed, view index, text content)``, so the
    output is deterministic for a seed and independent of the other texts in the call.
    Consequence: identical texts get identical views.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not a single str")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    return [
        [augment(t, _text_rng(seed, v, t), p=p, char_p=char_p, min_chars=min_chars) for t in texts]
        for v in range(n_views)
    ]
