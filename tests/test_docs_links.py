"""Every relative link in README.md and docs/*.md points to a file (and heading) that exists.

The README is a user's guide that sends readers to docs/ for the reference; a page renamed or a
heading reworded must not leave a dead link behind. Pure text: no network, no package import.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: [text](target) and ![alt](target), the target up to whitespace or ")"; "<...>" targets too.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    lines, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings (duplicates numbered as GitHub does)."""
    seen: dict[str, int] = {}
    out = set()
    inside = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        m = None if inside else HEADING.match(line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    """The targets of a page's links that are neither URLs nor mail addresses."""
    targets = LINK.findall(_prose(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.I)]


def dead_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, or heading anchor, does not exist."""
    dead = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            dead.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(f"{target} (no heading #{anchor} in {dest.name})")
    return dead


def test_pages_exist():
    assert (REPO / "README.md").is_file()
    assert len(PAGES) > 1, "docs/*.md is empty"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path):
    assert dead_links(page) == []


def test_readme_links_every_docs_page():
    """No reference page is an orphan: the README names each docs/*.md."""
    linked = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(REPO / "README.md")}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert orphans == []


def test_checker_finds_dead_links(tmp_path: Path):
    """The checker itself: a missing file and a missing heading are reported; code is skipped."""
    (tmp_path / "b.md").write_text("# Real heading\n\n## Some `code` here\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md) [ok](b.md#real-heading) [ok](b.md#some-code-here) [ok](#top)\n"
        "[web](https://example.org/x) [gone](missing.md) [bad](b.md#nope)\n"
        "`[in code](nowhere.md)`\n```\n[in fence](nowhere.md)\n```\n# Top\n",
        encoding="utf-8",
    )
    assert dead_links(page) == ["missing.md (no such file)", "b.md#nope (no heading #nope in b.md)"]
