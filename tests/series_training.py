"""A real checkpoint series, made in seconds: a tiny character-level BERT trained contrastively.

Used by the series tests (three checkpoints) and by `benchmarks/checkpoint_trend.py` (more
steps). Training pairs are the STSBenchmark pairs of the shared data scored >= 4 (in-batch
negatives, InfoNCE on the last layer's mean pooling); deterministic for a seed. Each saved
folder (`checkpoint-<step>`, step 0 = the initial weights) loads with `LayerModel`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import tiny_tokenizer


def sts_pairs(data_dir: Path, task: str = "STSBenchmark", min_score: float = 4.0) -> list:
    """(sentence1, sentence2) pairs of `task`'s test file scored >= `min_score`."""
    pairs = []
    with (Path(data_dir) / task / "test.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if float(row["score"]) >= min_score:
                pairs.append((row["sentence1"], row["sentence2"]))
    return pairs


def train_series(
    out: Path,
    data_dir: Path,
    *,
    steps: int = 60,
    save_every: int = 30,
    seed: int = 0,
    n_layers: int = 2,
    hidden: int = 64,
    batch_size: int = 32,
    lr: float = 2e-3,
    max_length: int = 128,
) -> list[Path]:
    """Train and save `out/checkpoint-<step>` every `save_every` steps (and step 0)."""
    import transformers as T

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    tok.model_max_length = max_length
    config = T.BertConfig(
        vocab_size=128,
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_length,
        pad_token_id=0,
    )
    model = T.BertModel(config)
    pairs = sts_pairs(data_dir)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    saved: list[Path] = []

    def save(step: int) -> None:
        folder = Path(out) / f"checkpoint-{step}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        saved.append(folder)

    def embed(texts: list[str]) -> torch.Tensor:
        batch = tok(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        hidden_states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (hidden_states * mask).sum(1) / mask.sum(1)

    save(0)
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randperm(len(pairs), generator=gen)[:batch_size].tolist()
        a = torch.nn.functional.normalize(embed([pairs[i][0] for i in idx]), dim=-1)
        b = torch.nn.functional.normalize(embed([pairs[i][1] for i in idx]), dim=-1)
        logits = a @ b.T / 0.05
        target = torch.arange(len(idx))
        loss = (
            torch.nn.functional.cross_entropy(logits, target)
            + torch.nn.functional.cross_entropy(logits.T, target)
        ) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % save_every == 0:
            model.eval()
            save(step)
            model.train()
    return saved
