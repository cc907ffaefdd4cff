"""How much of a batch is padding: unsorted fixed batches vs our default (length-sorted, `batch_size`
rows within `batch_size x 512` padded tokens) vs a pure token budget, on real task texts.

Tokenization only (no forward pass), so it runs in seconds on a CPU; padding is the share of the
padded tokens the network sees that are not real tokens, i.e. wasted compute.

    python benchmarks/padding_share.py [--model FOLDER] [--max-length 2048] [--budget 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import AutoTokenizer

from mteb_midlayer.batching import length_order, plan_batches

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mteb"


def text_sets() -> dict[str, list[str]]:
    corpus = [json.loads(line) for line in (DATA / "SciFact" / "corpus.jsonl").open()]
    scifact = [(row.get("title", "") + " " + row["text"]).strip() for row in corpus]
    sts = []
    for path in sorted((DATA / "STSBenchmark").rglob("*.jsonl")):
        for line in path.open():
            row = json.loads(line)
            sts += [row[k] for k in ("sentence1", "sentence2") if k in row]
    rng = random.Random(0)
    return {
        "SciFact corpus": scifact,
        "STSBenchmark": sts,
        "mixed 64 (32 SciFact + 32 STS)": rng.sample(scifact, 32) + rng.sample(sts, 32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path("~/.cache/mm-models/smollm2-135m-instruct-q41").expanduser()
    parser.add_argument("--model", default=str(default), help="a local folder with a tokenizer")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--budget", type=int, default=4096)
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    rows = args.batch_size
    ways = {
        f"unsorted, {rows} rows": None,
        f"sorted, {rows} rows (default)": {},
        f"sorted, budget {args.budget} tokens": {"max_tokens_per_batch": args.budget},
    }
    print(f"tokenizer {Path(args.model).name}, max_length {args.max_length}")
    for name, texts in text_sets().items():
        ids = tok(texts, truncation=True, max_length=args.max_length)["input_ids"]
        lengths = [len(x) for x in ids]
        for label, options in ways.items():
            if options is None:
                batches = [
                    list(range(i, min(i + rows, len(texts)))) for i in range(0, len(texts), rows)
                ]
            else:
                batches = plan_batches(length_order(lengths), lengths, rows, **options)
            padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
            print(
                f"{name:32s} n={len(texts):5d} longest={max(lengths):5d} {label:30s} "
                f"batches={len(batches):4d} padding={1 - sum(lengths) / padded:6.1%}"
            )


if __name__ == "__main__":
    main()
