"""Tests for the seeded text augmenter (mteb_midlayer.metrics.augment)."""

from __future__ import annotations

import random
import re

import pytest

from mteb_midlayer.metrics.augment import (
    KEYBOARD_NEIGHBOURS,
    _op_keyboard,
    augment,
    augment_views,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Representation quality peaks in intermediate layers, not the last one!",
    "Short a b cd",
    "",
    "   ",
    "Numbers like 12345 and e-mail addresses (someone@example.com) survive?",
]


def _skeleton(text: str) -> str:
    """Punctuation and other non-alphanumeric, non-space characters, in order."""
    return re.sub(r"[\sA-Za-z0-9]", "", text)


def test_views_are_deterministic_for_a_seed_and_shaped_view_major():
    a = augment_views(TEXTS, n_views=4, seed=7)
    b = augment_views(TEXTS, n_views=4, seed=7)
    assert a == b
    assert len(a) == 4 and all(len(v) == len(TEXTS) for v in a)
    assert all(isinstance(t, str) for view in a for t in view)


def test_different_seeds_and_views_differ():
    a = augment_views(TEXTS[:2], n_views=3, seed=1)
    b = augment_views(TEXTS[:2], n_views=3, seed=2)
    assert a != b
    assert len({a[v][1] for v in range(3)}) > 1  # views of one text differ from each other
    assert all(a[v][1] != TEXTS[1] for v in range(3))  # long text: something always changes


def test_views_independent_of_batch_composition():
    text = TEXTS[1]
    alone = augment_views([text], n_views=3, seed=5)
    mixed = augment_views(["other text here", TEXTS[0], text], n_views=3, seed=5)
    assert [v[0] for v in alone] == [v[2] for v in mixed]


def test_short_words_empty_and_whitespace_untouched():
    short = "a cat is on the mat, so it is."
    views = augment_views([short, "", "  \n\t "], n_views=5, seed=0)
    assert all(v == [short, "", "  \n\t "] for v in views)


def test_output_is_plain_string_with_punctuation_preserved():
    for view in augment_views(TEXTS, n_views=6, seed=3):
        for original, aug in zip(TEXTS, view, strict=True):
            assert isinstance(aug, str)
            assert not (aug.startswith("[") or aug.startswith("['"))
            assert _skeleton(aug) == _skeleton(original)
            # only splits add characters (spaces); characters are substituted, never dropped
            assert len(aug.replace(" ", "")) == len(original.replace(" ", ""))


def test_each_operation_fires_at_about_p_per_word():
    # For a 4-letter word: untouched iff no split (0.7), no substitution (0.7), no typo (0.7),
    # since a split leaves halves under 4 characters that later steps skip.
    rng = random.Random(0)
    words = augment(" ".join(["abcd"] * 3000), rng).split(" ")
    untouched = sum(1 for w in words if w == "abcd") / 3000
    assert 0.30 < untouched < 0.39


def test_probability_bounds_and_keyboard_neighbours():
    assert augment("wonderful words", random.Random(0), p=0.0) == "wonderful words"
    out = augment("wonderful", random.Random(0), p=1.0)
    assert out != "wonderful" and " " in out
    # typos only with real QWERTY neighbours, case kept
    assert set(KEYBOARD_NEIGHBOURS["g"]) == set("fhtyvb")
    assert set(KEYBOARD_NEIGHBOURS["q"]) == set("wa12")
    for seed in range(20):
        w = _op_keyboard("QQQQQQQ", random.Random(seed), 0.3)  # int(7 * 0.3) = 2 typos
        changed = [c for c in w if c != "Q"]
        assert len(changed) == 2 and set(changed) <= set("WA12")


def test_bad_inputs():
    with pytest.raises(TypeError):
        augment(["a list"], random.Random(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        augment_views("a string, not a list", n_views=2)
    with pytest.raises(TypeError):
        augment_views(["ok", 3], n_views=2)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        augment_views(["ok"], n_views=0)
    with pytest.raises(ValueError):
        augment("text", random.Random(0), p=1.5)
