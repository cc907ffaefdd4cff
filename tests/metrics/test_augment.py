"""Tests for the seeded text augmenter (mteb_midlayer.metrics.augment)."""

from __future__ import annotations

import random
import re

import pytest

from mteb_midlayer.metrics.augment import (
    KEYBOARD_NEIGHBOURS,
    _apply,
    _op_keyboard,
    _op_split,
    _op_substitute,
    aug_count,
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


def test_counts_are_nlpaugs_ceil_clipped_to_1_and_10():
    # ceil(0.3 n) in [1, 10]: the words of a text, and the characters of a word
    assert [aug_count(n, 0.3) for n in (0, 1, 3, 4, 6, 7, 20, 33, 34, 300)] == [
        1, 1, 1, 2, 2, 3, 6, 10, 10, 10
    ]  # fmt: skip
    assert aug_count(300, 0.0) == 0 and aug_count(5, 1.0) == 5


_OPS = [_op_split, _op_substitute, _op_keyboard]


@pytest.mark.parametrize("op", _OPS, ids=["split", "substitute", "keyboard"])
@pytest.mark.parametrize(("n_words", "expected"), [(300, 10), (6, 2)])
def test_each_operation_changes_exactly_its_count_of_words(op, n_words, expected):
    words = [f"w{i:03d}ord" for i in range(n_words)]  # 7 characters: all eligible
    text = " ".join(words)
    chosen_sets = []
    for seed in range(20):
        out = _apply(text, op, random.Random(seed), p=0.3, char_p=0.3, min_chars=4)
        if op is _op_split:
            pieces = out.split(" ")
            assert len(pieces) == n_words + expected
            changed = [w for w in words if w not in pieces]
        else:
            changed_pairs = [(a, b) for a, b in zip(words, out.split(" "), strict=True) if a != b]
            # inside each chosen word: ceil(0.3 * 7) = 3 characters changed
            assert all(
                sum(x != y for x, y in zip(a, b, strict=True)) == 3 for a, b in changed_pairs
            )
            changed = [a for a, _ in changed_pairs]
        assert len(changed) == expected
        chosen_sets.append(frozenset(changed))
    # chosen at random among the eligible words, not always the same ones
    assert len(set(chosen_sets)) > 5
    assert len(frozenset().union(*chosen_sets)) > min(n_words, 100) * 0.5


def test_fewer_eligible_words_than_the_count_changes_all_eligible():
    text = "a cat sat on the wonderful"  # n = 6 -> 2 words, but one is eligible
    for seed in range(10):
        out = _apply(text, _op_substitute, random.Random(seed), 0.3, 0.3, 4)
        assert out.split(" ")[:5] == text.split(" ")[:5] and out.split(" ")[5] != "wonderful"


def test_whole_chain_on_a_long_text_changes_at_most_30_words():
    # a per-word coin flip would change about two thirds of 300 words; nlpaug's counts: <= 30
    words = [f"w{i:03d}ord" for i in range(300)]
    for seed in range(5):
        out = augment(" ".join(words), random.Random(seed)).split(" ")
        assert len(out) == 310  # the 10 splits; substitutions and typos keep the spacing
        assert 10 <= sum(w not in out for w in words) <= 30


def test_probability_bounds_and_keyboard_neighbours():
    assert augment("wonderful words", random.Random(0), p=0.0) == "wonderful words"
    out = augment("wonderful", random.Random(0), p=1.0)
    assert out != "wonderful" and " " in out
    # typos only with real QWERTY neighbours, case kept
    assert set(KEYBOARD_NEIGHBOURS["g"]) == set("fhtyvb")
    assert set(KEYBOARD_NEIGHBOURS["q"]) == set("wa12")
    for seed in range(20):
        w = _op_keyboard("QQQQQQQ", random.Random(seed), 0.3)  # ceil(7 * 0.3) = 3 typos
        changed = [c for c in w if c != "Q"]
        assert len(changed) == 3 and set(changed) <= set("WA12")


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
