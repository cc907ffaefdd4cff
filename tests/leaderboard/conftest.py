"""A small results tree: the committed MiniLM run plus a fake classification task and model.

`tests/data/leaderboard/` holds a real `sweep` of all-MiniLM-L6-v2 on BIOSSES and STS12
(layers 0, 3, 6; dims 384, 128) with STS12 at layer 3, dim 384 deleted (a missing result),
and its `metrics --n 100 --n-views 2` parquet rows. The fixture copies it and adds, by editing
mteb's own JSON files, a classification task (so the type filter has something to hide) and a
second model whose middle layer is best (so the summary has something to sort).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent.parent / "data" / "leaderboard"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FAKE = "fake/deep-model"
CLASSIFICATION = "Banking77Classification"


def fake_classification_score(layer: int) -> float:
    """MiniLM's made-up Banking77 score: best at the embeddings, falling with depth."""
    return round(0.70 - 0.01 * layer, 6)


def fake_model_score(layer: int) -> float:
    """Every task of the fake model: the middle layer (3 of 6) is best."""
    return {0: 0.4, 3: 0.9, 6: 0.5}[layer]


def _set_main_score(path: Path, value: float, task: str | None = None) -> None:
    result = json.loads(path.read_text())
    if task is not None:
        result["task_name"] = task
    for split in result["scores"].values():
        for subset in split:
            subset["main_score"] = value
    path.write_text(json.dumps(result))


def _experiments(root: Path, model: str) -> list[Path]:
    return sorted((root / "results" / model.replace("/", "__")).glob("*/experiments/*"))


def _layer(folder: Path) -> int:
    return int(folder.name.split("__layer_")[1].split("__")[0])


@pytest.fixture(scope="session")
def results_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lb") / "run"
    shutil.copytree(DATA, root)
    for folder in _experiments(root, MINILM):
        target = folder / f"{CLASSIFICATION}.json"
        shutil.copy(folder / "BIOSSES.json", target)
        _set_main_score(target, fake_classification_score(_layer(folder)), CLASSIFICATION)
    fake_dir = root / "results" / FAKE.replace("/", "__") / "r1" / "experiments"
    for folder in _experiments(root, MINILM):
        target = fake_dir / folder.name
        shutil.copytree(folder, target)
        meta = json.loads((target / "model_meta.json").read_text())
        meta.update(name=FAKE, revision="r1")
        (target / "model_meta.json").write_text(json.dumps(meta))
        for result in target.glob("*.json"):
            if result.name != "model_meta.json":
                _set_main_score(result, fake_model_score(_layer(folder)))
    # the deleted MiniLM result stays missing; give the fake model every task
    missing = fake_dir / "dim_384__layer_3__normalize_True__pooling_mean" / "STS12.json"
    shutil.copy(missing.parent / "BIOSSES.json", missing)
    _set_main_score(missing, fake_model_score(3), "STS12")
    return root


def result_files(root: Path) -> list[Path]:
    """Every TaskResult JSON under `root` (not model_meta.json)."""
    return sorted(p for p in (root / "results").rglob("*.json") if p.name != "model_meta.json")


@pytest.fixture(scope="session")
def frames_of(results_root):
    """The scores and metrics frames of `results_root`."""
    from mteb_midlayer import frames

    return frames.scores_frame(results_root), frames.metrics_frame(results_root)


@pytest.fixture(scope="session")
def published(frames_of, tmp_path_factory) -> Path:
    """A leaderboard folder written once (plots included) for every test that reads one."""
    from mteb_midlayer.leaderboard import publish

    scores, metrics = frames_of
    out = tmp_path_factory.mktemp("published")
    publish(scores, metrics, out, benchmark="tiny", data="tests/data copy", command="pytest")
    return out
