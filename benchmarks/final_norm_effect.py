"""What `final_norm="every"` changes against `"last"`, layer by layer, from one forward pass.

For the packaged all-MiniLM-L6-v2 (post-norm BERT: no final norm, so nothing may change) and a
config-built Pythia (GPT-NeoX, random weights, pythia-70m's shape): per layer, the largest and
the mean |difference| of the pooled vectors, their mean cosine, and the Spearman correlation of
cosine similarity with the gold scores on the first N STSBenchmark pairs under each setting.

    python benchmarks/final_norm_effect.py [--n 300] [--data-dir ../shared/data/mteb]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import torch
from scipy.stats import spearmanr
from transformers import AutoModel, AutoTokenizer, GPTNeoXConfig

from mteb_midlayer.model import LayerModel, embedded_default

REPO = Path(__file__).resolve().parents[1]


def sts_pairs(data_dir: Path, n: int) -> tuple[list[str], list[str], np.ndarray]:
    rows = [json.loads(line) for line in (data_dir / "STSBenchmark" / "test.jsonl").open()][:n]
    return (
        [r["sentence1"] for r in rows],
        [r["sentence2"] for r in rows],
        np.array([r["score"] for r in rows]),
    )


def pooled(lm: LayerModel, texts: list[str]) -> dict[str, dict[int, np.ndarray]]:
    """`{final_norm: {layer: (N, D)}}`, both settings from the same forward passes."""
    layers = list(range(lm.n_layers + 1))
    shape = (len(texts), lm.hidden_size)
    out = {s: {layer: np.zeros(shape) for layer in layers} for s in ("last", "every")}
    for batch in lm.iter_batches(texts, layers, "mean", final_norms=("last", "every")):
        for setting, by_layer in batch.by_final_norm.items():
            for layer, vectors in by_layer.items():
                out[setting][layer][batch.indices] = vectors.cpu().numpy()
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def report(name: str, lm: LayerModel, s1: list[str], s2: list[str], gold: np.ndarray) -> None:
    texts = list(dict.fromkeys(s1 + s2))
    where = {t: i for i, t in enumerate(texts)}
    vecs = pooled(lm, texts)
    i1, i2 = [where[t] for t in s1], [where[t] for t in s2]
    print(f"\n{name} (L = {lm.n_layers}, {len(texts)} texts, {len(gold)} STS pairs)")
    print("layer  max|diff|  mean|diff|  mean cos(last, every)  spearman last  spearman every")
    for layer in range(lm.n_layers + 1):
        last, every = vecs["last"][layer], vecs["every"][layer]
        diff = np.abs(last - every)
        rho = {
            s: spearmanr(cosine_rows(vecs[s][layer][i1], vecs[s][layer][i2]), gold).statistic
            for s in ("last", "every")
        }
        print(
            f"{layer:5d}  {diff.max():9.2e}  {diff.mean():10.2e}  "
            f"{cosine_rows(last, every).mean():21.4f}  {rho['last']:13.4f}  {rho['every']:14.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="STSBenchmark pairs")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mteb")
    args = parser.parse_args()
    s1, s2, gold = sts_pairs(args.data_dir, args.n)
    torch.manual_seed(0)
    path, _ = embedded_default()
    report("all-MiniLM-L6-v2 (packaged)", LayerModel.load(path, device="cpu"), s1, s2, gold)
    tok = AutoTokenizer.from_pretrained(path)
    config = GPTNeoXConfig(
        vocab_size=tok.vocab_size,
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        pad_token_id=tok.pad_token_id,
    )
    pythia = AutoModel.from_config(config).eval()
    lm = LayerModel.load(pythia, tok, name="config/pythia-70m-shape", device="cpu")
    report("config-built Pythia (GPT-NeoX, 6 x 512, random weights, seed 0)", lm, s1, s2, gold)


if __name__ == "__main__":
    main()
