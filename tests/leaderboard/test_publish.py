"""What `publish` writes when names come from someone else's results: inert cells and pages,
unique file names and anchors, nothing outside the folder, a broken list found first.

Frames are built directly (no model run, no result files) so the property test stays fast.
"""

from __future__ import annotations

import csv
import json
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mteb_midlayer import cli, frames
from mteb_midlayer.inert import FORMULA_STARTS
from mteb_midlayer.leaderboard import publish, tables
from mteb_midlayer.leaderboard.render import ManifestError

from .conftest import DATA


def scores_of(models: list[tuple[str, str]], tasks=("T1", "T2"), dims=(8, 4)) -> pd.DataFrame:
    """A scores frame: each (model, revision) at layers 0..2 and `dims`, scores that differ."""
    rows = []
    for m, (model, revision) in enumerate(models):
        for layer in range(3):
            for dim in dims:
                for t, task in enumerate(tasks):
                    rows.append(
                        {
                            "model": model,
                            "revision": revision,
                            "pooling": "mean",
                            "normalize": True,
                            "final_norm": "last",
                            **frames.RUN_DEFAULTS,
                            "layer": layer,
                            "dim": dim,
                            "task": task,
                            "task_type": "STS",
                            "score": 0.1 * layer + 0.01 * m + 0.001 * t + dim / 1e4,
                            "mteb_version": "2.26.24",
                            "n_layers": 2.0,
                        }
                    )
    return pd.DataFrame(rows, columns=frames.SCORE_COLUMNS)


def metrics_of(models: list[tuple[str, str]]) -> pd.DataFrame:
    rows = [
        {
            "model": model,
            "revision": revision,
            "dataset": "T1",
            "layer": layer,
            "metric": "prompt_entropy",
            "variant": "dataset",
            "value": -0.5 * layer,  # a negative float must stay a number
            "n": 10,
            "pooling": "mean",
            "alpha": 1.0,
            "seed": 0,
            "final_norm": "last",
        }
        for model, revision in models
        for layer in range(3)
    ]
    return pd.DataFrame(rows, columns=frames.METRIC_COLUMNS)


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def assert_csv_inert(path: Path) -> None:
    """No cell a spreadsheet would run: text starting with = + - @ tab CR is quoted first."""
    for row in csv_rows(path):
        for cell in row:
            assert not (cell.startswith(FORMULA_STARTS) and not is_number(cell)), (path, cell)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse_html(text: str) -> _Tags:
    parser = _Tags()
    parser.feed(text)
    parser.close()
    return parser


#: Every tag our pages use; anything else came from a name.
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "dl", "dt", "dd", "code",
    "p", "strong", "br", "div", "label", "select", "option", "table", "thead", "tbody", "tfoot",
    "tr", "th", "td", "a", "section", "img", "figure", "script", "ul", "li",
}  # fmt: skip
#: What a Markdown page renders to (markdown-it, CommonMark + tables, raw HTML allowed).
MD_TAGS = {"h1", "h2", "h3", "p", "ul", "li", "strong", "code", "table", "thead", "tbody", "tr"}
MD_TAGS |= {"th", "td"}


def assert_html_inert(path: Path) -> _Tags:
    page = parse_html(path.read_text(encoding="utf-8"))
    tags = [t for t, _ in page.tags]
    assert set(tags) <= PAGE_TAGS, set(tags) - PAGE_TAGS
    assert tags.count("script") == (1 if path.name != "index.html" else 0)
    ids = [a["id"] for _, a in page.tags if "id" in a]
    assert len(ids) == len(set(ids)), "repeated ids"
    for tag, attrs in page.tags:
        if tag == "a":
            href = attrs["href"]
            assert href.startswith("#") or href.split("#")[0].endswith(".html"), href
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
    return page


def render_md(path: Path) -> _Tags:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    return parse_html(md.render(path.read_text(encoding="utf-8")))


def assert_md_inert(path: Path) -> _Tags:
    page = render_md(path)
    tags = {t for t, _ in page.tags}
    assert tags <= MD_TAGS, tags - MD_TAGS  # no raw HTML, no link, no image, no emphasis
    return page


def _plain(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------ CSV formula injection

EVIL = [
    ('=HYPERLINK("http://x","y")/m', "+SUM(1)"),
    ("@cmd|' /C calc'!A0", "-2+3"),
    ("\tTAB", "\rCR"),
    ("org/<script>alert(1)</script>", "<img src=x onerror=alert(1)>"),
]


@pytest.fixture(scope="module")
def evil_board(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evil") / "board"
    scores = scores_of(EVIL, tasks=("=T1", "T2"))
    publish(scores, metrics_of(EVIL), out, benchmark="b", with_plots=False)
    return out


def test_formula_names_are_quoted_in_the_csv_and_numbers_stay_numbers(evil_board):
    for name in ("b.csv", "b-metrics.csv"):
        assert_csv_inert(evil_board / name)
    csv_file = pd.read_csv(evil_board / "b.csv", keep_default_na=False)
    assert set(csv_file["model"]) == {"'" + m for m, _ in EVIL[:3]} | {EVIL[3][0]}
    assert set(csv_file["revision"]) == {"'+SUM(1)", "'-2+3", "'\rCR", EVIL[3][1]}
    assert set(csv_file["task"]) == {"'=T1", "T2"}
    metrics = pd.read_csv(evil_board / "b-metrics.csv")
    assert metrics["value"].dtype == float and metrics["value"].min() == -1.0  # not "'-1.0"


def test_table_csv_quotes_formula_names(tmp_path, capsys):
    import shutil

    root = tmp_path / "run"
    shutil.copytree(DATA / "results", root / "results")
    for meta_path in root.rglob("model_meta.json"):
        meta = json.loads(meta_path.read_text())
        meta.update(name='=HYPERLINK("http://x","y")/m', revision="+SUM(1)")
        meta_path.write_text(json.dumps(meta))
    out = tmp_path / "layers.csv"
    assert cli.main(["table", str(root), "--csv", str(out)]) == 0
    assert_csv_inert(out)
    table = pd.read_csv(out)
    assert set(table["model"]) == {'\'=HYPERLINK("http://x","y")/m'}
    assert set(table["revision"]) == {"'+SUM(1)"}
    assert table["mean"].dtype == float  # numbers unchanged


def test_names_are_escaped_in_markdown_and_html(evil_board):
    md = (evil_board / "b.md").read_text()
    assert "org/\\<script\\>alert\\(1\\)\\</script\\>" in md  # outside code spans, escaped
    page = assert_md_inert(evil_board / "b.md")
    text = _plain(" ".join(page.text))
    assert "org/<script>alert(1)</script>" in text  # shown as the text it is
    assert '=HYPERLINK("http://x","y")/m' in text
    html_page = assert_html_inert(evil_board / "b.html")
    assert "org/<script>alert(1)</script> · mean" in _plain(" ".join(html_page.text))
    assert_html_inert(evil_board / "index.html")


# ------------------------------------------------------------------ unique file names


def test_models_whose_names_map_alike_get_their_own_heatmap_and_anchor(tmp_path):
    # `$...$` would be math to matplotlib (and bad math stopped the plots): drawn as text
    models = [("org/m.1 $\\frac{$", "r$"), ("org/m-1 $\\frac{$", "r$")]
    scores = scores_of(models)
    slugs = [tables.config_slug(c) for c in tables.configs(scores)]
    readable = "org-m-1---frac---r--mean-True-last-"
    assert len(set(slugs)) == 2 and all(s.startswith(readable) for s in slugs), slugs
    publish(scores, metrics_of(models), tmp_path, benchmark="b", with_plots=True)
    heatmaps = sorted((tmp_path / "plots").glob("b-*-dims.png"))
    assert [h.name for h in heatmaps] == sorted(f"b-{s}-dims.png" for s in slugs)
    assert len({h.read_bytes() for h in heatmaps}) == 2  # each its own numbers
    page = assert_html_inert(tmp_path / "b.html")  # ids unique
    sections = [a["id"] for t, a in page.tags if t == "section"]
    assert sorted(sections) == sorted(slugs)
    text = (tmp_path / "b.html").read_text()
    images = [text.split(f'id="{s}"')[1].split('src="')[1].split('"')[0] for s in slugs]
    assert images[0] != images[1]  # each section shows its own heatmap
    for suffix in ("-depth.png", "-metrics-depth.png", "-score-vs-metric.png"):
        assert (tmp_path / "plots" / f"b{suffix}").exists()


def test_a_long_name_gives_a_short_file_name():
    slug = tables.config_slug(tables.configs(scores_of([("o/" + "x" * 500, "r")]))[0])
    assert len(slug) == tables.SLUG_TEXT + 9


# ------------------------------------------------------------------ leaderboard.json


def test_a_corrupt_leaderboard_json_is_named_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "board"
    out.mkdir()
    (out / "leaderboard.json").write_text('{"b": {"page": "b.html", "models": [')
    scores = scores_of([("org/m", "r")])
    with pytest.raises(ManifestError, match=r"leaderboard\.json is not readable JSON"):
        publish(scores, metrics_of([("org/m", "r")]), out, benchmark="b", with_plots=False)
    assert [p.name for p in out.iterdir()] == ["leaderboard.json"]  # no page written
    (out / "leaderboard.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match="is not a leaderboard list"):
        publish(scores, metrics_of([("org/m", "r")]), out, benchmark="b", with_plots=False)
    argv = ["leaderboard", str(DATA), "--to", str(out), "--no-plots"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out / "leaderboard.json") in err
    assert [p.name for p in out.iterdir()] == ["leaderboard.json"]


def test_the_leaderboard_says_wrote_once_per_file(tmp_path, capsys):
    out = tmp_path / "board"
    assert cli.main(["leaderboard", str(DATA), "--to", str(out), "--benchmark", "b"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(set(lines))
    written = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "leaderboard.json")
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(lines) == len(written) - len(pngs)  # a plot's PNG and SVG share a line
    assert f"wrote {out / 'plots' / 'b-depth.png'} (and .svg)" in lines


# ------------------------------------------------------------------ property test

names = st.one_of(
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1),
    st.builds(
        lambda a, b: a + b,
        st.sampled_from(["=", "+", "-", "@", "\t", "\r", "..", "/", "../", "<script>", "|", "`"]),
        st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))),
    ),
    st.sampled_from(["..", "/", "../../x", "<script>alert(1)</script>", "=1+1", "-1", "@a"]),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(model=names, revision=names, other=names, task=names)
def test_any_model_name_and_revision_publish_inert_pages_inside_the_folder(
    model, revision, other, task
):
    models = [(model, revision), (other, revision)]
    if len(set(models)) < 2:
        models = models[:1]
    tasks = (task, "T2") if task != "T2" else ("T2",)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = root / "to"
        publish(
            scores_of(models, tasks=tasks, dims=(8,)),  # one width: fast
            metrics_of(models),
            out,
            benchmark=model,
            with_plots=False,
        )
        files = [p for p in root.rglob("*") if p.is_file()]
        assert files and all(p.resolve().is_relative_to(out.resolve()) for p in files)
        assert {p.suffix for p in files} == {".csv", ".md", ".html", ".json"}
        for path in files:
            if path.suffix == ".csv":
                assert_csv_inert(path)
            elif path.suffix == ".html":
                assert_html_inert(path)
            elif path.suffix == ".md":
                shown = _plain(" ".join(assert_md_inert(path).text))
                for name in (model, revision):
                    if _plain(name):
                        assert _plain(name) in shown, (name, shown)
        listed = json.loads((out / "leaderboard.json").read_text())
        assert list(listed) == [model]
        index = _plain(" ".join(parse_html((out / "index.html").read_text()).text))
        assert _plain(model) in index
