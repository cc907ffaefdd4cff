"""Retrieval and reranking: one corpus and query file per subset, qrels per split.

``corpus.jsonl`` (``_id``, optional ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``), ``qrels/<split>.tsv`` (header ``query-id corpus-id score``, integer scores) and, for
reranking, ``top_ranked.jsonl`` (``query-id``, ``corpus-ids``: the candidates).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset
from mteb.abstasks import AbsTask
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from pydantic import Field

from .base import Id, Ids, LocalDataError, Row, iter_lines, read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

KIND = "retrieval"
QRELS_HEADER = ("query-id", "corpus-id", "score")


class DocumentRow(Row):
    id: Id = Field(alias="_id")
    title: str | None = None
    text: str


class QueryRow(Row):
    id: Id = Field(alias="_id")
    text: str


class CandidatesRow(Row):
    query_id: Id = Field(alias="query-id")
    corpus_ids: Ids = Field(alias="corpus-ids")


def split_file(subset_folder: Path, split: str) -> Path:
    """The file whose presence says a split is there: its qrels."""
    return subset_folder / "qrels" / f"{split}.tsv"


def _unique_ids(ids: list[str], path: Path) -> None:
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if x in seen:
            raise LocalDataError(f"duplicate _id {x!r} (record {i + 1})", path)
        seen.add(x)


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    lines = iter_lines(path)
    first = next(lines, None)
    if first is None:
        raise LocalDataError(
            "empty file; expected a header 'query-id<TAB>corpus-id<TAB>score'", path
        )
    lineno, header = first
    if tuple(header.rstrip("\r\n").split("\t")) != QRELS_HEADER:
        raise LocalDataError(
            f"bad header {header.rstrip()!r}; expected 'query-id<TAB>corpus-id<TAB>score'",
            path,
            lineno,
        )
    n = 0
    for lineno, text in lines:
        parts = text.rstrip("\r\n").split("\t")
        if len(parts) != 3:
            raise LocalDataError(
                f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(parts)}",
                path,
                lineno,
            )
        qid, did, score = parts
        if not qid or not did:
            raise LocalDataError("empty query-id or corpus-id", path, lineno)
        try:
            value = int(score)
        except ValueError:
            raise LocalDataError(f"score {score!r} is not an integer", path, lineno) from None
        if did in qrels.setdefault(qid, {}):
            raise LocalDataError(f"duplicate pair ({qid!r}, {did!r})", path, lineno)
        qrels[qid][did] = value
        n += 1
    if n == 0:
        raise LocalDataError("no qrels after the header (empty split)", path)
    return qrels


def read_subset(sub: Path, splits: Sequence[str]) -> dict[str, RetrievalSplitData]:
    """One subset folder as mteb's loader leaves it: ``{split: RetrievalSplitData}``, queries
    restricted to those with qrels."""
    corpus_path = sub / "corpus.jsonl"
    docs = read_jsonl(corpus_path, DocumentRow)
    _unique_ids([d.id for d in docs], corpus_path)
    corpus_cols: dict[str, list[str]] = {"id": [d.id for d in docs]}
    if any(d.title is not None for d in docs):
        corpus_cols["title"] = [d.title or "" for d in docs]
    corpus_cols["text"] = [d.text for d in docs]
    corpus_ds = Dataset.from_dict(corpus_cols)

    queries_path = sub / "queries.jsonl"
    queries = read_jsonl(queries_path, QueryRow)
    _unique_ids([q.id for q in queries], queries_path)
    queries_ds = Dataset.from_dict(
        {"id": [q.id for q in queries], "text": [q.text for q in queries]}
    )

    top_ranked = None
    top_path = sub / "top_ranked.jsonl"
    if top_path.exists():
        rows = read_jsonl(top_path, CandidatesRow)
        top_ranked = {r.query_id: list(r.corpus_ids) for r in rows}
        if len(top_ranked) != len(rows):
            raise LocalDataError("a query-id appears on several lines", top_path)

    out: dict[str, RetrievalSplitData] = {}
    query_ids = set(queries_ds["id"])
    for split in splits:
        qrels_path = split_file(sub, split)
        qrels = _read_qrels(qrels_path)
        unknown = [q for q in qrels if q not in query_ids]
        if unknown:
            # mteb's own loader keeps such qrels too; they score nothing (no query to run)
            logger.warning(
                "%s: %d query id(s) of the qrels are not in %s (e.g. %r); they are not evaluated",
                qrels_path,
                len(unknown),
                queries_path.name,
                unknown[0],
            )
        keep = [i for i, q in enumerate(queries_ds["id"]) if q in qrels]
        split_top = None
        if top_ranked is not None:
            split_top = {q: top_ranked[q] for q in qrels if q in top_ranked}
            absent = [q for q in qrels if q not in top_ranked]
            if absent:
                raise LocalDataError(
                    f"{len(absent)} query id(s) of {qrels_path.relative_to(sub)} have no "
                    f"candidates, e.g. {absent[0]!r}",
                    top_path,
                )
        out[split] = RetrievalSplitData(
            corpus=corpus_ds,
            queries=queries_ds.select(keep),
            relevant_docs=qrels,
            top_ranked=split_top,
        )
    return out


def write_subset(task: AbsTask, splits: dict[str, Any], out: Path) -> None:
    """Write one subset's splits: one corpus and query file (identical across splits)."""
    corpus: dict[str, dict[str, Any]] = {}
    queries: dict[str, dict[str, Any]] = {}
    top_ranked: dict[str, list[str]] = {}
    for split, data in splits.items():
        has_title = "title" in data["corpus"].column_names
        for row in data["corpus"]:
            doc = {"_id": str(row["id"])}
            if has_title:
                doc["title"] = row["title"] or ""
            doc["text"] = row["text"]
            if corpus.setdefault(doc["_id"], doc) != doc:
                raise ValueError(
                    f"{task.metadata.name}: document {doc['_id']!r} differs between splits; "
                    "the layout has one corpus.jsonl"
                )
        for row in data["queries"]:
            q = {"_id": str(row["id"]), "text": row["text"]}
            if queries.setdefault(q["_id"], q) != q:
                raise ValueError(
                    f"{task.metadata.name}: query {q['_id']!r} differs between splits; "
                    "the layout has one queries.jsonl"
                )
        qrels_path = split_file(out, split)
        qrels_path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with qrels_path.open("w", encoding="utf-8", newline="\n") as f:
            f.write("\t".join(QRELS_HEADER) + "\n")
            for qid, docs in data["relevant_docs"].items():
                for did, score in docs.items():
                    f.write(f"{qid}\t{did}\t{int(score)}\n")
                    n += 1
        if n == 0:
            raise ValueError(f"refusing to write an empty split: {qrels_path}")
        for qid, ids in (data.get("top_ranked") or {}).items():
            ids = [str(x) for x in ids]
            if top_ranked.setdefault(str(qid), ids) != ids:
                raise ValueError(
                    f"{task.metadata.name}: candidates of query {qid!r} differ between splits"
                )
    write_jsonl(out / "corpus.jsonl", corpus.values())
    write_jsonl(out / "queries.jsonl", queries.values())
    if top_ranked:
        write_jsonl(
            out / "top_ranked.jsonl",
            ({"query-id": q, "corpus-ids": ids} for q, ids in top_ranked.items()),
        )
