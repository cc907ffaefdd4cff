"""The Retrieval score check (SciFact), apart from test_scores.py's: it is the suite's longest
test (5,183 abstracts of up to 256 tokens through MiniLM: 1.24 M tokens, ~4 min of one core),
so in a file of its own it starts first and has an xdist worker to itself (tests/conftest.py)."""

from __future__ import annotations

import pytest

from .conftest import check_readme_score


@pytest.mark.slow
def test_retrieval_scifact(encoder, shared_data):
    check_readme_score(encoder, shared_data, "SciFact")
