"""Seeded, reproducible text augmentation for the augmentation-invariance metrics.

Our own implementation of the reference chain in ``METRICS.md`` (nlpaug's SplitAug,
RandomCharAug(action="substitute") and KeyboardAug with their defaults), applied in that order:

1. **split**: chosen words are split in two at a random inner position (``"layer" -> "la yer"``);
2. **substitute**: chosen words get some of their letters/digits replaced by random ASCII
   letters/digits;
3. **keyboard**: chosen words get some characters replaced by a neighbouring key on a QWERTY
   keyboard (case kept).

How many, as nlpaug's defaults (its ``_generate_aug_cnt`` with ``aug_min=1``, ``aug_max=10``):
each operation changes ``ceil(p * n)`` words, at least 1 and at most 10, ``n`` being the text's
word count (whitespace-separated tokens, re-counted before each operation, so the halves of a
split word count), drawn at random among the eligible words (all of them if fewer are eligible);
inside a chosen word the character operations change ``ceil(char_p * len)`` characters, at least
1 and at most 10. A fixed count, not a per-word coin: long texts are not perturbed more than the
paper's were. ``p = 0`` changes nothing (nlpaug would still change one word).

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
import math
import random
import re
import string
from collections.abc import Sequence

__all__ = ["KEYBOARD_NEIGHBOURS", "aug_count", "augment", "augment_views"]

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
# nlpaug's defaults: aug_word_min / aug_char_min = 1, aug_word_max / aug_char_max = 10
_AUG_MIN = 1
_AUG_MAX = 10
_TOKEN = re.compile(r"(\s+)")
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def _split_core(token: str) -> tuple[str, str, str]:
    m = _CORE.match(token)
    assert m is not None  # the pattern matches any string
    return m.group(1), m.group(2), m.group(3)


def aug_count(size: int, p: float) -> int:
    """How many of ``size`` items (words of a text, characters of a word) one operation changes.

    nlpaug's ``_generate_aug_cnt`` with its defaults: ``ceil(p * size)`` clipped to ``[1, 10]``
    (same float expression, so the same counts), except that ``p = 0`` gives 0.
    """
    if p <= 0:
        return 0
    return min(_AUG_MAX, max(_AUG_MIN, math.ceil(p * size)))


def _op_split(core: str, rng: random.Random, char_p: float) -> str:
    cut = rng.randint(1, len(core) - 1)
    return core[:cut] + " " + core[cut:]


def _op_substitute(core: str, rng: random.Random, char_p: float) -> str:
    positions = [i for i, c in enumerate(core) if c.isascii() and c.isalnum()]
    if not positions:
        return core
    chars = list(core)
    for i in rng.sample(positions, min(len(positions), aug_count(len(core), char_p))):
        options = _SUBSTITUTE_CHARS.replace(chars[i], "")
        chars[i] = rng.choice(options)
    return "".join(chars)


def _op_keyboard(core: str, rng: random.Random, char_p: float) -> str:
    positions = [i for i, c in enumerate(core) if c.lower() in KEYBOARD_NEIGHBOURS]
    if not positions:
        return core
    chars = list(core)
    for i in rng.sample(positions, min(len(positions), aug_count(len(core), char_p))):
        new = rng.choice(KEYBOARD_NEIGHBOURS[chars[i].lower()])
        chars[i] = new.upper() if chars[i].isupper() else new
    return "".join(chars)


def _apply(text: str, op, rng: random.Random, p: float, char_p: float, min_chars: int) -> str:
    """One operation: ``aug_count(n words, p)`` eligible words, drawn at random, get ``op``."""
    parts = _TOKEN.split(text)
    words = [k for k, token in enumerate(parts) if token and not token.isspace()]
    eligible = [k for k in words if len(_split_core(parts[k])[1]) >= min_chars]
    count = min(len(eligible), aug_count(len(words), p))
    for k in sorted(rng.sample(eligible, count)):
        lead, core, trail = _split_core(parts[k])
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

    ``p``: fraction of the text's words each operation changes; ``char_p``: fraction of a chosen
    word's characters changed by the character operations (both as nlpaug counts them, see
    :func:`aug_count`); ``min_chars``: minimum word length
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
